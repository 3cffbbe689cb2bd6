"""The SafetyMonitoring application: the ingest use case over the event store.

``apply_batch`` validates a batch of inbound messages, applies the valid ones to
their participants' records, keeps the invalid ones in the ingest ledger, and saves
every new domain event together with each partition's Kafka position in one
transaction (architecture decision 4). A message at or below a partition's tracked
position was applied before and is skipped, so a redelivered batch changes nothing.

Positions belong to one incarnation of the inbound topic (``services.ingest_sources``):
with a topic id lookup (``topic_ids``, the worker's), the topic's id is checked before
the first batch after a start or a partition assignment and whenever a batch would skip
a message as already applied (the symptom of a recreated topic, whose offsets start
again at 0); a new id is recorded as a replacement and the topic is tracked afresh.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError, Application, LRUCache
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Notification, PersistenceError, Tracking

from domain.contract import TRIAL_LEVEL_PARTICIPANT, ClinicalEvent, RejectionError, SafetyEvent
from domain.errors import NotFound
from domain.participant import Participant, SafetyEventRecorded, participant_aggregate_id
from domain.protocol import ProtocolParameters
from domain.records import IngestLedger, PartitionRoster, TrialClock, TrialLog
from domain.trial import Trial
from domain.validation import ValidationLimits, validate_message
from infra.kafka import TopicIdentity
from infra.store import (
    EVENT_ID_CLAIMS,
    TRACKINGS,
    kafka_tracking,
    partition_tracking_name,
    sender_key,
)
from projections.alerts import Alert
from services.ingest_sources import (
    IngestSource,
    SourceCheck,
    SourceOutcome,
    SourceReplaced,
    SourceUnavailable,
)

log = logging.getLogger(__name__)
A = TypeVar("A", bound=Aggregate)

#: Stored-event topics of the derived safety events (what the relay publishes).
SAFETY_EVENT_TOPICS = tuple(
    f"{cls.__module__}:{cls.__qualname__}"
    for owner in (Participant, Trial, Alert)
    for cls in vars(owner).values()
    if isinstance(cls, type) and issubclass(cls, SafetyEventRecorded)
)
REJECTION_TOPIC = (
    f"{IngestLedger.MessageRejected.__module__}:{IngestLedger.MessageRejected.__qualname__}"
)
MAX_ATTEMPTS = 5
#: Stored events a batch's check of the ingest's aggregates reads at most; past that,
#: it drops them all (``SafetyMonitoring._check_current``).
CHANGES_READ = 10_000
#: Failures of the store itself (a lost connection, a full or read-only disk): never
#: a reason to reject or park a message; the batch fails whole and is applied again.
STORE_ERRORS: tuple[type[BaseException], ...] = (
    PersistenceError,
    psycopg.Error,
    sqlite3.Error,
    OSError,
)


@dataclass(frozen=True)
class InboundMessage:
    """One message as the broker (or a JSONL file) delivered it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    received_at: datetime


@dataclass
class BatchOutcome:
    accepted_by_type: Counter[str] = field(default_factory=Counter)
    rejected_by_code: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    already_applied: int = 0
    parked: int = 0
    new_domain_events: int = 0
    derived: list[SafetyEvent] = field(default_factory=list)
    commit_seconds: float = 0.0
    attempts: int = 1
    #: The inbound topics' ids checked before this batch (see ``verify_source``).
    source_checks: list[SourceCheck] = field(default_factory=list)
    #: (topic, partition) -> the next offset to apply, after this batch.
    positions: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return sum(self.accepted_by_type.values())

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_code.values())


class SafetyMonitoring(Application[UUID]):
    """Participant records and the ingest ledger, in one event store."""

    name = "SafetyMonitoring"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        protocol: ProtocolParameters | None = None,
        limits: ValidationLimits | None = None,
    ) -> None:
        super().__init__(env)
        self.protocol = protocol or ProtocolParameters()
        self.limits = limits or ValidationLimits()
        #: Looks up an inbound topic's id (the worker's Kafka metadata); None: the
        #: topics' ids are not checked (offline runs, tests of the ingest alone).
        self.topic_ids: Callable[[str], TopicIdentity | None] | None = None
        self._positions: dict[tuple[str, int], int] = {}
        self._incarnations: dict[str, int] = {}
        self._verified: set[str] = set()
        #: topic -> the incarnation the consumer was last positioned for
        #: (``resume_positions``): a batch of another incarnation is not applied.
        self._positioned: dict[str, int] = {}
        #: topic -> (topic id, incarnation) last checked: a batch finding the same id
        #: needs no store read (an id's incarnation never changes).
        self._checked: dict[str, tuple[str, int]] = {}
        #: The aggregates as the ingest last loaded or saved them, used without a store
        #: read while no other writer has changed them (``_check_current``), and the
        #: store position that check has read to (None: not read yet).
        size = int(self.env.get("AGGREGATE_CACHE_MAXSIZE") or 0)
        self._current: LRUCache[UUID, Aggregate] | None = LRUCache(size) if size else None
        self._current_to: int | None = None
        #: Participant aggregate id -> what the ingest last saved or loaded of it: the
        #: protocol object it follows, its wake, its version and its clinical horizon;
        #: dropped when another writer changes the record (``_check_current``). A clock
        #: tick before that wake, under that protocol, changes nothing
        #: (``Participant.record``), so the record need not be in memory for it
        #: (``_tick_may_change``).
        self._quiet: dict[UUID, _Quiet] = {}
        #: A record no tick can change and with nothing recorded for this long of its
        #: trial's clock leaves the ingest's memory (``_rest``): a participant out of
        #: follow-up, or between visits. The store holds it; its next event loads it.
        self._idle_after = timedelta(days=float(self.env.get("IDLE_RECORD_DAYS") or 14))
        #: (trial, topic, partition) -> the latest day whose clock the ingest keeps, and
        #: that clock's id (``_after_commit``).
        self._clock_days: dict[tuple[str, str, int], tuple[str, UUID]] = {}

    # ------------------------------------------------------------------ ingest

    def apply_batch(self, messages: Sequence[InboundMessage], *, now: datetime) -> BatchOutcome:
        """Apply a batch in one transaction.

        A concurrent writer (another worker after a rebalance) makes the commit fail:
        the batch is re-applied on fresh state. A valid message whose application
        fails is a defect, not a reason to stop: the batch is re-applied with that
        message kept in the ingest ledger as ``processing_error``.

        Raises ``SourceUnavailable`` when a topic's id cannot be checked, and
        ``SourceReplaced`` when the topic was replaced since the consumer was positioned
        (the replacement is recorded): nothing is applied.
        """
        checks = self._check_sources(messages, now)
        poisoned: dict[tuple[str, int, int], str] = {}
        conflicts = 0
        while True:
            try:
                outcome = self._apply_once(messages, now, poisoned)
            except IntegrityError:
                conflicts += 1
                log.warning("concurrent write on batch (attempt %d): reloading", conflicts)
                if conflicts >= MAX_ATTEMPTS:
                    raise
            except _PoisonMessage as poison:
                poisoned[poison.position] = poison.reason
            else:
                outcome.attempts = 1 + conflicts + len(poisoned)
                outcome.source_checks = checks
                return outcome

    def _apply_once(
        self,
        messages: Sequence[InboundMessage],
        now: datetime,
        poisoned: Mapping[tuple[str, int, int], str],
    ) -> BatchOutcome:
        batch = _Batch(self)
        try:
            self._check_current()
            return self._apply_and_save(batch, messages, now, poisoned)
        except BaseException:
            self._forget(batch)
            raise

    def _apply_and_save(
        self,
        batch: _Batch,
        messages: Sequence[InboundMessage],
        now: datetime,
        poisoned: Mapping[tuple[str, int, int], str],
    ) -> BatchOutcome:
        outcome = BatchOutcome()
        validated: dict[tuple[str, int, int], ClinicalEvent | RejectionError] = {}
        for message in messages:
            if message.offset >= self.next_offset(message.topic, message.partition):
                position = (message.topic, message.partition, message.offset)
                validated[position] = validate_message(message.value, now=now, limits=self.limits)
        batch.senders = self.recorder.event_id_senders(  # type: ignore[attr-defined]
            (result.trial_id, result.event_id)
            for result in validated.values()
            if not isinstance(result, RejectionError) and result.type != "clock.ticked"
        )
        batch.absent = self._absent(validated)
        for message in messages:
            if message.offset < self.next_offset(message.topic, message.partition):
                outcome.already_applied += 1
                continue
            batch.position(message)
            position = (message.topic, message.partition, message.offset)
            result = validated[position]
            if position in poisoned:
                if not isinstance(result, RejectionError) and self._park(
                    batch, message, result, poisoned[position]
                ):
                    outcome.parked += 1
                    continue
                result = RejectionError(code="processing_error", message=poisoned[position])
            if isinstance(result, RejectionError):
                ledger = batch.get(IngestLedger, message.topic, message.partition)
                ledger.reject(
                    message.offset, message.key, message.value, result, message.received_at
                )
                outcome.rejected_by_code[result.code] += 1
                continue
            try:
                applied = self._apply_event(batch, message, result)
            except STORE_ERRORS:
                raise  # the store, not the message: the whole batch is retried
            except Exception as error:
                # The position and type only: an event id can name a participant.
                log.exception(
                    "applying a %s at %s#%d@%d failed",
                    result.type,
                    message.topic,
                    message.partition,
                    message.offset,
                )
                raise _PoisonMessage(position, f"{type(error).__name__}: {error}"[:500]) from error
            if applied:
                outcome.accepted_by_type[result.type] += 1
            else:
                outcome.duplicates += 1
        started = time.perf_counter()
        pending = [a for a in batch.aggregates.values() if a.pending_events]
        outcome.derived = [
            e.to_contract()
            for a in pending
            for e in a.pending_events
            if isinstance(e, SafetyEventRecorded)
        ]
        outcome.new_domain_events = sum(len(a.pending_events) for a in pending)
        trackings = [
            kafka_tracking(t, p, o, self.incarnation(t))
            for (t, p), o in sorted(batch.positions.items())
        ]
        claims = [(trial, event_id, who) for (trial, event_id), who in batch.claims.items()]
        if pending or trackings:
            recordings = self.save(*pending, **{TRACKINGS: trackings, EVENT_ID_CLAIMS: claims})
            self._keep(pending)
            self._passed([r.notification.id for r in recordings])
        self._after_commit(batch)
        outcome.commit_seconds = time.perf_counter() - started
        for (topic, partition), offset in batch.positions.items():
            self._positions[(topic, partition)] = offset + 1
        outcome.positions = {
            (m.topic, m.partition): self.next_offset(m.topic, m.partition) for m in messages
        }
        return outcome

    def _park(
        self, batch: _Batch, message: InboundMessage, event: ClinicalEvent, reason: str
    ) -> bool:
        """Hold a valid event that could not be applied on its participant's record,
        with every later one of that participant, until a person releases it: the
        other participants are not held up. False when it names no participant (a
        trial-level record, a tick) or its record cannot be loaded: it is then kept
        in the ingest ledger as ``processing_error``."""
        if event.type == "clock.ticked" or event.participant_id == TRIAL_LEVEL_PARTICIPANT:
            return False
        batch.claim(event)  # its id is its participant's: parked, not lost
        try:
            participant = batch.participant(event.trial_id, event.participant_id, event.site_id)
            participant.park(
                event,
                message.received_at,
                reason=reason,
                position=f"{message.topic}#{message.partition}@{message.offset}",
            )
        except STORE_ERRORS:
            raise
        except Exception:
            log.exception(
                "parking at %s#%d@%d failed", message.topic, message.partition, message.offset
            )
            return False
        return True

    def release_participant(
        self, trial_id: str, participant_id: str, *, by: str, at: datetime, reason: str
    ) -> int:
        """Apply a parked participant's held events (a human action); the number applied.
        Raises ``NotFound`` (no such participant) or ``ValueError`` (not parked); an
        event that fails again propagates and nothing is saved."""
        try:
            participant = self.get_participant(trial_id, participant_id)
        except AggregateNotFoundError as error:
            raise NotFound(f"no participant {participant_id} in {trial_id}") from error
        participant.follow_protocol(self.trial_protocol(trial_id))
        applied = participant.release(by=by, at=at, reason=reason)
        self.save(participant)
        return applied

    def _apply_event(self, batch: _Batch, message: InboundMessage, event: ClinicalEvent) -> bool:
        if event.type == "clock.ticked":
            day = _clock_day(event)
            clock = batch.get(TrialClock, event.trial_id, message.topic, message.partition, day)
            batch.clock_days.setdefault((event.trial_id, message.topic, message.partition), {})[
                day
            ] = clock.id
            if clock.has_seen(event.event_id):
                return False  # a repeated tick, whatever time it carries
            clock.tick(event.occurred_at, event.event_id)
            roster = batch.get(PartitionRoster, message.topic, message.partition)
            trial_id, idle_before = event.trial_id, event.occurred_at - self._idle_after
            for participant_id in roster.by_trial.get(trial_id, ()):
                aggregate_id = participant_aggregate_id(trial_id, participant_id)
                if self._tick_may_change(batch, aggregate_id, trial_id, event.occurred_at):
                    participant = batch.participant(trial_id, participant_id, event.site_id)
                    participant.record(event, message.received_at)
                else:
                    self._rest(aggregate_id, idle_before)
            return True
        if not batch.claim(event):
            return False  # another participant's (or the trial's) event id: ignored
        if event.participant_id == TRIAL_LEVEL_PARTICIPANT:
            return batch.get(TrialLog, event.trial_id).record(event, message.received_at)
        roster = batch.get(PartitionRoster, message.topic, message.partition)
        if (event.trial_id, event.participant_id) not in roster.member_set:
            roster.join(event.trial_id, event.participant_id)
        participant = batch.participant(event.trial_id, event.participant_id, event.site_id)
        return participant.record(event, message.received_at)

    def _absent(
        self, validated: Mapping[tuple[str, int, int], ClinicalEvent | RejectionError]
    ) -> set[UUID]:
        """Of the records a batch's events would load that the ingest does not hold,
        those the store lacks (a new day's clock, a new participant, a trial with no
        protocol activated), found in one read for the batch: the batch creates them
        without a read each. Another writer creating one meanwhile makes the commit
        conflict, as when each was read alone."""
        held = self._current.cache if self._current is not None else {}
        wanted: set[UUID] = set()
        for (topic, partition, _), event in validated.items():
            if isinstance(event, RejectionError):
                continue
            wanted.add(TrialLog.id_for(event.trial_id))
            if event.type == "clock.ticked":
                wanted.add(TrialClock.id_for(event.trial_id, topic, partition, _clock_day(event)))
            elif event.participant_id != TRIAL_LEVEL_PARTICIPANT:
                wanted.add(participant_aggregate_id(event.trial_id, event.participant_id))
        wanted.difference_update(held)
        if not wanted:
            return set()
        return wanted - self.recorder.existing(wanted)  # type: ignore[attr-defined]

    def _tick_may_change(
        self, batch: _Batch, aggregate_id: UUID, trial_id: str, at: datetime
    ) -> bool:
        """False only where the ingest knows that a clock tick at ``at`` records nothing
        on the participant's record (``_quiet``): the record is then not loaded."""
        known = self._quiet.get(aggregate_id)
        if known is None or aggregate_id in batch.aggregates:
            return True
        return known.followed is not batch.protocol(trial_id) or (
            known.wake_at is not None and at >= known.wake_at
        )

    def _rest(self, aggregate_id: UUID, idle_before: datetime) -> None:
        """Let a record a tick cannot change out of memory once nothing has been
        recorded on it since ``idle_before`` (the tick's time less ``_idle_after``) of
        its trial's clock."""
        current = self._current
        if current is None or aggregate_id not in current.cache:
            return  # out of memory already
        known = self._quiet[aggregate_id]
        if known.horizon is None or known.horizon <= idle_before:
            current.get(aggregate_id, evict=True)

    def _after_commit(self, batch: _Batch) -> None:
        """After a batch's commit: what a tick needs to know of each record it held,
        and the clocks of past days out of memory (a day's clock serves that day's
        ticks; a late tick of an earlier day reads its clock from the store)."""
        current = self._current
        if current is None:
            return  # other writers' changes are not followed: nothing is known
        for key, days in batch.clock_days.items():
            latest = self._clock_days.get(key)
            if latest is not None:
                days = {latest[0]: latest[1], **days}
            today = max(days)
            self._clock_days[key] = (today, days[today])
            for day, clock_id in days.items():
                if day != today:
                    with contextlib.suppress(KeyError):
                        current.get(clock_id, evict=True)
        for aggregate in batch.aggregates.values():
            if isinstance(aggregate, Participant):
                self._quiet[aggregate.id] = _Quiet(
                    aggregate.followed, aggregate.wake_at, aggregate.version, aggregate.horizon
                )

    def next_offset(self, topic: str, partition: int) -> int:
        """The first offset of a partition not yet applied, in the topic's current
        incarnation (from the tracking table)."""
        key = (topic, partition)
        if key not in self._positions:
            name = partition_tracking_name(topic, partition, self.incarnation(topic))
            tracked = self.recorder.max_tracking_id(name)  # type: ignore[attr-defined]
            self._positions[key] = tracked or 0
        return self._positions[key]

    def _load(self, aggregate_id: UUID) -> Aggregate:
        """An aggregate as stored (``AggregateNotFoundError`` if it is not), for the
        ingest to change in place: as the ingest last loaded or saved it while no other
        writer has changed it since (``_check_current``), else from the repository
        (whose cache fast-forwards with a store read per aggregate)."""
        if self._current is not None:
            with contextlib.suppress(KeyError):
                return self._current.get(aggregate_id)
        aggregate: Aggregate = self.repository.get(
            aggregate_id, deepcopy_from_cache=False, projector_func=_mutate
        )
        if self._current is not None:
            # One cache holds what the ingest changes in place: the repository's
            # keeps only what other readers of this application load.
            self._current.put(aggregate_id, aggregate)
            if self.repository.cache is not None:
                with contextlib.suppress(KeyError):
                    self.repository.cache.get(aggregate_id, evict=True)
        return aggregate

    def _check_current(self) -> None:
        """Before a batch: drop from the ingest's aggregates each one that another
        writer (a worker given the partition for a while, a person releasing a record or
        activating a protocol) stored events of since the last check. One store read
        for the batch, where fast-forwarding reads once per aggregate. Writes stay
        guarded as before: an event stored by another writer after this check makes
        the batch's commit conflict, and the batch is applied again on fresh state."""
        current = self._current
        if current is None:
            return
        recorder: Any = self.recorder
        if self._current_to is None:
            current.clear()
            self._quiet.clear()
            self._current_to = recorder.max_notification_id() or 0
            return
        position, changed = recorder.changes_since(self._current_to, CHANGES_READ)
        if len(changed) >= CHANGES_READ:
            current.clear()  # more than one read's worth: reload whatever is used
            self._quiet.clear()
            position = recorder.max_notification_id() or 0
        else:
            for aggregate_id, version in changed:
                with contextlib.suppress(KeyError):
                    if current.get(aggregate_id).version < version:
                        current.get(aggregate_id, evict=True)
                known = self._quiet.get(aggregate_id)
                if known is not None and known.version < version:
                    del self._quiet[aggregate_id]
        self._current_to = position

    def _passed(self, stored: Sequence[int]) -> None:
        """After a batch's commit, the positions of its events: when they directly
        follow the position checked before the batch, no other writer's events lie
        between, and the next check need not read the batch's own events back."""
        ids = sorted(stored)
        if (
            self._current_to is not None
            and ids
            and ids[0] == self._current_to + 1
            and ids[-1] - ids[0] + 1 == len(ids)
        ):
            self._current_to = ids[-1]

    def _keep(self, saved: Sequence[Aggregate]) -> None:
        """Cache the aggregates a batch saved, as saved: eventsourcing caches only what
        it reconstructs when it fast-forwards cached aggregates, so an aggregate a batch
        created (a participant's first event, a new day's clock) would otherwise be
        rebuilt from the store by the next batch that touches it. The ingest's own cache
        when it has one (``_load``), else the repository's."""
        cache = self._current if self._current is not None else self.repository.cache
        if cache is not None:
            for aggregate in saved:
                cache.put(aggregate.id, aggregate)

    def _forget(self, batch: _Batch) -> None:
        """Drop what a failed batch touched: cached aggregates, positions and
        incarnations."""
        self._positions.clear()
        self._incarnations.clear()
        for cache in (self.repository.cache, self._current):
            if cache is None:
                continue
            for aggregate_id in batch.aggregates:
                with contextlib.suppress(KeyError):
                    cache.get(aggregate_id, evict=True)

    # ------------------------------------------------------------------ sources

    def incarnation(self, topic: str) -> int:
        """The incarnation of ``topic`` this process tracks positions under (0 until a
        replacement is recorded)."""
        if topic not in self._incarnations:
            source = self._source(topic)
            self._incarnations[topic] = source.incarnation if source else 0
        return self._incarnations[topic]

    def ingest_positions(
        self, topic: str, partitions: Iterable[int], *, incarnation: int | None = None
    ) -> dict[int, int]:
        """The ingest's position (the next offset to apply, 0 if none) of each partition
        of ``topic``, read from the store, in the topic's current incarnation as
        recorded (or in ``incarnation``). Everything that reads the worker's positions
        reads them here."""
        if incarnation is None:
            source = self._source(topic)
            incarnation = source.incarnation if source else 0
        return {
            p: self.tracked(partition_tracking_name(topic, p, incarnation)) or 0 for p in partitions
        }

    def ingest_source(self, topic: str) -> IngestSource | None:
        """The recorded binding of ``topic`` (None before the first check)."""
        return self._source(topic)

    def sources_assigned(self, topics: Iterable[str]) -> None:
        """Partitions of ``topics`` were (re)assigned to this process: their ids are
        checked again before the next batch applies anything (a recreated topic that
        has already grown past the old positions shows no other symptom)."""
        for topic in topics:
            self._verified.discard(topic)

    def resume_positions(
        self, topic: str, partitions: Iterable[int], now: datetime
    ) -> tuple[dict[int, int], SourceCheck | None]:
        """Where consuming ``topic``'s partitions must resume at the latest: the store's
        positions (read afresh) in the topic's current incarnation, its id checked
        first unless it has been since the last assignment; and that check."""
        check = None
        if self.topic_ids is not None and topic not in self._verified:
            check = self.verify_source(topic, now)
        incarnation = self.incarnation(topic)
        positions = self.ingest_positions(topic, partitions, incarnation=incarnation)
        for partition, offset in positions.items():
            self._positions[(topic, partition)] = offset
        self._positioned[topic] = incarnation
        return positions, check

    def verify_source(self, topic: str, now: datetime) -> SourceCheck:
        """Check ``topic``'s id against the recorded binding: bind it the first time
        (a store with positions but no binding, from before bindings were recorded,
        is bound to the current id); on a new id, record the replacement (logged
        CRITICAL) and track the topic as its next incarnation from offset 0. When
        another process records the same replacement first, this one adopts it.
        Raises ``SourceUnavailable`` when the id cannot be looked up."""
        identity = self._identify(topic)
        checked = self._checked.get(topic)
        if checked is not None and checked[0] == identity.topic_id:
            check = SourceCheck(topic, "unchanged", checked[1], identity.topic_id)
            self._adopt(check)
            return check
        tried: SourceOutcome | None = None  # what this process tried to record
        for attempt in range(1, MAX_ATTEMPTS + 1):
            source = self._source(topic)
            if source is not None and source.topic_id == identity.topic_id:
                # Bound to this id already, or just now by another process.
                outcome: SourceOutcome = "unchanged" if tried is None else "adopted"
                check = SourceCheck(topic, outcome, source.incarnation, source.topic_id)
                break
            if source is None:
                previous = None
                positions = self._tracked_positions(topic, 0, identity.partitions)
                source = IngestSource.bind(topic, identity.topic_id, at=now, positions=positions)
                tried = "bound"
            else:
                previous = source.topic_id
                positions = self._tracked_positions(topic, source.incarnation, identity.partitions)
                source.replace(identity.topic_id, at=now, positions_then=positions)
                tried = "replaced"
            try:
                self.save(source)
            except IntegrityError:
                # Another process recorded it first: load theirs and compare again.
                if attempt == MAX_ATTEMPTS:
                    raise
                continue
            check = SourceCheck(
                topic, tried, source.incarnation, source.topic_id, previous, positions
            )
            break
        self._adopt(check)
        return check

    def _adopt(self, check: SourceCheck) -> None:
        topic = check.topic
        if self._incarnations.get(topic) != check.incarnation:
            for key in [k for k in self._positions if k[0] == topic]:
                del self._positions[key]
        self._incarnations[topic] = check.incarnation
        self._verified.add(topic)
        self._checked[topic] = (check.topic_id, check.incarnation)
        if check.outcome == "replaced":
            log.critical(
                "inbound topic %s was replaced (topic id %s, now %s): it was deleted and "
                "created again, or the broker lost its data, so its offsets restarted at 0. "
                "The positions of incarnation %d are retired (%s); incarnation %d is applied "
                "from offset 0. Messages the old topic held beyond those positions were never "
                "applied: their producers must send them again",
                topic,
                check.previous_topic_id,
                check.topic_id,
                check.incarnation - 1,
                check.positions,
                check.incarnation,
            )
        elif check.outcome == "adopted":
            log.warning(
                "inbound topic %s: adopting incarnation %d (topic id %s) recorded by another "
                "worker",
                topic,
                check.incarnation,
                check.topic_id,
            )
        elif check.outcome == "bound":
            log.info(
                "inbound topic %s bound to topic id %s (positions found: %s)",
                topic,
                check.topic_id,
                check.positions or "none",
            )

    def _identify(self, topic: str) -> TopicIdentity:
        if self.topic_ids is None:
            raise SourceUnavailable("no topic id lookup is configured")
        try:
            identity = self.topic_ids(topic)
        except Exception as error:  # the broker's metadata: any client failure
            raise SourceUnavailable(
                f"cannot look up the id of topic {topic}: {type(error).__name__}: {error}"
            ) from error
        if identity is None:
            raise SourceUnavailable(
                f"topic {topic} has no id: it does not exist, or the broker reports no "
                "topic ids (Kafka before 2.8)"
            )
        return identity

    def _tracked_positions(self, topic: str, incarnation: int, partitions: int) -> dict[int, int]:
        """The positions tracked for ``topic``'s incarnation (partitions the topic has,
        and any this process has seen), those with one only."""
        seen = {p for (t, p) in self._positions if t == topic}
        found = self.ingest_positions(
            topic, sorted(set(range(partitions)) | seen), incarnation=incarnation
        )
        return {p: offset for p, offset in found.items() if offset}

    def _check_sources(
        self, messages: Sequence[InboundMessage], now: datetime
    ) -> list[SourceCheck]:
        """Check the id of every topic of the batch, every batch (one metadata request).

        The batch was fetched before the check, so an unchanged id means it came from
        the topic the positions belong to. Checking only on an assignment or before a
        skip is not enough: after a broker restart the consumer can fetch the new topic
        at the old topic's offsets before any rebalance, and nothing else shows it
        (those offsets are past the positions). The check cannot see a broker that
        serves stale metadata (a Kafka cluster still propagating a recreation)."""
        if self.topic_ids is None:
            return []
        checks = []
        for topic in dict.fromkeys(m.topic for m in messages):
            check = self.verify_source(topic, now)
            positioned = self._positioned.get(topic)
            if positioned is not None and check.incarnation != positioned:
                raise SourceReplaced(check, positioned)
            checks.append(check)
        return checks

    def _source(self, topic: str) -> IngestSource | None:
        try:
            source: IngestSource = self.repository.get(IngestSource.id_for(topic))
        except AggregateNotFoundError:
            return None
        return source

    # ------------------------------------------------------------------ reading

    def get_participant(self, trial_id: str, participant_id: str) -> Participant:
        aggregate: Participant = self.repository.get(
            participant_aggregate_id(trial_id, participant_id)
        )
        return aggregate

    def safety_notifications(
        self, after: int, limit: int, *, with_rejections: bool = False
    ) -> Sequence[Notification]:
        topics = SAFETY_EVENT_TOPICS + ((REJECTION_TOPIC,) if with_rejections else ())
        return self.recorder.select_notifications(
            start=after, limit=limit, topics=topics, inclusive_of_start=False
        )

    def iter_safety_events(self, batch: int = 1000) -> Iterator[SafetyEvent]:
        """Every derived safety event in log order."""
        after = 0
        while True:
            notifications = self.safety_notifications(after, batch)
            if not notifications:
                return
            for notification in notifications:
                domain_event = self.mapper.to_domain_event(notification)
                if isinstance(domain_event, SafetyEventRecorded):
                    yield domain_event.to_contract()
            after = notifications[-1].id

    def activate_protocol(
        self, protocol: ProtocolParameters, *, activated_by: str, reason: str, at: datetime
    ) -> None:
        """Record a protocol version as in force for its trial (a human action)."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            aggregate_id = TrialLog.id_for(protocol.trial_id)
            try:
                trial_log: TrialLog = self.repository.get(aggregate_id)
            except AggregateNotFoundError:
                trial_log = TrialLog(protocol.trial_id)
            trial_log.activate_protocol(protocol, activated_by=activated_by, reason=reason, at=at)
            try:
                self.save(trial_log)
                return
            except IntegrityError:
                if attempt == MAX_ATTEMPTS:
                    raise

    def trial_protocol(self, trial_id: str) -> ProtocolParameters:
        """The trial's activated protocol version, else the configured default."""
        try:
            trial_log: TrialLog = self.repository.get(TrialLog.id_for(trial_id))
        except AggregateNotFoundError:
            return self.protocol
        return trial_log.protocol or self.protocol

    def tracked(self, name: str) -> int | None:
        return self.recorder.max_tracking_id(name)  # type: ignore[attr-defined,no-any-return]

    def record_tracking(self, name: str, position: int) -> None:
        self.recorder.insert_tracking(Tracking(name, position))  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class _Quiet:
    """What a clock tick needs to know of a participant's record (``_quiet``)."""

    followed: ProtocolParameters | None
    wake_at: datetime | None
    version: int
    horizon: datetime | None


class _PoisonMessage(Exception):
    def __init__(self, position: tuple[str, int, int], reason: str) -> None:
        super().__init__(reason)
        self.position = position
        self.reason = reason


def _mutate(aggregate: Aggregate | None, events: Iterable[Any]) -> Aggregate | None:
    """eventsourcing's ``project_aggregate`` without its per-event assertion that the
    event can mutate (a runtime ``Protocol`` check, 3 % of applying a batch where
    records are read back): every event the ingest's aggregates store can."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def _clock_day(event: ClinicalEvent) -> str:
    """The UTC day whose clock a ``clock.ticked`` event ticks (``TrialClock``)."""
    return event.occurred_at.astimezone(UTC).date().isoformat()


class _Batch:
    """The aggregates one batch touches, loaded once each."""

    def __init__(self, app: SafetyMonitoring) -> None:
        self.app = app
        self.aggregates: dict[UUID, Aggregate] = {}
        self.positions: dict[tuple[str, int], int] = {}
        self.protocols: dict[str, ProtocolParameters] = {}
        #: (trial, event id) -> ``sender_key`` of who sent it first (stored or here).
        self.senders: dict[tuple[str, str], str] = {}
        self.claims: dict[tuple[str, str], str] = {}
        #: (trial, topic, partition) -> day -> the id of the clock this batch ticked.
        self.clock_days: dict[tuple[str, str, int], dict[str, UUID]] = {}
        #: Records the store lacked when the batch began (``SafetyMonitoring._absent``).
        self.absent: set[UUID] = set()

    def claim(self, event: ClinicalEvent) -> bool:
        """Whether ``event``'s id is its participant's (contract §1: a repeated
        ``event_id`` is ignored, whatever it carries, even from another participant)."""
        key = (event.trial_id, event.event_id)
        sender = sender_key(event.trial_id, event.participant_id)
        first = self.senders.get(key)
        if first is None:
            self.senders[key] = sender
            self.claims[key] = event.participant_id
            return True
        return first == sender

    def position(self, message: InboundMessage) -> None:
        self.positions[(message.topic, message.partition)] = message.offset

    def get(self, cls: type[A], *args: Any) -> A:
        aggregate_id: UUID = cls.id_for(*args)  # type: ignore[attr-defined]
        found = self.aggregates.get(aggregate_id)
        if found is None:
            try:
                found = self._load(aggregate_id)
            except AggregateNotFoundError:
                found = cls(*args)
            self.aggregates[aggregate_id] = found
        return found  # type: ignore[return-value]

    def participant(self, trial_id: str, participant_id: str, site_id: str) -> Participant:
        aggregate_id = participant_aggregate_id(trial_id, participant_id)
        found = self.aggregates.get(aggregate_id)
        if found is None:
            protocol = self.protocol(trial_id)
            try:
                found = self._load(aggregate_id)
            except AggregateNotFoundError:
                found = Participant.open(trial_id, participant_id, site_id, protocol)
            else:
                cast(Participant, found).follow_protocol(protocol)
            self.aggregates[aggregate_id] = found
        return cast(Participant, found)

    def _load(self, aggregate_id: UUID) -> Aggregate:
        if aggregate_id in self.absent:
            raise AggregateNotFoundError(aggregate_id)
        return self.app._load(aggregate_id)

    def protocol(self, trial_id: str) -> ProtocolParameters:
        """The trial's activated protocol version, else the configured default."""
        if trial_id not in self.protocols:
            try:
                # Read only; not copied, so that the same protocol object is handed out
                # while no other version is activated (``Participant.follow_protocol``).
                log_ = cast(TrialLog, self._load(TrialLog.id_for(trial_id)))
            except AggregateNotFoundError:
                active = None
            else:
                active = log_.protocol
            self.protocols[trial_id] = active or self.app.protocol
        return self.protocols[trial_id]
