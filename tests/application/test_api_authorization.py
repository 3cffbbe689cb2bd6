"""Who may call what on the API (architecture decision 10), on the in-memory store with
a simulated cohort: six participants at sites CN-001, CN-002 and CN-003, their alerts
and the trial's events.

Every data endpoint is called with a token of every role, with no token and with each
kind of refused token. A refused token gets one answer whatever the reason (no
oracle); a ``site`` token sees its own site and trial-level data only, and another
site's participant or alert is answered exactly like one that does not exist.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from domain.access import Role
from infra.settings import Settings
from projections.alerts import AlertRow
from services.api import ReadModels, create_app
from services.application import SafetyMonitoring
from services.bootstrap import build_application
from services.offline import process_lines
from services.simulator import CohortSpec, simulate_cohort
from services.tokens import TokenService

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
ISSUED_AT = NOW - timedelta(days=1)
TRIAL = "NCT07049081"
OWN_SITE = "CN-001"
ROLES: tuple[Role, ...] = ("monitor", "dsmb", "site", "auditor", "admin")
CLINICAL = frozenset({"monitor", "dsmb", "site", "auditor"})

#: The policy (``domain.access.PERMISSIONS``), written out: the roles that may call each
#: endpoint. Every other role gets 403.
ALLOWED: dict[str, frozenset[str]] = {
    "GET /alerts": CLINICAL,
    "GET /alerts/{alert_id}": CLINICAL,
    "POST /alerts/{alert_id}/acknowledge": frozenset({"monitor", "site"}),
    "GET /alerts/stream": CLINICAL,
    "GET /participants": CLINICAL,
    "GET /participants/{trial_id}/{participant_id}/timeline": CLINICAL,
    "GET /participants/{trial_id}/{participant_id}/kinetics": CLINICAL,
    "GET /trials/{trial_id}/status": CLINICAL,
    "GET /trials/{trial_id}/kinetics": CLINICAL,
    "GET /events": CLINICAL,
    "GET /audit/trail": frozenset({"auditor"}),
    "GET /audit/as-of/participants/{trial_id}/{participant_id}": frozenset({"auditor"}),
    "GET /audit/as-of/trials/{trial_id}": frozenset({"auditor"}),
    "GET /tokens": frozenset({"admin", "auditor"}),
    "POST /tokens": frozenset({"admin"}),
    "POST /tokens/{token_id}/revoke": frozenset({"admin"}),
    "POST /views/rebuild": frozenset({"admin"}),
}
#: Answered to anyone, with or without a token.
PUBLIC = ("/health", "/ready", "/schema/clinical", "/schema/safety", "/openapi.json")

MISSING = {"detail": "authentication required"}
REFUSED = {"detail": "invalid or expired token"}
FORBIDDEN = {"detail": "forbidden"}
NOT_FOUND = {"detail": "not found"}


@dataclass
class World:
    app: SafetyMonitoring
    api: FastAPI
    client: TestClient
    tokens: dict[str, str]
    token_ids: dict[str, str]
    refused: dict[str, str]
    own_alerts: list[AlertRow] = field(default_factory=list)
    untouched_alert: str = ""
    other_site_alert: AlertRow | None = None
    own_participant: str = ""
    other_site_participant: tuple[str, str] = ("", "")

    @property
    def views(self) -> ReadModels:
        views: ReadModels = self.api.state.read_models
        return views

    def fresh_alert(self, *, open_: bool = False) -> str:
        """An unacknowledged CN-001 alert no other test has used (a resolved one when
        ``open_`` is not asked for: there are few open ones)."""
        candidates = [r for r in self.own_alerts if r.status == "open" or not open_]
        assert candidates, "the cohort has too few unacknowledged CN-001 alerts for these tests"
        row = min(candidates, key=lambda r: r.status == "open")
        self.own_alerts.remove(row)
        return row.alert_id

    def alert(self, alert_id: str) -> AlertRow:
        self.views.refresh()
        return self.views.alerts.rows[alert_id]

    def spare_token_id(self) -> str:
        return issue(self.app, "dsmb", "spare").token_id

    def call(
        self, method: str, url: str, token: str | None, body: dict[str, Any] | None = None
    ) -> Any:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return self.client.request(method, url, headers=headers, json=body)


def issue(app: SafetyMonitoring, role: Role, name: str, **kwargs: Any) -> Any:
    site_id = OWN_SITE if role == "site" else None
    kwargs.setdefault("now", ISSUED_AT)
    return TokenService(app).create(role, name=name, site_id=site_id, created_by="test", **kwargs)


def application_on_a_file(directory: Path) -> SafetyMonitoring:
    """The store in a SQLite file, not ``in_memory_application()``: each connection to
    ``:memory:`` is a database of its own, and a request served while the live feed
    reads gets a second connection, which finds no tables."""
    settings = Settings(store="sqlite", sqlite_file=directory / "toxwatch.sqlite3")
    return build_application(settings)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    app = application_on_a_file(tmp_path_factory.mktemp("store"))
    messages = simulate_cohort(CohortSpec(participants=6))
    process_lines([m.value for m in messages], io.StringIO(), app=app, now=NOW)
    issued = {role: issue(app, role, f"{role} holder") for role in ROLES}
    expired = issue(app, "monitor", "expired", expires_at=NOW - timedelta(hours=1))
    revoked = issue(app, "monitor", "revoked")
    TokenService(app).revoke(
        revoked.token_id, by="test", reason="left", now=NOW - timedelta(hours=1)
    )
    monitor_id = issued["monitor"].token_id
    refused = {
        "malformed": "not-a-toxwatch-token",
        "unknown": f"tw_{'0' * 16}_{'A' * 43}",
        "wrong secret": f"tw_{monitor_id}_{'A' * 43}",
        "expired": expired.token,
        "revoked": revoked.token,
    }
    api = create_app(app, clock=lambda: NOW, follow=False)
    with TestClient(api) as client:
        world = World(
            app,
            api,
            client,
            tokens={role: token.token for role, token in issued.items()},
            token_ids={role: token.token_id for role, token in issued.items()},
            refused=refused,
        )
        world.views.refresh()
        rows = sorted(world.views.alerts.rows.values(), key=lambda r: r.alert_id)
        own = [r for r in rows if r.site_id == OWN_SITE and r.acknowledged_by is None]
        world.own_alerts = own
        world.untouched_alert = world.fresh_alert()
        world.other_site_alert = next(r for r in rows if r.site_id not in (OWN_SITE, None))
        sites = sorted(world.views.participants.items())
        world.own_participant = next(p for (_, p), s in sites if s == OWN_SITE)
        world.other_site_participant = next((p, s) for (_, p), s in sites if s != OWN_SITE)
        yield world
    app.close()


# ------------------------------------------------------------------ the requests

Request = tuple[str, str, dict[str, Any] | None]


def request_for(endpoint: str, world: World, *, allowed: bool) -> Request:
    """A well-formed request to ``endpoint``, aimed at CN-001 data. An allowed
    acknowledgement or revocation gets its own target, so it succeeds."""
    if endpoint == "POST /alerts/{alert_id}/acknowledge":
        alert_id = world.fresh_alert() if allowed else world.untouched_alert
        return ("POST", f"/alerts/{alert_id}/acknowledge", {"comment": "seen"})
    if endpoint == "POST /tokens/{token_id}/revoke":
        return ("POST", f"/tokens/{world.spare_token_id()}/revoke", {"reason": "rotated"})
    return {
        "GET /alerts": ("GET", "/alerts", None),
        "GET /alerts/{alert_id}": ("GET", f"/alerts/{world.untouched_alert}", None),
        "GET /alerts/stream": ("GET", "/alerts/stream?after=1000000000", None),
        "GET /participants": ("GET", "/participants", None),
        "GET /participants/{trial_id}/{participant_id}/timeline": (
            "GET",
            f"/participants/{TRIAL}/{world.own_participant}/timeline",
            None,
        ),
        "GET /participants/{trial_id}/{participant_id}/kinetics": (
            "GET",
            f"/participants/{TRIAL}/{world.own_participant}/kinetics",
            None,
        ),
        "GET /trials/{trial_id}/status": ("GET", f"/trials/{TRIAL}/status", None),
        "GET /trials/{trial_id}/kinetics": ("GET", f"/trials/{TRIAL}/kinetics", None),
        "GET /events": ("GET", "/events?limit=5", None),
        "GET /audit/trail": ("GET", "/audit/trail?limit=5", None),
        "GET /audit/as-of/participants/{trial_id}/{participant_id}": (
            "GET",
            f"/audit/as-of/participants/{TRIAL}/{world.own_participant}",
            None,
        ),
        "GET /audit/as-of/trials/{trial_id}": ("GET", f"/audit/as-of/trials/{TRIAL}", None),
        "GET /tokens": ("GET", "/tokens", None),
        "POST /views/rebuild": ("POST", "/views/rebuild", None),
        "POST /tokens": ("POST", "/tokens", {"role": "dsmb", "name": "new member"}),
    }[endpoint]


def send(world: World, request: Request, token: str | None) -> tuple[int, Any, Any]:
    """Status, headers and JSON body; the live feed's body is not read when it is
    accepted (it never ends)."""
    method, url, body = request
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if url.startswith("/alerts/stream"):
        with world.client.stream(method, url, headers=headers) as response:
            if response.status_code == 200:
                assert response.headers["content-type"].startswith("text/event-stream")
                return 200, response.headers, None
            response.read()
            return response.status_code, response.headers, response.json()
    response = world.client.request(method, url, headers=headers, json=body)
    return response.status_code, response.headers, response.json()


MATRIX = [(endpoint, role) for endpoint in ALLOWED for role in ROLES]


def test_the_policy_table_names_every_endpoint_of_the_document(world):
    document = world.client.get("/openapi.json").json()
    secured, public = set(), set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            (secured if operation.get("security") else public).add(f"{method.upper()} {path}")
    assert secured == set(ALLOWED)
    assert public == {"GET /health", "GET /ready", "GET /schema/{kind}"}


@pytest.mark.parametrize(("endpoint", "role"), MATRIX)
def test_each_role_gets_what_its_permissions_grant(world, endpoint, role):
    allowed = role in ALLOWED[endpoint]
    request = request_for(endpoint, world, allowed=allowed)
    status, _, body = send(world, request, world.tokens[role])
    if allowed:
        assert status == (201 if endpoint == "POST /tokens" else 200), body
    else:
        assert (status, body) == (403, FORBIDDEN)
    if endpoint == "POST /alerts/{alert_id}/acknowledge" and not allowed:
        assert world.alert(world.untouched_alert).acknowledged_by is None


@pytest.mark.parametrize("endpoint", ALLOWED)
def test_a_request_without_a_token_is_told_to_authenticate(world, endpoint):
    status, headers, body = send(world, request_for(endpoint, world, allowed=False), None)
    assert (status, body) == (401, MISSING)
    assert headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("endpoint", ALLOWED)
def test_every_refused_token_gets_the_same_answer(world, endpoint):
    """Malformed, unknown, wrong secret, expired, revoked: the answer does not say
    which."""
    request = request_for(endpoint, world, allowed=False)
    answers = {kind: send(world, request, token) for kind, token in world.refused.items()}
    for kind, (status, headers, body) in answers.items():
        assert (status, body) == (401, REFUSED), kind
        assert headers["www-authenticate"] == "Bearer", kind


@pytest.mark.parametrize("path", PUBLIC)
@pytest.mark.parametrize("credentials", ["none", "refused"])
def test_public_endpoints_answer_anyone(world, path, credentials):
    token = None if credentials == "none" else world.refused["malformed"]
    response = world.call("GET", path, token)
    if path == "/ready":
        # Not ready once an acknowledgement waits for the (not running) alerts process.
        assert response.status_code in (200, 503)
        assert set(response.json()) == {"ready", "behind"}
    else:
        assert response.status_code == 200


# ------------------------------------------------------------------ site isolation


def test_a_site_is_told_another_sites_participant_does_not_exist(world):
    participant, other_site = world.other_site_participant
    site = world.tokens["site"]
    hidden = world.call("GET", f"/participants/{TRIAL}/{participant}/timeline", site)
    absent = world.call("GET", f"/participants/{TRIAL}/G79-999/timeline", site)
    assert world.call("GET", hidden.url.path, world.tokens["monitor"]).status_code == 200
    assert (hidden.status_code, hidden.json()) == (404, NOT_FOUND)
    assert hidden.content == absent.content
    assert participant not in hidden.text and other_site not in hidden.text


def test_a_site_is_told_another_sites_alert_does_not_exist(world):
    alert = world.other_site_alert
    site = world.tokens["site"]
    hidden = world.call("GET", f"/alerts/{alert.alert_id}", site)
    absent = world.call("GET", "/alerts/00000000-0000-0000-0000-000000000000", site)
    assert world.call("GET", hidden.url.path, world.tokens["monitor"]).status_code == 200
    assert (hidden.status_code, hidden.json()) == (404, NOT_FOUND)
    assert hidden.content == absent.content
    for secret in (alert.alert_id, alert.site_id, alert.participant_id):
        assert secret not in hidden.text


def test_a_site_cannot_acknowledge_another_sites_alert(world):
    alert = world.other_site_alert
    site = world.tokens["site"]
    body = {"comment": "not ours"}
    hidden = world.call("POST", f"/alerts/{alert.alert_id}/acknowledge", site, body)
    absent = world.call(
        "POST", "/alerts/00000000-0000-0000-0000-000000000000/acknowledge", site, body
    )
    assert (hidden.status_code, hidden.json()) == (404, NOT_FOUND)
    assert hidden.content == absent.content
    for secret in (alert.alert_id, alert.site_id, alert.participant_id):
        assert secret not in hidden.text
    assert world.alert(alert.alert_id).acknowledged_by is None


def test_a_site_lists_only_its_own_participants(world):
    listed = world.call("GET", "/participants", world.tokens["site"]).json()
    everyone = world.call("GET", "/participants", world.tokens["monitor"]).json()
    assert listed
    assert {p["site_id"] for p in listed} == {OWN_SITE}
    assert listed == [p for p in everyone if p["site_id"] == OWN_SITE]


def test_a_site_lists_its_own_and_trial_level_alerts_only(world):
    listed = world.call("GET", "/alerts?limit=1000", world.tokens["site"]).json()
    everyone = world.call("GET", "/alerts?limit=1000", world.tokens["monitor"]).json()
    assert {a["site_id"] for a in listed} == {OWN_SITE, None}
    assert listed == [a for a in everyone if a["site_id"] in (OWN_SITE, None)]
    participant, _ = world.other_site_participant
    filtered = world.call("GET", f"/alerts?participant_id={participant}", world.tokens["site"])
    assert filtered.json() == []


def all_events(world: World, token: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = world.call("GET", f"/events?after={after}&limit=1000", token).json()
        events += [e["event"] for e in page["events"]]
        if page["next_after"] == after:
            return events
        after = page["next_after"]


def test_a_site_reads_no_participant_event_of_another_site(world):
    site_of = {p: s for (_, p), s in world.views.participants.items()}

    def site(event: dict[str, Any]) -> str | None:
        return None if event["participant_id"] == "-" else site_of[event["participant_id"]]

    seen = all_events(world, world.tokens["site"])
    everything = all_events(world, world.tokens["monitor"])
    assert {site(e) for e in seen} == {OWN_SITE, None}
    assert {site(e) for e in everything} > {OWN_SITE, None}
    visible = [e for e in everything if site(e) in (OWN_SITE, None)]
    assert [e["event_id"] for e in seen] == [e["event_id"] for e in visible]
    # Trial-level events reach a site without the keys and causes that name other
    # sites' participants.
    others = {p for p, s in site_of.items() if s != OWN_SITE}
    assert others
    assert not any(p in json.dumps(e) for e in seen for p in others)


# ------------------------------------------------------------------ acknowledgement


def acknowledge(world: World, alert_id: str, role: str, **body: Any) -> Any:
    body.setdefault("comment", "reviewed with the investigator")
    return world.call("POST", f"/alerts/{alert_id}/acknowledge", world.tokens[role], body)


@pytest.mark.parametrize("role", ["monitor", "site"])
def test_an_acknowledgement_records_who_acknowledged_and_when(world, role):
    alert_id = world.fresh_alert(open_=True)
    response = acknowledge(world, alert_id, role, comment="CRS plan confirmed")
    assert response.status_code == 200
    acknowledged = response.json()
    assert acknowledged["status"] == "acknowledged"
    assert f"{role} holder" in acknowledged["acknowledged_by"]
    assert role in acknowledged["acknowledged_by"].removeprefix(f"{role} holder")
    assert acknowledged["acknowledged_at"] == "2026-06-01T09:00:00Z"
    assert acknowledged["acknowledgement_comment"] == "CRS plan confirmed"
    detail = world.call("GET", f"/alerts/{alert_id}", world.tokens["auditor"]).json()
    assert {k: detail[k] for k in acknowledged} == acknowledged


def test_a_second_acknowledgement_is_a_conflict(world):
    alert_id = world.fresh_alert()
    assert acknowledge(world, alert_id, "monitor").status_code == 200
    first = world.alert(alert_id)
    again = acknowledge(world, alert_id, "site", comment="also seen")
    assert again.status_code == 409
    after = world.alert(alert_id)
    assert (after.acknowledged_by, after.acknowledgement_comment) == (
        first.acknowledged_by,
        first.acknowledgement_comment,
    )


def test_acknowledging_a_revision_the_alert_is_not_at_is_a_conflict(world):
    alert_id = world.fresh_alert()
    before = world.alert(alert_id)
    status, revision = before.status, before.revision
    response = acknowledge(world, alert_id, "monitor", revision=revision + 1)
    assert response.status_code == 409
    after = world.alert(alert_id)
    assert (after.status, after.acknowledged_by) == (status, None)
    assert acknowledge(world, alert_id, "monitor", revision=revision).status_code == 200


@pytest.mark.parametrize("role", ["auditor", "dsmb", "admin"])
def test_a_role_without_the_permission_records_no_acknowledgement(world, role):
    alert_id = world.untouched_alert
    status = world.alert(alert_id).status
    response = acknowledge(world, alert_id, role)
    assert (response.status_code, response.json()) == (403, FORBIDDEN)
    row = world.alert(alert_id)
    assert (row.status, row.acknowledged_by, row.acknowledged_at) == (status, None, None)


# ------------------------------------------------------------------ tokens


def test_an_admin_issues_a_token_whose_secret_is_shown_once(world):
    admin = world.tokens["admin"]
    issued = world.call("POST", "/tokens", admin, {"role": "monitor", "name": "new monitor"})
    assert issued.status_code == 201
    token = issued.json()["token"]
    token_id = issued.json()["token_id"]
    assert token.startswith(f"tw_{token_id}_")
    assert world.call("GET", "/alerts", token).status_code == 200
    listed = world.call("GET", "/tokens", admin)
    assert token_id in {t["token_id"] for t in listed.json()}
    secret = token.removeprefix(f"tw_{token_id}_")
    assert secret not in listed.text
    assert all("token" not in t for t in listed.json())
    audited = world.call("GET", "/tokens", world.tokens["auditor"])
    assert secret not in audited.text


def test_a_revoked_token_stops_working(world):
    admin = world.tokens["admin"]
    issued = world.call("POST", "/tokens", admin, {"role": "dsmb", "name": "leaving member"})
    token, token_id = issued.json()["token"], issued.json()["token_id"]
    assert world.call("GET", "/alerts", token).status_code == 200
    revoked = world.call("POST", f"/tokens/{token_id}/revoke", admin, {"reason": "left"})
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] == "2026-06-01T09:00:00Z"
    refused = world.call("GET", "/alerts", token)
    assert (refused.status_code, refused.json()) == (401, REFUSED)
    again = world.call("POST", f"/tokens/{token_id}/revoke", admin, {"reason": "twice"})
    assert again.status_code == 409


def test_revoking_a_token_never_issued_is_not_found(world):
    response = world.call(
        "POST", f"/tokens/{'f' * 16}/revoke", world.tokens["admin"], {"reason": "typo"}
    )
    assert (response.status_code, response.json()) == (404, NOT_FOUND)


def test_a_forbidden_revocation_leaves_the_token_working(world):
    token = issue(world.app, "dsmb", "kept")
    for role in ROLES:
        if role == "admin":
            continue
        response = world.call(
            "POST", f"/tokens/{token.token_id}/revoke", world.tokens[role], {"reason": "x"}
        )
        assert response.status_code == 403
    assert world.call("GET", "/alerts", token.token).status_code == 200


@pytest.mark.parametrize("path", [f"/trials/{TRIAL}/status", "/alerts?limit=1000"])
def test_free_texts_read_by_a_site_name_no_participant_of_another_site(world, path):
    # Trial-level findings and alerts say whose grade 4 CRS paused enrolment; a site
    # reads them with the other sites' participants masked (decision 10: own site only).
    others = {p for (_, p), s in world.views.participants.items() if s != OWN_SITE}
    seen = world.call("GET", path, world.tokens["site"])
    everything = world.call("GET", path, world.tokens["monitor"])
    assert seen.status_code == everything.status_code == 200
    assert not [p for p in others if p in seen.text]
    assert [p for p in others if p in everything.text], "the fixture names other sites"
