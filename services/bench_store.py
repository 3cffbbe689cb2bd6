"""A large event store for ``toxwatch bench replay``, built once and cached.

The store holds simulated LUCAR-G79 cohorts (``services.simulator``) applied offline
with the worker's code, the trial monitor and the alerts process, so it has the mix
of a live store: recorded clinical events, clock ticks, derived safety events, the
trial monitor's facts and decisions, alerts. Simulating a million stored events
takes the best part of an hour, so a *base* of whole cohorts is simulated (42
participants each, one trial per cohort) and then **replicated**: each copy is the
base's stored events under new trial ids, with every identifier that depends on the
trial id made again with the application's own functions (participant, trial, dose
level, clock, trial log and alert aggregate ids, and the ids of derived events, which
are made from their aggregate's id), other aggregate ids mapped to new ones, and the
trial monitor's log positions (``read_through``) shifted to the copy's place in the
log. Copies follow each other in the log, and the last one is cut where the store
reaches the requested size (a trial in progress). The base is kept beside the large
store (``base-pPARTICIPANTS-fFORMAT.sqlite3``): ``toxwatch replay`` is timed on it.

The ingest's event-id claims table is not replicated (nothing that reads the log
needs it), and the copies keep the base's recording times. A full ``toxwatch replay``
of a two-copy store reproduces every participant's, dose level's and alert's history
and the alerts inbox, safety metrics, kinetics, registry and audit trail; the trial
monitor's decisions differ as they do in a replay of the base itself (offline, the
monitor evaluates once over the whole log, a replay at each fact's read position).
The bench times replays on the base alone, the store whose derivations it made.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.persistence import Notification, StoredEvent

from domain.participant import NAMESPACE, Participant, participant_aggregate_id
from domain.trial import DoseLevel, Trial, dose_level_aggregate_id, trial_aggregate_id
from infra.settings import Settings
from projections.alerts import Alert, alert_id_for
from services.alerts import ALERTS_TRACKING
from services.application import SafetyMonitoring
from services.bootstrap import build_application
from services.monitor import MONITOR_TRACKING
from services.offline import process_lines
from services.simulator import CohortSpec, simulate_cohort

#: Bump when the store's content changes: a cached store of another format is rebuilt.
FORMAT = 1
COHORT = 42
INSERT_BATCH = 5000
_COPY_NAMESPACE = uuid5(NAMESPACE, "bench-replay-copy")
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_READ_THROUGH = re.compile(rb'"read_through":(\d+)')


def trial_id_of(index: int) -> str:
    """The trial id of the ``index``-th trial of the store (the first is the
    simulator's); all have the same length, so a copy's states keep their size."""
    return CohortSpec().trial_id if index == 0 else f"NCT9{index:07d}"


def store_settings(path: Path) -> Settings:
    return Settings(
        store="sqlite",
        data_dir=path.parent,
        sqlite_file=path,
        cipher_key=None,
        cipher_key_file=None,
        require_encryption=False,
    )


def open_store(path: Path) -> SafetyMonitoring:
    return build_application(store_settings(path))


def fill(app: SafetyMonitoring, participants: int, *, first_trial: int = 0) -> int:
    """Simulated cohorts of up to 42 participants, one trial each (distinct seeds),
    until ``participants`` are stored; the number of trials. One stream: its offsets
    run on from cohort to cohort (a second stream from offset 0 would be taken for a
    redelivery of the first)."""
    index = 0
    lines: list[bytes] = []
    while participants > 0:
        size = min(COHORT, participants)
        spec = CohortSpec(
            seed=index + 1,
            participants=size,
            malformed=False,
            trial_id=trial_id_of(first_trial + index),
        )
        lines.extend(m.value for m in simulate_cohort(spec))
        participants -= size
        index += 1
    process_lines(lines, io.StringIO(), app=app)
    return index


@dataclass(frozen=True)
class StorePaths:
    """The measured store, the simulated base it was replicated from (shared by the
    stores of every size in the folder) and the store's specification."""

    store: Path
    base: Path
    meta: Path

    @classmethod
    def of(cls, store: Path, participants: int) -> StorePaths:
        base = store.with_name(f"base-p{participants}-f{FORMAT}.sqlite3")
        return cls(store, base, store.with_suffix(".json"))


def ensure_store(
    path: Path, *, events: int, participants: int, say: Callable[[str], None] = print
) -> StorePaths:
    """The cached store at ``path`` (and its base), built if missing or of another
    specification. A store at ``path`` without its specification file is taken as
    it is (any SQLite store can be measured)."""
    paths = StorePaths.of(path, participants)
    wanted = {"format": FORMAT, "events": events, "participants": participants}
    if path.exists() and not paths.meta.exists():
        return paths
    if path.exists() and json.loads(paths.meta.read_text()) == wanted and paths.base.exists():
        return paths
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, paths.meta):
        stale.unlink(missing_ok=True)
    if not paths.base.exists():
        say(f"simulating the base: {participants} participants, one trial per 42 ...")
        partial = paths.base.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        app = open_store(partial)
        fill(app, participants)
        app.close()
        partial.rename(paths.base)
    say(f"replicating the base to {events:,} stored events (batched inserts) ...")
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    shutil.copyfile(paths.base, partial)
    app = open_store(partial)
    try:
        replicate(app, events)
    finally:
        app.close()
    partial.rename(path)
    paths.meta.write_text(json.dumps(wanted) + "\n")
    return paths


# ---------------------------------------------------------------- replication


def replicate(app: SafetyMonitoring, events: int) -> int:
    """Append copies of ``app``'s stored events (the base) until it holds ``events``;
    the number of stored events."""
    if app.mapper.cipher is not None or app.mapper.compressor is not None:
        raise ValueError("the base store must be plain (no cipher, no compressor)")
    base = list(_all(app))
    if not base:
        raise ValueError("the base store is empty")
    trials = sorted(
        {str(e.trial_id) for e in (app.mapper.to_domain_event(n) for n in base)
         if hasattr(e, "trial_id")}
    )  # fmt: skip
    first, last = base[0].id, base[-1].id
    if last - first + 1 != len(base):
        raise ValueError("the base store's log positions are not contiguous")
    stored = len(base)
    copy = 0
    while stored < events:
        copy += 1
        renamed = {t: trial_id_of(copy * len(trials) + i) for i, t in enumerate(trials)}
        offset = (app.recorder.max_notification_id() or 0) - first + 1
        replica = _Replica(app, base, renamed, copy, offset=offset)
        batch: list[StoredEvent] = []
        for stored_event in replica.events():
            if stored >= events:
                break
            batch.append(stored_event)
            stored += 1
            if len(batch) >= INSERT_BATCH:
                app.recorder.insert_events(batch)
                batch = []
        if batch:
            app.recorder.insert_events(batch)
    top = app.recorder.max_notification_id() or 0
    for name in (MONITOR_TRACKING, ALERTS_TRACKING):
        if (app.tracked(name) or 0) < top:
            app.record_tracking(name, top)
    return top


def _all(app: SafetyMonitoring) -> Iterator[Notification]:
    after = 0
    while batch := app.recorder.select_notifications(
        start=after, limit=INSERT_BATCH, inclusive_of_start=False
    ):
        yield from batch
        after = batch[-1].id


class _Replica:
    """The base's stored events as one copy: trial ids renamed (``renamed``), ids
    made again, positions shifted by ``offset``."""

    def __init__(
        self,
        app: SafetyMonitoring,
        base: list[Notification],
        renamed: dict[str, str],
        copy: int,
        *,
        offset: int,
    ) -> None:
        self.base = base
        self.copy = copy
        self.offset = offset
        self.trial_bytes = [
            (f'"{old}"'.encode(), f'"{new}"'.encode()) for old, new in renamed.items()
        ]
        self.ids: dict[UUID, UUID] = {}
        for notification in base:
            if notification.originator_version == 1:
                event = app.mapper.to_domain_event(notification)
                self.ids[_uuid(notification.originator_id)] = self._new_id(event, renamed)
        strings: dict[bytes, bytes] = {}
        for notification in base:
            old = _uuid(notification.originator_id)
            new = self.aggregate_id(old)
            version = str(notification.originator_version)
            strings[str(uuid5(old, version)).encode()] = str(uuid5(new, version)).encode()
        for old, new in self.ids.items():
            strings[str(old).encode()] = str(new).encode()
        self.strings = strings

    def aggregate_id(self, old: UUID) -> UUID:
        new = self.ids.get(old)
        if new is None:
            new = self.ids[old] = uuid5(_COPY_NAMESPACE, f"{self.copy}/{old}")
        return new

    def _new_id(self, event: Any, renamed: dict[str, str]) -> UUID:
        trial = renamed.get(str(getattr(event, "trial_id", "")))
        if trial is None:
            return uuid5(_COPY_NAMESPACE, f"{self.copy}/{event.originator_id}")
        if isinstance(event, Participant.Registered):
            return participant_aggregate_id(trial, event.participant_id)
        if isinstance(event, Trial.Opened):
            return trial_aggregate_id(trial)
        if isinstance(event, DoseLevel.Opened):
            return dose_level_aggregate_id(trial, event.dose_level)
        if isinstance(event, Alert.Opened):
            return Alert.id_for(alert_id_for(trial, event.category, event.situation))
        aggregate = getattr(event, "originator_topic", None)
        create_id = getattr(_resolve(aggregate), "create_id", None) if aggregate else None
        if create_id is not None:
            params = {k: v for k, v in vars(event).items() if k not in _NOT_PARAMS}
            params["trial_id"] = trial
            return create_id(**params)  # type: ignore[no-any-return]
        return uuid5(_COPY_NAMESPACE, f"{self.copy}/{event.originator_id}")

    def events(self) -> Iterator[StoredEvent]:
        for notification in self.base:
            state = bytes(notification.state)
            for old, new in self.trial_bytes:
                state = state.replace(old, new)
            state = _UUID.sub(self._string, state)
            state = _READ_THROUGH.sub(self._position, state)
            yield StoredEvent(
                originator_id=self.aggregate_id(_uuid(notification.originator_id)),
                originator_version=notification.originator_version,
                topic=notification.topic,
                state=state,
            )

    def _string(self, match: re.Match[bytes]) -> bytes:
        old = match.group()
        new = self.strings.get(old)
        if new is None:
            new = str(uuid5(_COPY_NAMESPACE, f"{self.copy}/{old.decode()}")).encode()
            self.strings[old] = new
        return new

    def _position(self, match: re.Match[bytes]) -> bytes:
        return b'"read_through":' + str(int(match.group(1)) + self.offset).encode()


_NOT_PARAMS = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})


def _resolve(topic: str) -> Any:
    from eventsourcing.utils import resolve_topic

    return resolve_topic(topic)


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))
