"""API tokens on the event store, and the FastAPI dependencies that check them
(architecture decision 10). Each test runs on the in-memory stores: the project's
SQLite one and eventsourcing's plain-Python one.

No ``from __future__ import annotations``: FastAPI reads the dependencies of the
routes defined in a fixture from their annotations at run time."""

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from domain.access import ApiToken, InvalidTokenGrant, Permission, Principal, TokenAlreadyRevoked
from services.application import SafetyMonitoring
from services.auth import Authenticator
from services.offline import in_memory_application
from services.tokens import (
    AuthenticationFailed,
    NoSuchToken,
    TokenExpired,
    TokenMalformed,
    TokenMissing,
    TokenRevoked,
    TokenService,
    TokenUnknown,
)

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(params=["sqlite", "popo"])
def app(request: pytest.FixtureRequest) -> Iterator[SafetyMonitoring]:
    if request.param == "sqlite":
        application = in_memory_application()
    else:
        application = SafetyMonitoring(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield application
    application.close()


@pytest.fixture
def tokens(app: SafetyMonitoring) -> TokenService:
    return TokenService(app)


def issue(tokens: TokenService, role="monitor", **kwargs):
    kwargs.setdefault("name", f"{role} holder")
    kwargs.setdefault("created_by", "admin@sponsor")
    return tokens.create(role, now=kwargs.pop("now", NOW), **kwargs)


# ------------------------------------------------------------------ issue and verify


def test_an_issued_token_authenticates_its_holder(tokens):
    issued = issue(tokens, "site", name="CN-001 coordinator", site_id="CN-001")
    assert re.fullmatch(r"tw_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", issued.token)
    assert issued.token.startswith(f"tw_{issued.token_id}_")
    assert tokens.verify(issued.token, NOW) == Principal(
        issued.token_id, "CN-001 coordinator", "site", "CN-001"
    )


def test_each_token_is_new(tokens):
    first, second = issue(tokens), issue(tokens)
    assert first.token_id != second.token_id
    assert first.token != second.token


def test_the_store_keeps_the_digest_of_the_secret_never_the_secret(app, tokens):
    issued = issue(tokens, reason="onboarding")
    tokens.revoke(issued.token_id, by="admin@sponsor", reason="rotated", now=NOW + DAY)
    secret = issued.token.removeprefix(f"tw_{issued.token_id}_")
    stored = app.recorder.select_events(ApiToken.id_for(issued.token_id))
    assert len(stored) == 2
    for event in stored:
        assert secret.encode() not in event.state
        assert issued.token.encode() not in event.state
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored[0].state


def test_an_issued_token_does_not_show_its_plaintext_in_its_repr(tokens):
    issued = issue(tokens)
    assert issued.token not in repr(issued)


def test_a_grant_the_domain_refuses_stores_nothing(app, tokens):
    with pytest.raises(InvalidTokenGrant):
        issue(tokens, "site")
    assert tokens.list() == []


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_is_missing(tokens, token):
    with pytest.raises(TokenMissing):
        tokens.verify(token, NOW)


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "tw_0123456789abcdef",
        "tw_0123456789ABCDEF_" + "a" * 43,
        "tw_0123456789abcdef_" + "a" * 42,
        "tw_0123456789abcdef_" + "a" * 43 + "=",
        "xx_0123456789abcdef_" + "a" * 43,
        "tw_0123456789abcdef_" + "a" * 10_000,
    ],
)
def test_a_token_not_of_the_issued_form_is_malformed(tokens, token):
    with pytest.raises(TokenMalformed):
        tokens.verify(token, NOW)


def test_an_unknown_token_and_a_wrong_secret_are_the_same_refusal(tokens):
    issued = issue(tokens)
    unknown = "tw_0123456789abcdef_" + "a" * 43
    wrong_secret = f"tw_{issued.token_id}_" + "a" * 43
    with pytest.raises(TokenUnknown) as for_unknown:
        tokens.verify(unknown, NOW)
    with pytest.raises(TokenUnknown) as for_wrong_secret:
        tokens.verify(wrong_secret, NOW)
    assert str(for_unknown.value) == str(for_wrong_secret.value)


def test_a_token_is_refused_from_its_expiry_on(tokens):
    issued = issue(tokens, expires_at=NOW + DAY)
    assert tokens.verify(issued.token, NOW + DAY - timedelta(seconds=1))
    with pytest.raises(TokenExpired):
        tokens.verify(issued.token, NOW + DAY)


def test_a_revoked_token_is_refused(tokens):
    issued = issue(tokens, expires_at=NOW + DAY)
    tokens.revoke(issued.token_id, by="admin@sponsor", reason="laptop lost", now=NOW)
    with pytest.raises(TokenRevoked):
        tokens.verify(issued.token, NOW)
    with pytest.raises(TokenRevoked):  # revoked is the more definite refusal
        tokens.verify(issued.token, NOW + 2 * DAY)


def test_expiry_and_revocation_are_told_only_to_the_holder_of_the_secret(tokens):
    issued = issue(tokens, expires_at=NOW + DAY)
    tokens.revoke(issued.token_id, by="admin@sponsor", reason="rotated", now=NOW)
    with pytest.raises(TokenUnknown):
        tokens.verify(f"tw_{issued.token_id}_" + "a" * 43, NOW + 2 * DAY)


def test_every_refusal_is_an_authentication_failure():
    for error in (TokenMissing, TokenMalformed, TokenUnknown, TokenExpired, TokenRevoked):
        assert issubclass(error, AuthenticationFailed)


# ------------------------------------------------------------------ revoke and list


def test_revoking_twice_is_refused_and_records_one_revocation(app, tokens):
    issued = issue(tokens)
    tokens.revoke(issued.token_id, by="admin@sponsor", reason="rotated", now=NOW)
    with pytest.raises(TokenAlreadyRevoked):
        tokens.revoke(issued.token_id, by="admin@sponsor", reason="again", now=NOW + DAY)
    assert len(app.recorder.select_events(ApiToken.id_for(issued.token_id))) == 2


def test_revoking_a_token_never_issued_is_refused(tokens):
    with pytest.raises(NoSuchToken):
        tokens.revoke("0123456789abcdef", by="admin@sponsor", reason="x", now=NOW)


def test_the_list_shows_every_token_and_its_state_but_no_secret(tokens):
    monitor = issue(tokens, "monitor", reason="CRA")
    site = issue(tokens, "site", site_id="CN-002", expires_at=NOW + DAY)
    tokens.revoke(monitor.token_id, by="admin@sponsor", reason="left the study", now=NOW)

    listed = tokens.list()

    assert [t.token_id for t in listed] == [monitor.token_id, site.token_id]
    first, second = listed
    assert (first.role, first.reason, first.revoked_by, first.revoke_reason) == (
        "monitor",
        "CRA",
        "admin@sponsor",
        "left the study",
    )
    assert not first.is_active(NOW)
    assert (second.role, second.site_id, second.expires_at) == ("site", "CN-002", NOW + DAY)
    assert second.is_active(NOW)
    for info, issued in zip(listed, (monitor, site), strict=True):
        shown = repr(info)
        assert issued.token not in shown
        assert issued.token.removeprefix(f"tw_{issued.token_id}_") not in shown
        assert not {"secret", "secret_sha256"} & set(vars(info))


def test_the_list_reads_past_one_page(tokens, monkeypatch):
    monkeypatch.setattr("services.tokens._PAGE", 2)
    issued = [issue(tokens).token_id for _ in range(5)]
    assert [t.token_id for t in tokens.list()] == issued


def test_the_list_ignores_other_aggregates(app, tokens):
    from domain.protocol import ProtocolParameters

    app.activate_protocol(ProtocolParameters(), activated_by="pi", reason="v1", at=NOW)
    issued = issue(tokens)
    assert [t.token_id for t in tokens.list()] == [issued.token_id]


# ------------------------------------------------------------------ HTTP


@pytest.fixture
def http(tokens: TokenService) -> TestClient:
    auth = Authenticator(tokens, clock=lambda: NOW)
    api = FastAPI()

    @api.get("/alerts")
    def alerts(who: Annotated[Principal, Depends(auth.require(Permission.READ_ALERTS))]):
        return {"token_id": who.token_id}

    @api.get("/tokens")
    def list_tokens(who: Annotated[Principal, Depends(auth.require(Permission.MANAGE_TOKENS))]):
        return []

    @api.get("/me")
    def me(who: Annotated[Principal, Depends(auth.principal)]):
        return {"role": who.role}

    return TestClient(api)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_request_with_a_permitted_token_is_served(http, tokens):
    issued = issue(tokens, "dsmb")
    response = http.get("/alerts", headers=bearer(issued.token))
    assert response.status_code == 200
    assert response.json() == {"token_id": issued.token_id}
    assert http.get("/me", headers=bearer(issued.token)).json() == {"role": "dsmb"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic dXNlcjpwYXNz"}])
def test_a_request_without_a_bearer_token_is_told_to_authenticate(http, headers):
    response = http.get("/alerts", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "authentication required"}


def test_every_refused_token_gets_the_same_401(http, tokens):
    expired = issue(tokens, expires_at=NOW - timedelta(seconds=1), now=NOW - DAY)
    revoked = issue(tokens)
    tokens.revoke(revoked.token_id, by="admin@sponsor", reason="rotated", now=NOW)
    refused = [
        "garbage",
        "tw_0123456789abcdef_" + "a" * 43,
        f"tw_{revoked.token_id}_" + "a" * 43,
        expired.token,
        revoked.token,
    ]
    for token in refused:
        response = http.get("/alerts", headers=bearer(token))
        assert response.status_code == 401, token
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json() == {"detail": "invalid or expired token"}


def test_a_token_without_the_permission_is_forbidden(http, tokens):
    auditor = issue(tokens, "auditor")
    admin = issue(tokens, "admin")
    for token, path in ((auditor.token, "/tokens"), (admin.token, "/alerts")):
        response = http.get(path, headers=bearer(token))
        assert response.status_code == 403
        assert response.json() == {"detail": "forbidden"}
    assert http.get("/tokens", headers=bearer(admin.token)).status_code == 200


def test_the_openapi_document_advertises_the_bearer_scheme(http):
    document = http.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["ToxWatchToken"]["type"] == "http"
    assert schemes["ToxWatchToken"]["scheme"] == "bearer"
    assert document["paths"]["/alerts"]["get"]["security"] == [{"ToxWatchToken": []}]
