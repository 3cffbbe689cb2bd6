"""The ingest worker: a faust agent on ``toxwatch.clinical.v1``.

faust consumes at-least-once; each batch is applied with ``SafetyMonitoring.apply_batch``
(new domain events and the partitions' positions in one transaction) before faust
acknowledges it, so a redelivered message is skipped by its tracked offset.

The inbound topic's id is checked when partitions are assigned and before every batch
is applied: a topic deleted and recreated (or lost with the broker's data) is recorded
as replaced and applied afresh from offset 0 (``services.ingest_sources``). Found at an
assignment, the consumer is positioned there; found by a batch (no rebalance yet), the
batch is not applied and the process exits for its supervisor to restart it, since the
consumer's position and buffer belong to the old topic.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP
from more_itertools import constrained_batches

from infra.kafka import TopicIds
from infra.metrics import Metrics
from infra.settings import Settings
from services.application import STORE_ERRORS, BatchOutcome, InboundMessage, SafetyMonitoring
from services.ingest_sources import SourceCheck, SourceReplaced, SourceUnavailable

log = logging.getLogger(__name__)
MAX_STORE_BACKOFF_S = 5.0
#: Tries of a batch the store refuses before the process exits (about 10 s).
STORE_ATTEMPTS = 6
#: Failures a batch waits out (with backoff) before the process gives up: the store's,
#: and the inbound topic's id that cannot be looked up while it must be checked.
RETRIED_ERRORS: tuple[type[BaseException], ...] = (*STORE_ERRORS, SourceUnavailable)


def record_outcome(metrics: Metrics, outcome: BatchOutcome, size: int) -> None:
    for event_type, count in outcome.accepted_by_type.items():
        metrics.ingested.labels(event_type).inc(count)
    for code, count in outcome.rejected_by_code.items():
        metrics.rejected.labels(code).inc(count)
    metrics.duplicates.inc(outcome.duplicates)
    metrics.redelivered.inc(outcome.already_applied)
    for event in outcome.derived:
        metrics.derived.labels(event.type).inc()
        if event.type == "crs.graded":
            metrics.crs_grades.labels(event.dose_level or "unknown", str(event.data["grade"])).inc()
    metrics.batch_size.observe(size)
    metrics.commit_seconds.observe(outcome.commit_seconds)
    for check in outcome.source_checks:
        record_source_check(metrics, check)


def record_source_check(metrics: Metrics, check: SourceCheck) -> None:
    metrics.topic_incarnation.labels(check.topic).set(check.incarnation)
    # The series exists (at 0) from the first check, so a rate sees the first increase.
    replacements = metrics.topic_replacements.labels(check.topic)
    if check.outcome == "replaced":
        replacements.inc()


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    """faust's consumer thread with the fetch wait of the settings: faust fixes
    aiokafka's ``fetch_max_wait_ms`` at 1500 ms, and a broker that holds a fetch for
    its whole wait (the embedded tansu does, even when a message arrives) then delays
    every message by up to that much (measured: 716 ms median at 1500, 13 ms at 50)."""

    fetch_max_wait_ms = 100

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads it when the consumer starts (no public setter).
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


#: Given the consumer and the committed offsets it sought to, seeks where it must
#: resume instead and returns the offsets it resumes from.
Align = Callable[[Any, Mapping[TP, int]], Awaitable[Mapping[TP, int]]]


def consumer_transport(app: faust.App, fetch_max_wait_ms: int, align: Align) -> Any:
    """faust's Kafka transport, its consumer using :class:`_ConsumerThread` and
    resuming, after each assignment, where ``align`` says."""

    class ConsumerThread(_ConsumerThread):
        pass

    ConsumerThread.fetch_max_wait_ms = fetch_max_wait_ms

    class Consumer(faust_kafka.Consumer):
        def _new_consumer_thread(self) -> Any:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def seek_to_committed(self) -> Mapping[TP, int]:
            # faust seeks to the committed offsets after every assignment (and while
            # its flow is stopped): the store gets the last word.
            return await align(self, await super().seek_to_committed())

    class Transport(faust_kafka.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport(app.conf.broker_consumer, app)


def consumer_app(settings: Settings, bootstrap_servers: str) -> faust.App:
    """The worker's faust app and consumer settings, without its agent or transport
    (``toxwatch bench ingest`` measures a bare consume on the same)."""
    return faust.App(
        settings.consumer_group,
        broker=f"kafka://{bootstrap_servers}",
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_max_poll_interval=300.0,
        broker_rebalance_timeout=10.0,
        broker_commit_every=settings.batch_max_messages,
        broker_commit_interval=0.5,
        consumer_max_fetch_size=4 * 1024 * 1024,
        stream_buffer_maxsize=4 * settings.batch_max_messages,
        # A batch whose agent raised must not count as processed (nor its offsets).
        stream_ack_exceptions=False,
    )


def inbound_topic(app: faust.App, settings: Settings) -> Any:
    """The clinical topic as the worker reads it: raw bytes."""
    return app.topic(
        settings.clinical_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )


def create_faust_app(
    settings: Settings, bootstrap_servers: str, application: SafetyMonitoring, metrics: Metrics
) -> faust.App:
    app = consumer_app(settings, bootstrap_servers)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def align(consumer: Any, committed: Mapping[TP, int]) -> Mapping[TP, int]:
        """Resume the inbound topic's partitions at the store's positions where the
        committed offsets are past them (its id checked first): offsets committed for a
        topic since replaced, or a store restored from a backup, would otherwise skip
        messages the store never applied."""
        tps = sorted(tp for tp in consumer.assignment() if tp.topic == settings.clinical_topic)
        if not tps:
            return committed
        loop = asyncio.get_running_loop()
        positions, check = await _resume_positions(loop, executor, application, tps)
        if check is not None:
            record_source_check(metrics, check)
        aligned = dict(committed)
        behind = {
            tp: positions[tp.partition]
            for tp in tps
            if (committed.get(tp) or 0) > positions[tp.partition]
        }
        if behind:
            log.warning(
                "the committed offsets of %s are past the store's positions %s: resuming "
                "from the store's",
                settings.clinical_topic,
                {tp.partition: (committed.get(tp), offset) for tp, offset in behind.items()},
            )
            await consumer.seek_wait(behind)
            aligned.update(behind)
        return aligned

    app.transport = consumer_transport(app, settings.fetch_max_wait_ms, align)
    topic = inbound_topic(app, settings)

    @app.on_partitions_assigned.connect
    async def sources_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        """A rebalance (a broker restart or a recreated topic makes one): the topic's id
        is checked again before anything is applied (``align`` checks it when faust
        seeks; else the next batch does)."""
        application.sources_assigned({tp.topic for tp in assigned})

    @app.agent(topic, name="ingest")
    async def ingest(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(
            settings.batch_max_messages, within=settings.batch_max_wait_ms / 1000
        ):
            received_at = datetime.now(UTC)
            messages = [
                InboundMessage(
                    topic=e.message.topic,
                    partition=e.message.partition,
                    offset=e.message.offset,
                    key=e.message.key,
                    value=e.message.value,
                    received_at=received_at,
                )
                for e in events
            ]
            for outcome in await apply_in_transactions(
                loop, executor, application, messages, metrics, settings.batch_max_bytes
            ):
                _record_lag(app, metrics, outcome)
                if outcome.rejected:
                    log.info(
                        "rejected %d message(s): %s",
                        outcome.rejected,
                        dict(outcome.rejected_by_code),
                    )

    return app


def _size(message: InboundMessage) -> int:
    return len(message.value or b"") + len(message.key or b"")


async def apply_in_transactions(
    loop: asyncio.AbstractEventLoop,
    executor: ThreadPoolExecutor,
    application: SafetyMonitoring,
    messages: Sequence[InboundMessage],
    metrics: Metrics,
    max_bytes: int,
) -> list[BatchOutcome]:
    """Apply a batch in order, in transactions of at most ``max_bytes`` of keys and
    values (a larger message alone): one per batch unless its messages are large.
    Each is stored with its positions before the next, so a crash between them
    resumes after the last one stored (``_apply_until_stored``)."""
    outcomes = []
    for part in constrained_batches(messages, max_bytes, get_len=_size, strict=False):
        outcome = await _apply_until_stored(loop, executor, application, part, metrics)
        record_outcome(metrics, outcome, len(part))
        outcomes.append(outcome)
    return outcomes


def _record_lag(app: faust.App, metrics: Metrics, outcome: BatchOutcome) -> None:
    """Consumer lag per partition after a batch: the partition's high watermark less
    the next offset to apply in the topic's current incarnation (unknown high
    watermarks are left as they were)."""
    for (topic, partition), position in outcome.positions.items():
        try:
            highwater = app.consumer.highwater(TP(topic, partition))
        except Exception:  # not assigned any more, or not known yet
            continue
        if highwater is not None:
            lag = max(highwater - position, 0)
            metrics.consumer_lag.labels(str(partition)).set(lag)


async def _resume_positions(
    loop: asyncio.AbstractEventLoop,
    executor: ThreadPoolExecutor,
    application: SafetyMonitoring,
    tps: Sequence[TP],
) -> tuple[dict[int, int], SourceCheck | None]:
    """The store's positions of the inbound topic (``resume_positions``), its id checked
    first. If the id cannot be checked for a while, the process exits: consuming
    without knowing which topic the positions belong to could skip messages."""
    topic = tps[0].topic
    partitions = [tp.partition for tp in tps]
    delay = 0.2
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            return await loop.run_in_executor(
                executor, application.resume_positions, topic, partitions, datetime.now(UTC)
            )
        except RETRIED_ERRORS as error:
            if attempt == STORE_ATTEMPTS:
                log.critical(
                    "resuming %s failed %d times (%s): exiting", topic, attempt, _reason(error)
                )
                logging.shutdown()
                os._exit(75)
            log.error("resuming %s failed (%s); retrying in %.1f s", topic, _reason(error), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_STORE_BACKOFF_S)
    raise AssertionError("unreachable")


def _apply(application: SafetyMonitoring, messages: Sequence[InboundMessage]) -> BatchOutcome:
    return application.apply_batch(messages, now=datetime.now(UTC))


async def _apply_until_stored(
    loop: asyncio.AbstractEventLoop,
    executor: ThreadPoolExecutor,
    application: SafetyMonitoring,
    messages: Sequence[InboundMessage],
    metrics: Metrics,
) -> BatchOutcome:
    """Apply a batch until the store takes it: a store failure (lost connection, full
    or read-only disk), or an inbound topic whose id must be checked and cannot be, is
    waited out with backoff and never skipped (faust would commit the batch's offsets
    once the agent moved on); if it lasts, on an inbound topic replaced while it was
    consumed (``SourceReplaced``), and on any other failure (a defect this process
    cannot contain), the process exits without committing, and its successor
    (restarted by its supervisor) resumes from the store's positions."""
    delay = 0.2
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            return await loop.run_in_executor(executor, _apply, application, messages)
        except SourceReplaced as replaced:
            # The consumer's position and what it has buffered belong to the old
            # incarnation: a fresh process is positioned from the store's positions of
            # the new one (recorded by now), as after any restart.
            record_source_check(metrics, replaced.check)
            log.critical("%s: exiting to resume from the store's positions", replaced)
            logging.shutdown()
            os._exit(75)
        except RETRIED_ERRORS as error:
            first = messages[0]
            if attempt == STORE_ATTEMPTS:
                # A connection can stay broken after the store recovers (SQLite after a
                # failed write): a fresh process reconnects and resumes from the store.
                log.critical(
                    "a batch could not be applied %d times (%s): exiting to reconnect",
                    attempt,
                    _reason(error),
                )
                logging.shutdown()
                os._exit(75)
            log.error(
                "a batch of %d from %s#%d@%d could not be applied (%s); retrying in %.1f s",
                len(messages),
                first.topic,
                first.partition,
                first.offset,
                _reason(error),
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_STORE_BACKOFF_S)
        except Exception:
            log.critical("applying a batch failed unexpectedly: exiting", exc_info=True)
            logging.shutdown()
            os._exit(70)
    raise AssertionError("unreachable")


def _reason(error: BaseException) -> str:
    """Why a batch failed, for the log: the store's errors by type only (their text
    can quote stored values)."""
    if isinstance(error, SourceUnavailable):
        return str(error)
    return type(error).__name__


#: The collector's thresholds in the worker (CPython's default: 700, 10, 10). Applying
#: a batch allocates many short-lived objects beside a large, long-lived heap (the
#: cached records): with the default, collections took about a tenth of the CPU of
#: applying vital signs in-process; at these, none measurable. Cyclic garbage is
#: still collected, less often; the cached records themselves are bounded by
#: ``aggregate_cache_size``.
GC_THRESHOLDS = (20_000, 20, 20)


def run_worker(
    settings: Settings, bootstrap_servers: str, application: SafetyMonitoring, metrics: Metrics
) -> None:
    """Run the faust worker until it is stopped (SIGINT/SIGTERM)."""
    gc.set_threshold(*GC_THRESHOLDS)
    application.topic_ids = TopicIds(bootstrap_servers)
    app = create_faust_app(settings, bootstrap_servers, application, metrics)
    # Logging is the process's own (services.logs), JSON in production.
    worker = faust.Worker(app, quiet=True, override_logging=False)
    worker.execute_from_commandline()
