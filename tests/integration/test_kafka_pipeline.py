"""The streaming pipeline (Kafka → worker → store → relay → Kafka) derives exactly what
``toxwatch process`` derives from the same clinical stream, on SQLite and PostgreSQL.

Contract §2: a clock tick is written to every partition of the inbound topic and
applies to the participants of that partition; in a JSONL file it appears once and
applies to every participant. Event ids are deterministic (contract §3), so the two
derivations must agree on them too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.simulator import CohortSpec, simulate_cohort
from tests.conftest import (
    Kafka,
    Services,
    Store,
    Topics,
    is_clock_tick,
    next_offsets,
    toxwatch_executable,
)
from tests.integration import (
    describe_difference,
    duplicated_ids,
    per_participant,
    run_process_command,
    wait_for_count,
    wait_until,
)

pytestmark = pytest.mark.broker

# A cohort the worker streams in about a minute on a 2-core machine (issue 9 owns speed).
COHORT = CohortSpec(participants=12, follow_up_days=40, malformed=False)
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
#: Fresh stores to start the worker and the relay on together, and how long to watch.
STARTUP_ATTEMPTS = 5
STARTUP_SECONDS = 5.0


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_streamed_cohort_derives_the_same_events_as_the_process_command(
    broker: Kafka, fresh_topics: Topics, store: Store, services: Services, tmp_path: Path
) -> None:
    messages = simulate_cohort(COHORT)
    ticks = sum(is_clock_tick(m.value) for m in messages)
    assert 0 < ticks < len(messages), "the cohort should mix clinical events and clock ticks"
    expected_events = run_process_command(
        [m.value for m in messages], tmp_path, toxwatch_executable()
    )
    expected = per_participant(expected_events)
    assert len(expected) >= 3, f"too few participants with derived events: {sorted(expected)}"

    env = fresh_topics.env() | store.env
    store.initialise()
    worker = services.start("worker", env)
    relay = services.start("relay", env)
    placements = broker.produce_clinical(
        fresh_topics.clinical, [(m.key, m.value) for m in messages]
    )
    assert sum(map(len, placements)) == len(messages) + 3 * ticks  # a tick on each of 4 partitions

    with broker.reader(fresh_topics.safety) as safety:
        wait_for_count(safety.count, len(expected_events), timeout=400)
        records = safety.read_to_end()
    assert worker.alive(), services.logs()
    assert relay.alive(), services.logs()

    published = [record.json() for record in records]
    for record, event in zip(records, published, strict=True):
        assert record.key == event["participant_id"].encode(), (
            "safety events are keyed by participant"
        )
    assert duplicated_ids(published) == {}
    actual = per_participant(published)
    assert actual == expected, describe_difference(actual, expected)
    assert broker.size(fresh_topics.rejected) == 0, (
        "the simulated cohort holds no malformed message"
    )

    services.stop_all()
    application = store.open()
    try:
        stored = [event.to_wire() for event in application.iter_safety_events()]
        ends = next_offsets(placements)
        applied = {p: application.next_offset(fresh_topics.clinical, p) for p in ends}
    finally:
        application.close()
    assert applied == ends, "the store's tracking should cover every inbound message"
    assert duplicated_ids(stored) == {}
    assert per_participant(stored) == expected, describe_difference(
        per_participant(stored), expected
    )


@pytest.mark.parametrize(
    "store_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_worker_and_relay_started_together_on_a_fresh_store_both_keep_running(
    broker: Kafka,
    services: Services,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    store_kind: str,
) -> None:
    """As a deployment starts them (docker-compose, ``toxwatch demo``): both services
    at once on a store whose tables do not exist yet. Both create the tables; neither
    may crash. The race does not show every time, so a few fresh stores are tried."""
    for attempt in range(STARTUP_ATTEMPTS):
        data_dir = tmp_path / f"attempt-{attempt}"
        if store_kind == "postgres":
            store = Store.postgres(request.getfixturevalue("postgres_schemas")(), data_dir)
        else:
            store = Store.sqlite(data_dir)
        env = broker.fresh_topics().env() | store.env
        worker = services.start("worker", env)
        relay = services.start("relay", env)
        pair = (worker, relay)
        wait_until(lambda pair=pair: not all(s.alive() for s in pair), timeout=STARTUP_SECONDS)
        assert worker.alive() and relay.alive(), (
            f"attempt {attempt + 1}: a service died starting on a fresh {store_kind} store\n"
            + services.logs()
        )
        services.stop_all()
