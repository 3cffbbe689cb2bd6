"""Graceful shutdown (issue 8, item 6): every long-running process stops on SIGTERM
mid-stream, promptly and with exit status 0, and what it had not finished is done by
its successor: the worker's batches and the followers' passes are stored with their
positions in one transaction, so nothing is lost or applied twice."""

from __future__ import annotations

import io
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.utils import get_topic

from domain.participant import Participant
from services.api import ReadModels
from services.offline import in_memory_application, process_lines
from services.simulator import CohortSpec, simulate_cohort
from tests.conftest import Kafka, Services, Store, Topics, next_offsets
from tests.integration import duplicated_ids, wait_until

pytestmark = pytest.mark.broker

PROTOCOL = Path(__file__).resolve().parents[2] / "protocols" / "lucar-g79.toml"
COMMANDS = ("worker", "monitor", "alerts", "relay")
#: A stopped process must be gone within this long (its batch or pass completes).
EXIT_WITHIN_S = 30.0
RECORDED = get_topic(Participant.ClinicalEventRecorded)


def test_every_process_stops_cleanly_on_sigterm_mid_stream_and_loses_nothing(
    broker: Kafka, fresh_topics: Topics, services: Services, tmp_path: Path
) -> None:
    store = Store.sqlite(tmp_path / "data")
    store.initialise()
    env = fresh_topics.env() | store.env | {"TOXWATCH_PROTOCOL_FILE": str(PROTOCOL)}
    messages = simulate_cohort(CohortSpec(participants=8, follow_up_days=30, seed=7))
    running = {command: services.start(command, env) for command in COMMANDS}
    placements = broker.produce_clinical(
        fresh_topics.clinical, [(m.key, m.value) for m in messages]
    )
    ends = next_offsets(placements)
    total = sum(ends.values())
    application = store.open()
    try:

        def applied() -> int:
            return sum(application.ingest_positions(fresh_topics.clinical, ends).values())

        assert wait_until(lambda: applied() >= total // 3, timeout=300), services.logs()
        assert applied() < total, "the stream should still be flowing"
        for command, service in running.items():
            started = time.monotonic()
            service.kill(signal.SIGTERM)
            service.process.wait(EXIT_WITHIN_S)
            took = time.monotonic() - started
            assert service.process.returncode == 0, (command, services.logs())
            assert took < EXIT_WITHIN_S
        stopped_at = applied()
        assert stopped_at < total

        for command in COMMANDS:
            services.start(command, env)
        assert wait_until(lambda: applied() == total, timeout=600), services.logs()

        def followers_done() -> bool:
            lag = ReadModels(application).lag()
            return not lag["alerts"] and not lag["trial_monitor"]

        assert wait_until(followers_done, timeout=300), services.logs()
        stored = [event.to_wire() for event in application.iter_safety_events()]
    finally:
        application.close()
    assert duplicated_ids(stored) == {}
    recorded = _recorded_ids(_clinical_records(store))
    offline = in_memory_application()
    process_lines([m.value for m in messages], io.StringIO(), app=offline)
    expected = _recorded_ids(
        offline.mapper.to_domain_event(n)
        for n in offline.recorder.select_notifications(
            start=0, limit=10**9, topics=[RECORDED], inclusive_of_start=False
        )
    )
    assert len(expected) > 100
    assert recorded == expected, "every accepted clinical event applied once, none lost"


def _recorded_ids(events: Iterable[Any]) -> set[str]:
    return {e.event["event_id"] for e in events if e.event["type"] != "clock.ticked"}


def _clinical_records(store: Store) -> list[Any]:
    application = store.open()
    try:
        return [
            application.mapper.to_domain_event(n)
            for n in application.recorder.select_notifications(
                start=0,
                limit=10**9,
                topics=[RECORDED],
                inclusive_of_start=False,
            )
        ]  # fmt: skip
    finally:
        application.close()
