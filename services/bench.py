"""``toxwatch bench ingest``: full ingest path against a same-run baseline.

The stream is a simulated programme (:mod:`services.bench_harness`): participants
(2,000 in issue 9; 200 by default, to fit ten minutes) in trials of the simulator's
cohort, interleaved by delivery time, each record shortened to ``follow_up_days``
after infusion so that a run fits.

The stream is produced once to a topic on the embedded broker; for each store, each
run measures
- the baseline: a bare kafka-python loop that only consumes and JSON-decodes it;
- the full path: ``toxwatch worker`` (faust → validation → aggregates → one store
  commit per batch with tracking) and ``toxwatch relay`` (store → Kafka) as child
  processes, from the first committed batch until the relay has published the last
  derived event.
Figures are medians over the runs; the ratio is full path / baseline (both count
every message produced, a clock tick once per partition).

Before the stores, each run also measures the worker's faust consumer alone
(:mod:`services.bench_faust`: its settings, batching and executor hop, a JSON decode
in place of the application): the part of the full path that is faust's, reported
as its own ratio to the same baseline.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from infra.broker import EmbeddedBroker, ensure_topics
from services.application import SafetyMonitoring
from services.bench_harness import (
    REPO,
    BenchStore,
    Mix,
    Programme,
    applied,
    busy_cpus,
    check_alive,
    cpu_seconds,
    first_change,
    median_or_none,
    pipeline_env,
    produce,
    programme_messages,
    running,
    stop,
    topics_of,
    wait_for,
)
from services.relay import RELAY_NAME
from services.simulator import SimulatedMessage

PARTITIONS = 4
#: Participants and follow-up days of ``toxwatch bench ingest`` by default: about
#: 50,000 messages, three runs on each store in about ten minutes on two CPUs.
DEFAULT_PROGRAMME = Programme(participants=200, follow_up_days=1)


@dataclass
class BenchResult:
    store: str
    messages: int
    baseline_events_per_s: float
    full_path_events_per_s: float
    baseline_runs: list[float] = field(default_factory=list)
    full_path_runs: list[float] = field(default_factory=list)
    #: The machine's CPUs busy, on average, during each run's measured span
    #: (``bench_harness.busy_cpus``; None where unknown).
    baseline_busy_cpus: list[float | None] = field(default_factory=list)
    full_path_busy_cpus: list[float | None] = field(default_factory=list)

    def cpu_per_message_ratio(self) -> float | None:
        """The machine's CPU time per message of the full path over the bare loop's
        (medians of the runs): how much more work, not waiting, each message costs."""

        def per_message(rates: list[float], busy: list[float | None]) -> float | None:
            return median_or_none(
                [None if b is None else b / r for r, b in zip(rates, busy, strict=True)]
            )

        base = per_message(self.baseline_runs, self.baseline_busy_cpus)
        full = per_message(self.full_path_runs, self.full_path_busy_cpus)
        return full / base if base and full else None

    @property
    def ratio(self) -> float:
        return self.full_path_events_per_s / self.baseline_events_per_s

    def ceiling(self) -> float | None:
        """The ratio the full path would reach with every CPU of the machine busy at
        its CPU time per message, next to the bare loop as measured: what the machine
        allows, however the work were spread over processes."""
        cpu_ratio, busy = self.cpu_per_message_ratio(), median_or_none(self.baseline_busy_cpus)
        if cpu_ratio is None or not busy:
            return None
        return (os.cpu_count() or 1) / busy / cpu_ratio

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "ratio": self.ratio,
            "cpu_per_message_ratio": self.cpu_per_message_ratio(),
            "ceiling": self.ceiling(),
        }


@dataclass
class IngestReport:
    mix: Mix
    runs: int
    results: list[BenchResult]
    #: The worker's faust consumer with only a JSON decode per message (``services.
    #: bench_faust``): what consuming through faust alone sustains, median of the runs.
    faust_events_per_s: float | None = None
    faust_runs: list[float] = field(default_factory=list)

    @property
    def faust_ratio(self) -> float | None:
        """The faust consume over the bare kafka-python one (medians of every run)."""
        baselines = [b for r in self.results for b in r.baseline_runs]
        if self.faust_events_per_s is None or not baselines:
            return None
        return self.faust_events_per_s / statistics.median(baselines)

    def to_json(self) -> dict[str, Any]:
        return {
            "mix": asdict(self.mix),
            "runs": self.runs,
            "partitions": PARTITIONS,
            "results": [r.to_json() for r in self.results],
            "faust_events_per_s": self.faust_events_per_s,
            "faust_runs": self.faust_runs,
            "faust_ratio": self.faust_ratio,
        }

    def sustained_max(self, store: str) -> float | None:
        """The full path's median events/s on ``store``."""
        return next((r.full_path_events_per_s for r in self.results if r.store == store), None)


def _baseline(servers: str, topic: str, expected: int) -> tuple[float, float | None]:
    """Events/s of the bare loop, and the machine's CPUs busy meanwhile."""
    consumer = KafkaConsumer(
        bootstrap_servers=servers, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    seen = 0
    started, cpu = time.perf_counter(), cpu_seconds()
    while seen < expected:
        for records in consumer.poll(timeout_ms=500, max_records=5000).values():
            for record in records:
                json.loads(record.value)
                seen += 1
    elapsed, busy = time.perf_counter() - started, busy_cpus(cpu, cpu_seconds())
    consumer.close()
    return seen / elapsed, busy


def _faust_only(servers: str, topic: str, expected: int, workdir: Path) -> float:
    """Events/s of ``services.bench_faust`` reading the stream (a new consumer group)."""
    out = workdir / f"faust-{uuid.uuid4().hex[:8]}.json"
    env = dict(os.environ) | {
        "KAFKA_BOOTSTRAP_SERVERS": servers,
        "TOXWATCH_CLINICAL_TOPIC": topic,
        "TOXWATCH_CONSUMER_GROUP": f"bench-faust-{uuid.uuid4().hex[:8]}",
        "TOXWATCH_PARTITIONS": str(PARTITIONS),
        "BENCH_EXPECTED": str(expected),
        "BENCH_OUT": str(out),
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "services.bench_faust"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: out.exists() or child.poll() is not None, timeout=900, interval=0.1)
    finally:
        stop([child])
    if not out.exists():
        raise RuntimeError(f"the bare faust consume exited with {child.returncode}")
    result = json.loads(out.read_text())
    return float(result["messages"]) / float(result["seconds"])


def _full_path(
    servers: str, topic: str, expected: int, kind: str, workdir: Path
) -> tuple[float, float | None]:
    """Events/s of the worker and relay, and the machine's CPUs busy meanwhile."""
    with BenchStore(kind, workdir) as store:
        app = store.open()  # creates the tables before the children start
        env = pipeline_env(servers, topic, PARTITIONS, store)
        try:
            with running(("worker", "relay"), env) as children:
                at_first = first_change(app, topic, PARTITIONS, timeout=120)
                first, cpu = time.perf_counter(), cpu_seconds()

                def done() -> bool:
                    check_alive(children)
                    return applied(app, topic, PARTITIONS) >= expected and _relayed(app)

                finished = wait_for(done, timeout=3600, interval=0.05)
                busy = busy_cpus(cpu, cpu_seconds())
                return (expected - at_first) / (finished - first), busy
        finally:
            app.close()


def _relayed(app: SafetyMonitoring) -> bool:
    last = app.recorder.max_notification_id() or 0
    return (app.tracked(RELAY_NAME) or 0) >= _last_relayable(app, last)


def _last_relayable(app: SafetyMonitoring, last: int) -> int:
    tail = app.safety_notifications(max(0, last - 5000), 5000, with_rejections=True)
    return tail[-1].id if tail else 0


def measure_ingest(
    servers: str,
    messages: Sequence[SimulatedMessage],
    stores: Sequence[str],
    runs: int,
    workdir: Path,
    console: Console,
) -> tuple[list[BenchResult], int, list[float]]:
    """Medians per store; also the messages produced and the bare faust runs. The
    stream is produced once (the producer is slow); each run reads it afresh, in a new
    consumer group and a new store."""
    topic = f"bench.ingest.{uuid.uuid4().hex[:6]}"
    ensure_topics(servers, topics_of(topic), PARTITIONS)
    started = time.perf_counter()
    produced = produce(servers, topic, messages)
    console.print(f"produced {produced:,} messages in {time.perf_counter() - started:,.0f} s")
    results: list[BenchResult] = []
    faust = []
    for run in range(runs):
        faust.append(_faust_only(servers, topic, produced, workdir))
        console.print(f"bare faust consume run {run + 1}/{runs}: {faust[-1]:,.0f}/s")
    for kind in stores:
        baselines, full = [], []
        baseline_busy: list[float | None] = []
        full_busy: list[float | None] = []
        for run in range(runs):
            rate, busy = _baseline(servers, topic, produced)
            baselines.append(rate)
            baseline_busy.append(busy)
            rate, busy = _full_path(servers, topic, produced, kind, workdir)
            full.append(rate)
            full_busy.append(busy)
            console.print(
                f"ingest {kind} run {run + 1}/{runs}: baseline {baselines[-1]:,.0f}/s "
                f"({_cpus(baseline_busy[-1])} CPUs busy), full path {full[-1]:,.0f}/s "
                f"({_cpus(full_busy[-1])} CPUs busy)"
            )
        results.append(
            BenchResult(
                kind,
                produced,
                statistics.median(baselines),
                statistics.median(full),
                baselines,
                full,
                baseline_busy,
                full_busy,
            )
        )
    return results, produced, faust


def _cpus(busy: float | None) -> str:
    return "?" if busy is None else f"{busy:.2f}"


def ingest_table(report: IngestReport) -> Table:
    mix = report.mix
    table = Table(
        title=(
            f"toxwatch bench ingest: {mix.participants:,} participants ({mix.trials} trials), "
            f"{mix.follow_up_days} follow-up day(s), {mix.clinical_events:,} clinical events "
            f"+ {mix.clock_ticks:,} ticks (every {mix.tick_every_hours:g} h) = "
            f"{mix.messages_produced:,} messages on {PARTITIONS} partitions, "
            f"median of {report.runs}"
        )
    )
    columns = (
        "store", "messages", "baseline ev/s", "full path ev/s", "ratio",
        "CPUs busy: baseline / full path",
        "CPU per message: full / baseline (ratio with every CPU busy)",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for r in report.results:
        base_busy, full_busy = (
            median_or_none(r.baseline_busy_cpus),
            median_or_none(r.full_path_busy_cpus),
        )
        cpu_ratio, ceiling = r.cpu_per_message_ratio(), r.ceiling()
        table.add_row(
            r.store,
            f"{r.messages:,}",
            f"{r.baseline_events_per_s:,.0f}",
            f"{r.full_path_events_per_s:,.0f}",
            f"{r.ratio:.3f}",
            f"{_cpus(base_busy)} / {_cpus(full_busy)}",
            "?" if cpu_ratio is None or ceiling is None else f"{cpu_ratio:.2f} (≤ {ceiling:.2f})",
        )
    return table


def run_ingest_bench(
    *,
    programme: Programme = DEFAULT_PROGRAMME,
    stores: Sequence[str],
    runs: int,
    out: Path | None,
    servers: str | None = None,
    console: Console | None = None,
) -> IngestReport:
    """``servers``: an already running broker, else an embedded one for this bench."""
    console = console or Console(width=140)
    messages, mix = programme_messages(programme, progress=console.print)
    console.print(
        f"ingest: {mix.participants:,} participants, {mix.clinical_events:,} clinical events, "
        f"{mix.clock_ticks:,} ticks"
    )
    with tempfile.TemporaryDirectory(prefix="toxwatch-bench-") as tmp:
        if servers is None:
            with EmbeddedBroker() as broker:
                results, produced, faust = measure_ingest(
                    broker.bootstrap_servers, messages, stores, runs, Path(tmp), console
                )
        else:
            results, produced, faust = measure_ingest(
                servers, messages, stores, runs, Path(tmp), console
            )
    mix.messages_produced, mix.partitions = produced, PARTITIONS
    report = IngestReport(mix, runs, results, statistics.median(faust), faust)
    console.print(ingest_table(report))
    console.print(
        f"bare faust consume + decode (the worker's consumer, no application): "
        f"{report.faust_events_per_s:,.0f} ev/s, {report.faust_ratio:.3f} of the bare "
        "kafka-python loop"
    )
    if out is not None:
        out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report
