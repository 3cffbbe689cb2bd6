"""``toxwatch bench large``: the worker's peak resident memory on a flood of large
messages.

Each message is valid JSON padded past the worker's size limit
(``TOXWATCH_MAX_MESSAGE_BYTES``): rejected ``too_large`` and kept whole in the ingest
ledger (contract §4), the costliest message to apply. The flood is produced to the
embedded broker once; each run starts one ``toxwatch worker`` on a fresh store, waits
until it has applied every message, and reads its peak resident set (``VmHWM``).

The same run measures its baseline: the same flood applied one transaction per
batch (``TOXWATCH_BATCH_MAX_BYTES`` above any batch's bytes), as the worker did before
transactions were bounded by bytes. The ratio is peak RSS with the configured bound
over peak RSS without it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka import reliable_producer
from infra.settings import Settings
from services.bench_harness import (
    BenchStore,
    applied,
    check_alive,
    peak_rss_bytes,
    pipeline_env,
    running,
    topics_of,
    wait_for,
)

PARTITIONS = 4
#: ``TOXWATCH_BATCH_MAX_BYTES`` of the baseline: no batch reaches it.
UNBOUNDED = 2**62
#: Messages sent between flushes: the embedded broker takes large records slowly, and
#: records queued longer than the producer's delivery timeout would expire unsent.
PRODUCE_FLUSH_EVERY = 25


@dataclass
class LargeResult:
    messages: int
    message_bytes: int
    max_transaction_bytes: int
    bounded_peak_rss: list[int] = field(default_factory=list)
    unbounded_peak_rss: list[int] = field(default_factory=list)

    @property
    def bounded(self) -> float:
        return statistics.median(self.bounded_peak_rss)

    @property
    def unbounded(self) -> float:
        return statistics.median(self.unbounded_peak_rss)

    @property
    def ratio(self) -> float:
        return self.bounded / self.unbounded

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio}


def oversized(index: int, size: int) -> bytes:
    """A JSON object of ``size`` bytes (its own id, then whitespace)."""
    head = json.dumps({"bench": "large", "index": index}).encode()
    return head[:-1] + b" " * max(size - len(head), 0) + b"}"


def produce_flood(servers: str, topic: str, count: int, size: int) -> int:
    """``count`` messages of ``size`` bytes, keyed over 50 participants; the number the
    broker holds (every send is checked)."""
    producer = reliable_producer(servers, max_request_size=size + 64 * 1024)
    try:
        for start in range(0, count, PRODUCE_FLUSH_EVERY):
            sends = [
                producer.send(topic, key=f"P{i % 50}".encode(), value=oversized(i, size))
                for i in range(start, min(start + PRODUCE_FLUSH_EVERY, count))
            ]
            producer.flush()
            for send in sends:
                send.get(timeout=60)  # raises what the broker refused
    finally:
        producer.close()
    return count


def _worker_peak(
    servers: str, topic: str, expected: int, store: str, workdir: Path, max_bytes: int
) -> int:
    with BenchStore(store, workdir) as fresh:
        app = fresh.open()
        env = pipeline_env(servers, topic, PARTITIONS, fresh) | {
            "TOXWATCH_BATCH_MAX_BYTES": str(max_bytes)
        }
        try:
            with running(("worker",), env) as children:

                def done() -> bool:
                    check_alive(children)
                    return applied(app, topic, PARTITIONS) >= expected

                wait_for(done, timeout=1800, interval=0.1)
                return peak_rss_bytes(children[0].pid)  # the peak of its whole run
        finally:
            app.close()


def run_large_bench(
    *,
    messages: int = 800,
    message_kib: int = 900,
    runs: int = 1,
    store: str = "sqlite",
    out: Path | None = None,
    console: Console | None = None,
) -> LargeResult:
    console = console or Console()
    size = message_kib * 1024
    limit = Settings().max_message_bytes
    if size <= limit:
        raise ValueError(f"messages of {size} bytes are within the worker's limit ({limit})")
    result = LargeResult(messages, size, Settings().batch_max_bytes)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        servers, topic = broker.bootstrap_servers, f"bench.large.{uuid.uuid4().hex[:6]}"
        ensure_topics(servers, topics_of(topic), PARTITIONS)
        started = time.perf_counter()
        produce_flood(servers, topic, messages, size)
        console.print(
            f"produced {messages:,} messages of {message_kib:,} KiB "
            f"in {time.perf_counter() - started:,.0f} s"
        )
        for run in range(runs):
            for peaks, max_bytes in (
                (result.unbounded_peak_rss, UNBOUNDED),
                (result.bounded_peak_rss, result.max_transaction_bytes),
            ):
                peaks.append(_worker_peak(servers, topic, messages, store, Path(tmp), max_bytes))
            console.print(
                f"run {run + 1}/{runs}: peak RSS {result.bounded_peak_rss[-1] / 2**20:,.0f} MiB "
                f"bounded, {result.unbounded_peak_rss[-1] / 2**20:,.0f} MiB one transaction "
                "per batch"
            )
    console.print(large_table(result, store))
    if out is not None:
        out.write_text(json.dumps(result.to_json(), indent=2))
    return result


def large_table(result: LargeResult, store: str) -> Table:
    table = Table(
        title=f"toxwatch bench large: {result.messages:,} rejected messages of "
        f"{result.message_bytes / 1024:,.0f} KiB ({store}), median of "
        f"{len(result.bounded_peak_rss)}"
    )
    for column in (
        "transactions",
        "worker peak RSS (MiB)",
        "baseline: one per batch (MiB)",
        "ratio",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        f"≤ {result.max_transaction_bytes / 2**20:g} MiB each",
        f"{result.bounded / 2**20:,.0f}",
        f"{result.unbounded / 2**20:,.0f}",
        f"{result.ratio:.2f}",
    )
    return table
