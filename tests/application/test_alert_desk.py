"""The alerts process on the in-memory store (architecture decision 8).

Clinical JSONL-like messages go through ``SafetyMonitoring.apply_batch``; the
:class:`services.alerts.AlertDesk` follows the log and saves Alert events (contract
§3: ``alert.raised``, ``alert.acknowledged``, ``alert.escalated``) with its tracked
position; :func:`services.alerts.acknowledge` is the human action. Rules and routes
are the ``ProtocolParameters()`` defaults. Infusion at D0 08:00 (+08:00).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from domain.contract import SafetyEvent
from domain.errors import AlertAlreadyAcknowledged, AlertRevisionChanged, NotFound
from domain.protocol import AlertRouting, ProtocolParameters
from projections.alerts import Alert
from services.alerts import AlertDesk, acknowledge
from services.application import InboundMessage, SafetyMonitoring
from services.offline import in_memory_application

TOPIC = "toxwatch.clinical.v1"
TRIAL = "NCT07049081"
TZ = timezone(timedelta(hours=8))
INFUSION = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
CRS_2_AT = INFUSION + timedelta(days=1, minutes=5)
CRS_3_AT = INFUSION + timedelta(days=1, hours=1)
NOW = datetime(2026, 4, 1, tzinfo=UTC)


def clinical(
    event_id: str, type_: str, at: datetime, data: dict[str, Any], participant_id: str = "G79-001"
) -> bytes:
    """One clinical message (contract §1)."""
    return json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": event_id,
            "type": type_,
            "trial_id": TRIAL,
            "site_id": "CN-001",
            "participant_id": participant_id,
            "occurred_at": at.isoformat(),
            "data": data,
        }
    ).encode()


def tick(at: datetime) -> bytes:
    """A trial-level clock tick (contract §2: participant ``-``, no fields)."""
    return clinical(f"tick-{at.isoformat()}", "clock.ticked", at, {}, participant_id="-")


def crs_course() -> list[bytes]:
    """Enrolment, eligibility, lymphodepletion and infusion; on D+1 fever 39.2 C with
    hypotension treated by a fluid bolus (ASTCT 2019 grade 2 at 08:05), then a simple
    face mask (grade 3 at 09:00; Lee et al. 2019, vignettes 2 and 5)."""
    return [
        clinical(
            "e1",
            "participant.enrolled",
            INFUSION - timedelta(days=14),
            {"disease": "SLE", "dose_level": "DL1"},
        ),
        clinical(
            "e2", "eligibility.confirmed", INFUSION - timedelta(days=7), {"confirmed_by": "dr-a"}
        ),
        clinical(
            "e3",
            "lymphodepletion.administered",
            INFUSION - timedelta(days=5),
            {"agent": "fludarabine", "dose_mg_m2": 30},
        ),
        clinical(
            "e4", "infusion.administered", INFUSION, {"dose_level": "DL1", "cells_per_kg": 1e6}
        ),
        clinical(
            "e5",
            "vitals.recorded",
            INFUSION + timedelta(days=1),
            {"temperature_c": 39.2, "systolic_bp_mmhg": 84},
        ),
        clinical("e6", "fluid.bolus", CRS_2_AT, {"volume_ml": 1000, "indication": "hypotension"}),
        clinical("e7", "oxygen.changed", CRS_3_AT, {"device": "simple_face_mask", "flow_l_min": 5}),
    ]


def send(app: SafetyMonitoring, values: Sequence[bytes]) -> None:
    first = app.next_offset(TOPIC, 0)
    app.apply_batch(
        [InboundMessage(TOPIC, 0, first + i, None, v, NOW) for i, v in enumerate(values)],
        now=NOW,
    )


def alert_events(app: SafetyMonitoring) -> list[SafetyEvent]:
    return [e for e in app.iter_safety_events() if e.type.startswith("alert.")]


def of_category(app: SafetyMonitoring, category: str) -> list[SafetyEvent]:
    ids = {e.data["alert_id"] for e in alert_events(app) if e.data.get("category") == category}
    return [e for e in alert_events(app) if e.data["alert_id"] in ids]


def crs_alert_id(app: SafetyMonitoring) -> str:
    [alert_id] = {str(e.data["alert_id"]) for e in of_category(app, "crs")}
    return alert_id


def escalated(app: SafetyMonitoring, alert_id: str) -> list[tuple[Any, Any]]:
    return [
        (e.data["to"], e.data["level"])
        for e in alert_events(app)
        if e.type == "alert.escalated" and e.data["alert_id"] == alert_id
    ]


def by_alert(app: SafetyMonitoring) -> dict[str, list[dict[str, Any]]]:
    """Each alert's events as contract wire dicts, less ``recorded_at``, in order."""
    found: dict[str, list[dict[str, Any]]] = {}
    for event in alert_events(app):
        wire = event.to_wire()
        del wire["recorded_at"]
        found.setdefault(wire["data"]["alert_id"], []).append(wire)
    return found


@pytest.fixture
def app() -> SafetyMonitoring:
    return in_memory_application()


@pytest.fixture
def raised(app: SafetyMonitoring) -> SafetyMonitoring:
    """The CRS course applied and the desk caught up: the CRS alert at revision 2."""
    send(app, crs_course())
    AlertDesk(app).run_until_idle()
    return app


# ---------------------------------------------------------------- raising


def test_crs_rising_from_grade_2_to_3_is_one_alert_with_two_raised_revisions(
    raised: SafetyMonitoring,
) -> None:
    # alert_rules crs (grade 2 high, 3 critical), one situation per episode (decision 8).
    crs = of_category(raised, "crs")
    assert [(e.type, e.data["revision"], e.data["severity"]) for e in crs] == [
        ("alert.raised", 1, "high"),
        ("alert.raised", 2, "critical"),
    ]
    assert [e.effective_at for e in crs] == [CRS_2_AT, CRS_3_AT]
    alert: Alert = raised.repository.get(Alert.id_for(crs_alert_id(raised)))
    assert (alert.revision, alert.severity, alert.category) == (2, "critical", "crs")


def test_the_crs_alert_cites_the_crs_events_and_their_clinical_causes(
    raised: SafetyMonitoring,
) -> None:
    # findings(): evidence is the derived event, then its caused_by (contract §3).
    graded = {
        e.data["grade"]: e.event_id
        for e in raised.iter_safety_events()
        if e.type == "crs.graded" and e.data["grade"] >= 2
    }
    latest = of_category(raised, "crs")[-1]
    assert set(latest.data["evidence"]) >= {graded[2], graded[3], "e5", "e6", "e7"}
    assert latest.caused_by[0] == graded[3]


def test_grade_3_crs_is_also_a_dlt_candidate_alert_of_its_own(raised: SafetyMonitoring) -> None:
    # alert_rules dlt: dlt.candidate high (reference §7, CRS grade 3 not improving);
    # another category, so another alert.
    categories = sorted(
        {str(e.data["category"]) for e in alert_events(raised) if e.type == "alert.raised"}
    )
    assert categories == ["crs", "dlt"]


# ---------------------------------------------------------------- restart


def second_half() -> list[bytes]:
    """Ticks past both critical deadlines, a record for a participant never enrolled,
    and a tick 25 h later (data quality, grace 24 h)."""
    return [
        tick(CRS_3_AT + timedelta(minutes=16)),
        clinical(
            "x1", "vitals.recorded", CRS_3_AT, {"temperature_c": 37.1}, participant_id="G79-404"
        ),
        tick(CRS_3_AT + timedelta(minutes=31)),
        tick(CRS_3_AT + timedelta(hours=25)),
    ]


def first_half() -> list[bytes]:
    return [*crs_course(), tick(CRS_3_AT + timedelta(minutes=10))]


def test_a_new_desk_over_a_caught_up_log_saves_nothing(raised: SafetyMonitoring) -> None:
    # Decision 8 (alerts process): a desk starting folds up to its tracked position
    # without saving.
    before = by_alert(raised)
    assert AlertDesk(raised).run_until_idle() == 0
    assert by_alert(raised) == before


def test_a_restarted_desk_decides_what_an_uninterrupted_one_decides(
    app: SafetyMonitoring,
) -> None:
    # Decision 2 and 8: the book's state (alerts, escalation levels, clocks, records
    # awaiting enrolment) is rebuilt from the log, so a restart changes no decision.
    send(app, first_half())
    AlertDesk(app).run_until_idle()
    send(app, second_half())
    AlertDesk(app).run_until_idle()

    uninterrupted = in_memory_application()
    send(uninterrupted, first_half())
    send(uninterrupted, second_half())
    AlertDesk(uninterrupted).run_until_idle()

    assert by_alert(app) == by_alert(uninterrupted)
    assert escalated(app, crs_alert_id(app)) == [
        ("principal_investigator", 1),
        ("src_chair", 2),
    ]
    assert len(of_category(app, "data_quality")) == 1


def critical_within_60_minutes() -> ProtocolParameters:
    """Version 2 of the defaults: critical alerts may wait 60 min for acknowledgement."""
    default = ProtocolParameters()
    routes = tuple(
        route.model_copy(update={"acknowledge_within_minutes": 60.0})
        if route.severity == "critical"
        else route
        for route in default.alert_routing.routes
    )
    return default.model_copy(update={"version": "2", "alert_routing": AlertRouting(routes=routes)})


def test_a_restarted_desk_keeps_the_route_in_force_when_the_alert_was_raised(
    raised: SafetyMonitoring,
) -> None:
    # Decision 3 (a replay uses the rules that were in force) and decision 8: the alert
    # was raised under a 15-min route; a later version changes only later alerts.
    raised.activate_protocol(
        critical_within_60_minutes(), activated_by="sponsor", reason="v2", at=CRS_3_AT
    )
    send(raised, [tick(CRS_3_AT + timedelta(minutes=16))])
    AlertDesk(raised).run_until_idle()
    assert escalated(raised, crs_alert_id(raised)) == [("principal_investigator", 1)]


# ---------------------------------------------------------------- acknowledging


def test_acknowledging_records_who_when_and_why(raised: SafetyMonitoring) -> None:
    # Decision 10: every human decision is an event with who, when and why.
    alert_id = crs_alert_id(raised)
    at = CRS_3_AT + timedelta(minutes=4)
    acknowledge(raised, alert_id, by="monitor-7", at=at, comment="ICU informed")
    [event] = [e for e in alert_events(raised) if e.type == "alert.acknowledged"]
    assert event.data == {
        "alert_id": alert_id,
        "revision": 2,
        "by": "monitor-7",
        "at": at.isoformat(),
        "comment": "ICU informed",
    }
    assert event.effective_at == at


def test_acknowledging_twice_is_refused(raised: SafetyMonitoring) -> None:
    # Alert.check_not_acknowledged: a revision is acknowledged once.
    alert_id = crs_alert_id(raised)
    acknowledge(raised, alert_id, by="monitor-7", at=CRS_3_AT, comment="seen")
    with pytest.raises(AlertAlreadyAcknowledged):
        acknowledge(raised, alert_id, by="monitor-8", at=CRS_3_AT, comment="seen too")


def test_acknowledging_a_revision_the_alert_has_moved_past_is_refused(
    raised: SafetyMonitoring,
) -> None:
    # Alert.check_revision: the user saw revision 1 (grade 2), the alert is at 2.
    with pytest.raises(AlertRevisionChanged):
        acknowledge(
            raised, crs_alert_id(raised), by="monitor-7", at=CRS_3_AT, comment="ok", revision=1
        )


@pytest.mark.parametrize("alert_id", [str(uuid.uuid4()), "not-an-alert-id"])
def test_acknowledging_an_unknown_alert_is_not_found(
    raised: SafetyMonitoring, alert_id: str
) -> None:
    with pytest.raises(NotFound):
        acknowledge(raised, alert_id, by="monitor-7", at=CRS_3_AT, comment="?")


def test_an_unacknowledged_critical_alert_escalates_on_clock_ticks(
    raised: SafetyMonitoring,
) -> None:
    # alert_routing critical: acknowledge within 15 min, else principal_investigator,
    # then src_chair; time is clock.ticked (decision 2).
    send(raised, [tick(CRS_3_AT + timedelta(minutes=14))])
    AlertDesk(raised).run_until_idle()
    assert escalated(raised, crs_alert_id(raised)) == []
    send(raised, [tick(CRS_3_AT + timedelta(minutes=16))])
    AlertDesk(raised).run_until_idle()
    [event] = [e for e in alert_events(raised) if e.type == "alert.escalated"]
    assert (event.data["to"], event.data["level"], event.data["revision"]) == (
        "principal_investigator",
        1,
        2,
    )


def test_an_acknowledged_alert_does_not_escalate_on_clock_ticks(
    raised: SafetyMonitoring,
) -> None:
    # Decision 8: acknowledgement within acknowledge_within_minutes stops escalation.
    alert_id = crs_alert_id(raised)
    acknowledge(raised, alert_id, by="monitor-7", at=CRS_3_AT, comment="seen")
    send(raised, [tick(CRS_3_AT + timedelta(minutes=16)), tick(CRS_3_AT + timedelta(minutes=45))])
    AlertDesk(raised).run_until_idle()
    assert escalated(raised, alert_id) == []


def test_an_acknowledgement_made_while_the_desk_runs_is_honoured(
    raised: SafetyMonitoring,
) -> None:
    # Decision 8: the desk folds alert.acknowledged from the log as it follows it.
    desk = AlertDesk(raised)
    desk.run_until_idle()
    alert_id = crs_alert_id(raised)
    acknowledge(raised, alert_id, by="monitor-7", at=CRS_3_AT, comment="seen")
    send(raised, [tick(CRS_3_AT + timedelta(minutes=16))])
    desk.run_until_idle()
    assert escalated(raised, alert_id) == []
