"""The inbound topic's identity (services.ingest_sources) on the in-memory store: the
worker's positions belong to one incarnation of the topic (its Kafka topic id); a topic
deleted and recreated, whose offsets start again at 0, is recorded as replaced and
applied afresh, while a redelivery of the same topic is still skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from infra.kafka import TopicIdentity
from services.alerts import AlertDesk
from services.application import SafetyMonitoring
from services.ingest_sources import IngestSource, SourceReplaced, SourceUnavailable
from services.offline import in_memory_application
from tests.application.test_ingest import INFUSION, TOPIC, at_offsets, clinical, course

PARTITIONS = 4
NOW = datetime(2025, 3, 6, tzinfo=UTC)


class FakeTopicIds:
    """The broker's metadata: the id the topic has now (a new one when recreated)."""

    def __init__(self) -> None:
        self.current: TopicIdentity | None = self.recreate()
        self.lookups = 0
        self.failing = False

    def recreate(self) -> TopicIdentity:
        self.current = TopicIdentity(str(uuid.uuid4()), PARTITIONS)
        return self.current

    def __call__(self, topic: str) -> TopicIdentity | None:
        self.lookups += 1
        if self.failing:
            raise ConnectionError("broker unreachable")
        return self.current


@pytest.fixture
def topic_ids() -> FakeTopicIds:
    return FakeTopicIds()


@pytest.fixture
def app(topic_ids: FakeTopicIds) -> Iterator[SafetyMonitoring]:
    application = in_memory_application()
    application.topic_ids = topic_ids
    yield application
    application.close()


def later_course() -> list[bytes]:
    """Three more of G79-001's records (vitals on D+2 to D+4), sent after the topic
    was recreated."""
    return [
        clinical(
            f"v{day}",
            "vitals.recorded",
            INFUSION + timedelta(days=day),
            {"temperature_c": 37.0, "systolic_bp_mmhg": 120, "spo2_pct": 98},
        )
        for day in (2, 3, 4)
    ]


def stored_topics(app: SafetyMonitoring) -> list[str]:
    return [n.topic for n in app.recorder.select_notifications(start=1, limit=100_000)]


def replacements(app: SafetyMonitoring) -> list[IngestSource.Replaced]:
    return [
        app.mapper.to_domain_event(n)
        for n in app.recorder.select_notifications(start=1, limit=100_000)
        if n.topic.endswith("IngestSource.Replaced")
    ]


def test_the_first_check_binds_the_topic_id_and_tracks_its_first_incarnation(
    app: SafetyMonitoring, topic_ids: FakeTopicIds
) -> None:
    outcome = app.apply_batch(at_offsets(course()), now=NOW)

    assert [c.outcome for c in outcome.source_checks] == ["bound"]
    source = app.ingest_source(TOPIC)
    assert source is not None and topic_ids.current is not None
    assert (source.topic_id, source.incarnation) == (topic_ids.current.topic_id, 0)
    assert outcome.accepted == 3
    # The first incarnation keeps the names stores have always used.
    assert app.tracked(f"{TOPIC}#0") == 3
    assert app.ingest_positions(TOPIC, range(PARTITIONS)) == {0: 3, 1: 0, 2: 0, 3: 0}
    assert outcome.positions == {(TOPIC, 0): 3}


def test_a_store_with_positions_but_no_binding_binds_them_to_the_current_id(
    app: SafetyMonitoring, topic_ids: FakeTopicIds
) -> None:
    app.topic_ids = None  # a store written before topic ids were recorded
    app.apply_batch(at_offsets(course()[:2]), now=NOW)
    assert app.ingest_source(TOPIC) is None
    app.topic_ids = topic_ids

    outcome = app.apply_batch(at_offsets(course(), first=0), now=NOW)

    [check] = outcome.source_checks
    assert (check.outcome, check.incarnation, check.positions) == ("bound", 0, {0: 2})
    assert (outcome.already_applied, outcome.accepted) == (2, 1)
    assert app.ingest_positions(TOPIC, [0]) == {0: 3}
    assert replacements(app) == []


def test_a_recreated_topic_is_recorded_as_replaced_and_applied_from_offset_0(
    app: SafetyMonitoring, topic_ids: FakeTopicIds
) -> None:
    app.apply_batch(at_offsets(course()), now=NOW)
    old = topic_ids.current
    new = topic_ids.recreate()

    # The recreated topic's offsets start at 0, below the tracked position 3.
    outcome = app.apply_batch(at_offsets(later_course()[:2]), now=NOW)

    [check] = outcome.source_checks
    assert check.outcome == "replaced"
    assert (check.incarnation, check.previous_topic_id, check.topic_id) == (
        1,
        old.topic_id if old else None,
        new.topic_id,
    )
    assert (outcome.accepted, outcome.already_applied) == (2, 0)
    assert app.ingest_positions(TOPIC, [0]) == {0: 2}
    assert app.ingest_positions(TOPIC, [0], incarnation=0) == {0: 3}
    assert app.tracked(f"{TOPIC}~1#0") == 2
    [replaced] = replacements(app)
    assert replaced.positions_then == {"0": 3}
    assert (replaced.topic, replaced.incarnation, replaced.detected_at) == (TOPIC, 1, NOW)


def test_a_redelivery_after_the_replacement_is_still_skipped(
    app: SafetyMonitoring, topic_ids: FakeTopicIds
) -> None:
    app.apply_batch(at_offsets(course()), now=NOW)
    topic_ids.recreate()
    batch = at_offsets(later_course())
    app.apply_batch(batch, now=NOW)
    before = stored_topics(app)
    lookups = topic_ids.lookups

    again = app.apply_batch(batch, now=NOW)

    # The batch's check finds the same topic: a redelivery.
    assert topic_ids.lookups == lookups + 1
    assert [c.outcome for c in again.source_checks] == ["unchanged"]
    assert (again.already_applied, again.accepted, again.new_domain_events) == (3, 0, 0)
    assert stored_topics(app) == before
    assert len(replacements(app)) == 1


def test_every_batch_checks_the_id_once(app: SafetyMonitoring, topic_ids: FakeTopicIds) -> None:
    values = course()
    first = app.apply_batch(at_offsets(values[:1]), now=NOW)
    second = app.apply_batch(at_offsets(values[1:], first=1), now=NOW)

    assert topic_ids.lookups == 2
    assert [c.outcome for c in first.source_checks + second.source_checks] == [
        "bound",
        "unchanged",
    ]


def test_a_topic_replaced_while_consumed_without_a_rebalance_applies_nothing_of_the_batch(
    app: SafetyMonitoring, topic_ids: FakeTopicIds
) -> None:
    """After a broker restart the consumer, positioned for the old topic at offset 3,
    fetches the new topic from offset 3 before any rebalance: offsets past the
    positions, nothing skipped, so only the id tells. The batch belongs to no
    incarnation the consumer was positioned for: it is not applied, the replacement
    is recorded, and a fresh consumer is positioned at the new topic's offset 0."""
    app.apply_batch(at_offsets(course()), now=NOW)
    assert app.resume_positions(TOPIC, range(PARTITIONS), NOW)[0][0] == 3
    topic_ids.recreate()
    before = len(stored_topics(app))

    with pytest.raises(SourceReplaced) as raised:
        app.apply_batch(at_offsets(later_course(), first=3), now=NOW)

    assert (raised.value.positioned, raised.value.check.incarnation) == (0, 1)
    assert raised.value.check.outcome == "replaced"
    stored = stored_topics(app)
    # Only the replacement (and no clinical record, no position) was stored.
    assert [t.rsplit(".", 1)[-1] for t in stored[before:]] == ["Replaced"]
    assert app.ingest_positions(TOPIC, [0]) == {0: 0}
    # The successor process is positioned at offset 0 of the new topic and applies it.
    successor = SafetyMonitoring(app.env)
    try:
        successor.topic_ids = topic_ids
        positions, check = successor.resume_positions(TOPIC, range(PARTITIONS), NOW)
        assert positions == {0: 0, 1: 0, 2: 0, 3: 0}
        assert check is not None and check.outcome == "unchanged"
        outcome = successor.apply_batch(at_offsets(later_course()), now=NOW)
        assert (outcome.accepted, outcome.already_applied) == (3, 0)
        assert successor.ingest_positions(TOPIC, [0]) == {0: 3}
    finally:
        successor.close()


def test_after_an_assignment_a_topic_grown_past_the_old_positions_is_still_found_replaced(
    app: SafetyMonitoring, topic_ids: FakeTopicIds
) -> None:
    app.apply_batch(at_offsets(course()), now=NOW)
    topic_ids.recreate()
    app.sources_assigned([TOPIC])

    # The new topic already holds offsets 0..5; the consumer resumes at 3, so nothing
    # would be skipped: only the check on assignment tells the topics apart.
    outcome = app.apply_batch(at_offsets(later_course(), first=3), now=NOW)

    assert [c.outcome for c in outcome.source_checks] == ["replaced"]
    assert app.ingest_positions(TOPIC, [0]) == {0: 6}
    assert app.ingest_positions(TOPIC, [0], incarnation=0) == {0: 3}


def test_a_topic_id_that_cannot_be_looked_up_applies_nothing(
    app: SafetyMonitoring, topic_ids: FakeTopicIds
) -> None:
    app.apply_batch(at_offsets(course()), now=NOW)
    topic_ids.recreate()
    topic_ids.failing = True
    before = stored_topics(app)

    with pytest.raises(SourceUnavailable):
        app.apply_batch(at_offsets(later_course()), now=NOW)

    assert stored_topics(app) == before
    topic_ids.failing = False
    outcome = app.apply_batch(at_offsets(later_course()), now=NOW)
    assert (outcome.accepted, outcome.already_applied) == (3, 0)


def test_consuming_resumes_at_the_stores_positions_in_the_current_topic(
    app: SafetyMonitoring, topic_ids: FakeTopicIds
) -> None:
    app.apply_batch(at_offsets(course()), now=NOW)
    app.sources_assigned([TOPIC])

    positions, check = app.resume_positions(TOPIC, range(PARTITIONS), NOW)

    assert positions == {0: 3, 1: 0, 2: 0, 3: 0}
    assert check is not None and check.outcome == "unchanged"
    # Checked since the assignment: not looked up again.
    assert app.resume_positions(TOPIC, [0], NOW) == ({0: 3}, None)


def test_after_a_replacement_consuming_resumes_at_offset_0_of_the_new_topic(
    app: SafetyMonitoring, topic_ids: FakeTopicIds
) -> None:
    """Offsets committed to the broker for the old topic (or by the consumer after the
    restart) would start the new topic past messages never applied: the worker seeks
    back to these positions."""
    app.apply_batch(at_offsets(course()), now=NOW)
    topic_ids.recreate()
    app.sources_assigned([TOPIC])

    positions, check = app.resume_positions(TOPIC, range(PARTITIONS), NOW)

    assert positions == {0: 0, 1: 0, 2: 0, 3: 0}
    assert check is not None and (check.outcome, check.positions) == ("replaced", {0: 3})


def test_workers_finding_the_replacement_at_once_record_it_once_and_all_adopt_it(
    topic_ids: FakeTopicIds,
) -> None:
    first = in_memory_application()
    second = SafetyMonitoring(first.env)  # the same store
    try:
        for worker in (first, second):
            worker.topic_ids = topic_ids
        first.apply_batch(at_offsets(course()), now=NOW)
        second.verify_source(TOPIC, NOW)
        topic_ids.recreate()
        # ``second`` loads the binding, then ``first`` records the replacement before
        # ``second`` saves its own: its save conflicts, it reloads and adopts.
        load = second._source

        def load_then_lose_the_race(topic: str) -> IngestSource | None:
            source = load(topic)
            if not replacements(first):
                first.verify_source(topic, NOW)
            return source

        second._source = load_then_lose_the_race  # type: ignore[method-assign]

        check = second.verify_source(TOPIC, NOW)

        assert check.outcome == "adopted"
        assert check.incarnation == 1
        assert len(replacements(first)) == 1
        outcome = second.apply_batch(at_offsets(later_course()), now=NOW)
        assert (outcome.accepted, outcome.already_applied) == (3, 0)
        assert first.ingest_positions(TOPIC, [0]) == {0: 3}
    finally:
        second.close()
        first.close()


def test_workers_binding_at_once_record_one_binding(topic_ids: FakeTopicIds) -> None:
    first = in_memory_application()
    second = SafetyMonitoring(first.env)
    try:
        for worker in (first, second):
            worker.topic_ids = topic_ids
        load = second._source

        def load_then_lose_the_race(topic: str) -> IngestSource | None:
            source = load(topic)
            if first.ingest_source(topic) is None:
                first.verify_source(topic, NOW)
            return source

        second._source = load_then_lose_the_race  # type: ignore[method-assign]

        check = second.verify_source(TOPIC, NOW)

        assert (check.outcome, check.incarnation) == ("adopted", 0)
        bindings = [
            n
            for n in first.recorder.select_notifications(start=1, limit=100)
            if n.topic.endswith("IngestSource.Bound")
        ]
        assert len(bindings) == 1
    finally:
        second.close()
        first.close()


def test_a_replacement_raises_one_critical_data_quality_alert(
    app: SafetyMonitoring, topic_ids: FakeTopicIds
) -> None:
    app.apply_batch(at_offsets(course()), now=NOW)
    topic_ids.recreate()
    app.apply_batch(at_offsets(later_course()), now=NOW)

    AlertDesk(app).run_until_idle()

    [alert] = [
        e
        for e in app.iter_safety_events()
        if e.type == "alert.raised" and e.data["category"] == "data_quality"
    ]
    assert alert.data["severity"] == "critical"
    assert alert.participant_id == "-"
    assert alert.effective_at == NOW
    assert f"Inbound topic {TOPIC} was replaced" in alert.data["title"]
    assert "0@3" in alert.data["title"]
