"""``toxwatch bench memory``: the worker's resident memory as events are processed.

A long-running programme (:mod:`services.bench_harness`): trials of the simulator's
cohort with their full follow-up, a new trial opening every ``trial_every_days``
(by default half a trial's length, so that about two run at once and the number of
participants in follow-up stays about level after the first), as many trials as it
takes for ``events`` messages, produced to the embedded broker before the worker
starts. One ``toxwatch worker`` (the real process, SQLite store by default) applies
them; at each checkpoint of messages applied its resident set size (``VmRSS`` from
``/proc``) is read, and a sample of aggregates is loaded from the store and measured
(timeline entries held, pickled bytes): the participants first seen (long finished)
and the ones seen last (in follow-up), and the partition rosters.

Target (issue 9): RSS at the last checkpoint / RSS at the first ≤ 1.2. The baseline
of the ratio is the worker's own RSS at the first checkpoint.
"""

from __future__ import annotations

import json
import pickle
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventsourcing.domain import Aggregate
from rich.console import Console
from rich.table import Table

from domain.records import PartitionRoster
from infra.broker import EmbeddedBroker, ensure_topics
from services.application import SafetyMonitoring
from services.bench_harness import (
    TICK_KEY,
    BenchStore,
    Programme,
    applied,
    check_alive,
    pipeline_env,
    produce,
    programme_messages,
    rss_bytes,
    running,
    topics_of,
)
from services.simulator import SimulatedMessage

PARTITIONS = 4
TARGET_RATIO = 1.2
#: Half a trial of the simulator (42 enrolments 5-10 days apart, 90-day follow-up).
DEFAULT_PROGRAMME = Programme(
    participants=42,
    follow_up_days=90,
    trial_every_days=210,
    start=datetime(2001, 1, 1, 8, 0, tzinfo=UTC),
    trial_prefix="MEM",
)
SAMPLE = 5


@dataclass
class Footprint:
    """Participants loaded from the store (those applied yet of the sample: partitions
    progress unevenly): mean timeline entries and pickled bytes."""

    participants: int
    entries_mean: float
    pickled_bytes_mean: float


@dataclass
class Checkpoint:
    applied: int
    elapsed_s: float
    rss_bytes: int
    events_per_s_since_previous: float
    participants_seen: int
    first_participants: Footprint | None = None
    last_participants: Footprint | None = None
    roster_members: int = 0
    roster_pickled_bytes: int = 0


@dataclass
class MemoryResult:
    store: str
    events: int
    days: int
    trials: int
    participants: int
    checkpoints: list[Checkpoint] = field(default_factory=list)

    @property
    def first(self) -> Checkpoint:
        return self.checkpoints[0]

    @property
    def last(self) -> Checkpoint:
        return self.checkpoints[-1]

    @property
    def ratio(self) -> float:
        return self.last.rss_bytes / self.first.rss_bytes

    @property
    def bytes_per_event(self) -> float:
        """RSS growth per message applied between the first and the last checkpoint."""
        return (self.last.rss_bytes - self.first.rss_bytes) / max(
            self.last.applied - self.first.applied, 1
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "ratio": self.ratio,
            "bytes_per_event": self.bytes_per_event,
            "target_ratio": TARGET_RATIO,
        }


def default_checkpoints(events: int) -> list[int]:
    """Every tenth of ``events``; every 100,000 for a million (the issue's points)."""
    return [events * i // 10 for i in range(1, 11)]


def memory_stream(
    events: int, partitions: int, programme: Programme, progress: Callable[[str], None]
) -> tuple[list[SimulatedMessage], Programme]:
    """The programme's first messages, as many as make ``events`` once produced."""
    one, _ = programme_messages(programme)
    per_trial = sum(partitions if m.key == TICK_KEY else 1 for m in one)
    trials = -(-events // per_trial) + 2
    programme = replace(programme, participants=trials * programme.participants)
    messages, _ = programme_messages(programme, progress)
    stream, sent = [], 0
    for message in messages:
        if sent >= events:
            break
        stream.append(message)
        sent += partitions if message.key == TICK_KEY else 1
    return stream, programme


def _first_seen(stream: Sequence[SimulatedMessage]) -> list[tuple[str, str, int]]:
    """Each (trial, participant) in order of first message, with the number of
    messages produced before it (the worker has applied its first message, about,
    once that many are applied)."""
    found: list[tuple[str, str, int]] = []
    seen: set[tuple[str, str]] = set()
    sent = 0
    for message in stream:
        if message.key == TICK_KEY:
            sent += PARTITIONS
            continue
        body = json.loads(message.value)
        key = (body["trial_id"], body["participant_id"])
        if key not in seen:
            seen.add(key)
            found.append((*key, sent))
        sent += 1
    return found


def _footprint(app: SafetyMonitoring, participants: Sequence[tuple[str, str]]) -> Footprint | None:
    entries, sizes = [], []
    for trial, participant in participants:
        try:
            aggregate = app.get_participant(trial, participant)
        except Exception:  # not applied yet (the prefix is approximate)
            continue
        entries.append(len(aggregate.entries))
        sizes.append(len(pickle.dumps(aggregate)))
    if not entries:
        return None
    return Footprint(len(entries), statistics.mean(entries), statistics.mean(sizes))


def _rosters(app: SafetyMonitoring, topic: str) -> tuple[int, int]:
    members, size = 0, 0
    for partition in range(PARTITIONS):
        try:
            roster: Aggregate = app.repository.get(PartitionRoster.id_for(topic, partition))
        except Exception:
            continue
        members += len(roster.members)  # type: ignore[attr-defined]
        size += len(pickle.dumps(roster))
    return members, size


def run_memory_bench(
    *,
    events: int,
    checkpoints: Sequence[int] | None = None,
    days: int = 90,
    store: str = "sqlite",
    out: Path | None = None,
    console: Console | None = None,
) -> MemoryResult:
    console = console or Console(width=140)
    points = sorted(set(checkpoints or default_checkpoints(events)))
    if points[-1] > events:
        raise ValueError("a checkpoint is beyond --events")
    programme = replace(DEFAULT_PROGRAMME, follow_up_days=days)
    stream, programme = memory_stream(events, PARTITIONS, programme, console.print)
    first_seen = _first_seen(stream)
    participants = [(trial, participant) for trial, participant, _ in first_seen]
    result = MemoryResult(store, events, days, programme.trials, len(participants))
    console.print(
        f"memory: {events:,} messages ({len(stream):,} simulated, {len(participants):,} "
        f"participants in {programme.trials} trials, {days}-day follow-up); "
        f"checkpoints {', '.join(f'{p:,}' for p in points)}"
    )
    with (
        EmbeddedBroker() as broker,
        tempfile.TemporaryDirectory(prefix="toxwatch-bench-memory-") as tmp,
        BenchStore(store, Path(tmp)) as bench_store,
    ):
        servers = broker.bootstrap_servers
        topic = f"bench.memory.{uuid.uuid4().hex[:6]}"
        ensure_topics(servers, topics_of(topic), PARTITIONS)
        sent = produce(servers, topic, stream)
        console.print(f"produced {sent:,} messages")
        app = bench_store.open()
        env = pipeline_env(servers, topic, PARTITIONS, bench_store)
        try:
            with running(("worker",), env) as children:
                worker = children[0]
                started = time.perf_counter()
                last_note, previous = started, (0, started)
                for point in points:
                    while (done := applied(app, topic, PARTITIONS)) < point:
                        check_alive(children)
                        if time.perf_counter() - last_note > 30:
                            last_note = time.perf_counter()
                            console.print(
                                f"  {done:,} applied, RSS {rss_bytes(worker.pid) / 2**20:,.0f} MiB"
                            )
                        time.sleep(0.2)
                    now = time.perf_counter()
                    rss = rss_bytes(worker.pid)
                    seen = sum(1 for *_, before in first_seen if before < done)
                    checkpoint = Checkpoint(
                        applied=done,
                        elapsed_s=now - started,
                        rss_bytes=rss,
                        events_per_s_since_previous=(done - previous[0]) / (now - previous[1]),
                        participants_seen=seen,
                        first_participants=_footprint(app, participants[:SAMPLE]),
                        last_participants=_footprint(
                            app, participants[max(0, seen - SAMPLE) : seen]
                        ),
                    )
                    checkpoint.roster_members, checkpoint.roster_pickled_bytes = _rosters(
                        app, topic
                    )
                    previous = (done, now)
                    result.checkpoints.append(checkpoint)
                    console.print(
                        f"checkpoint {point:,}: {done:,} applied in {now - started:,.0f} s, "
                        f"RSS {rss / 2**20:,.1f} MiB, "
                        f"{checkpoint.events_per_s_since_previous:,.0f} ev/s since the previous"
                    )
        finally:
            app.close()
    console.print(memory_table(result))
    if out is not None:
        out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def memory_table(result: MemoryResult) -> Table:
    table = Table(
        title=(
            f"toxwatch bench memory: worker RSS ({result.store}, {result.participants:,} "
            f"participants, {result.days}-day follow-up); RSS last/first {result.ratio:.2f} "
            f"(target ≤ {TARGET_RATIO}), {result.bytes_per_event:,.0f} B per message"
        )
    )
    for column in (
        "applied",
        "elapsed s",
        "RSS MiB",
        "ev/s",
        "participants",
        "first: entries / KiB (n)",
        "last: entries / KiB (n)",
        "roster members / KiB",
    ):
        table.add_column(column, justify="right")

    def footprint(f: Footprint | None) -> str:
        if f is None:
            return "-"
        return f"{f.entries_mean:,.0f} / {f.pickled_bytes_mean / 1024:,.0f} ({f.participants})"

    for c in result.checkpoints:
        table.add_row(
            f"{c.applied:,}",
            f"{c.elapsed_s:,.0f}",
            f"{c.rss_bytes / 2**20:,.1f}",
            f"{c.events_per_s_since_previous:,.0f}",
            f"{c.participants_seen:,}",
            footprint(c.first_participants),
            footprint(c.last_participants),
            f"{c.roster_members:,} / {c.roster_pickled_bytes / 1024:,.0f}",
        )
    return table
