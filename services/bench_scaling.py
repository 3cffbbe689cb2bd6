"""``toxwatch bench scaling``: ingest throughput of one worker, then of three.

PostgreSQL store (by default), an eight-partition topic per pass. The same
simulated programme (:mod:`services.bench_harness`) is produced to a fresh topic and
applied by one ``toxwatch worker``, then, on another topic and schema, by three
workers started together in one consumer group. The messages are produced before
the workers start (the producer, about 3,000 messages/s here, would otherwise set
the pace). Throughput: messages applied from the first committed batch to the last
message applied, so the group's joining and rebalancing count; the same from the
moment the group settled (every member joined, no change for ``SETTLE_S``) is
reported beside it. Target (issue 9): three workers ≥ 2 × one, where the store is
PostgreSQL. The machine's CPU count bounds what three processes can gain: it is
reported with the result, and so is how many CPUs the whole machine kept busy during
each pass (``/proc/stat``; one worker already keeps more than one busy: faust's event
loop, the thread that applies batches, PostgreSQL, the broker). Throughput can grow
at most as the busy CPUs can: on two CPUs, three workers gain at most 2 / (the CPUs
one worker keeps busy).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from rich.console import Console
from rich.table import Table

from infra.broker import EmbeddedBroker, ensure_topics
from services.bench_harness import (
    BenchStore,
    CPUReading,
    Mix,
    Programme,
    applied,
    busy_cpus,
    check_alive,
    cpu_seconds,
    median_or_none,
    pipeline_env,
    produce,
    programme_messages,
    running,
    topics_of,
)
from services.simulator import SimulatedMessage

PARTITIONS = 8
TARGET_RATIO = 2.0
DEFAULT_PROGRAMME = Programme(participants=100, follow_up_days=1, trial_prefix="SCALE")
SETTLE_S = 3.0


@dataclass
class ScalingResult:
    """Medians over the runs of events/s from the first commit (the target's measure);
    from the group settled, where the run was long enough to tell."""

    store: str
    messages: int
    workers: int
    one_worker_events_per_s: float
    many_workers_events_per_s: float
    cpu_count: int | None
    one_worker_settled_events_per_s: float | None = None
    many_workers_settled_events_per_s: float | None = None
    #: The machine's CPUs busy during each pass (medians; None where unknown).
    one_worker_busy_cpus: float | None = None
    many_workers_busy_cpus: float | None = None
    one_worker_runs: list[Pass] = field(default_factory=list)
    many_workers_runs: list[Pass] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.many_workers_events_per_s / self.one_worker_events_per_s

    @property
    def settled_ratio(self) -> float | None:
        one, many = self.one_worker_settled_events_per_s, self.many_workers_settled_events_per_s
        return many / one if one and many else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "ratio": self.ratio,
            "settled_ratio": self.settled_ratio,
            "target_ratio": TARGET_RATIO,
        }


class _Admin(KafkaAdminClient):  # type: ignore[misc]
    def _process_acl_operations(self, obj: Any) -> Any:
        # tansu answers authorized operations kafka-python cannot name.
        obj.pop("authorized_operations", None)
        return obj


class GroupWatch:
    """Whether a consumer group has its members and has kept them ``SETTLE_S``."""

    def __init__(self, servers: str, group: str, members: int) -> None:
        self.admin = _Admin(bootstrap_servers=servers)
        self.group, self.members = group, members
        self.last: tuple[str, ...] = ()
        self.since = time.monotonic()

    def settled(self) -> bool:
        try:
            description = self.admin.describe_groups([self.group])[self.group]
            members = tuple(sorted(m["member_id"] for m in description["members"]))
        except Exception:
            members = ()
        if members != self.last:
            self.last, self.since = members, time.monotonic()
            return False
        return len(members) == self.members and time.monotonic() - self.since >= SETTLE_S

    def close(self) -> None:
        self.admin.close()


@dataclass
class Pass:
    """One pass: events/s from the first commit, and from the group settled (None if
    the group settled too late to tell)."""

    from_first_commit: float
    from_settled: float | None
    settled_after_s: float | None
    #: The machine's CPUs busy, on average, from the first commit to the last message
    #: applied (workers, PostgreSQL, broker and this process alike).
    busy_cpus: float | None = None


def _pass(
    servers: str,
    messages: Sequence[SimulatedMessage],
    workers: int,
    kind: str,
    workdir: Path,
) -> tuple[Pass, int]:
    """``workers`` workers over ``messages``, produced before they start; the
    messages produced."""
    topic = f"bench.scaling.{workers}.{uuid.uuid4().hex[:6]}"
    ensure_topics(servers, topics_of(topic), PARTITIONS)
    expected = produce(servers, topic, messages)
    with BenchStore(kind, workdir) as store:
        app = store.open()
        env = pipeline_env(servers, topic, PARTITIONS, store)
        watch = GroupWatch(servers, env["TOXWATCH_CONSUMER_GROUP"], workers)
        try:
            with running(["worker"] * workers, env) as children:
                started = time.perf_counter()
                first: tuple[float, int] | None = None
                cpu_at_first: CPUReading | None = None
                settled: tuple[float, int] | None = None
                next_look = started
                while True:
                    check_alive(children)
                    done, now = applied(app, topic, PARTITIONS), time.perf_counter()
                    if first is None and done > 0:
                        first, cpu_at_first = (now, done), cpu_seconds()
                    if settled is None and now >= next_look:
                        next_look = now + 0.5
                        if watch.settled():
                            settled = (now, done)
                    if done >= expected:
                        break
                    if now - started > 3600:
                        raise TimeoutError("the workers did not finish in an hour")
                    time.sleep(0.05)
                if first is None:
                    raise RuntimeError("no batch committed")
                busy = busy_cpus(cpu_at_first, cpu_seconds())
                useful = settled is not None and settled[1] < 0.8 * expected
                return (
                    Pass(
                        from_first_commit=(expected - first[1]) / (now - first[0]),
                        from_settled=(expected - settled[1]) / (now - settled[0])
                        if useful and settled
                        else None,
                        settled_after_s=settled[0] - started if settled else None,
                        busy_cpus=busy,
                    ),
                    expected,
                )
        finally:
            watch.close()
            app.close()


def run_scaling_bench(
    *,
    programme: Programme = DEFAULT_PROGRAMME,
    workers: int = 3,
    runs: int = 1,
    store: str = "postgres",
    out: Path | None = None,
    console: Console | None = None,
) -> tuple[ScalingResult, Mix]:
    console = console or Console(width=140)
    messages, mix = programme_messages(programme, progress=console.print)
    one: list[Pass] = []
    many: list[Pass] = []
    produced = 0
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="toxwatch-bench-") as tmp:
        for run in range(1, runs + 1):
            for count, passes in ((1, one), (workers, many)):
                measured, produced = _pass(
                    broker.bootstrap_servers, messages, count, store, Path(tmp)
                )
                passes.append(measured)
            console.print(
                f"scaling run {run}/{runs}: {produced:,} messages on {PARTITIONS} partitions, "
                f"1 worker {one[-1].from_first_commit:,.0f}/s, {workers} workers "
                f"{many[-1].from_first_commit:,.0f}/s from the first commit "
                f"(group settled after {many[-1].settled_after_s or float('nan'):.0f} s)"
            )
    mix.messages_produced, mix.partitions = produced, PARTITIONS
    result = ScalingResult(
        store=store,
        messages=produced,
        workers=workers,
        one_worker_events_per_s=statistics.median(p.from_first_commit for p in one),
        many_workers_events_per_s=statistics.median(p.from_first_commit for p in many),
        cpu_count=os.cpu_count(),
        one_worker_settled_events_per_s=median_or_none([p.from_settled for p in one]),
        many_workers_settled_events_per_s=median_or_none([p.from_settled for p in many]),
        one_worker_busy_cpus=median_or_none([p.busy_cpus for p in one]),
        many_workers_busy_cpus=median_or_none([p.busy_cpus for p in many]),
        one_worker_runs=one,
        many_workers_runs=many,
    )
    console.print(scaling_table(result, runs))
    if out is not None:
        out.write_text(
            json.dumps({"result": result.to_json(), "mix": asdict(mix)}, indent=2) + "\n"
        )
    return result, mix


def scaling_table(result: ScalingResult, runs: int) -> Table:
    table = Table(
        title=(
            f"toxwatch bench scaling ({result.store}, {result.messages:,} messages on "
            f"{PARTITIONS} partitions, {result.cpu_count} CPUs, median of {runs})"
        )
    )
    for column in ("measured from", "1 worker ev/s", f"{result.workers} workers ev/s", "ratio"):
        table.add_column(column, justify="right")

    def figure(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    table.add_row(
        "first commit",
        figure(result.one_worker_events_per_s),
        figure(result.many_workers_events_per_s),
        f"{result.ratio:.2f} (target ≥ {TARGET_RATIO:g})",
    )
    table.add_row(
        "group settled",
        figure(result.one_worker_settled_events_per_s),
        figure(result.many_workers_settled_events_per_s),
        "-" if result.settled_ratio is None else f"{result.settled_ratio:.2f}",
    )
    one, many = result.one_worker_busy_cpus, result.many_workers_busy_cpus
    table.add_row(
        f"CPUs busy (of {result.cpu_count})",
        "-" if one is None else f"{one:.2f}",
        "-" if many is None else f"{many:.2f}",
        "-" if not one or many is None else f"{many / one:.2f}",
    )
    return table
