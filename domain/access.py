"""Who may do what through the API (architecture decision 10).

Roles and their permissions, the authenticated ``Principal``, and the ``ApiToken``
aggregate: a bearer token kept as the SHA-256 digest of its secret, never the secret.
Issuing and revoking a token are events with who, when and why.

Exceptions (under ``ToxWatchError``, ``domain/errors.py``)::

    AccessError
    ├── InvalidTokenGrant     role, site, digest or times of a new token are inconsistent
    ├── InvalidRevocation     a revocation without an aware time or a revoker
    └── TokenAlreadyRevoked   revoking a token twice (also a ProtocolViolation)
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Literal, get_args
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import ProtocolViolation, ToxWatchError
from domain.participant import NAMESPACE

Role = Literal["monitor", "dsmb", "site", "auditor", "admin"]
ROLES: frozenset[str] = frozenset(get_args(Role))


class Permission(StrEnum):
    READ_ALERTS = "read_alerts"
    ACKNOWLEDGE_ALERTS = "acknowledge_alerts"
    READ_PARTICIPANTS = "read_participants"
    READ_TRIAL = "read_trial"
    READ_EVENTS = "read_events"
    READ_AUDIT = "read_audit"
    MANAGE_TOKENS = "manage_tokens"
    READ_TOKENS = "read_tokens"
    REBUILD_VIEWS = "rebuild_views"


_CLINICAL_READ = frozenset(
    {
        Permission.READ_ALERTS,
        Permission.READ_PARTICIPANTS,
        Permission.READ_TRIAL,
        Permission.READ_EVENTS,
    }
)

#: The permissions of each role. ``site`` is further limited to its own site's
#: participants (``Principal.sees_site``); ``auditor`` reads everything, changes nothing.
PERMISSIONS: Mapping[Role, frozenset[Permission]] = MappingProxyType(
    {
        "monitor": _CLINICAL_READ | {Permission.ACKNOWLEDGE_ALERTS},
        "dsmb": _CLINICAL_READ,
        "site": _CLINICAL_READ | {Permission.ACKNOWLEDGE_ALERTS},
        "auditor": _CLINICAL_READ | {Permission.READ_AUDIT, Permission.READ_TOKENS},
        "admin": frozenset(
            {Permission.MANAGE_TOKENS, Permission.READ_TOKENS, Permission.REBUILD_VIEWS}
        ),
    }
)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class AccessError(ToxWatchError):
    """An access-control rule was broken."""


class InvalidTokenGrant(AccessError):
    """A new token's role, site, digest or times are inconsistent."""


class InvalidRevocation(AccessError):
    """A revocation lacks an aware time or the name of who revoked."""


class TokenAlreadyRevoked(AccessError, ProtocolViolation):
    """The token was revoked before."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of the API."""

    token_id: str
    name: str
    role: Role
    site_id: str | None

    def can(self, permission: Permission) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())

    def sees_site(self, site_id: str | None) -> bool:
        """A site sees its own site's data and trial-level data (``site_id`` None);
        every other role sees every site. Permissions are checked separately."""
        if self.role != "site" or site_id is None:
            return True
        return site_id == self.site_id


def check_role_scope(role: str, site_id: str | None) -> None:
    """A site token names its site; no other role has one."""
    if role not in ROLES:
        raise InvalidTokenGrant(f"unknown role {role!r}")
    if role == "site" and not site_id:
        raise InvalidTokenGrant("a site token requires a site_id")
    if role != "site" and site_id is not None:
        raise InvalidTokenGrant(f"a {role} token has no site_id (got {site_id!r})")


def check_issue_times(created_at: datetime, expires_at: datetime | None) -> None:
    if created_at.tzinfo is None:
        raise InvalidTokenGrant("created_at must be timezone-aware")
    if expires_at is None:
        return
    if expires_at.tzinfo is None:
        raise InvalidTokenGrant("expires_at must be timezone-aware")
    if expires_at <= created_at:
        raise InvalidTokenGrant("expires_at must be after created_at")


def check_sha256_hex(secret_sha256: str) -> None:
    if not _SHA256_HEX.fullmatch(secret_sha256):
        raise InvalidTokenGrant("secret_sha256 must be 64 lowercase hex digits")


def check_named(field: str, value: str) -> None:
    if not value.strip():
        raise InvalidTokenGrant(f"{field} must not be blank")


class ApiToken(Aggregate):
    """One API token: its holder, role, site and validity; the secret as a digest."""

    @staticmethod
    def id_for(token_id: str) -> UUID:
        return uuid5(NAMESPACE, f"api-token/{token_id}")

    @staticmethod
    def create_id(token_id: str) -> UUID:
        return ApiToken.id_for(token_id)

    @classmethod
    def issue(
        cls,
        *,
        token_id: str,
        name: str,
        role: Role,
        site_id: str | None,
        secret_sha256: str,
        expires_at: datetime | None,
        created_by: str,
        created_at: datetime,
        reason: str,
    ) -> ApiToken:
        """Issue a token, after checking that its grant is consistent."""
        check_named("token_id", token_id)
        check_named("name", name)
        check_named("created_by", created_by)
        check_role_scope(role, site_id)
        check_sha256_hex(secret_sha256)
        check_issue_times(created_at, expires_at)
        return cls(
            token_id=token_id,
            name=name,
            role=role,
            site_id=site_id,
            secret_sha256=secret_sha256,
            expires_at=expires_at,
            created_by=created_by,
            created_at=created_at,
            reason=reason,
        )

    @event("Created")
    def __init__(
        self,
        token_id: str,
        name: str,
        role: Role,
        site_id: str | None,
        secret_sha256: str,
        expires_at: datetime | None,
        created_by: str,
        created_at: datetime,
        reason: str,
    ) -> None:
        self.token_id = token_id
        self.name = name
        self.role: Role = role
        self.site_id = site_id
        self.secret_sha256 = secret_sha256
        self.expires_at = expires_at
        self.created_by = created_by
        self.created_at = created_at
        self.reason = reason
        self.revoked_at: datetime | None = None
        self.revoked_by: str | None = None
        self.revoke_reason: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def check_not_revoked(self) -> None:
        if self.revoked:
            raise TokenAlreadyRevoked(
                f"token {self.token_id} was revoked at {self.revoked_at} by {self.revoked_by}"
            )

    def revoke(self, by: str, at: datetime, reason: str) -> None:
        """Withdraw the token from this point on."""
        self.check_not_revoked()
        if at.tzinfo is None:
            raise InvalidRevocation("the revocation time must be timezone-aware")
        if not by.strip():
            raise InvalidRevocation("a revocation names who revoked")
        self._revoked(by=by, at=at, reason=reason)

    @event("Revoked")
    def _revoked(self, by: str, at: datetime, reason: str) -> None:
        self.revoked_at = at
        self.revoked_by = by
        self.revoke_reason = reason

    def matches(self, secret_sha256: str) -> bool:
        """Whether a presented secret's digest is this token's (constant time)."""
        return hmac.compare_digest(self.secret_sha256.encode(), secret_sha256.encode())

    def is_active(self, now: datetime) -> bool:
        """Not revoked and not expired at ``now`` (an aware time)."""
        if self.revoked:
            return False
        return self.expires_at is None or now < self.expires_at

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def principal(self) -> Principal:
        return Principal(
            token_id=self.token_id, name=self.name, role=self.role, site_id=self.site_id
        )
