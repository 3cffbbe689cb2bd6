"""``toxwatch bench alerts``: clinical event produced → alert delivered on a webhook.

For each background load (clinical events/s), on the embedded broker and a fresh
store: ``toxwatch worker``, ``toxwatch alerts`` and ``toxwatch dispatcher`` run as
child processes; a local :class:`infra.receivers.WebhookReceiver` (signatures
verified) is the endpoint. Background participants (200 by default), enrolled and
infused, send normal vital signs at the given rate; every ``1/probes_per_s`` seconds
a probe participant gets a neuro assessment with ICE 7 (ICANS grade 1, ASTCT 2019: any ICANS
is a ``high`` alert, routed to the webhook). The latency of a probe is from just
before its message is produced to the webhook's receipt of its ``alert.raised``.

Baseline, measured in the same run under the same load: each probe is also produced
to a bare topic that a plain kafka-python consumer in this process reads; its
produce → consume latency is the transport floor. Ratios are alert / baseline.

The load generator runs on the machine it loads. The background load has its own
producer, which batches what it sends for up to ``BACKGROUND_LINGER_MS`` (a real
programme's monitors would not take the monitor's CPUs at all); probes are sent
alone, at once, by another.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer
from rich.console import Console
from rich.table import Table

from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka import GROUP_TIMINGS, reliable_producer
from infra.receivers import Delivery, WebhookReceiver
from infra.settings import Settings
from services.bench_harness import applied
from services.bootstrap import build_application

PARTITIONS = 4
#: linger.ms of the background load's producer. The load generator shares this
#: machine's CPUs with the pipeline it loads: at 1,800 vital signs/s, kafka-python
#: sending each batch after 1 ms took 55 % of a core, after 20 ms 30 %.
BACKGROUND_LINGER_MS = 20
TRIAL = "NCT07049081"
SECRET = b"bench-secret"


@dataclass
class LatencyResult:
    rate_per_s: int
    achieved_rate_per_s: float
    probes: int
    delivered: int
    alert_p50_ms: float
    alert_p95_ms: float
    alert_p99_ms: float
    baseline_p50_ms: float
    baseline_p95_ms: float
    baseline_p99_ms: float
    runs: int = 1

    @property
    def ratio_p50(self) -> float:
        return self.alert_p50_ms / self.baseline_p50_ms

    @property
    def ratio_p99(self) -> float:
        return self.alert_p99_ms / self.baseline_p99_ms

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ratio_p50": self.ratio_p50, "ratio_p99": self.ratio_p99}


def median_result(results: list[LatencyResult]) -> LatencyResult:
    """Each figure the median of the runs' (probes and deliveries summed)."""

    def median(name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in results))

    return LatencyResult(
        rate_per_s=results[0].rate_per_s,
        achieved_rate_per_s=median("achieved_rate_per_s"),
        probes=sum(r.probes for r in results),
        delivered=sum(r.delivered for r in results),
        alert_p50_ms=median("alert_p50_ms"),
        alert_p95_ms=median("alert_p95_ms"),
        alert_p99_ms=median("alert_p99_ms"),
        baseline_p50_ms=median("baseline_p50_ms"),
        baseline_p95_ms=median("baseline_p95_ms"),
        baseline_p99_ms=median("baseline_p99_ms"),
        runs=len(results),
    )


def _event(kind: str, participant: str, at: datetime, **data: Any) -> bytes:
    return json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": f"b-{uuid.uuid4().hex}",
            "type": kind,
            "trial_id": TRIAL,
            "site_id": "CN-001",
            "participant_id": participant,
            "occurred_at": at.isoformat(),
            "data": data,
        },
        separators=(",", ":"),
    ).encode()


def _onboarding(participant: str, now: datetime) -> list[bytes]:
    infused = now - timedelta(days=2)
    return [
        _event("participant.enrolled", participant, infused - timedelta(days=10),
               disease="SLE", dose_level="DL1"),
        _event("eligibility.confirmed", participant, infused - timedelta(days=9),
               confirmed_by="investigator"),
        _event("infusion.administered", participant, infused, dose_level="DL1",
               cells_per_kg=1.0e6),
    ]  # fmt: skip


def _percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class _Pipeline:
    """A fresh clinical topic and SQLite store with ``toxwatch worker``, ``alerts`` and
    ``dispatcher`` as child processes delivering to a local webhook, and ``participants``
    enrolled and infused (applied before it is returned)."""

    def __init__(self, servers: str, workdir: Path, participants: list[str]) -> None:
        tag = uuid.uuid4().hex[:8]
        self.servers = servers
        self.clinical, self.bare = f"bench.{tag}.clinical", f"bench.{tag}.bare"
        ensure_topics(
            servers,
            [self.clinical, self.bare, f"{self.clinical}.rejected", f"{self.clinical}.safety"],
            PARTITIONS,
        )
        #: participant -> when the webhook received its ICANS ``alert.raised``.
        self.arrived: dict[str, float] = {}
        self.receiver = WebhookReceiver(SECRET, on_delivery=self._on_delivery).start()
        endpoints = workdir / f"{tag}-endpoints.toml"
        endpoints.write_text(
            f'[[endpoints]]\nid = "desk"\nkind = "webhook"\nurl = "{self.receiver.url}"\n'
        )
        data_dir = workdir / tag
        env = os.environ | {
            "KAFKA_BOOTSTRAP_SERVERS": servers,
            "TOXWATCH_CLINICAL_TOPIC": self.clinical,
            "TOXWATCH_REJECTED_TOPIC": f"{self.clinical}.rejected",
            "TOXWATCH_SAFETY_TOPIC": f"{self.clinical}.safety",
            "TOXWATCH_CONSUMER_GROUP": f"bench-{tag}",
            "TOXWATCH_DATA_DIR": str(data_dir),
            "TOXWATCH_STORE": "sqlite",
            "TOXWATCH_PARTITIONS": str(PARTITIONS),
            "TOXWATCH_ALERT_ENDPOINTS_FILE": str(endpoints),
            "TOXWATCH_WEBHOOK_SECRET": SECRET.decode(),
            "TOXWATCH_DISPATCH_MAX_BACKOFF_SECONDS": "1",
        }
        self.app = build_application(Settings(data_dir=data_dir, store="sqlite"))
        self.children = [
            subprocess.Popen(
                [sys.executable, "-m", "services.cli", name],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name in ("worker", "alerts", "dispatcher")
        ]
        #: Probes and setup: sent at once (the probe's latency starts at its send).
        self.producer = reliable_producer(servers, linger_ms=1)
        #: The background load, batched (module docstring).
        self.background = reliable_producer(servers, linger_ms=BACKGROUND_LINGER_MS)
        now = datetime.now(UTC)
        setup = [(p, v) for p in participants for v in _onboarding(p, now)]
        self.send(setup)
        self.wait_applied(len(setup), timeout=300)

    def _on_delivery(self, delivery: Delivery) -> None:
        body = delivery.body
        if body.get("type") == "alert.raised" and body["data"].get("category") == "icans":
            self.arrived.setdefault(body["participant_id"], delivery.received_at)

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        for key, value in messages:
            self.producer.send(self.clinical, key=key.encode(), value=value)
        self.producer.flush()

    def applied(self) -> int:
        return applied(self.app, self.clinical, PARTITIONS)

    def wait_applied(self, count: int, timeout: float, interval: float = 0.2) -> float:
        deadline = time.monotonic() + timeout
        while self.applied() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not apply {count:,} messages in time")
            time.sleep(interval)
        return time.perf_counter()

    def close(self) -> None:
        self.producer.close()
        self.background.close()
        for child in self.children:
            child.terminate()
            child.wait(15)
        self.receiver.stop()
        self.app.close()


def _vitals(participant: str) -> bytes:
    return _event(
        "vitals.recorded", participant, datetime.now(UTC),
        temperature_c=36.8, heart_rate_bpm=78, systolic_bp_mmhg=121,
    )  # fmt: skip


def _background(participants: int) -> list[str]:
    return [f"BG-{i:04d}" for i in range(participants)]


def measure_maximum(
    servers: str, workdir: Path, messages: int, background_participants: int = 200
) -> float:
    """The sustained maximum of this bench's own background load: ``messages`` of its
    vital signs, produced before the clock starts, applied by the same three processes
    on a fresh store; events/s from the worker's first commit of them to its last.

    The latency "at 80 % of the sustained maximum" is then measured against the load it
    is loaded with: the ingest bench's programme (most of its messages clock ticks,
    which cost the worker less than vital signs) sustains a higher rate than this."""
    background = _background(background_participants)
    run = _Pipeline(servers, workdir, background)
    try:
        before = run.applied()
        senders = (background[i % len(background)] for i in range(messages))
        run.send([(p, _vitals(p)) for p in senders])
        run.wait_applied(before + 1, timeout=120, interval=0.02)
        at_first, first = run.applied(), time.perf_counter()
        finished = run.wait_applied(before + messages, timeout=3600, interval=0.05)
        return (before + messages - at_first) / (finished - first)
    finally:
        run.close()


def _run_one(
    servers: str,
    workdir: Path,
    rate: int,
    seconds: float,
    probes_per_s: float,
    console: Console,
    background_participants: int = 200,
) -> LatencyResult:
    background = _background(background_participants)
    probes = [f"PR-{i:04d}" for i in range(int(seconds * probes_per_s) + 1)]
    run = _Pipeline(servers, workdir, background + probes)
    try:
        return _measure(run, background, probes, rate, seconds, probes_per_s, console)
    finally:
        run.close()


def _measure(
    run: _Pipeline,
    background: list[str],
    probes: list[str],
    rate: int,
    seconds: float,
    probes_per_s: float,
    console: Console,
) -> LatencyResult:
    producer, clinical, bare = run.producer, run.clinical, run.bare
    bare_sent: dict[str, float] = {}
    bare_seen: dict[str, float] = {}
    consumer = KafkaConsumer(
        bare,
        bootstrap_servers=run.servers,
        group_id=f"bare-{bare}",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        **GROUP_TIMINGS,
    )
    stop = threading.Event()

    def read_bare() -> None:
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=100).values():
                for record in batch:
                    bare_seen.setdefault(record.key.decode(), time.time())

    reader = threading.Thread(target=read_bare, daemon=True)
    reader.start()
    joined = time.monotonic() + 15
    while not consumer.assignment() and time.monotonic() < joined:
        time.sleep(0.1)  # the bare consumer joins its group
    sent: dict[str, float] = {}
    produced = 0
    started = time.monotonic()
    next_probe = started + 1.0
    probe_index = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate)
        while produced < due:
            participant = background[produced % len(background)]
            run.background.send(clinical, key=participant.encode(), value=_vitals(participant))
            produced += 1
        if time.monotonic() >= next_probe and probe_index < len(probes):
            participant = probes[probe_index]
            probe_index += 1
            next_probe += 1.0 / probes_per_s
            value = _event("neuro.assessed", participant, datetime.now(UTC), ice_score=7)
            sent[participant] = bare_sent[participant] = time.time()
            producer.send(clinical, key=participant.encode(), value=value)
            producer.send(bare, key=participant.encode(), value=value)
            producer.flush()
        time.sleep(0.002)
    run.background.flush()
    producer.flush()
    achieved = produced / (time.monotonic() - started)
    arrived = run.arrived
    deadline = time.monotonic() + 180
    while set(sent) - set(arrived) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    reader.join(5)
    consumer.close()
    alert = [(arrived[p] - t) * 1000 for p, t in sent.items() if p in arrived]
    base = [(bare_seen[p] - t) * 1000 for p, t in bare_sent.items() if p in bare_seen]
    result = LatencyResult(
        rate_per_s=rate,
        achieved_rate_per_s=achieved,
        probes=len(sent),
        delivered=len(alert),
        alert_p50_ms=_percentile(alert, 50),
        alert_p95_ms=_percentile(alert, 95),
        alert_p99_ms=_percentile(alert, 99),
        baseline_p50_ms=_percentile(base, 50),
        baseline_p95_ms=_percentile(base, 95),
        baseline_p99_ms=_percentile(base, 99),
    )
    console.print(
        f"{rate}/s background ({achieved:,.0f}/s achieved): {result.delivered}/{result.probes} "
        f"alerts delivered, p50 {result.alert_p50_ms:,.0f} ms, p99 {result.alert_p99_ms:,.0f} ms "
        f"(bare Kafka p50 {result.baseline_p50_ms:,.1f} ms)"
    )
    return result


def alerts_table(results: list[LatencyResult]) -> Table:
    runs = max((r.runs for r in results), default=1)
    table = Table(
        title="toxwatch bench alerts: clinical event produced → alert on the webhook"
        + (f" (medians of {runs} runs)" if runs > 1 else "")
    )
    for column in (
        "load ev/s",
        "achieved",
        "delivered",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "bare Kafka p50/p99 ms",
        "ratio p50",
        "ratio p99",
    ):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            str(r.rate_per_s),
            f"{r.achieved_rate_per_s:,.0f}",
            f"{r.delivered}/{r.probes}",
            f"{r.alert_p50_ms:,.0f}",
            f"{r.alert_p95_ms:,.0f}",
            f"{r.alert_p99_ms:,.0f}",
            f"{r.baseline_p50_ms:,.1f} / {r.baseline_p99_ms:,.1f}",
            f"{r.ratio_p50:,.1f}",
            f"{r.ratio_p99:,.1f}",
        )
    return table


@dataclass
class AlertBench:
    """The latencies, in the order measured: each given rate, then each fraction of the
    load's sustained maximum (``measure_maximum``, median of the runs) when asked."""

    results: list[LatencyResult]
    maximum_per_s: float | None = None
    maximum_runs: list[float] = field(default_factory=list)
    fractions: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "results": [r.to_json() for r in self.results],
            "sustained_max_events_per_s": self.maximum_per_s,
            "sustained_max_runs": self.maximum_runs,
            "fractions": self.fractions,
        }


def run_alert_bench(
    *,
    rates: list[int],
    seconds: float,
    probes_per_s: float,
    out: Path | None,
    keep: Path | None = None,
    runs: int = 1,
    background_participants: int = 200,
    fractions: Sequence[float] = (),
    saturation_messages: int = 20_000,
    console: Console | None = None,
) -> AlertBench:
    """``keep``: a folder to keep the runs' stores in (for a breakdown), else temporary.
    Each rate is measured ``runs`` times (fresh topics and store each time); then, if
    ``fractions`` are given, the load's sustained maximum (``saturation_messages`` of
    it, ``runs`` times) and each fraction of it."""
    console = console or Console(width=140)
    bench = AlertBench([], fractions=list(fractions))
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        servers = broker.bootstrap_servers
        workdir = keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)

        def measured(rate: int) -> LatencyResult:
            per_run = [
                _run_one(
                    servers, workdir, rate, seconds, probes_per_s, console, background_participants
                )
                for _ in range(runs)
            ]
            return median_result(per_run) if runs > 1 else per_run[0]

        bench.results = [measured(rate) for rate in rates]
        if fractions:
            for run in range(runs):
                bench.maximum_runs.append(
                    measure_maximum(servers, workdir, saturation_messages, background_participants)
                )
                console.print(
                    f"sustained maximum of the background load, run {run + 1}/{runs}: "
                    f"{bench.maximum_runs[-1]:,.0f}/s ({saturation_messages:,} vital signs)"
                )
            bench.maximum_per_s = statistics.median(bench.maximum_runs)
            bench.results += [
                measured(max(1, round(fraction * bench.maximum_per_s))) for fraction in fractions
            ]
    console.print(alerts_table(bench.results))
    if out is not None:
        out.write_text(json.dumps(bench.to_json(), indent=2) + "\n")
    return bench
