"""Crash safety of ingest (architecture decision 4): the worker is SIGKILLed several
times mid-stream and restarted; faust redelivers what it had not committed, and the
store's tracking makes each redelivered message a no-op. In the end every clinical
event is recorded once and every derived event is published once, exactly as
``toxwatch process`` derives them. Only the worker is killed here; the relay runs on.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.offline import in_memory_application
from services.simulator import CohortSpec, simulate_cohort
from tests.conftest import Kafka, Service, Services, Store, Topics, next_offsets
from tests.integration import (
    describe_difference,
    duplicated_ids,
    participants_of,
    per_participant,
    process_offline,
    recorded_event_ids,
    wait_for_count,
    wait_until,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

COHORT = CohortSpec(participants=16, follow_up_days=30, malformed=False)
#: When the store has applied these fractions of the inbound messages, kill the worker:
#: at once (``False``: wherever it is, e.g. mid-batch), or at the first moment the store
#: is ahead of the Kafka offsets committed (``True``: so the restart redelivers
#: messages already applied).
KILLS = ((0.2, False), (0.45, True), (0.7, True))
#: How many times to freeze the worker looking for that moment before killing anyway.
FREEZE_ATTEMPTS = 40
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclass(frozen=True)
class Kill:
    fraction: float
    tracked: dict[int, int]
    committed: dict[int, int]

    @property
    def redelivers(self) -> int:
        """Messages applied to the store whose Kafka offsets were not yet committed."""
        return redelivers(self.tracked, self.committed)


def redelivers(tracked: dict[int, int], committed: dict[int, int]) -> int:
    return sum(max(0, tracked[p] - committed.get(p, 0)) for p in tracked)


def committed_offsets(broker: Kafka, topics: Topics) -> dict[int, int]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        offsets = admin.list_group_offsets(topics.group)[topics.group]
    finally:
        admin.close()
    return {
        tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topics.clinical
    }


def freeze_when_store_is_ahead(
    worker: Service,
    tracked: Callable[[], dict[int, int]],
    committed: Callable[[], dict[int, int]],
) -> None:
    """Freeze (SIGSTOP) the worker each time its store position moves, until the store
    holds messages whose Kafka offsets are not committed; leave it frozen then."""
    last = tracked()
    for _ in range(FREEZE_ATTEMPTS):
        if not wait_until(lambda seen=last: tracked() != seen, timeout=10, interval=0.005):
            return
        worker.kill(signal.SIGSTOP)
        last = tracked()
        if redelivers(last, committed()) > 0:
            return
        worker.kill(signal.SIGCONT)


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_worker_killed_mid_stream_records_and_publishes_everything_exactly_once(
    broker: Kafka, fresh_topics: Topics, store: Store, services: Services, tmp_path: Path
) -> None:
    messages = simulate_cohort(COHORT)
    values = [m.value for m in messages]
    offline = in_memory_application()
    expected_events = process_offline(values, app=offline)
    expected = per_participant(expected_events)
    participants = participants_of(values)
    expected_records = recorded_event_ids(offline, participants)

    env = fresh_topics.env() | store.env
    application = store.open()  # creates the tables before the services start
    try:
        worker = services.start("worker", env)
        relay = services.start("relay", env)
        placements = broker.produce_clinical(
            fresh_topics.clinical, [(m.key, m.value) for m in messages]
        )
        ends = next_offsets(placements)
        total = sum(ends.values())

        def tracked() -> dict[int, int]:
            return application.ingest_positions(fresh_topics.clinical, ends)

        def committed() -> dict[int, int]:
            return committed_offsets(broker, fresh_topics)

        kills: list[Kill] = []
        for fraction, when_store_is_ahead in KILLS:
            reached = wait_until(
                lambda f=fraction: sum(tracked().values()) >= f * total, timeout=400, interval=0.05
            )
            assert reached, f"the worker stalled at {tracked()} of {ends}\n{services.logs()}"
            assert worker.alive(), services.logs()
            if when_store_is_ahead:
                freeze_when_store_is_ahead(worker, tracked, committed)
            worker.kill()
            kills.append(Kill(fraction, tracked(), committed()))
            worker = services.start("worker", env)

        for kill in kills:
            ahead = {p: o for p, o in kill.committed.items() if o > kill.tracked.get(p, 0)}
            assert not ahead, (
                f"at the kill at {kill.fraction:.0%}, Kafka offsets {kill.committed} were "
                f"committed ahead of the store's positions {kill.tracked}: those messages "
                "would be lost"
            )
        assert wait_until(lambda: tracked() == ends, timeout=400), (
            f"the store applied {tracked()} of {ends}\n{services.logs()}"
        )
        with broker.reader(fresh_topics.safety) as safety:
            wait_for_count(safety.count, len(expected_events), timeout=300)
            records = safety.read_to_end()
        assert worker.alive(), services.logs()
        assert relay.alive(), services.logs()

        published = [record.json() for record in records]
        assert duplicated_ids(published) == {}, "a derived event was published more than once"
        actual = per_participant(published)
        assert actual == expected, describe_difference(actual, expected)

        services.stop_all()
        stored = [event.to_wire() for event in application.iter_safety_events()]
        assert duplicated_ids(stored) == {}, "the store holds a derived event more than once"
        assert per_participant(stored) == expected
        assert recorded_event_ids(application, participants) == expected_records, (
            "a participant's record differs from the offline one (a clinical event "
            "recorded twice, lost, or out of order)"
        )
    finally:
        application.close()
    # Not a property of the system: a check that the kills exercised redelivery.
    assert any(kill.redelivers > 0 for kill in kills), f"no kill left uncommitted work: {kills}"
