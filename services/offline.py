"""``toxwatch process``: apply a clinical JSONL stream offline with the same
application code as the worker, the trial monitor and the alerts process, and write
the derived safety events (alerts included) as JSONL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from domain.protocol import ProtocolParameters
from domain.validation import ValidationLimits
from services.application import BatchOutcome, InboundMessage, SafetyMonitoring

JSONL_TOPIC = "jsonl"


@dataclass
class ProcessSummary:
    lines: int = 0
    outcome: BatchOutcome = field(default_factory=BatchOutcome)
    rejections: list[dict[str, object]] = field(default_factory=list)


def in_memory_application(
    protocol: ProtocolParameters | None = None, limits: ValidationLimits | None = None
) -> SafetyMonitoring:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        # One in-memory database shared by the pool's connections (a plain
        # ":memory:" gives each connection its own, empty one).
        "SQLITE_DBNAME": f"file:toxwatch-{uuid.uuid4().hex}?mode=memory&cache=shared",
        "APPLICATION_RECORDER_TOPIC": "infra.store:SQLiteBatchRecorder",
        "AGGREGATE_CACHE_MAXSIZE": "100000",
    }
    return SafetyMonitoring(env, protocol=protocol, limits=limits)


def process_lines(
    lines: Iterable[bytes],
    out: TextIO,
    *,
    app: SafetyMonitoring | None = None,
    batch_size: int = 500,
    now: datetime | None = None,
) -> ProcessSummary:
    """Apply each line as one message (one partition: ticks reach every participant)."""
    app = app or in_memory_application()
    clock = now or datetime.now(UTC)
    summary = ProcessSummary()
    batch: list[InboundMessage] = []

    def flush() -> None:
        outcome = app.apply_batch(batch, now=clock)
        summary.outcome.accepted_by_type.update(outcome.accepted_by_type)
        summary.outcome.rejected_by_code.update(outcome.rejected_by_code)
        summary.outcome.duplicates += outcome.duplicates
        batch.clear()

    for offset, line in enumerate(lines):
        value = line.rstrip(b"\r\n")
        summary.lines += 1
        batch.append(InboundMessage(JSONL_TOPIC, 0, offset, None, value, clock))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    from services.alerts import AlertDesk
    from services.monitor import TrialMonitor

    # One pass over the whole log: the trial events are then the same whatever the
    # batching of the participants' (the monitor evaluates once, on every fact).
    TrialMonitor(app, batch_size=1_000_000_000).run_until_idle()
    AlertDesk(app).run_until_idle()
    for event in app.iter_safety_events():
        out.write(json.dumps(event.to_wire(), separators=(",", ":"), sort_keys=True) + "\n")
    return summary
