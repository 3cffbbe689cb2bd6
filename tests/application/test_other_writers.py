"""The ingest keeps the aggregates it loaded and saved between batches, and reads the
store once per batch for what other writers stored since (``_check_current``): a
worker that had the partition for a while, a person activating a protocol version.
Each test has two applications on one store, on SQLite and on PostgreSQL; what the
second writes must be what the first's next batch works on."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from domain.protocol import CRSParameters, ProtocolParameters
from infra.settings import Settings
from services.application import InboundMessage, SafetyMonitoring
from services.bootstrap import build_application
from tests.application.test_alert_desk import tick as trial_tick
from tests.application.test_protocol_activation import NOW, TOPIC, day, graded, message

TRIAL = "NCT07049081"


@pytest.fixture(params=["sqlite", "postgres"])
def two_writers(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[SafetyMonitoring, SafetyMonitoring]:
    if request.param == "postgres":
        schemas: Callable[[], str] = request.getfixturevalue("postgres_schemas")
        settings = Settings(store="postgres", postgres_schema=schemas(), data_dir=tmp_path)
    else:
        settings = Settings(store="sqlite", data_dir=tmp_path)
    first, second = build_application(settings), build_application(settings)
    request.addfinalizer(first.close)
    request.addfinalizer(second.close)
    return first, second


def test_a_record_another_writer_changed_is_read_afresh_by_the_next_batch(two_writers):
    first, second = two_writers
    start = [
        message(0, "participant.enrolled", day(-7, 8), disease="SLE", dose_level="DL1"),
        message(1, "infusion.administered", day(0, 8), dose_level="DL1", cells_per_kg=1e6),
    ]
    assert first.apply_batch(start, now=NOW).accepted == 2
    # Another worker, given the partition for a while: fever 38.4 C on day 1 is CRS
    # grade 1 (ASTCT 2019: fever >= 38 C, no hypotension, no hypoxia).
    fever = [message(2, "vitals.recorded", day(1, 8), temperature_c=38.4)]
    assert graded(second.apply_batch(fever, now=NOW)) == [1]

    # Back on the first: a normal reading the next day. The record it changes holds
    # the other writer's fever (no conflicting commit, no second attempt): the fever
    # is over, so the course goes from that grade 1 to 0.
    later = [message(3, "vitals.recorded", day(2, 8), temperature_c=36.9)]
    outcome = first.apply_batch(later, now=NOW)
    assert outcome.accepted == 1
    assert outcome.attempts == 1
    crs = [e.data for e in outcome.derived if e.type == "crs.graded"]
    assert [(d["grade"], d["previous_grade"]) for d in crs] == [(0, 1)]
    participant = first.get_participant(TRIAL, "G79-001")
    assert {"e2", "e3"} <= participant.seen


# Hypotension "not requiring vasopressors" = a reading below the protocol's SBP
# threshold treated with fluids (reference §1 [parameter]). SBP 92 is not hypotension
# at version 1's 90 mmHg, but is under version 2's 95 mmHg.
AMENDED = ProtocolParameters(version="2", crs=CRSParameters(hypotension_sbp_below_mmhg=95.0))


def febrile_at_92_mmhg(at_offset: int, on_day: int) -> list:
    """Fever with SBP 92 mmHg treated with a fluid bolus, at 08:00 of ``on_day``."""
    return [
        message(at_offset, "vitals.recorded", day(on_day, 8), temperature_c=38.6,
                systolic_bp_mmhg=92),
        message(at_offset + 1, "fluid.bolus", day(on_day, 8), volume_ml=500,
                indication="hypotension"),
    ]  # fmt: skip


def graded_1_under_version_1(app: SafetyMonitoring) -> None:
    """Version 1 activated, then day 1's fever at 92 mmHg: CRS grade 1 (fever only)."""
    app.activate_protocol(
        ProtocolParameters(version="1"), activated_by="pi@site", reason="initial", at=NOW
    )
    start = [
        message(0, "participant.enrolled", day(-7, 8), disease="SLE", dose_level="DL1"),
        message(1, "infusion.administered", day(0, 8), dose_level="DL1", cells_per_kg=1e6),
        *febrile_at_92_mmhg(2, on_day=1),
    ]
    assert graded(app.apply_batch(start, now=NOW)) == [1]


def activate_version_2(app: SafetyMonitoring) -> None:
    app.activate_protocol(AMENDED, activated_by="pi@site", reason="amendment 2", at=NOW)


def test_a_protocol_another_process_activates_applies_from_the_next_batch(two_writers):
    first, second = two_writers
    graded_1_under_version_1(first)
    activate_version_2(second)

    # Day 2's fever at 92 mmHg with fluids alone: grade 2 under version 2.
    assert graded(first.apply_batch(febrile_at_92_mmhg(4, on_day=2), now=NOW)) == [2]
    assert first.get_participant(TRIAL, "G79-001").parameters.version == "2"


def test_a_protocol_activated_while_a_batch_is_applied_applies_from_the_batch_after(
    two_writers, monkeypatch
):
    # As above, but version 2 is activated after the first's check of other writers
    # and before its commit: its own commit then does not follow the position checked,
    # and the next check must still read version 2's activation.
    first, second = two_writers
    graded_1_under_version_1(first)
    apply_and_save = first._apply_and_save

    def activated_meanwhile(*args, **kwargs):
        activate_version_2(second)
        return apply_and_save(*args, **kwargs)

    monkeypatch.setattr(first, "_apply_and_save", activated_meanwhile)
    meanwhile = [message(4, "vitals.recorded", day(1, 20), temperature_c=38.4)]
    assert first.apply_batch(meanwhile, now=NOW).accepted == 1
    monkeypatch.undo()

    assert graded(first.apply_batch(febrile_at_92_mmhg(5, on_day=2), now=NOW)) == [2]
    assert first.get_participant(TRIAL, "G79-001").parameters.version == "2"


def tick(offset: int, at: datetime) -> InboundMessage:
    """A trial-level ``clock.ticked`` on the participant's partition (contract §2)."""
    return InboundMessage(TOPIC, 0, offset, None, trial_tick(at), NOW)


def test_a_tick_reaches_a_record_another_writer_gave_a_wake(two_writers):
    """Reference §7: the DLT window runs from the infusion through day 28; a
    participant who completed it without DLT closes it evaluable. The first writer
    saw only the enrolment (no window, nothing a tick could change); another writer
    applied the infusion. A tick on day 30 must reach the record and close its window,
    though the first writer knew it as one no tick could change."""
    first, second = two_writers
    enrolled = [message(0, "participant.enrolled", day(-7, 8), disease="SLE", dose_level="DL1")]
    assert first.apply_batch(enrolled, now=NOW).accepted == 1
    assert first.apply_batch([tick(1, day(-6, 8))], now=NOW).accepted == 1
    infusion = [message(2, "infusion.administered", day(0, 8), dose_level="DL1", cells_per_kg=1e6)]
    opened = second.apply_batch(infusion, now=NOW)
    assert [e.type for e in opened.derived if e.type.startswith("dlt.")] == ["dlt.window_opened"]

    outcome = first.apply_batch([tick(3, day(30, 8))], now=NOW)
    closed = [e.data for e in outcome.derived if e.type == "dlt.window_closed"]
    assert len(closed) == 1
    assert closed[0]["evaluable"] is True


def test_a_record_another_writer_creates_while_a_batch_is_applied_is_not_lost(
    two_writers, monkeypatch
):
    """The ingest reads once per batch which of the records it would load the store
    lacks, and creates those without reading each (``SafetyMonitoring._absent``).
    Here another writer creates the record just after that read: the first writer's
    commit must conflict, and its batch be applied again on the stored record. Its
    fever of 38.4 C on day 1, after the other writer's infusion on day 0, is then CRS
    grade 1 (ASTCT 2019: fever >= 38 C, no hypotension, no hypoxia); applied to a new
    record, with no infusion, it would grade nothing."""
    first, second = two_writers
    existing = first.recorder.existing

    def created_meanwhile(ids):
        found = existing(ids)
        monkeypatch.undo()
        start = [
            message(0, "participant.enrolled", day(-7, 8), disease="SLE", dose_level="DL1"),
            message(1, "infusion.administered", day(0, 8), dose_level="DL1", cells_per_kg=1e6),
        ]
        assert second.apply_batch(start, now=NOW).accepted == 2
        return found

    monkeypatch.setattr(first.recorder, "existing", created_meanwhile)
    fever = [message(2, "vitals.recorded", day(1, 8), temperature_c=38.4)]
    outcome = first.apply_batch(fever, now=NOW)

    assert outcome.attempts == 2
    assert outcome.accepted == 1
    assert graded(outcome) == [1]
    assert {"e0", "e1", "e2"} <= first.get_participant(TRIAL, "G79-001").seen
