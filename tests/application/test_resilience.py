"""A defect in applying one valid message never stops ingest nor loses the message:
the message is held on its participant's record with every later one of theirs (the
record is *parked*, a critical alert says so), the other participants go on, and a
person releases the record once the defect is fixed (issue 8, item 5)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from domain.participant import Participant
from domain.records import IngestLedger
from services.alerts import AlertDesk
from services.application import InboundMessage
from services.offline import in_memory_application

TZ = timezone(timedelta(hours=8))
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def message(
    offset: int, event_id: str, type_: str, hour: int, who: str = "G79-001", **data: object
) -> InboundMessage:
    value = json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": f"{who}:{event_id}",
            "type": type_,
            "trial_id": "NCT07049081",
            "site_id": "CN-001",
            "participant_id": who,
            "occurred_at": datetime(2026, 3, 2, hour, tzinfo=TZ).isoformat(),
            "data": data,
        }
    ).encode()
    return InboundMessage("toxwatch.clinical.v1", 0, offset, who.encode(), value, NOW)


def course(first_offset: int, who: str) -> list[InboundMessage]:
    """Enrolment, infusion at 08:00, fever 38.5 C at 09:00 and 39.0 C at 10:00."""
    kinds = [
        ("enrol", "participant.enrolled", 6, {"disease": "SLE", "dose_level": "DL1"}),
        ("inf", "infusion.administered", 8, {"dose_level": "DL1", "cells_per_kg": 1e6}),
        ("boom", "vitals.recorded", 9, {"temperature_c": 38.5}),
        ("v2", "vitals.recorded", 10, {"temperature_c": 39.0}),
    ]
    return [
        message(first_offset + i, event_id, kind, hour, who, **data)
        for i, (event_id, kind, hour, data) in enumerate(kinds)
    ]


def interleaved() -> list[InboundMessage]:
    a, b = course(0, "G79-001"), course(0, "G79-002")
    merged = [m for pair in zip(a, b, strict=True) for m in pair]
    return [
        InboundMessage(m.topic, 0, offset, m.key, m.value, m.received_at)
        for offset, m in enumerate(merged)
    ]


@pytest.fixture
def defect(monkeypatch):
    """A defect in deriving from one participant's event (fault injection)."""
    original = Participant.record

    def failing_record(self, event, received_at):
        if event.event_id == "G79-001:boom" and self.parked is None:
            original(self, event, received_at)
            raise RuntimeError("defect while deriving")
        return original(self, event, received_at)

    monkeypatch.setattr(Participant, "record", failing_record)
    return monkeypatch


def crs_grades(app, who):
    return [
        (e.data["grade"], e.effective_at.hour)
        for e in app.iter_safety_events()
        if e.participant_id == who and e.type == "crs.graded"
    ]


def test_the_failing_participant_is_parked_and_the_others_go_on(defect):
    app = in_memory_application()
    outcome = app.apply_batch(interleaved(), now=NOW)

    assert outcome.parked == 1
    assert outcome.rejected_by_code == {}
    assert outcome.accepted == 7  # the later event of the parked one is held, not lost
    parked = app.get_participant("NCT07049081", "G79-001")
    assert parked.parked is not None
    assert parked.parked["reason"] == "RuntimeError: defect while deriving"
    assert [wire["event_id"] for wire, _ in parked.held] == ["G79-001:boom", "G79-001:v2"]
    assert "G79-001:boom" not in parked.seen  # nothing half-applied was saved
    # The other participant: ASTCT fever >= 38.0 C after infusion is CRS grade 1.
    assert crs_grades(app, "G79-002") == [(1, 9)]
    assert crs_grades(app, "G79-001") == []
    assert list(app.events.get(IngestLedger.id_for("toxwatch.clinical.v1", 0))) == []
    follow_up = app.apply_batch(
        [message(8, "v3", "vitals.recorded", 11, temperature_c=37)], now=NOW
    )
    assert follow_up.accepted == 1
    assert len(app.get_participant("NCT07049081", "G79-001").held) == 3


def test_a_parked_record_raises_a_critical_alert_that_its_release_resolves(defect):
    app = in_memory_application()
    app.apply_batch(interleaved(), now=NOW)
    AlertDesk(app).run_until_idle()
    raised = [
        e
        for e in app.iter_safety_events()
        if e.type == "alert.raised" and e.data["situation"] == "G79-001:parked"
    ]
    assert [(e.data["category"], e.data["severity"]) for e in raised] == [
        ("data_quality", "critical")
    ]
    assert (
        "vitals.recorded at toxwatch.clinical.v1#0@4 could not be applied"
        in (raised[0].data["title"])
    )
    assert raised[0].data["evidence"][0] == "G79-001:boom"

    defect.undo()  # the fix is deployed
    applied = app.release_participant(
        "NCT07049081", "G79-001", by="ops:lee", at=NOW, reason="fix 1.2.3 deployed"
    )
    AlertDesk(app).run_until_idle()

    assert applied == 2
    released = app.get_participant("NCT07049081", "G79-001")
    assert released.parked is None and released.held == []
    assert {"G79-001:boom", "G79-001:v2"} <= released.seen
    # The same grades as the participant whose record was never parked.
    assert crs_grades(app, "G79-001") == crs_grades(app, "G79-002") == [(1, 9)]
    resolved = [
        e
        for e in app.iter_safety_events()
        if e.type == "alert.resolved" and e.data["alert_id"] == raised[0].data["alert_id"]
    ]
    assert len(resolved) == 1 and "released by ops:lee" in resolved[0].data["reason"]


def test_a_release_that_fails_again_leaves_the_record_parked(defect):
    app = in_memory_application()
    app.apply_batch(interleaved(), now=NOW)
    original = Participant.record

    def still_failing(self, event, received_at):
        if event.event_id == "G79-001:boom":
            raise RuntimeError("still broken")
        return original(self, event, received_at)

    defect.setattr(Participant, "record", still_failing)
    with pytest.raises(RuntimeError, match="still broken"):
        app.release_participant("NCT07049081", "G79-001", by="ops:lee", at=NOW, reason="retry")
    again = app.get_participant("NCT07049081", "G79-001")
    assert again.parked is not None and len(again.held) == 2


def test_releasing_a_record_that_is_not_parked_is_refused():
    app = in_memory_application()
    app.apply_batch(course(0, "G79-003"), now=NOW)
    with pytest.raises(ValueError, match="not parked"):
        app.release_participant("NCT07049081", "G79-003", by="ops:lee", at=NOW, reason="x")


def test_a_failing_trial_level_record_is_kept_as_processing_error(monkeypatch):
    """A record of no participant (a committee decision) has no record to park: it is
    kept in the ingest ledger with the defect as its reason."""
    from domain.records import TrialLog

    def failing(self, event, received_at):
        raise RuntimeError("defect in the trial log")

    monkeypatch.setattr(TrialLog, "record", failing)
    value = json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": "src-1",
            "type": "committee.decided",
            "trial_id": "NCT07049081",
            "site_id": "CN-001",
            "participant_id": "-",
            "occurred_at": datetime(2026, 3, 2, 9, tzinfo=TZ).isoformat(),
            "data": {"committee": "src", "decision": "pause_enrollment", "reason": "review"},
        }
    ).encode()
    app = in_memory_application()
    outcome = app.apply_batch(
        [InboundMessage("toxwatch.clinical.v1", 0, 0, None, value, NOW)], now=NOW
    )
    assert outcome.rejected_by_code == {"processing_error": 1}
    ledger = app.repository.get(IngestLedger.id_for("toxwatch.clinical.v1", 0))
    (rejected,) = [
        e for e in app.events.get(ledger.id) if isinstance(e, IngestLedger.MessageRejected)
    ]
    assert "defect in the trial log" in rejected.error["message"]
