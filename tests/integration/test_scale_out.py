"""Scale-out of ingest (architecture decisions 4 and 9): several ``toxwatch worker``
processes in one consumer group share an eight-partition topic on a PostgreSQL store.

The simulated cohort is produced keyed by participant (a clock tick to every
partition, contract §2). Two workers start; a third joins mid-stream (a rebalance
moves partitions to it while the others hold uncommitted work); one of the first two
is SIGKILLed mid-stream (its partitions move after the session timeout, and the new
owners start from the last committed Kafka offsets, behind the store). The rest
finish the stream.

Then every participant's record holds each of its clinical events once, in the order
produced (the same ids, in the same order, as ``services.offline.process_lines`` on
the same stream); each participant's derived events equal the offline ones, ids and
content; nothing is rejected. As in ``tests/application/test_process.py``, alerts and
the trial monitor's events depend on how participants interleave in the log, so the
trial-level events are compared by what they say after one pass of the trial monitor
over the complete log.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from services.application import REJECTION_TOPIC
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
    wait_until,
)

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]

PARTITIONS = 8
COHORT = CohortSpec(participants=16, follow_up_days=30, malformed=False)
#: Fractions of the inbound messages applied when the third worker joins and when
#: one of the first two is killed.
JOIN_AT = 0.25
KILL_AT = 0.55
#: Applied messages a worker must add after each change, so that each change lands
#: while the group is working (not only once the stream is done).
PROGRESS_AFTER = 0.10


def trial_findings(events: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """What the trial monitor's events say (their ids follow the log position)."""
    return [
        (e["type"], e["effective_at"], e["data"])
        for e in events
        if e["participant_id"] == "-" and not e["type"].startswith("alert.")
    ]


class GroupObserver:
    """Samples the consumer group's members in a thread, with the wall-clock time
    (tansu describes a group's members but not their assignments: those come from the
    workers' logs, ``assignments``)."""

    def __init__(self, bootstrap_servers: str, group: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.group = group
        self.members: list[tuple[str, tuple[str, ...]]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GroupObserver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from kafka import KafkaAdminClient

        class Admin(KafkaAdminClient):  # type: ignore[misc]
            def _process_acl_operations(self, obj: Any) -> Any:
                # tansu answers authorized operations kafka-python cannot name.
                obj.pop("authorized_operations", None)
                return obj

        try:
            admin = Admin(bootstrap_servers=self.bootstrap_servers)
        except Exception as error:
            self.error = f"{type(error).__name__}: {error}"
            return
        try:
            while not self._stop.wait(0.5):
                try:
                    description = admin.describe_groups([self.group])[self.group]
                except Exception as error:
                    self.error = f"{type(error).__name__}: {error}"
                    return
                members = tuple(sorted(m["member_id"][-8:] for m in description["members"]))
                if not self.members or self.members[-1][1] != members:
                    self.members.append((now(), members))
        finally:
            admin.close()

    def summary(self) -> str:
        if self.error and not self.members:
            return f"  group not described: {self.error}"
        return "\n".join(
            f"  {at} {len(members)} member(s) {', '.join(members)}" for at, members in self.members
        )


def now() -> str:
    """Wall-clock time as the workers' logs write it."""
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:23]


def test_workers_joining_and_dying_mid_stream_apply_each_event_once_in_order(
    broker: Kafka, services: Services, postgres_schema: str, tmp_path: Path
) -> None:
    messages = simulate_cohort(COHORT)
    values = [m.value for m in messages]
    offline = in_memory_application()
    expected_events = process_offline(values, app=offline)
    expected = per_participant(expected_events)
    participants = participants_of(values)
    expected_records = recorded_event_ids(offline, participants)
    expected_findings = trial_findings([event.to_wire() for event in offline.iter_safety_events()])
    assert expected_findings, "the cohort should give the trial monitor something to say"

    topics = Topics.unique()
    broker.create_topics(topics.names, partitions=PARTITIONS)
    store = Store.postgres(postgres_schema, tmp_path / "data")
    env = topics.env() | {"TOXWATCH_PARTITIONS": str(PARTITIONS)} | store.env
    # INFO: the consumer logs each assignment, for the report printed below.
    env |= {"TOXWATCH_LOG_LEVEL": "INFO"}
    application = store.open()  # creates the tables before the workers start
    samples: list[tuple[float, int]] = []  # (time, messages applied): for the report
    started = time.monotonic()
    try:
        workers = [services.start("worker", env), services.start("worker", env)]
        with GroupObserver(broker.bootstrap_servers, topics.group) as group:
            placements = broker.produce_clinical(
                topics.clinical, [(m.key, m.value) for m in messages]
            )
            ends = next_offsets(placements)
            assert sorted(ends) == list(range(PARTITIONS)), "every partition receives messages"
            total = sum(ends.values())

            def tracked() -> dict[int, int]:
                return application.ingest_positions(topics.clinical, ends)

            def applied() -> int:
                count = sum(tracked().values())
                samples.append((time.monotonic(), count))
                return count

            def reach(fraction: float) -> None:
                assert wait_until(lambda: applied() >= fraction * total, 400, 0.05), (
                    f"the workers stalled at {tracked()} of {ends}\n{services.logs()}"
                )

            reach(JOIN_AT)
            at_join = applied()
            joined, joined_at = time.monotonic(), now()
            workers.append(services.start("worker", env))
            reach(JOIN_AT + PROGRESS_AFTER)
            reach(KILL_AT)
            victim = workers[0]
            at_kill = applied()
            killed, killed_at = time.monotonic(), now()
            victim.kill(signal.SIGKILL)
            reach(KILL_AT + PROGRESS_AFTER)
            done = wait_until(lambda: tracked() == ends, timeout=400, interval=0.2)
            assert done, f"the workers applied {tracked()} of {ends}\n{services.logs()}"
            elapsed = time.monotonic() - started
        survivors: list[Service] = [w for w in workers if w is not victim]
        assert all(w.alive() for w in survivors), services.logs()
        print(
            f"\n{total} inbound messages on {PARTITIONS} partitions in {elapsed:.0f} s; "
            f"third worker started at {joined_at}, {at_join} applied (ingest then paused up "
            f"to {longest_pause(samples, joined):.1f} s); {victim.name} killed at {killed_at}, "
            f"{at_kill} applied (paused up to {longest_pause(samples, killed):.1f} s)\n"
            f"group members:\n{group.summary()}\n"
            f"partitions assigned:\n{assignments(workers, topics.clinical)}"
        )
        services.stop_all()

        assert recorded_event_ids(application, participants) == expected_records, (
            "a participant's record differs from the offline one (a clinical event "
            "recorded twice, lost, or out of order)"
        )
        stored = [event.to_wire() for event in application.iter_safety_events()]
        assert duplicated_ids(stored) == {}, "the store holds a derived event more than once"
        actual = per_participant(stored)
        assert actual == expected, describe_difference(actual, expected)
        rejected = application.safety_notifications(0, 1_000_000, with_rejections=True)
        assert [n for n in rejected if n.topic == REJECTION_TOPIC] == [], "nothing rejected"

        _run_trial_monitor_once(application)
        findings = trial_findings([event.to_wire() for event in application.iter_safety_events()])
        assert findings == expected_findings
    finally:
        application.close()


def assignments(workers: list[Service], topic: str) -> str:
    """Each worker's partition assignments, as its consumer logged them."""
    lines = []
    for worker in workers:
        text = worker.log_path.read_text(errors="replace")
        for line in text.splitlines():
            if "newly assigned partitions" not in line:
                continue
            numbers = sorted(
                int(n) for n in re.findall(rf"topic='{re.escape(topic)}', partition=(\d+)", line)
            )
            lines.append(f"  {line[:23]} {worker.name}: {numbers}")
    return "\n".join(sorted(lines)) or "  (not logged)"


def longest_pause(samples: list[tuple[float, int]], since: float, within: float = 30.0) -> float:
    """The longest time without a message applied in the ``within`` seconds after
    ``since`` (the rebalance a join or a death causes), from (time, applied) samples."""
    window = [(t, n) for t, n in samples if since <= t <= since + within]
    longest, last_change, last_count = 0.0, since, None
    for t, n in window:
        if n != last_count:
            longest = max(longest, t - last_change)
            last_change, last_count = t, n
    return longest


def _run_trial_monitor_once(application: Any) -> None:
    """One pass of the trial monitor over the complete log (as ``toxwatch process``)."""
    from services.monitor import TrialMonitor

    TrialMonitor(application, batch_size=1_000_000_000).run_until_idle()
