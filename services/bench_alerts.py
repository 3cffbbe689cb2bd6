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
from dataclasses import asdict, dataclass
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


def _run_one(
    servers: str,
    workdir: Path,
    rate: int,
    seconds: float,
    probes_per_s: float,
    console: Console,
    background_participants: int = 200,
) -> LatencyResult:
    tag = uuid.uuid4().hex[:8]
    clinical, bare = f"bench.{tag}.clinical", f"bench.{tag}.bare"
    ensure_topics(servers, [clinical, bare, f"{clinical}.rejected", f"{clinical}.safety"], 4)
    arrived: dict[str, float] = {}

    def on_delivery(delivery: Delivery) -> None:
        body = delivery.body
        if body.get("type") == "alert.raised" and body["data"].get("category") == "icans":
            arrived.setdefault(body["participant_id"], delivery.received_at)

    receiver = WebhookReceiver(SECRET, on_delivery=on_delivery).start()
    endpoints = workdir / f"{tag}-endpoints.toml"
    endpoints.write_text(f'[[endpoints]]\nid = "desk"\nkind = "webhook"\nurl = "{receiver.url}"\n')
    data_dir = workdir / tag
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": servers,
        "TOXWATCH_CLINICAL_TOPIC": clinical,
        "TOXWATCH_REJECTED_TOPIC": f"{clinical}.rejected",
        "TOXWATCH_SAFETY_TOPIC": f"{clinical}.safety",
        "TOXWATCH_CONSUMER_GROUP": f"bench-{tag}",
        "TOXWATCH_DATA_DIR": str(data_dir),
        "TOXWATCH_STORE": "sqlite",
        "TOXWATCH_PARTITIONS": str(PARTITIONS),
        "TOXWATCH_ALERT_ENDPOINTS_FILE": str(endpoints),
        "TOXWATCH_WEBHOOK_SECRET": SECRET.decode(),
        "TOXWATCH_DISPATCH_MAX_BACKOFF_SECONDS": "1",
    }
    app = build_application(Settings(data_dir=data_dir, store="sqlite"))
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "services.cli", name],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("worker", "alerts", "dispatcher")
    ]
    producer = reliable_producer(servers, linger_ms=1)
    now = datetime.now(UTC)
    background = [f"BG-{i:04d}" for i in range(background_participants)]
    probes = [f"PR-{i:04d}" for i in range(int(seconds * probes_per_s) + 1)]
    setup = [(p, v) for p in background + probes for v in _onboarding(p, now)]
    for key, value in setup:
        producer.send(clinical, key=key.encode(), value=value)
    producer.flush()
    deadline = time.monotonic() + 300
    while applied(app, clinical, PARTITIONS) < len(setup):
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not apply the set-up messages")
        time.sleep(0.2)

    bare_sent: dict[str, float] = {}
    bare_seen: dict[str, float] = {}
    consumer = KafkaConsumer(
        bare,
        bootstrap_servers=servers,
        group_id=f"bare-{tag}",
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
            value = _event(
                "vitals.recorded", participant, datetime.now(UTC),
                temperature_c=36.8, heart_rate_bpm=78, systolic_bp_mmhg=121,
            )  # fmt: skip
            producer.send(clinical, key=participant.encode(), value=value)
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
    producer.flush()
    achieved = produced / (time.monotonic() - started)
    deadline = time.monotonic() + 180
    while set(sent) - set(arrived) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    reader.join(5)
    consumer.close()
    producer.close()
    for child in children:
        child.terminate()
        child.wait(15)
    receiver.stop()
    app.close()
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


def run_alert_bench(
    *,
    rates: list[int],
    seconds: float,
    probes_per_s: float,
    out: Path | None,
    keep: Path | None = None,
    runs: int = 1,
    background_participants: int = 200,
    console: Console | None = None,
) -> list[LatencyResult]:
    """``keep``: a folder to keep the runs' stores in (for a breakdown), else temporary.
    Each rate is measured ``runs`` times (fresh topics and store each time)."""
    console = console or Console(width=140)
    results = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        workdir = keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for rate in rates:
            per_run = [
                _run_one(
                    broker.bootstrap_servers,
                    workdir,
                    rate,
                    seconds,
                    probes_per_s,
                    console,
                    background_participants,
                )
                for _ in range(runs)
            ]
            results.append(median_result(per_run) if runs > 1 else per_run[0])
    console.print(alerts_table(results))
    if out is not None:
        out.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
    return results
