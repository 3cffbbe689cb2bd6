"""A clock tick reaches every participant of its trial on its partition (contract §2),
but records something only on a record whose next wake it has reached
(``Participant.record``: a tick before ``wake_at`` changes nothing). The ingest keeps,
for each record it saved or loaded, the protocol object it follows, its wake and its
version (``SafetyMonitoring._quiet``), and loads for a tick only the records that tick
may change: a record out of memory (evicted from a small cache, finished its
follow-up) stays out.

Each test applies the same simulated cohort, hourly ticks included, with a cache too
small for the cohort, with one large enough for every record (records leave it as
they fall idle) and with no cache at all (every record loaded from the store for
every tick, nothing known between batches): all must store and publish the same."""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from domain.participant import participant_aggregate_id
from domain.records import TrialClock
from services.application import SafetyMonitoring
from services.offline import process_lines
from services.simulator import CohortSpec, simulate_cohort

NOW = datetime.fromisoformat("2026-06-01T00:00:00+00:00")


def application(cache_size: int | None) -> SafetyMonitoring:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": f"file:toxwatch-{uuid.uuid4().hex}?mode=memory&cache=shared",
        "APPLICATION_RECORDER_TOPIC": "infra.store:SQLiteBatchRecorder",
    }
    if cache_size is not None:
        env["AGGREGATE_CACHE_MAXSIZE"] = str(cache_size)
    return SafetyMonitoring(env)


@dataclass
class Run:
    #: The published events, without their recording time.
    published: list[dict[str, Any]]
    #: The stored events by topic, aggregate and version.
    stored: Counter[str]
    #: Participants whose records the ingest holds in memory at the end.
    in_memory: int
    #: Days whose clock the ingest holds in memory at the end.
    clocks_in_memory: int


def run(spec: CohortSpec, cache_size: int | None) -> Run:
    """The cohort applied in batches of 50."""
    app = application(cache_size)
    try:
        out = io.StringIO()
        lines = [m.value for m in simulate_cohort(spec)]
        process_lines(lines, out, app=app, batch_size=50, now=NOW)
        published = [json.loads(line) for line in out.getvalue().splitlines()]
        for event in published:
            event.pop("recorded_at")
        stored = Counter(
            f"{n.topic} {n.originator_id} v{n.originator_version}"
            for n in app.recorder.select_notifications(start=1, limit=10_000_000)
        )
        cached = app._current.cache if app._current is not None else {}
        in_memory = sum(
            participant_aggregate_id(spec.trial_id, f"G79-{n:03d}") in cached
            for n in range(1, spec.participants + 1)
        )
        clocks = sum(isinstance(link[3], TrialClock) for link in cached.values())
        return Run(published, stored, in_memory, clocks)
    finally:
        app.close()


def by_participant(published: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for event in published:
        grouped.setdefault(str(event.get("participant_id")), []).append(event)
    return grouped


@pytest.fixture
def skipped(monkeypatch: pytest.MonkeyPatch) -> Counter[bool]:
    """How often the ingest decided a tick may change a record (True) or not."""
    decisions: Counter[bool] = Counter()
    original = SafetyMonitoring._tick_may_change

    def counted(self: SafetyMonitoring, *args: Any) -> bool:
        decision = original(self, *args)
        decisions[decision] += 1
        return decision

    monkeypatch.setattr(SafetyMonitoring, "_tick_may_change", counted)
    return decisions


COHORTS = [
    CohortSpec(seed=7, participants=8, follow_up_days=30, dlt_heavy_dose="DL2"),
    CohortSpec(seed=79, participants=8, follow_up_days=30, dlt_heavy_dose="DL3"),
]


@pytest.fixture(scope="module", params=COHORTS, ids=["seed7-DL2", "seed79-DL3"])
def reference(request: pytest.FixtureRequest) -> tuple[CohortSpec, Run]:
    """The cohort applied with no cache: every record is loaded from the store for
    every tick, and nothing is known of it between batches."""
    spec: CohortSpec = request.param
    applied = run(spec, cache_size=None)
    # The cohort's time-driven outcomes, which only ticks at a wake produce.
    types = Counter(str(event["type"]) for event in applied.published)
    assert types["dlt.window_closed"] >= 3
    assert types["dlt.confirmed"] + types["dlt.ruled_out"] >= 1
    return spec, applied


def test_ticks_load_only_the_records_they_may_change(
    reference: tuple[CohortSpec, Run], skipped: Counter[bool]
) -> None:
    """A cache of 3 records for 8 participants: records leave memory and come back."""
    spec, expected = reference
    small = run(spec, cache_size=3)
    assert skipped[False] > 0, "some ticks found records with nothing due"
    assert skipped[True] > 0, "some ticks reached a record's wake"
    # One commit stores its records' events record by record, in the order the batch
    # first loaded them, which the ticks no longer decide: each record's own sequence
    # (what the relay keeps in order, by participant key) is what must not change.
    assert by_participant(small.published) == by_participant(expected.published)
    assert small.stored == expected.stored


def test_records_out_of_follow_up_leave_memory_and_change_nothing(
    reference: tuple[CohortSpec, Run],
) -> None:
    """A cache for every record: the participants whose 30-day follow-up ended more
    than two weeks of the trial's clock before the last tick, with no time rule
    pending, are no longer in memory, nor the clocks of past days; what is stored and
    published is unchanged."""
    spec, expected = reference
    large = run(spec, cache_size=100_000)
    assert 0 < large.in_memory < spec.participants
    assert large.clocks_in_memory == 1  # one trial on one partition: today's
    assert by_participant(large.published) == by_participant(expected.published)
    assert large.stored == expected.stored
