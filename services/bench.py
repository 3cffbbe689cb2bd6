"""``toxwatch bench ingest``: full ingest path against a same-run baseline.

For each store, each run: produce the same simulated messages to a fresh topic on
the embedded broker, then measure
- the baseline: a bare kafka-python loop that only consumes and JSON-decodes them;
- the full path: ``toxwatch worker`` (faust → validation → aggregates → one store
  commit per batch with tracking) and ``toxwatch relay`` (store → Kafka) as child
  processes, from the first committed batch until the relay has published the last
  derived event.
Figures are medians over the runs; the ratio is full path / baseline.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psycopg
from kafka import KafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka import reliable_producer
from infra.settings import Settings
from services.application import SafetyMonitoring
from services.bootstrap import build_application
from services.relay import RELAY_NAME
from services.simulator import CohortSpec, SimulatedMessage, simulate_cohort

PARTITIONS = 4


@dataclass
class BenchResult:
    store: str
    messages: int
    baseline_events_per_s: float
    full_path_events_per_s: float

    @property
    def ratio(self) -> float:
        return self.full_path_events_per_s / self.baseline_events_per_s


def bench_messages(count: int) -> list[SimulatedMessage]:
    """At least ``count`` valid messages: simulated cohorts with distinct participants."""
    messages: list[SimulatedMessage] = []
    seed = 1
    while len(messages) < count:
        cohort = simulate_cohort(
            replace(CohortSpec(), seed=seed, malformed=False, trial_id=f"BENCH-{seed}")
        )
        messages.extend(cohort)
        seed += 1
    return messages[:count]


def _produce(servers: str, topic: str, messages: list[SimulatedMessage]) -> int:
    producer = reliable_producer(servers, linger_ms=20, batch_size=256 * 1024)
    partitions = sorted(producer.partitions_for(topic))
    sent = 0
    for message in messages:
        if message.key == b"-":
            for partition in partitions:
                producer.send(topic, key=message.key, value=message.value, partition=partition)
                sent += 1
        else:
            producer.send(topic, key=message.key, value=message.value)
            sent += 1
    producer.flush()
    producer.close()
    return sent


def _baseline(servers: str, topic: str, expected: int) -> float:
    consumer = KafkaConsumer(
        bootstrap_servers=servers, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    seen = 0
    started = time.perf_counter()
    while seen < expected:
        for records in consumer.poll(timeout_ms=500, max_records=5000).values():
            for record in records:
                json.loads(record.value)
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


def _full_path(servers: str, topic: str, expected: int, store: str, workdir: Path) -> float:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": servers,
        "TOXWATCH_CLINICAL_TOPIC": topic,
        "TOXWATCH_SAFETY_TOPIC": f"{topic}.safety",
        "TOXWATCH_REJECTED_TOPIC": f"{topic}.rejected",
        "TOXWATCH_CONSUMER_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
        "TOXWATCH_DATA_DIR": str(workdir / schema),
        "TOXWATCH_STORE": store,
        "TOXWATCH_POSTGRES_SCHEMA": schema,
        "TOXWATCH_PARTITIONS": str(PARTITIONS),
    }
    if store == "postgres":
        with psycopg.connect("host=127.0.0.1 dbname=test user=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    settings = Settings(
        **{  # the same configuration the children read
            "data_dir": workdir / schema,
            "store": store,
            "postgres_schema": schema,
        }
    )
    app = build_application(settings)
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "services.cli", name],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("worker", "relay")
    ]
    try:
        first = _wait_for(lambda: _applied(app, topic) > 0, timeout=120)
        applied_at_first = _applied(app, topic)
        _wait_for(lambda: _applied(app, topic) >= expected, timeout=600)
        _wait_for(lambda: _relayed(app), timeout=600)
        done = time.perf_counter()
        return (expected - applied_at_first) / (done - first)
    finally:
        for child in children:
            child.terminate()
            child.wait(15)
        if store == "postgres":
            with psycopg.connect(
                "host=127.0.0.1 dbname=test user=postgres", autocommit=True
            ) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _applied(app: SafetyMonitoring, topic: str) -> int:
    return sum(app.ingest_positions(topic, range(PARTITIONS)).values())


def _relayed(app: SafetyMonitoring) -> bool:
    last = app.recorder.max_notification_id() or 0
    return (app.tracked(RELAY_NAME) or 0) >= _last_relayable(app, last)


def _last_relayable(app: SafetyMonitoring, last: int) -> int:
    tail = app.safety_notifications(max(0, last - 5000), 5000, with_rejections=True)
    return tail[-1].id if tail else 0


def _wait_for(condition, timeout: float) -> float:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark stage did not finish in time")
        time.sleep(0.02)
    return time.perf_counter()


def run_ingest_bench(
    *, events: int, stores: list[str], runs: int, out: Path | None
) -> list[BenchResult]:
    console = Console()
    messages = bench_messages(events)
    results: list[BenchResult] = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        servers = broker.bootstrap_servers
        for store in stores:
            baselines, full = [], []
            for run in range(runs):
                topic = f"bench.{store}.{run}.{uuid.uuid4().hex[:6]}"
                ensure_topics(servers, [topic, f"{topic}.safety", f"{topic}.rejected"], PARTITIONS)
                expected = _produce(servers, topic, messages)
                baselines.append(_baseline(servers, topic, expected))
                full.append(_full_path(servers, topic, expected, store, Path(tmp)))
                console.print(
                    f"{store} run {run + 1}: baseline {baselines[-1]:,.0f}/s, "
                    f"full path {full[-1]:,.0f}/s"
                )
            results.append(
                BenchResult(store, expected, statistics.median(baselines), statistics.median(full))
            )
    table = Table(
        title=f"toxwatch bench ingest ({len(messages)} simulated events, median of {runs})"
    )
    for column in ("store", "messages", "baseline ev/s", "full path ev/s", "ratio"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r.store,
            str(r.messages),
            f"{r.baseline_events_per_s:,.0f}",
            f"{r.full_path_events_per_s:,.0f}",
            f"{r.ratio:.3f}",
        )
    console.print(table)
    if out is not None:
        out.write_text(
            json.dumps([asdict(r) | {"ratio": r.ratio} for r in results], indent=2) + "\n"
        )
    return results
