"""API token use cases: issue, verify, revoke, list (architecture decision 10).

A token reads ``tw_<token_id>_<secret>``: ``token_id`` is 16 hex digits that name the
``ApiToken`` aggregate, ``secret`` is ``secrets.token_urlsafe(32)``. Only the SHA-256
digest of the secret is stored; the token itself is returned once, at issue.

Exceptions (under the domain's ``AccessError``, ``domain/access.py``)::

    ToxWatchError
    └── AccessError
        ├── AuthenticationFailed    verify() refused the token
        │   ├── TokenMissing        no token presented
        │   ├── TokenMalformed      not of the form tw_<token_id>_<secret>
        │   ├── TokenUnknown        no such token, or the wrong secret (indistinguishable)
        │   ├── TokenExpired
        │   └── TokenRevoked
        └── NoSuchToken             revoke()/get() of a token id never issued (a NotFound)
"""

from __future__ import annotations

import builtins
import hashlib
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from domain.access import AccessError, ApiToken, Principal, Role
from domain.errors import NotFound

MAX_ATTEMPTS = 5
_PAGE = 500
_TOKEN = re.compile(r"tw_(?P<token_id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})")
_MAX_TOKEN_LENGTH = 64
T = TypeVar("T")


class AuthenticationFailed(AccessError):
    """A presented token does not authenticate anyone."""


class TokenMissing(AuthenticationFailed):
    pass


class TokenMalformed(AuthenticationFailed):
    pass


class TokenUnknown(AuthenticationFailed):
    """No token with that id, or the wrong secret for it: the caller cannot tell which."""


class TokenExpired(AuthenticationFailed):
    pass


class TokenRevoked(AuthenticationFailed):
    pass


class NoSuchToken(AccessError, NotFound):
    """No token was ever issued with that id."""


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: never its secret nor its digest."""

    token_id: str
    name: str
    role: Role
    site_id: str | None
    expires_at: datetime | None
    created_by: str
    created_at: datetime
    reason: str
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None

    @classmethod
    def of(cls, token: ApiToken) -> TokenInfo:
        return cls(
            token_id=token.token_id,
            name=token.name,
            role=token.role,
            site_id=token.site_id,
            expires_at=token.expires_at,
            created_by=token.created_by,
            created_at=token.created_at,
            reason=token.reason,
            revoked_at=token.revoked_at,
            revoked_by=token.revoked_by,
            revoke_reason=token.revoke_reason,
        )

    def is_active(self, now: datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True)
class IssuedToken:
    """A newly issued token. ``token`` is the only copy of the plaintext: hand it to
    its holder and drop it (it is left out of ``repr`` so it is not logged by accident)."""

    token: str = field(repr=False)
    token_id: str
    info: TokenInfo


def secret_digest(secret: str) -> str:
    """SHA-256 of the secret, hex.

    A fast unsalted hash suffices: the secret is 32 random bytes (256 bits of entropy)
    from ``secrets``, so it cannot be guessed or found in a dictionary, and a slow
    password hash (bcrypt, scrypt, Argon2) would only slow down every request.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenService:
    """Token use cases over an eventsourcing application's store."""

    def __init__(self, app: Application[UUID]) -> None:
        self.app = app
        self._created_topic = get_topic(ApiToken.Created)

    def create(
        self,
        role: Role,
        *,
        name: str,
        site_id: str | None = None,
        expires_at: datetime | None = None,
        created_by: str,
        reason: str = "",
        now: datetime,
    ) -> IssuedToken:
        """Issue a token (a human action: who, when, why). The plaintext is returned
        here once and kept nowhere."""

        def issued() -> IssuedToken:
            token_id = secrets.token_hex(8)
            secret = secrets.token_urlsafe(32)
            token = ApiToken.issue(
                token_id=token_id,
                name=name,
                role=role,
                site_id=site_id,
                secret_sha256=secret_digest(secret),
                expires_at=expires_at,
                created_by=created_by,
                created_at=now,
                reason=reason,
            )
            self.app.save(token)  # IntegrityError if the id was taken: draw another
            return IssuedToken(f"tw_{token_id}_{secret}", token_id, TokenInfo.of(token))

        return _retrying(issued)

    def verify(self, token: str | None, now: datetime) -> Principal:
        """The principal a token authenticates at ``now``, or an ``AuthenticationFailed``.

        Expiry and revocation are reported only to a caller who holds the secret.
        """
        if not token:
            raise TokenMissing("no token")
        match = _TOKEN.fullmatch(token) if len(token) <= _MAX_TOKEN_LENGTH else None
        if match is None:
            raise TokenMalformed("not a ToxWatch token")
        stored = self._find(match["token_id"])
        if stored is None or not stored.matches(secret_digest(match["secret"])):
            raise TokenUnknown("unknown token")
        if stored.revoked:
            raise TokenRevoked(f"token {stored.token_id} was revoked")
        if stored.expired(now):
            raise TokenExpired(f"token {stored.token_id} expired")
        return stored.principal()

    def revoke(self, token_id: str, *, by: str, reason: str, now: datetime) -> TokenInfo:
        """Revoke a token (a human action: who, when, why); revoking twice is refused."""

        def revoked() -> ApiToken:
            token = self._find(token_id)
            if token is None:
                raise NoSuchToken(f"no token {token_id!r}")
            token.revoke(by=by, at=now, reason=reason)
            self.app.save(token)
            return token

        return TokenInfo.of(_retrying(revoked))

    def get(self, token_id: str) -> TokenInfo:
        token = self._find(token_id)
        if token is None:
            raise NoSuchToken(f"no token {token_id!r}")
        return TokenInfo.of(token)

    def list(self) -> builtins.list[TokenInfo]:
        """Every token ever issued, in the order of issue."""
        return [TokenInfo.of(self.app.repository.get(i)) for i in self._issued_ids()]

    def _issued_ids(self) -> Iterator[UUID]:
        after = 0
        while True:
            notifications = self.app.recorder.select_notifications(
                start=after, limit=_PAGE, topics=[self._created_topic], inclusive_of_start=False
            )
            if not notifications:
                return
            for notification in notifications:
                created: Any = self.app.mapper.to_domain_event(notification)
                yield created.originator_id
            after = notifications[-1].id

    def _find(self, token_id: str) -> ApiToken | None:
        try:
            token: ApiToken = self.app.repository.get(ApiToken.id_for(token_id))
        except AggregateNotFoundError:
            return None
        return token


def _retrying(attempt: Callable[[], T]) -> T:
    """Run a load-change-save step again, on fresh state, when another writer won."""
    for attempt_number in range(1, MAX_ATTEMPTS + 1):
        try:
            return attempt()
        except IntegrityError:
            if attempt_number == MAX_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
