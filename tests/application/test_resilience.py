"""A defect in applying one valid message never stops ingest nor loses the message."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from domain.participant import Participant
from domain.records import IngestLedger
from services.application import InboundMessage
from services.offline import in_memory_application

TZ = timezone(timedelta(hours=8))
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def message(offset: int, event_id: str, type_: str, hour: int, **data: object) -> InboundMessage:
    value = json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": event_id,
            "type": type_,
            "trial_id": "NCT07049081",
            "site_id": "CN-001",
            "participant_id": "G79-001",
            "occurred_at": datetime(2026, 3, 2, hour, tzinfo=TZ).isoformat(),
            "data": data,
        }
    ).encode()
    return InboundMessage("toxwatch.clinical.v1", 0, offset, b"G79-001", value, NOW)


def test_a_message_whose_application_fails_is_kept_as_processing_error(monkeypatch):
    app = in_memory_application()
    original = Participant.record

    def failing_record(self, event, received_at):  # fault injection: a defect on one event
        if event.event_id == "boom":
            original(self, event, received_at)
            raise RuntimeError("defect while deriving")
        return original(self, event, received_at)

    monkeypatch.setattr(Participant, "record", failing_record)
    batch = [
        message(0, "enrol", "participant.enrolled", 6, disease="SLE", dose_level="DL1"),
        message(1, "inf", "infusion.administered", 8, dose_level="DL1", cells_per_kg=1e6),
        message(2, "boom", "vitals.recorded", 9, temperature_c=38.5),
        message(3, "v2", "vitals.recorded", 10, temperature_c=39.0),
    ]
    outcome = app.apply_batch(batch, now=NOW)
    assert outcome.rejected_by_code == {"processing_error": 1}
    assert outcome.accepted == 3
    participant = app.get_participant("NCT07049081", "G79-001")
    assert "boom" not in participant.seen  # nothing half-applied was saved
    assert "v2" in participant.seen
    ledger = app.repository.get(IngestLedger.id_for("toxwatch.clinical.v1", 0))
    assert ledger.rejected == 1
    (rejected,) = [
        e for e in app.events.get(ledger.id) if isinstance(e, IngestLedger.MessageRejected)
    ]
    assert rejected.offset == 2
    assert rejected.error["code"] == "processing_error"
    assert "defect while deriving" in rejected.error["message"]
    follow_up = app.apply_batch(
        [message(4, "v3", "vitals.recorded", 11, temperature_c=37)], now=NOW
    )
    assert follow_up.accepted == 1
