"""kafka-python producers and consumers configured for ToxWatch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

#: Group timings that let a consumer group form in seconds on the embedded broker.
GROUP_TIMINGS: dict[str, Any] = {
    "max_poll_interval_ms": 10_000,
    "session_timeout_ms": 6_000,
    "heartbeat_interval_ms": 1_000,
}


def reliable_producer(bootstrap_servers: str, **overrides: Any) -> KafkaProducer:
    """Idempotent producer that waits for every replica and retries."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "acks": "all",
        "enable_idempotence": True,
        "retries": 10,
        "linger_ms": 5,
        "max_in_flight_requests_per_connection": 5,
        "max_request_size": 2 * 1024 * 1024,
    }
    config.update(overrides)
    return KafkaProducer(**config)


def reading_consumer(bootstrap_servers: str, *topics: str, **overrides: Any) -> KafkaConsumer:
    """A consumer that reads topics from the beginning without committing."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "consumer_timeout_ms": 1000,
        **GROUP_TIMINGS,
    }
    config.update(overrides)
    return KafkaConsumer(*topics, **config)


#: What a broker that does not know topic ids reports for one.
_NO_TOPIC_ID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class TopicIdentity:
    """A topic's id (Kafka's UUID, new for each topic created under a name) and its
    number of partitions."""

    topic_id: str
    partitions: int


class TopicIds:
    """Looks up a topic's :class:`TopicIdentity` (``DescribeTopics``); None when the
    topic does not exist or the broker reports no id. Keeps one admin client, made
    again after a failure (which propagates). Not thread-safe: one caller thread."""

    def __init__(self, bootstrap_servers: str, **overrides: Any) -> None:
        self.config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "client_id": "toxwatch-topic-ids",
            "request_timeout_ms": 5_000,
            **overrides,
        }
        self._admin: KafkaAdminClient | None = None

    def __call__(self, topic: str) -> TopicIdentity | None:
        return self.describe([topic])[topic]

    def describe(self, topics: Sequence[str]) -> dict[str, TopicIdentity | None]:
        """Each topic's identity, in one ``DescribeTopics`` request."""
        if self._admin is None:
            self._admin = KafkaAdminClient(**self.config)
        try:
            descriptions = self._admin.describe_topics(list(topics))
        except Exception:
            self.close()
            raise
        found: dict[str, TopicIdentity | None] = dict.fromkeys(topics)
        for description in descriptions:
            topic_id = description.get("topic_id")
            if description.get("error_code") or not topic_id or str(topic_id) == _NO_TOPIC_ID:
                continue
            found[description["name"]] = TopicIdentity(
                str(topic_id), len(description.get("partitions") or ())
            )
        return found

    def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()
