"""What a Kafka producer could not deliver must be reported and retried, never passed
over (issue 8): the relay and the Kafka alert channel against producers that fail the
way kafka-python's idempotent producer fails after the embedded broker restarts
(in-memory: it forgets the producer id, and ``InitProducerId`` then fails fatally).

Both found by ``toxwatch faults run --kinds broker``; see tests/faults/README.md.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import pytest
from kafka.errors import KafkaError

from domain.contract import SafetyEvent
from infra.channels import DeliveryFailed, KafkaChannel
from infra.kafka import TopicIdentity
from infra.settings import Settings
from services.offline import in_memory_application, process_lines
from services.relay import RELAY_NAME, OutputReplaced, Relay
from services.simulator import CohortSpec, simulate_cohort

FATAL = "KafkaError: Unexpected error in InitProducerIdResponse: [Error -1] UnknownError"


class _Metadata:
    partition = 0
    offset = 0


class _Future:
    """The part of kafka-python's ``FutureRecordMetadata`` a caller may use."""

    def __init__(self, error: Exception | None) -> None:
        self.exception = error
        self.value = None if error else _Metadata()

    def is_done(self) -> bool:
        return True

    def succeeded(self) -> bool:
        return self.exception is None

    def failed(self) -> bool:
        return self.exception is not None

    def get(self, timeout: float | None = None) -> Any:
        if self.exception is not None:
            raise self.exception
        return self.value

    def add_callback(self, fn: Any, *args: Any, **kwargs: Any) -> _Future:
        if self.exception is None:
            fn(*args, self.value, **kwargs)
        return self

    def add_errback(self, fn: Any, *args: Any, **kwargs: Any) -> _Future:
        if self.exception is not None:
            fn(*args, self.exception, **kwargs)
        return self

    def add_both(self, fn: Any, *args: Any, **kwargs: Any) -> _Future:
        self.add_callback(fn, *args, **kwargs)
        return self.add_errback(fn, *args, **kwargs)


class _Producer:
    """Accepts every send; each future fails (``fatal``) or succeeds."""

    def __init__(self, *, fatal: bool) -> None:
        self.fatal = fatal
        self.sent = 0
        self.closed = False

    def send(self, topic: str, **kwargs: Any) -> _Future:
        self.sent += 1
        return _Future(KafkaError(FATAL) if self.fatal else None)

    def flush(self, timeout: float | None = None) -> None:
        return None  # kafka-python's flush does not raise for failed records

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def _application_with_derived_events() -> Any:
    app = in_memory_application()
    messages = simulate_cohort(CohortSpec(participants=2, follow_up_days=10, malformed=False))
    out = io.StringIO()
    process_lines((m.value for m in messages), out, app=app)
    assert out.getvalue(), "the cohort should derive events"
    return app, [json.loads(line) for line in out.getvalue().splitlines()]


def test_relay_does_not_move_past_events_its_producer_failed_to_deliver() -> None:
    app, _ = _application_with_derived_events()
    try:
        producer = _Producer(fatal=True)
        relay = Relay(app, producer, Settings())
        with contextlib.suppress(Exception):  # raising is one right answer
            relay.run_once()
        assert producer.sent > 0
        assert (app.tracked(RELAY_NAME) or 0) == 0, (
            "the relay recorded a position past events that never reached Kafka"
        )
    finally:
        app.close()


def test_kafka_alert_channel_replaces_a_producer_that_failed_fatally(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, events = _application_with_derived_events()
    app.close()
    alert = SafetyEvent.model_validate(next(e for e in events if e["type"] == "alert.raised"))
    producers = [_Producer(fatal=True), _Producer(fatal=False)]
    made: list[_Producer] = []

    def reliable_producer(*args: Any, **kwargs: Any) -> _Producer:
        made.append(producers.pop(0) if producers else _Producer(fatal=False))
        return made[-1]

    monkeypatch.setattr("infra.kafka.reliable_producer", reliable_producer)
    channel = KafkaChannel("127.0.0.1:9", "alerts", timeout_s=1)
    with pytest.raises(DeliveryFailed):
        channel.send(alert)
    try:
        receipt = channel.send(alert)  # the dispatcher's retry
    except DeliveryFailed as failure:
        pytest.fail(f"the retry reused the failed producer: {failure}")
    assert receipt.idempotency_key == alert.event_id
    assert len(made) == 2 and made[0].closed


class _PartitionedProducer(_Producer):
    """Accepts every send and keeps where it went (4 partitions)."""

    def __init__(self) -> None:
        super().__init__(fatal=False)
        self.sends: list[tuple[str, int | None, bytes | None]] = []

    def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def send(self, topic: str, **kwargs: Any) -> _Future:
        self.sends.append((topic, kwargs.get("partition"), kwargs.get("key")))
        return super().send(topic, **kwargs)


def _derived_and_partitions(
    app: Any,
) -> tuple[list[tuple[int, bytes]], dict[bytes, int]]:
    """The derived events' log positions and keys, and each key's partition of 4 as the
    producer's default partitioner picks it."""
    from kafka.partitioner.default import murmur2

    derived = [
        (n.id, app.mapper.to_domain_event(n).to_contract().participant_id.encode())
        for n in app.safety_notifications(0, 10_000)
    ]
    return derived, {key: (murmur2(key) & 0x7FFFFFFF) % 4 for _, key in derived}


def test_a_restarted_relay_publishes_what_one_partition_lacks_though_others_are_ahead() -> None:
    """A broker restart failed the sends to one partition while later events reached
    the others: the relay, restarted, must skip per partition what each holds, not
    everything below the highest position any holds."""
    app, _ = _application_with_derived_events()
    try:
        settings = Settings()
        derived, partition_of = _derived_and_partitions(app)
        failed = partition_of[derived[0][1]]  # the first event's partition lost its sends
        last = derived[-1][0]
        held = {
            (settings.safety_topic, p): {n for n, key in derived if partition_of[key] == p}
            for p in range(4)
            if p != failed
        }
        assert held, "the cohort should span several partitions"
        producer = _PartitionedProducer()
        relay = Relay(app, producer, settings)
        relay.published = held  # what ``reconcile`` reads from the topics' tails

        while relay.run_once():
            pass

        resent = sorted(position for position, key in derived if partition_of[key] == failed)
        assert [key for _, _, key in producer.sends] == [
            key for _, key in derived if partition_of[key] == failed
        ]
        assert {p for _, p, _ in producer.sends} == {failed}
        assert resent and (app.tracked(RELAY_NAME) or 0) >= last
        assert relay.published == {}, "caught up"
    finally:
        app.close()


def test_a_restarted_relay_publishes_what_a_partition_lacks_below_what_it_holds() -> None:
    """After a broker restart an idempotent producer's earlier batch to a partition
    failed (``OutOfOrderSequenceNumber``) while a later one to the same partition was
    stored: the partition holds a position without the earlier ones. The restarted
    relay skips exactly what the partition holds and publishes the rest."""
    app, _ = _application_with_derived_events()
    try:
        settings = Settings()
        derived, partition_of = _derived_and_partitions(app)
        partition = partition_of[derived[0][1]]
        in_partition = [n for n, key in derived if partition_of[key] == partition]
        assert len(in_partition) >= 2, "the first participant should have several events"
        # The partition holds only its last event: every earlier one is missing.
        held = {(settings.safety_topic, partition): {in_partition[-1]}}
        producer = _PartitionedProducer()
        relay = Relay(app, producer, settings)
        relay.published = held

        while relay.run_once():
            pass

        assert len(producer.sends) == len(derived) - 1, "all but the one the partition holds"
        to_partition = [key for _, _, key in producer.sends if partition_of[key] == partition]
        assert len(to_partition) == len(in_partition) - 1
        assert relay.published == {}, "caught up"
    finally:
        app.close()


def test_a_batch_sent_across_a_recreation_of_its_topic_is_not_recorded_as_published() -> None:
    """A broker restarted without its data forgets the idempotent producer's id and may
    hand it to another client: it then answers the relay's sends as duplicates, which
    the producer counts as delivered, though it stored none of them (the fault suite's
    broker restart: 14 events of one partition missing, every later position
    recorded). The relay records a batch's position only while its output topics are
    the ones it started on; otherwise it stops, recording nothing, for a successor
    that reconciles with what the new topics hold."""
    app, _ = _application_with_derived_events()
    try:
        settings = Settings(relay_batch=5)
        ids = {settings.safety_topic: "safety-1", settings.rejected_topic: "rejected-1"}
        relay = Relay(app, _PartitionedProducer(), settings)
        relay.topic_ids = lambda topics: {topic: TopicIdentity(ids[topic], 4) for topic in topics}
        relay.note_outputs()
        assert relay.run_once() > 0, "unchanged topics: the batch is published"
        recorded = app.tracked(RELAY_NAME)
        assert recorded

        ids[settings.safety_topic] = "safety-2"  # recreated while the next batch is sent
        with pytest.raises(OutputReplaced):
            while relay.run_once():
                pass
        assert app.tracked(RELAY_NAME) == recorded, "nothing past the first batch recorded"
    finally:
        app.close()
