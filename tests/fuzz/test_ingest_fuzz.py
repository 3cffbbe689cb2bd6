"""Hostile input never stops ingest and never goes unrecorded (issue 8; contract §1
and §4). Hypothesis makes hostile messages (garbage bytes and mutations of valid
simulator events: dropped, retyped and repeated fields, huge and non-finite numbers,
deep nesting, megabyte strings, invalid UTF-8 and lone surrogates, every type with
another type's data, odd timestamps, replayed event ids, unknown participants, clock
ticks, corrections) and interleaves them with a valid control cohort; every batch
goes through ``SafetyMonitoring.apply_batch`` on SQLite and is checked
(``services.fuzzing`` says how).

The default run is derandomized (the same plans in every CI run) and sends at least
10,000 hostile messages; ``TOXWATCH_FUZZ_MESSAGES=N`` sends more, and
``TOXWATCH_FUZZ_SEED=S`` draws other plans. ``toxwatch fuzz run`` does the same
outside pytest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from domain.contract import DATA_MODELS
from domain.validation import validate_message
from services.application import InboundMessage
from services.fuzzing import (
    EXEMPLARS,
    NOW,
    TOPIC,
    FuzzRun,
    Stats,
    corpus,
    encode,
    exemplar_events,
    flood,
    fuzz,
    sqlite_file_application,
)

FUZZ_MESSAGES = int(os.environ.get("TOXWATCH_FUZZ_MESSAGES", "10000"))
FUZZ_SEED = os.environ.get("TOXWATCH_FUZZ_SEED")
FLOOD_MESSAGES = int(os.environ.get("TOXWATCH_FUZZ_FLOOD", "3000"))
#: Resident memory the second half of a flood may add, once the first half has warmed
#: up the allocator: generous, but far below what keeping the flood would take.
FLOOD_GROWTH_BOUND = 96 * 2**20


def test_every_contract_type_has_a_valid_exemplar_to_mutate():
    assert set(EXEMPLARS) == set(DATA_MODELS)
    for event in exemplar_events():
        result = validate_message(encode(event), now=NOW)
        assert not hasattr(result, "code"), (event["type"], result)


def test_hostile_messages_never_stop_ingest_nor_go_unrecorded_nor_touch_other_records():
    """At least 10,000 hostile messages: no crash, every message accounted for, every
    reject in the ingest ledger with its bytes and a bounded reason, no valid message
    failing to apply, the control cohort deriving what it derives alone, replayed
    event ids not applied, and ingest still accepting afterwards."""
    stats = Stats()
    fuzz(stats, FUZZ_MESSAGES, None if FUZZ_SEED is None else int(FUZZ_SEED))
    assert stats.hostile >= FUZZ_MESSAGES
    assert (stats.crashes, stats.violations) == (0, 0)
    assert stats.rejected_by_code["processing_error"] == 0
    # Every kind of hostile message was sent, and the run exercised every outcome.
    assert stats.accepted and stats.rejected and stats.duplicates and stats.already_applied
    assert {"not_json", "too_large", "empty_body", "unknown_type", "out_of_range"} <= set(
        stats.rejected_by_code
    )


def test_a_control_event_id_replayed_with_other_content_is_ignored():
    """Contract §1: a repeated ``event_id`` is ignored, whatever it carries."""
    stats = Stats()
    run = FuzzRun(stats)
    control = corpus().control
    messages = [InboundMessage(TOPIC, 0, i, k, v, NOW) for i, (k, v) in enumerate(control)]
    index, original = next(
        (i, json.loads(v)) for i, (_, v) in enumerate(control) if b'"vitals.recorded"' in v
    )
    replay = dict(original, data={"temperature_c": 40.5, "systolic_bp_mmhg": 70})
    messages.insert(index + 1, InboundMessage(TOPIC, 1, 0, control[index][0], encode(replay), NOW))
    run.apply(messages)
    run.check_records()
    run.check_control()
    assert stats.duplicates == 1


def test_a_flood_from_one_participant_keeps_memory_bounded_and_others_unaffected(
    tmp_path: Path,
):
    """Over-size, near-size and deeply nested rejects and one replayed event id from
    one participant, in batches of 500 on a SQLite file: the second half of the flood
    does not grow resident memory beyond a bound, and the control cohort spread
    through the first half derives what it derives alone."""
    app = sqlite_file_application(str(tmp_path / "flood.sqlite3"))
    stats = Stats()
    try:
        result = flood(app, stats, FLOOD_MESSAGES)
    finally:
        app.close()
    assert (stats.crashes, stats.violations) == (0, 0)
    assert stats.rejected_by_code["too_large"] >= FLOOD_MESSAGES // 10
    assert result.growth < FLOOD_GROWTH_BOUND, (
        f"resident memory grew by {result.growth / 2**20:.0f} MiB in the second half"
    )
