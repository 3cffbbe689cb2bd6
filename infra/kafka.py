"""kafka-python producers and consumers configured for ToxWatch."""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, KafkaProducer

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
