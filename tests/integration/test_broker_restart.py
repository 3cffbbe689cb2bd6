"""A broker that loses its topics (issue 8, fault kind ``broker``): the embedded broker
(tansu, in memory) is SIGKILLed mid-stream and started again on the same port with the
topics created again, empty, their offsets starting at 0 below the store's positions.

The real ``toxwatch worker`` finds the inbound topic's new id, records the replacement
in the store and applies what is produced after the restart from offset 0 (found in a
batch before any rebalance, it exits and is restarted, as by its supervisor), so the
participants' records end as ``toxwatch process`` makes them from the whole stream;
a worker of another consumer group then reading the whole new topic again (a
redelivery of every message) applies nothing twice.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.broker import EmbeddedBroker
from services.ingest_sources import IngestSource
from services.offline import in_memory_application
from services.simulator import CohortSpec, simulate_cohort
from tests.conftest import Kafka, Services, Store, Topics, next_offsets
from tests.integration import participants_of, process_offline, recorded_event_ids, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

COHORT = CohortSpec(participants=3, follow_up_days=10, malformed=False)


@pytest.fixture
def restartable_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own (the session's is never restarted)."""
    embedded = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        yield embedded
    finally:
        embedded.stop()


def restart(embedded: EmbeddedBroker) -> None:
    """SIGKILL the broker and start it again on the same port: in memory, empty."""
    process = embedded.process
    assert process is not None
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
    embedded.process = None
    embedded.start()


def committed_offsets(servers: str, group: str, topic: str) -> dict[int, int]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def test_after_a_broker_restart_new_messages_are_applied_and_redeliveries_skipped(
    restartable_broker: EmbeddedBroker, store: Store, tmp_path: Path
) -> None:
    messages = simulate_cohort(COHORT)
    values = [m.value for m in messages]
    offline = in_memory_application()
    process_offline(values, app=offline)
    expected = recorded_event_ids(offline, participants_of(values))
    split = len(messages) // 2

    kafka = Kafka(restartable_broker.bootstrap_servers)
    topics = Topics.unique()
    kafka.create_topics(topics.names)
    env = topics.env() | store.env | {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    services = Services(None, tmp_path)
    application = store.open()
    try:
        worker = services.start("worker", env)
        first = next_offsets(
            kafka.produce_clinical(topics.clinical, [(m.key, m.value) for m in messages[:split]])
        )
        assert wait_until(
            lambda: application.ingest_positions(topics.clinical, first) == first, timeout=300
        ), services.logs()
        bound = application.ingest_source(topics.clinical)
        assert bound is not None and bound.incarnation == 0

        restart(restartable_broker)
        kafka.create_topics(topics.names)  # as the worker's start (ensure_topics) does
        second = next_offsets(
            kafka.produce_clinical(topics.clinical, [(m.key, m.value) for m in messages[split:]])
        )
        assert any(second[p] <= first[p] for p in second), "offsets below the old positions"

        exits: list[int | None] = []

        def through_second() -> bool:
            nonlocal worker
            if not worker.alive():
                # As its supervisor does: a worker that finds the replacement in a batch
                # (no rebalance yet) exits, and its successor resumes from the store.
                exits.append(worker.process.poll())
                worker = services.start("worker", env)
            source = application.ingest_source(topics.clinical)
            return (
                source is not None
                and source.incarnation == 1
                and application.ingest_positions(topics.clinical, second) == second
            )

        assert wait_until(through_second, timeout=300), services.logs()
        assert worker.alive(), services.logs()
        assert set(exits) <= {75} and len(exits) <= 1, (exits, services.logs())
        # Everything sent before and after the restart is on the participants' records.
        assert recorded_event_ids(application, participants_of(values)) == expected
        # The replacement is on the record, with the positions it retired.
        replaced = [
            application.mapper.to_domain_event(n)
            for n in application.recorder.select_notifications(start=1, limit=1_000_000)
            if n.topic.endswith("IngestSource.Replaced")
        ]
        assert [(e.incarnation, e.positions_then) for e in replaced] == [
            (1, {str(p): offset for p, offset in sorted(first.items())})
        ]
        assert isinstance(replaced[0], IngestSource.Replaced)
        assert replaced[0].old_topic_id == bound.topic_id
        assert any("was replaced" in s.log_tail(400) for s in services.started), services.logs()
        assert application.ingest_positions(topics.clinical, first, incarnation=0) == first

        # Redelivery: another group reads the whole new topic again from offset 0.
        worker.stop()
        log_end = application.recorder.max_notification_id()
        again = services.start("worker", env | {"TOXWATCH_CONSUMER_GROUP": f"{topics.group}-2"})
        assert wait_until(
            lambda: all(
                committed_offsets(
                    kafka.bootstrap_servers, f"{topics.group}-2", topics.clinical
                ).get(p, 0)
                >= end
                for p, end in second.items()
            ),
            timeout=300,
        ), services.logs()
        assert again.alive(), services.logs()
        assert application.recorder.max_notification_id() == log_end, "nothing applied twice"
        assert "was replaced" not in again.log_tail(400)
        assert recorded_event_ids(application, participants_of(values)) == expected
    finally:
        services.stop_all()
        application.close()
        offline.close()
