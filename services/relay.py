"""The relay: derived events from the store to Kafka, in log order.

Derived safety events go to ``toxwatch.safety.v1`` keyed by participant, rejected
messages (kept in the ingest ledger) to ``toxwatch.clinical.v1.rejected`` unchanged,
with the error in the ``error`` header. The relay tracks its position in the store
after each flushed batch; each message carries its log position in a header, and on
start the relay skips what the topics' last messages show was already published, so
a restart republishes nothing that reached the broker.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import Notification
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from domain.participant import SafetyEventRecorded
from domain.records import IngestLedger
from infra.metrics import Metrics
from infra.settings import Settings
from services.application import SafetyMonitoring

log = logging.getLogger(__name__)
POSITION_HEADER = "toxwatch-position"
RELAY_NAME = "relay"


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

    def reconcile(self, bootstrap_servers: str) -> None:
        """Skip past what the output topics show was already published."""
        published = last_published_position(
            bootstrap_servers, [self.settings.safety_topic, self.settings.rejected_topic]
        )
        if published > self.position:
            log.info("relay resumes after %d (store said %d)", published, self.position)
            self.app.record_tracking(RELAY_NAME, published)
            self.position = published

    def run_once(self) -> int:
        notifications = self.app.safety_notifications(
            self.position, self.settings.relay_batch, with_rejections=True
        )
        if not notifications:
            return 0
        sent = self._publish(notifications)
        self.producer.flush()
        for future in sent:
            # flush() does not raise for a record the broker refused: each send's
            # result does, and the position is then not recorded (sent again).
            future.get(timeout=self.settings.relay_send_timeout_s)
        self.position = notifications[-1].id
        self.app.record_tracking(RELAY_NAME, self.position)
        self.metrics.relay_position.set(self.position)
        return len(notifications)

    def _publish(self, notifications: Sequence[Notification]) -> list[Any]:
        mapper = self.app.mapper
        sent: list[Any] = []
        for notification in notifications:
            event = mapper.to_domain_event(notification)
            headers = [(POSITION_HEADER, str(notification.id).encode())]
            if isinstance(event, SafetyEventRecorded):
                safety = event.to_contract()
                topic = self.settings.safety_topic
                value = json.dumps(safety.to_wire(), separators=(",", ":")).encode()
                future = self.producer.send(
                    topic, key=safety.participant_id.encode(), value=value, headers=headers
                )
            elif isinstance(event, IngestLedger.MessageRejected):
                topic = self.settings.rejected_topic
                headers += [
                    ("error", json.dumps(event.error).encode()),
                    ("source", f"{event.topic}:{event.partition}:{event.offset}".encode()),
                ]
                future = self.producer.send(
                    topic,
                    key=_decode(event.key_b64),
                    value=_decode(event.value_b64),
                    headers=headers,
                )
            else:
                continue
            sent.append(future)
            self.metrics.relayed.labels(topic).inc()
        return sent

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self.run_once():
                stop.wait(self.settings.relay_poll_seconds)


def _decode(encoded: str | None) -> bytes | None:
    return base64.b64decode(encoded) if encoded is not None else None


def last_published_position(bootstrap_servers: str, topics: Sequence[str]) -> int:
    """The highest log position in the tail of each partition of ``topics``.

    Reads from just before each partition's reported end to the real end (some
    brokers report the end of the last record batch's first record), so that the
    last message published is always seen.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        best = 0
        for topic in topics:
            tps = [
                TopicPartition(topic, p)
                for p in sorted(consumer.partitions_for_topic(topic) or set())
            ]
            ends = consumer.end_offsets(tps) if tps else {}
            tails = [tp for tp in tps if ends[tp] > 0]
            if not tails:
                continue
            consumer.assign(tails)
            for tp in tails:
                consumer.seek(tp, ends[tp] - 1)
            empty_polls = 0
            while empty_polls < 2:
                polled = consumer.poll(timeout_ms=500)
                empty_polls = 0 if polled else empty_polls + 1
                for records in polled.values():
                    for record in records:
                        for name, value in record.headers or []:
                            if name == POSITION_HEADER:
                                best = max(best, int(value))
        return best
    finally:
        consumer.close()
