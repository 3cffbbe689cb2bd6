"""Ingest on the in-memory store (architecture decision 4, contract §1 and §4):
redelivered Kafka positions are skipped, a repeated ``event_id`` is a duplicate that
derives nothing, and a rejected message is kept in the ingest ledger, bytes and all.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from domain.records import IngestLedger
from infra.settings import Settings
from services.application import InboundMessage, SafetyMonitoring
from services.bootstrap import build_application
from services.offline import in_memory_application

TOPIC = "toxwatch.clinical.v1"
TRIAL = "NCT07049081"
TZ = timezone(timedelta(hours=8))
INFUSION = datetime(2025, 3, 2, 8, 0, tzinfo=TZ)
RECEIVED = datetime(2025, 3, 5, 0, 0, tzinfo=UTC)


def clinical(
    event_id: str, type_: str, at: datetime, data: dict[str, Any], **envelope: Any
) -> bytes:
    document = {
        "schema": "toxwatch.clinical.v1",
        "event_id": event_id,
        "type": type_,
        "trial_id": TRIAL,
        "site_id": "CN-001",
        "participant_id": "G79-001",
        "occurred_at": at.isoformat(),
        "data": data,
    } | envelope
    return json.dumps(document).encode()


def at_offsets(
    values: Sequence[bytes | None], first: int = 0, partition: int = 0
) -> list[InboundMessage]:
    return [
        InboundMessage(TOPIC, partition, first + i, b"G79-001", value, RECEIVED)
        for i, value in enumerate(values)
    ]


def course() -> list[bytes]:
    """Enrolment, infusion, then fever of 39.2 °C on D+1: CRS grade 1 (ASTCT 2019)."""
    return [
        clinical(
            "e1",
            "participant.enrolled",
            INFUSION - timedelta(days=14),
            {"disease": "SLE", "dose_level": "DL1"},
        ),
        clinical(
            "e2", "infusion.administered", INFUSION, {"dose_level": "DL1", "cells_per_kg": 1e6}
        ),
        clinical(
            "e3",
            "vitals.recorded",
            INFUSION + timedelta(days=1),
            {"temperature_c": 39.2, "systolic_bp_mmhg": 120, "spo2_pct": 97},
        ),
    ]


def stored_state(app: SafetyMonitoring) -> list[tuple[int, str]]:
    """Every notification in the application's log: (id, topic)."""
    return [(n.id, n.topic) for n in app.recorder.select_notifications(start=1, limit=100_000)]


@pytest.fixture
def app() -> SafetyMonitoring:
    return in_memory_application()


GRADED = ("crs.graded", "toxicity.graded")


def now() -> datetime:
    return datetime.now(UTC)


def test_the_course_derives_a_grade_1_crs(app: SafetyMonitoring) -> None:
    outcome = app.apply_batch(at_offsets(course()), now=now())
    assert outcome.accepted == 3
    # 39.2 C after infusion: ASTCT CRS grade 1 (fever only) and CTCAE v5.0 Fever
    # grade 2 (> 39.0-40.0 C), reference §1 and §3.
    assert [(e.type, e.data["grade"]) for e in outcome.derived if e.type in GRADED] == [
        ("crs.graded", 1),
        ("toxicity.graded", 2),
    ]


def test_a_redelivered_batch_changes_nothing(app: SafetyMonitoring) -> None:
    batch = at_offsets(course())
    app.apply_batch(batch, now=now())
    before = stored_state(app)
    derived_before = list(app.iter_safety_events())

    again = app.apply_batch(batch, now=now())

    assert again.already_applied == len(batch)
    assert (again.accepted, again.duplicates, again.rejected) == (0, 0, 0)
    assert again.new_domain_events == 0
    assert again.derived == []
    assert stored_state(app) == before
    assert list(app.iter_safety_events()) == derived_before
    assert app.next_offset(TOPIC, 0) == len(batch)


def test_a_partly_redelivered_batch_applies_only_the_new_offsets(app: SafetyMonitoring) -> None:
    values = course()
    app.apply_batch(at_offsets(values[:2]), now=now())

    outcome = app.apply_batch(at_offsets(values), now=now())

    assert outcome.already_applied == 2
    assert outcome.accepted_by_type == {"vitals.recorded": 1}
    assert [e.type for e in outcome.derived if e.type in GRADED] == [
        "crs.graded",
        "toxicity.graded",
    ]
    assert app.next_offset(TOPIC, 0) == 3


def test_a_redelivery_is_recognised_by_a_restarted_application(tmp_path: Path) -> None:
    """The tracked positions live in the store, not in the process: a worker restarted
    on the same (SQLite file) store skips what its predecessor applied."""
    settings = Settings(store="sqlite", data_dir=tmp_path)
    batch = at_offsets(course())
    first = build_application(settings)
    try:
        first.apply_batch(batch, now=now())
    finally:
        first.close()
    restarted = build_application(settings)
    try:
        again = restarted.apply_batch(batch, now=now())
        derived = list(restarted.iter_safety_events())
    finally:
        restarted.close()

    assert again.already_applied == len(batch)
    assert again.new_domain_events == 0
    assert [e.type for e in derived if e.type in GRADED] == ["crs.graded", "toxicity.graded"]


def test_positions_are_tracked_per_partition(app: SafetyMonitoring) -> None:
    values = course()
    app.apply_batch(at_offsets(values, partition=2), now=now())

    other = app.apply_batch(
        [
            InboundMessage(
                TOPIC,
                3,
                0,
                b"G79-002",
                values[0].replace(b"G79-001", b"G79-002").replace(b'"e1"', b'"p2-e1"'),
                RECEIVED,
            )
        ],
        now=now(),
    )

    assert other.already_applied == 0
    assert other.accepted == 1
    assert (app.next_offset(TOPIC, 2), app.next_offset(TOPIC, 3), app.next_offset(TOPIC, 0)) == (
        3,
        1,
        0,
    )


def test_a_repeated_event_id_at_a_new_offset_is_a_duplicate_and_derives_nothing(
    app: SafetyMonitoring,
) -> None:
    values = course()
    app.apply_batch(at_offsets(values), now=now())
    before = stored_state(app)
    participant_version = app.get_participant(TRIAL, "G79-001").version

    outcome = app.apply_batch(at_offsets([values[2]], first=3), now=now())

    assert outcome.duplicates == 1
    assert (outcome.accepted, outcome.rejected, outcome.already_applied) == (0, 0, 0)
    assert outcome.derived == []
    assert app.get_participant(TRIAL, "G79-001").version == participant_version
    assert [n for n in stored_state(app) if n not in before] == []
    assert app.next_offset(TOPIC, 0) == 4


def test_a_repeated_event_id_is_ignored_whatever_it_carries(app: SafetyMonitoring) -> None:
    """Contract §1: the event_id is the idempotency key."""
    values = course()
    app.apply_batch(at_offsets(values), now=now())
    hotter = clinical(
        "e3",
        "vitals.recorded",
        INFUSION + timedelta(days=1, hours=2),
        {"temperature_c": 40.1, "systolic_bp_mmhg": 82},
    )

    outcome = app.apply_batch(at_offsets([hotter], first=3), now=now())

    assert outcome.duplicates == 1
    assert outcome.derived == []
    entries = app.get_participant(TRIAL, "G79-001").entries
    assert [e.event_id for e in entries] == ["e1", "e2", "e3"]


def test_a_repeated_event_id_within_one_batch_is_recorded_once(app: SafetyMonitoring) -> None:
    values = course()
    outcome = app.apply_batch(at_offsets([*values, values[2]]), now=now())

    assert outcome.accepted == 3
    assert outcome.duplicates == 1
    # CRS grade 1 and Fever grade 2 once each, the infusion without a confirmed
    # eligibility once (reference §7 pre-infusion gate), the DLT window once.
    assert sorted(e.type for e in outcome.derived) == [
        "crs.graded",
        "dlt.window_opened",
        "protocol.deviation",
        "toxicity.graded",
    ]


def test_a_rejected_message_is_kept_in_the_ingest_ledger_with_its_bytes_and_reason(
    app: SafetyMonitoring,
) -> None:
    values = course()
    bad = clinical("e4", "vitals.recorded", INFUSION + timedelta(days=1), {"temperature_c": 80})
    outcome = app.apply_batch(at_offsets([*values, bad]), now=now())

    assert outcome.rejected_by_code == {"out_of_range": 1}
    assert outcome.accepted == 3
    ledger: IngestLedger = app.repository.get(IngestLedger.id_for(TOPIC, 0))
    assert ledger.rejected == 1
    rejections = [
        event
        for n in app.safety_notifications(0, 1000, with_rejections=True)
        if isinstance(event := app.mapper.to_domain_event(n), IngestLedger.MessageRejected)
    ]
    assert len(rejections) == 1
    kept = rejections[0]
    assert base64.b64decode(kept.value_b64) == bad
    assert kept.key_b64 is not None and base64.b64decode(kept.key_b64) == b"G79-001"
    assert kept.sha256 == hashlib.sha256(bad).hexdigest()
    assert kept.size == len(bad)
    assert (kept.topic, kept.partition, kept.offset) == (TOPIC, 0, 3)
    assert kept.error["code"] == "out_of_range"
    assert kept.error["field"] == "data.temperature_c"
    assert kept.error["message"]
    assert [e.event_id for e in app.get_participant(TRIAL, "G79-001").entries] == ["e1", "e2", "e3"]


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b"", "empty_body"),
        (b"{not json", "not_json"),
        (b"[]", "not_object"),
        (b'{"schema": "toxwatch.clinical.v1"}', "missing_field"),
    ],
)
def test_unreadable_messages_are_kept_in_the_ledger_too(
    app: SafetyMonitoring, value: bytes, code: str
) -> None:
    outcome = app.apply_batch(at_offsets([value]), now=now())

    assert outcome.rejected_by_code == {code: 1}
    (notification,) = app.safety_notifications(0, 10, with_rejections=True)
    kept = app.mapper.to_domain_event(notification)
    assert isinstance(kept, IngestLedger.MessageRejected)
    assert base64.b64decode(kept.value_b64) == value
    assert kept.error["code"] == code
    assert app.next_offset(TOPIC, 0) == 1


def test_a_redelivered_rejection_is_not_kept_twice(app: SafetyMonitoring) -> None:
    batch = at_offsets([b"{not json"])
    app.apply_batch(batch, now=now())

    again = app.apply_batch(batch, now=now())

    assert again.already_applied == 1
    assert again.rejected == 0
    assert len(app.safety_notifications(0, 10, with_rejections=True)) == 1
