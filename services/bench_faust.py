"""A bare faust consume of the inbound topic, for ``toxwatch bench ingest``.

The worker's faust app, consumer settings, transport and batching (``take_events``
of ``batch_max_messages`` within ``batch_max_wait_ms``, each batch handed to one
executor thread), with the application's work replaced by JSON-decoding each value:
what consuming through faust alone costs, next to the bare kafka-python loop.

Run as ``python -m services.bench_faust`` with the worker's environment, and
``BENCH_EXPECTED`` (messages to read) and ``BENCH_OUT`` (a JSON file it writes
``{"messages": n, "seconds": s}`` to: the messages after the first batch and the
time from the first batch done to the last, as the full path is counted).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from infra.settings import Settings
from services.worker import consumer_app, consumer_transport, inbound_topic


def _decode(values: Sequence[bytes | None]) -> int:
    for value in values:
        json.loads(value or b"null")
    return len(values)


def bare_consumer(settings: Settings, expected: int, out: Path) -> faust.App:
    app = consumer_app(settings, settings.kafka_bootstrap_servers or "127.0.0.1:9092")
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")

    async def as_committed(consumer: Any, committed: Mapping[TP, int]) -> Mapping[TP, int]:
        return committed

    app.transport = consumer_transport(app, settings.fetch_max_wait_ms, as_committed)
    seen = at_first = 0
    first: float | None = None

    @app.agent(inbound_topic(app, settings), name="bare")
    async def consume(stream: Any) -> None:
        nonlocal seen, first, at_first
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(
            settings.batch_max_messages, within=settings.batch_max_wait_ms / 1000
        ):
            values = [e.message.value for e in events]
            seen += await loop.run_in_executor(executor, _decode, values)
            if first is None:  # counted from the first batch done, as the worker's
                first, at_first = time.perf_counter(), seen
            if seen >= expected:
                elapsed = time.perf_counter() - first
                out.write_text(json.dumps({"messages": seen - at_first, "seconds": elapsed}))
                os._exit(0)

    return app


def main() -> None:
    settings = Settings()
    app = bare_consumer(settings, int(os.environ["BENCH_EXPECTED"]), Path(os.environ["BENCH_OUT"]))
    faust.Worker(app, quiet=True, override_logging=False).execute_from_commandline()


if __name__ == "__main__":
    main()
