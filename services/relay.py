"""The relay: derived events from the store to Kafka, in log order.

Derived safety events go to ``toxwatch.safety.v1`` keyed by participant, rejected
messages (kept in the ingest ledger) to ``toxwatch.clinical.v1.rejected`` unchanged,
with the error in the ``error`` header. The relay tracks its position in the store
after each flushed batch; each message carries its log position in a header, and on
start the relay reads which positions past its own each partition already holds and
skips exactly those, so a restart republishes nothing that reached the broker and
passes over nothing that did not. Neither "everything below the highest position any
partition holds" nor "below the highest one this partition holds" is safe: a broker
restart can fail the sends to one partition while later ones reach the others, and
after it an idempotent producer's earlier batch to a partition can fail
(``OutOfOrderSequenceNumber``) while a later one to the same partition was stored.
A batch's position is recorded only while the output topics keep the ids they had
when the relay started (``Relay.note_outputs``): a broker restarted without its data
can answer a send as a duplicate without storing it.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eventsourcing.persistence import Notification
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2

from domain.participant import SafetyEventRecorded
from domain.records import IngestLedger
from infra.kafka import TopicIdentity
from infra.metrics import Metrics
from infra.settings import Settings
from services.application import SafetyMonitoring

log = logging.getLogger(__name__)
POSITION_HEADER = "toxwatch-position"
RELAY_NAME = "relay"


class OutputReplaced(RuntimeError):
    """An output topic has another id than when the relay started (``Relay.run_once``)."""


class Relay:
    def __init__(
        self,
        application: SafetyMonitoring,
        producer: KafkaProducer,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = application
        self.producer = producer
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.position = application.tracked(RELAY_NAME) or 0
        #: While catching up after a restart: (topic, partition) -> the log positions
        #: past the store's position that partition already holds.
        self.published: dict[tuple[str, int], set[int]] = {}
        #: Looks up the output topics' ids in one request (the relay process's Kafka
        #: admin client, ``TopicIds.describe``); None: not checked (tests of the relay
        #: alone).
        self.topic_ids: Callable[[Sequence[str]], Mapping[str, TopicIdentity | None]] | None = None
        #: The output topics' ids when the relay started (``note_outputs``).
        self._output_ids: dict[str, str | None] = {}

    def reconcile(self, bootstrap_servers: str) -> None:
        """Find what the output topics show was already published past the store's
        position: until the relay has caught up with it, each message that its
        partition already holds is skipped."""
        self.note_outputs()
        published = published_positions(
            bootstrap_servers,
            [self.settings.safety_topic, self.settings.rejected_topic],
            after=self.position,
        )
        published = {tp: positions for tp, positions in published.items() if positions}
        if published:
            log.info(
                "relay resumes after %d, skipping the %d positions the partitions hold (up to %d)",
                self.position,
                sum(len(positions) for positions in published.values()),
                max(max(positions) for positions in published.values()),
            )
            self.published = published

    def run_once(self) -> int:
        notifications = self.app.safety_notifications(
            self.position, self.settings.relay_batch, with_rejections=True
        )
        if not notifications:
            return 0
        sent = self._publish(notifications)
        if self.published and notifications[-1].id >= max(
            (max(positions) for positions in self.published.values() if positions), default=0
        ):
            self.published = {}  # caught up
        self.producer.flush()
        for future in sent:
            # flush() does not raise for a record the broker refused: each send's
            # result does, and the position is then not recorded (sent again).
            future.get(timeout=self.settings.relay_send_timeout_s)
        self._check_outputs()
        self.position = notifications[-1].id
        self.app.record_tracking(RELAY_NAME, self.position)
        self.metrics.relay_position.set(self.position)
        return len(notifications)

    def note_outputs(self) -> None:
        """Record the output topics' ids: a batch is recorded as published only while
        they are unchanged (``_check_outputs``)."""
        self._output_ids = self._topic_ids()

    def _topic_ids(self) -> dict[str, str | None]:
        if self.topic_ids is None:
            return {}
        topics = [self.settings.safety_topic, self.settings.rejected_topic]
        return {
            topic: getattr(identity, "topic_id", None)
            for topic, identity in self.topic_ids(topics).items()
        }

    def _check_outputs(self) -> None:
        """Before a batch's position is recorded: the output topics are still the ones
        the relay started on. A broker restarted without its data (the embedded broker
        keeps none) forgets the idempotent producer's id and may hand it to another
        client: sends it then answers as duplicates count as delivered, though it
        never stored them (seen in the fault suite: every later position recorded,
        14 events of one partition missing). Raises ``OutputReplaced``, nothing
        recorded: the process exits, and its successor, with a new producer, publishes
        from the recorded position what the new topics lack (``reconcile``)."""
        now = self._topic_ids()
        changed = sorted(t for t, topic_id in now.items() if topic_id != self._output_ids.get(t))
        if changed:
            raise OutputReplaced(
                f"output topic(s) {', '.join(changed)} replaced since the relay started: "
                f"the batch after position {self.position} is not recorded as published"
            )

    def _publish(self, notifications: Sequence[Notification]) -> list[Any]:
        mapper = self.app.mapper
        sent: list[Any] = []
        for notification in notifications:
            event = mapper.to_domain_event(notification)
            headers = [(POSITION_HEADER, str(notification.id).encode())]
            if isinstance(event, SafetyEventRecorded):
                safety = event.to_contract()
                topic = self.settings.safety_topic
                key = safety.participant_id.encode()
                value = json.dumps(safety.to_wire(), separators=(",", ":")).encode()
            elif isinstance(event, IngestLedger.MessageRejected):
                topic = self.settings.rejected_topic
                headers += [
                    ("error", json.dumps(event.error).encode()),
                    ("source", f"{event.topic}:{event.partition}:{event.offset}".encode()),
                ]
                key, value = _decode(event.key_b64), _decode(event.value_b64)
            else:
                continue
            partition = self._partition(topic, key, notification.id)
            if partition is not None and notification.id in self.published.get(
                (topic, partition), ()
            ):
                continue  # that partition holds it already
            future = self.producer.send(
                topic, key=key, value=value, headers=headers, partition=partition
            )
            sent.append(future)
            self.metrics.relayed.labels(topic).inc()
        return sent

    def _partition(self, topic: str, key: bytes | None, position: int) -> int | None:
        """The partition of a message: its key's, as the producer's default partitioner
        picks it (given only while catching up), else one chosen by its log position
        (never at random: where it went must be known to catch up after a restart)."""
        if key is not None and not self.published:
            return None
        partitions = sorted(self.producer.partitions_for(topic))
        if key is None:
            return partitions[position % len(partitions)]
        return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self.run_once():
                stop.wait(self.settings.relay_poll_seconds)


def _decode(encoded: str | None) -> bytes | None:
    return base64.b64decode(encoded) if encoded is not None else None


def published_positions(
    bootstrap_servers: str, topics: Sequence[str], *, after: int
) -> dict[tuple[str, int], set[int]]:
    """The log positions past ``after`` that each partition of ``topics`` holds.

    Reads each partition's tail to its real end (some brokers report the end of the
    last record batch's first record), from a window before the reported end that
    widens until it reaches a position at or below ``after``, or the partition's
    beginning: what lies past the relay's position is what it sent since it last
    recorded one (a batch, or a few if it failed repeatedly).
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        found: dict[tuple[str, int], set[int]] = {}
        for topic in topics:
            tps = [
                TopicPartition(topic, p)
                for p in sorted(consumer.partitions_for_topic(topic) or set())
            ]
            if not tps:
                continue
            begins = consumer.beginning_offsets(tps)
            ends = consumer.end_offsets(tps)
            window = 512
            pending = [tp for tp in tps if ends[tp] > begins[tp]]
            while pending:
                starts = {tp: max(begins[tp], ends[tp] - window) for tp in pending}
                read = _positions_from(consumer, starts)
                widen = []
                for tp in pending:
                    positions = read.get(tp, [])
                    found[(tp.topic, tp.partition)] = {p for p in positions if p > after}
                    if starts[tp] > begins[tp] and (not positions or min(positions) > after):
                        widen.append(tp)
                pending, window = widen, window * 4
        return found
    finally:
        consumer.close()


def _positions_from(consumer: KafkaConsumer, starts: dict[Any, int]) -> dict[Any, list[int]]:
    """The position headers of every message from ``starts`` to each partition's end."""
    consumer.assign(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    read: dict[Any, list[int]] = {tp: [] for tp in starts}
    empty_polls = 0
    while empty_polls < 2:
        polled = consumer.poll(timeout_ms=500)
        empty_polls = 0 if polled else empty_polls + 1
        for tp, records in polled.items():
            for record in records:
                for name, value in record.headers or []:
                    if name == POSITION_HEADER:
                        read[tp].append(int(value))
    return read
