"""Bad input never stops ingest (contract §4): a stream mixing a valid cohort with
malformed messages of many kinds. Each malformed message is published on the
rejected topic with its key and bytes unchanged and an ``error`` header naming the
problem; every valid message is applied exactly as ``process`` applies the valid
subset; the worker keeps running.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from services.offline import in_memory_application
from services.simulator import CohortSpec, SimulatedMessage, malformed_examples, simulate_cohort
from tests.conftest import Kafka, Record, Services, Store, Topics, next_offsets
from tests.integration import (
    describe_difference,
    participants_of,
    per_participant,
    process_offline,
    recorded_event_ids,
    wait_for_count,
    wait_until,
)

pytestmark = pytest.mark.broker

COHORT = CohortSpec(participants=4, follow_up_days=20, malformed=False)
WORKER_LIMIT_BYTES = 256 * 1024  # TOXWATCH_MAX_MESSAGE_BYTES, the worker's default

#: What the ``error`` header must say for each kind of malformed message:
#: ``(code, field)``; a field of ``None`` is not checked.
EXPECTED_ERRORS: dict[str, tuple[str, str | None]] = {
    # malformed_examples (services/simulator.py)
    "not_json": ("not_json", None),
    "wrong_schema": ("wrong_schema", "schema"),
    "unknown_type": ("unknown_type", "type"),
    "missing_field": ("missing_field", "occurred_at"),
    "unknown_field": ("unknown_field", "data.temperature_f"),
    "wrong_unit": ("wrong_unit", "data.unit"),
    "implausible_temperature": ("out_of_range", "data.temperature_c"),  # 80 °C
    "negative_count": ("out_of_range", "data.value"),
    "future_occurred_at": ("future_occurred_at", "occurred_at"),
    "wrong_types": ("wrong_type", "data.temperature_c"),
    "empty_body": ("empty_body", None),
    "bad_timestamp": ("bad_timestamp", "occurred_at"),
    "trial_level_with_participant": ("invalid_value", None),
    # this module's own
    "oversized_but_brokerable": ("too_large", None),
    "json_array": ("not_object", None),
    "spo2_above_100": ("out_of_range", "data.spo2_pct"),
    "invalid_utf8": ("not_json", None),
    "participant_id_with_spaces": ("invalid_value", "participant_id"),
    "vitals_without_measurement": ("invalid_value", "data"),
    "occurred_at_a_number": ("wrong_type", "occurred_at"),
}


@dataclass(frozen=True)
class Sent:
    kind: str
    key: bytes | None
    value: bytes | None


def own_malformed(trial_id: str, participant_id: str, at: datetime) -> list[Sent]:
    """Malformed messages beyond ``malformed_examples``: each breaks one rule."""
    key = participant_id.encode()

    def event(event_id: str, **changes: object) -> dict[str, object]:
        document: dict[str, object] = {
            "schema": "toxwatch.clinical.v1",
            "event_id": f"bad-{event_id}",
            "type": "vitals.recorded",
            "trial_id": trial_id,
            "site_id": "CN-001",
            "participant_id": participant_id,
            "occurred_at": at.isoformat(),
            "data": {"spo2_pct": 95},
        }
        document.update(changes)
        return document

    def encode(document: object) -> bytes:
        return json.dumps(document, separators=(",", ":")).encode()

    # Valid but for its size: whitespace padding over the worker's limit, well under
    # the broker's 1 MiB.
    padded = encode(event("oversized"))[:-1] + b" " * (WORKER_LIMIT_BYTES + 40_000) + b"}"
    assert WORKER_LIMIT_BYTES < len(padded) < 1024 * 1024
    return [
        Sent("oversized_but_brokerable", key, padded),
        Sent("json_array", key, encode([event("array")])),
        Sent("spo2_above_100", key, encode(event("spo2", data={"spo2_pct": 150}))),
        Sent("invalid_utf8", key, b'{"schema":"toxwatch.clinical.v1","event_id":"\xff\xfe"}'),
        Sent("participant_id_with_spaces", key, encode(event("pid", participant_id="G79 001!"))),
        Sent("vitals_without_measurement", key, encode(event("empty-vitals", data={}))),
        Sent("occurred_at_a_number", key, encode(event("epoch", occurred_at=1767225600))),
    ]


def bad_input_stream(valid: list[SimulatedMessage]) -> tuple[list[Sent], list[Sent]]:
    """The valid cohort with the malformed messages spread through it; and the
    malformed ones."""
    first = json.loads(valid[len(valid) // 3].value)
    participant = next(
        json.loads(m.value) for m in valid if json.loads(m.value)["participant_id"] != "-"
    )
    at = datetime.fromisoformat(first["occurred_at"]) - timedelta(hours=1)
    trial_id, participant_id = participant["trial_id"], participant["participant_id"]
    malformed = [
        Sent(m.kind, m.key, m.value)
        for m in malformed_examples(trial_id, participant_id, at)
        if m.kind != "oversized"  # over 1 MiB: the broker refuses it; see own_malformed
    ] + own_malformed(trial_id, participant_id, at)
    stream = [Sent("valid", m.key, m.value) for m in valid]
    step = len(stream) // (len(malformed) + 1)
    for index, message in enumerate(malformed):
        stream.insert((index + 1) * step + index, message)
    return stream, malformed


def check_rejection(sent: Sent, record: Record) -> list[str]:
    """What is wrong with the rejected copy of ``sent``."""
    problems = []
    if record.value != sent.value and not (sent.value is None and record.value is None):
        shown = record.value if record.value is None else record.value[:60]
        problems.append(f"value changed: sent {str(sent.value)[:60]}…, rejected {shown!r}…")
    if record.key != sent.key:
        problems.append(f"key changed: sent {sent.key!r}, rejected {record.key!r}")
    raw_error = record.header("error")
    if raw_error is None:
        return [*problems, "no error header"]
    error = json.loads(raw_error)
    if set(error) != {"code", "message", "field"}:
        problems.append(f"error header is not {{code, message, field}}: {error}")
    code, field = EXPECTED_ERRORS.get(sent.kind, (None, None))
    if code is not None and error.get("code") != code:
        problems.append(f"code {error.get('code')!r}, expected {code!r} ({error})")
    if field is not None and error.get("field") != field:
        problems.append(f"field {error.get('field')!r}, expected {field!r} ({error})")
    if not error.get("message"):
        problems.append("empty error message")
    return problems


def test_malformed_messages_are_rejected_unchanged_and_valid_ones_applied(
    broker: Kafka, fresh_topics: Topics, store: Store, services: Services, tmp_path: Path
) -> None:
    valid = simulate_cohort(COHORT)
    stream, malformed = bad_input_stream(valid)
    kinds = {m.kind for m in malformed}
    assert len(kinds) == len(malformed) >= 12
    assert set(EXPECTED_ERRORS) <= kinds, f"kinds not sent: {set(EXPECTED_ERRORS) - kinds}"

    offline = in_memory_application()
    expected = per_participant(process_offline([m.value for m in valid], app=offline))
    assert expected, "the valid cohort should derive safety events"
    participants = participants_of(m.value for m in valid)
    expected_records = recorded_event_ids(offline, participants)

    env = fresh_topics.env() | store.env
    store.initialise()
    worker = services.start("worker", env)
    relay = services.start("relay", env)
    placements = broker.produce_clinical(fresh_topics.clinical, [(m.key, m.value) for m in stream])
    ends = next_offsets(placements)
    source_of = {
        f"{fresh_topics.clinical}:{p}:{o}": sent
        for sent, copies in zip(stream, placements, strict=True)
        if sent.kind != "valid"
        for p, o in copies
    }

    with broker.reader(fresh_topics.rejected) as rejected_topic:
        wait_for_count(rejected_topic.count, len(malformed), timeout=60)
        rejected = rejected_topic.read_to_end()
    with broker.reader(fresh_topics.safety) as safety_topic:
        wait_for_count(safety_topic.count, sum(map(len, expected.values())), timeout=300)
        published = [record.json() for record in safety_topic.read_to_end()]
    assert worker.alive(), f"the worker died on bad input\n{services.logs()}"
    assert relay.alive(), services.logs()

    problems: dict[str, list[str]] = {}
    seen: set[str] = set()
    for record in rejected:
        source = (record.header("source") or b"?").decode()
        sent = source_of.get(source)
        if sent is None:
            problems.setdefault("?", []).append(f"unexpected rejection from {source}: {record}")
            continue
        if sent.kind in seen:
            problems.setdefault(sent.kind, []).append("rejected more than once")
        seen.add(sent.kind)
        if found := check_rejection(sent, record):
            problems.setdefault(sent.kind, []).extend(found)
    for kind in sorted(kinds - seen):
        problems.setdefault(kind, []).append("never appeared on the rejected topic")
    assert not problems, "\n".join(
        f"{kind}: {'; '.join(found)}" for kind, found in sorted(problems.items())
    )

    actual = per_participant(published)
    assert actual == expected, describe_difference(actual, expected)

    application = store.open()
    try:
        assert wait_until(
            lambda: application.ingest_positions(fresh_topics.clinical, ends) == ends,
            timeout=10,
        )
        assert recorded_event_ids(application, participants) == expected_records
    finally:
        application.close()
    assert worker.alive(), f"the worker died on bad input\n{services.logs()}"


def test_a_message_without_a_value_is_rejected_without_a_value(
    broker: Kafka, fresh_topics: Topics, store: Store, services: Services
) -> None:
    """A Kafka message whose value is null (a tombstone) is not an empty one: the
    rejected copy keeps it null (contract §4, "unchanged")."""
    valid = simulate_cohort(CohortSpec(participants=1, follow_up_days=2, malformed=False))
    key = next(m.key for m in valid if m.key != b"-")
    stream = [(m.key, m.value) for m in valid[:20]] + [(key, None), (key, b"")]
    env = fresh_topics.env() | store.env
    store.initialise()
    services.start("worker", env)
    services.start("relay", env)
    broker.produce_clinical(fresh_topics.clinical, stream)

    with broker.reader(fresh_topics.rejected) as rejected_topic:
        wait_for_count(rejected_topic.count, 2, timeout=60)
        rejected = rejected_topic.read_to_end()
    codes = [json.loads(record.header("error") or b"{}").get("code") for record in rejected]
    assert codes == ["empty_body", "empty_body"], rejected
    assert [(r.key, r.value) for r in rejected] == [(key, None), (key, b"")]
