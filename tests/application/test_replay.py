"""``toxwatch replay`` (issue 7, item 1): rebuild from position zero and compare.

The vignette: a participant infused on D0 has a fever of 38.6 C on D+1 08:00 (CRS
grade 1, ASTCT 2019: fever alone) and from 09:00 is given blow-by oxygen for hypoxia.
ASTCT counts blow-by as low-flow oxygen, so from 09:00 she has CRS grade 2 (fever
with hypoxia needing low-flow oxygen), and the protocol's alert rules raise a high
CRS alert for grade >= 2. At 13:00 she is on a simple facemask: grade 3 (hypoxia
needing more than low-flow oxygen), a new revision of that alert.

A deployed version with a defect that ignored blow-by would have recorded grade 1
and no alert at 09:00. Rebuilding with the fixed code must name exactly that
derivation and the alert it now raises; rebuilding with unchanged code must change
nothing.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import domain.crs
from services.alerts import acknowledge
from services.offline import in_memory_application, process_lines
from services.replay import ReplayError, replay

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
TRIAL, WHO = "NCT07049081", "G79-501"
NOW = datetime(2026, 9, 1, tzinfo=UTC)


def event(event_id: str, kind: str, at: datetime, **data: Any) -> bytes:
    return json.dumps(
        {"schema": "toxwatch.clinical.v1", "event_id": event_id, "type": kind,
         "trial_id": TRIAL, "site_id": "CN-001", "participant_id": WHO,
         "occurred_at": at.isoformat(), "data": data}
    ).encode()  # fmt: skip


BEFORE_HYPOXIA = [
    event("r-1", "participant.enrolled", D0 - timedelta(days=10), disease="SLE",
          dose_level="DL1"),
    event("r-2", "eligibility.confirmed", D0 - timedelta(days=9), confirmed_by="pi"),
    event("r-3", "infusion.administered", D0, dose_level="DL1", cells_per_kg=1.0e6),
    event("r-4", "vitals.recorded", D0 + timedelta(days=1), temperature_c=38.6),
]  # fmt: skip
HYPOXIA = [
    event("r-5", "oxygen.changed", D0 + timedelta(days=1, hours=1), device="blow_by",
          reason="hypoxia"),
    event("r-6", "vitals.recorded", D0 + timedelta(days=1, hours=4), temperature_c=38.8),
]  # fmt: skip
FACEMASK = [
    event("r-7", "oxygen.changed", D0 + timedelta(days=1, hours=5), device="simple_face_mask",
          flow_l_min=8, reason="hypoxia"),
    event("r-8", "vitals.recorded", D0 + timedelta(days=1, hours=6), temperature_c=38.9),
]  # fmt: skip


def store_of(*batches: list[bytes]) -> Any:
    """A store fed batch by batch, the monitor and the alerts process running after
    each (as the live processes follow the log)."""
    app = in_memory_application()
    lines: list[bytes] = []
    for batch in batches:
        lines.extend(batch)
        process_lines(lines, io.StringIO(), app=app, now=NOW)  # repeats are duplicates
    return app


def crs_grades(app: Any) -> list[tuple[int, str]]:
    return [
        (e.data["grade"], e.effective_at.astimezone(TZ).strftime("%H:%M"))
        for e in app.iter_safety_events()
        if e.type == "crs.graded"
    ]


def alerts(app: Any) -> list[Any]:
    return [e for e in app.iter_safety_events() if e.type.startswith("alert.")]


def test_the_vignette_grades_as_astct_says():
    app = store_of(BEFORE_HYPOXIA, HYPOXIA, FACEMASK)
    assert crs_grades(app) == [(1, "08:00"), (2, "09:00"), (3, "13:00")]
    raised = [e for e in alerts(app) if e.type == "alert.raised"]
    assert [(e.data["category"], e.data["severity"]) for e in raised][:1] == [("crs", "high")]


def test_an_unchanged_store_replays_identically_with_an_acknowledgement():
    app = store_of(BEFORE_HYPOXIA, HYPOXIA)
    (raised,) = [e for e in alerts(app) if e.type == "alert.raised"]
    acknowledge(app, raised.data["alert_id"], by="monitor:ana", at=NOW, comment="seen",
                revision=1)  # fmt: skip
    process_lines([*BEFORE_HYPOXIA, *HYPOXIA, *FACEMASK], io.StringIO(), app=app, now=NOW)

    report = replay(app, in_memory_application())

    assert report.identical, report.differences
    assert report.compared["participant"] == 1
    assert report.compared["alert"] >= 1
    assert set(report.views.values()) == {"identical"}
    assert report.rebuilt_events == report.live_events


def test_a_rule_fix_names_each_changed_derivation(monkeypatch):
    classify = domain.crs.classify_oxygen

    def ignoring_blow_by(device: str, flow: float | None, params: Any) -> Any:
        return "none" if device == "blow_by" else classify(device, flow, params)

    monkeypatch.setattr(domain.crs, "classify_oxygen", ignoring_blow_by)
    defective = store_of(BEFORE_HYPOXIA, HYPOXIA)
    assert crs_grades(defective) == [(1, "08:00")]
    assert alerts(defective) == []
    monkeypatch.undo()  # the fixed code

    report = replay(defective, in_memory_application())

    assert not report.identical
    graded = [d for d in report.differences if "crs.graded" in d.what]
    assert [(d.layer, d.subject, d.change, d.rebuilt["data"]["grade"]) for d in graded] == [
        ("participant", f"{TRIAL}/{WHO}", "only rebuilt", 2)
    ]
    assert "effective 2026-03-03T09:00:00+08:00" in graded[0].what  # D+1 09:00
    new_alerts = {d.subject for d in report.differences if d.layer == "alert"}
    assert len(new_alerts) == 1
    assert all(d.change == "only rebuilt" for d in report.differences if d.layer == "alert")
    assert report.views["alerts inbox"] == "differs"
    assert report.views["kinetics"] == "identical"  # no PK or disease record changed


def test_the_rebuild_target_must_be_a_new_store():
    app = store_of(BEFORE_HYPOXIA)
    with pytest.raises(ReplayError, match="not empty"):
        replay(app, app)


# ------------------------------------------------------------ the API's read models


def test_the_api_rebuilds_its_read_models_beside_the_live_ones_and_switches_on_request():
    """A defect in a live read model (here: an alert's row made to say the wrong
    severity, as a projection bug would) shows as a difference; switching serves the
    rebuilt, correct model; a second rebuild then finds nothing."""
    from fastapi.testclient import TestClient

    from services.api import create_app
    from services.tokens import TokenService

    app = store_of(BEFORE_HYPOXIA, HYPOXIA)
    tokens = TokenService(app)
    admin = tokens.create("admin", name="ops", created_by="test", now=NOW).token
    monitor = tokens.create("monitor", name="ana", created_by="test", now=NOW).token
    api = create_app(app, follow=False)
    with TestClient(api) as client:
        views = api.state.read_models
        views.refresh()
        (row,) = views.alerts.rows.values()
        assert row.severity == "high"
        as_admin = {"Authorization": f"Bearer {admin}"}

        clean = client.post("/views/rebuild", headers=as_admin).json()
        assert set(clean["views"].values()) == {"identical"}
        assert clean["switched"] is False

        row.severity = "medium"  # the live model goes wrong
        checked = client.post("/views/rebuild", headers=as_admin).json()
        assert checked["views"]["alerts inbox"] == "differs"
        assert [(d["view"], d["item"]) for d in checked["differences"]] == [
            ("alerts inbox", row.alert_id)
        ]
        assert checked["differences"][0]["rebuilt"]["severity"] == "high"
        shown = client.get(
            f"/alerts/{row.alert_id}", headers={"Authorization": f"Bearer {monitor}"}
        )
        assert shown.json()["severity"] == "medium"  # not switched: the live one still answers

        switched = client.post("/views/rebuild?switch=true", headers=as_admin).json()
        assert switched["switched"] is True
        shown = client.get(
            f"/alerts/{row.alert_id}", headers={"Authorization": f"Bearer {monitor}"}
        )
        assert shown.json()["severity"] == "high"
        again = client.post("/views/rebuild", headers=as_admin).json()
        assert set(again["views"].values()) == {"identical"}
    app.close()


# ------------------------------------------------------------ a parked record


def test_a_parked_record_replays_parked_under_the_same_code_and_applied_after_the_fix(
    monkeypatch,
):
    from domain.participant import Participant

    original = Participant.record

    def defective(self, event, received_at):
        if event.event_id == "r-5" and self.parked is None:  # the blow-by oxygen
            raise RuntimeError("defect while deriving")
        return original(self, event, received_at)

    monkeypatch.setattr(Participant, "record", defective)
    live = store_of(BEFORE_HYPOXIA, HYPOXIA)
    assert live.get_participant(TRIAL, WHO).parked is not None

    same = replay(live, in_memory_application())
    assert same.identical, same.differences

    monkeypatch.undo()  # the fix is deployed
    fixed = replay(live, in_memory_application())
    changes = {(d.layer, d.change, d.what.split(" ")[0]) for d in fixed.differences}
    assert ("participant", "only live", "Participant.Parked") in changes
    assert ("participant", "only rebuilt", "crs.graded") in changes


def test_without_rederiving_the_participants_a_rule_fix_is_not_seen_but_the_rest_rebuilds(
    monkeypatch,
):
    """``--no-rederive`` takes the participants' derivations as stored: a fixed grading
    rule then changes nothing, and the trial monitor, alerts and views still rebuild."""
    classify = domain.crs.classify_oxygen
    monkeypatch.setattr(
        domain.crs,
        "classify_oxygen",
        lambda device, flow, params: (
            "none" if device == "blow_by" else classify(device, flow, params)
        ),
    )
    defective = store_of(BEFORE_HYPOXIA, HYPOXIA)
    monkeypatch.undo()

    report = replay(defective, in_memory_application(), rederive=False)

    assert report.identical, report.differences
    assert report.compared["participant"] == 1
