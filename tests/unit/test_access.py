"""Roles, permissions and the ApiToken aggregate (architecture decision 10)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.access import (
    PERMISSIONS,
    AccessError,
    ApiToken,
    InvalidRevocation,
    InvalidTokenGrant,
    Permission,
    Principal,
    TokenAlreadyRevoked,
)
from domain.errors import ProtocolViolation, ToxWatchError

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
DIGEST = hashlib.sha256(b"secret").hexdigest()
P = Permission
CLINICAL_READ = {P.READ_ALERTS, P.READ_PARTICIPANTS, P.READ_TRIAL, P.READ_EVENTS}


def issue(**overrides: Any) -> ApiToken:
    grant: dict[str, Any] = {
        "token_id": "0123456789abcdef",
        "name": "CN-001 coordinator",
        "role": "site",
        "site_id": "CN-001",
        "secret_sha256": DIGEST,
        "expires_at": NOW + timedelta(days=90),
        "created_by": "admin@sponsor",
        "created_at": NOW,
        "reason": "site activation",
    }
    return ApiToken.issue(**grant | overrides)


# ------------------------------------------------------------------ permissions


@pytest.mark.parametrize(
    ("role", "granted"),
    [
        ("monitor", CLINICAL_READ | {P.ACKNOWLEDGE_ALERTS}),
        ("dsmb", CLINICAL_READ),
        ("site", CLINICAL_READ | {P.ACKNOWLEDGE_ALERTS}),
        ("auditor", CLINICAL_READ | {P.READ_AUDIT, P.READ_TOKENS}),
        ("admin", {P.MANAGE_TOKENS, P.READ_TOKENS, P.REBUILD_VIEWS}),
    ],
)
def test_each_role_has_exactly_its_permissions(role, granted):
    principal = Principal("t", "someone", role, "CN-001" if role == "site" else None)
    assert PERMISSIONS[role] == granted
    assert {p for p in Permission if principal.can(p)} == granted


def test_only_monitors_and_sites_acknowledge_and_only_admins_manage_tokens():
    acknowledging = {r for r, ps in PERMISSIONS.items() if P.ACKNOWLEDGE_ALERTS in ps}
    managing = {r for r, ps in PERMISSIONS.items() if P.MANAGE_TOKENS in ps}
    assert acknowledging == {"monitor", "site"}
    assert managing == {"admin"}


def test_the_permission_matrix_cannot_be_changed_at_run_time():
    with pytest.raises(TypeError):
        PERMISSIONS["dsmb"] = frozenset(Permission)  # type: ignore[index]


# ------------------------------------------------------------------ site visibility


def test_a_site_sees_its_own_site_and_trial_level_data_only():
    site = Principal("t", "CN-001 coordinator", "site", "CN-001")
    assert site.sees_site("CN-001")
    assert site.sees_site(None)
    assert not site.sees_site("CN-002")


@pytest.mark.parametrize("role", ["monitor", "dsmb", "auditor", "admin"])
def test_other_roles_see_every_site(role):
    principal = Principal("t", "someone", role, None)
    assert principal.sees_site("CN-001")
    assert principal.sees_site("CN-002")
    assert principal.sees_site(None)


# ------------------------------------------------------------------ the aggregate


def test_an_issued_token_records_its_grant_and_authenticates_its_holder():
    token = issue()
    assert token.id == ApiToken.id_for("0123456789abcdef")
    assert token.principal() == Principal(
        "0123456789abcdef", "CN-001 coordinator", "site", "CN-001"
    )
    (created,) = token.collect_events()
    assert isinstance(created, ApiToken.Created)
    assert created.created_at == NOW
    assert created.created_by == "admin@sponsor"
    assert created.reason == "site activation"


def test_the_token_id_determines_the_aggregate_id():
    assert ApiToken.id_for("0123456789abcdef") == ApiToken.id_for("0123456789abcdef")
    assert ApiToken.id_for("0123456789abcdef") != ApiToken.id_for("fedcba9876543210")


def test_a_token_matches_only_its_own_digest():
    token = issue()
    assert token.matches(DIGEST)
    assert not token.matches(hashlib.sha256(b"other").hexdigest())
    assert not token.matches("")


def test_a_site_token_requires_a_site():
    with pytest.raises(InvalidTokenGrant, match="requires a site_id"):
        issue(site_id=None)
    with pytest.raises(InvalidTokenGrant, match="requires a site_id"):
        issue(site_id="")


@pytest.mark.parametrize("role", ["monitor", "dsmb", "auditor", "admin"])
def test_only_a_site_token_has_a_site(role):
    with pytest.raises(InvalidTokenGrant, match="has no site_id"):
        issue(role=role, site_id="CN-001")
    assert issue(role=role, site_id=None).site_id is None


def test_an_unknown_role_is_refused():
    with pytest.raises(InvalidTokenGrant, match="unknown role"):
        issue(role="superuser", site_id=None)


@pytest.mark.parametrize(
    "overrides",
    [
        {"secret_sha256": "not-a-digest"},
        {"secret_sha256": DIGEST.upper()},
        {"created_at": NOW.replace(tzinfo=None)},
        {"expires_at": (NOW + timedelta(days=1)).replace(tzinfo=None)},
        {"expires_at": NOW},
        {"created_by": " "},
        {"name": ""},
    ],
)
def test_an_inconsistent_grant_is_refused(overrides):
    with pytest.raises(InvalidTokenGrant):
        issue(**overrides)


def test_a_token_is_active_until_it_expires():
    token = issue(expires_at=NOW + timedelta(hours=1))
    assert token.is_active(NOW)
    assert token.is_active(NOW + timedelta(minutes=59))
    assert not token.is_active(NOW + timedelta(hours=1))
    assert token.expired(NOW + timedelta(hours=1))


def test_a_token_without_expiry_stays_active():
    assert issue(expires_at=None).is_active(NOW + timedelta(days=3650))


def test_a_revoked_token_is_inactive_and_records_who_when_why():
    token = issue()
    token.revoke(by="admin@sponsor", at=NOW + timedelta(days=1), reason="laptop lost")
    assert not token.is_active(NOW + timedelta(days=1))
    assert token.revoked_by == "admin@sponsor"
    assert token.revoke_reason == "laptop lost"
    revoked = token.collect_events()[-1]
    assert isinstance(revoked, ApiToken.Revoked)


def test_revoking_twice_is_refused():
    token = issue()
    token.revoke(by="admin@sponsor", at=NOW, reason="rotated")
    with pytest.raises(TokenAlreadyRevoked):
        token.revoke(by="admin@sponsor", at=NOW, reason="again")
    assert len(token.collect_events()) == 2


def test_a_revocation_needs_an_aware_time_and_a_revoker():
    token = issue()
    with pytest.raises(InvalidRevocation):
        token.revoke(by="admin@sponsor", at=NOW.replace(tzinfo=None), reason="x")
    with pytest.raises(InvalidRevocation):
        token.revoke(by="", at=NOW, reason="x")
    assert token.is_active(NOW)


def test_access_errors_belong_to_the_toxwatch_tree():
    assert issubclass(AccessError, ToxWatchError)
    assert issubclass(TokenAlreadyRevoked, ProtocolViolation)
