"""``toxwatch replay``: rebuild every derivation from position zero beside the live
store, and report each difference (architecture decision 7).

The live store holds two kinds of events. *Inputs* are what arrived or what a person
did: recorded clinical events, protocol activations, trial-level records, clock
ticks, rejected messages, acknowledgements, tokens, delivery receipts. *Derivations*
are what ToxWatch concluded from them: each participant's derived safety events, the
trial monitor's facts, tallies and decisions, and the alerts.

The rebuild walks the live log in notification order into a fresh store:

- an input is copied as it is; a participant's recorded event (and each protocol
  version it was told to follow) is applied again, with today's code, to a
  participant rebuilt from nothing, so its derivations are made afresh;
- the trial monitor is run over the rebuilt log at the same points as the live one
  (each stored fact names the last position the live monitor had read, and its
  evaluation used everything up to there), so its decisions land where they landed;
- the alerts process is run over the rebuilt log; an acknowledgement is applied again
  to the rebuilt alert, at the revision the person saw.

Then each derived aggregate's history is compared event by event, and the read
models (alerts inbox, safety metrics, kinetics, the DSMB packet's data) are folded
from both logs and compared. With unchanged code, a rebuild reproduces the live
store exactly; after a rule fix, the report names every derivation that changed.
The rebuilt store is left beside the live one when asked (``--into``); the live
store is never written.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Notification
from psycopg import sql

from domain.contract import parse_recorded
from domain.errors import ToxWatchError
from domain.participant import Participant, SafetyEventRecorded
from domain.protocol import ProtocolParameters
from domain.trial import DoseLevel, Trial
from infra.settings import Settings
from projections.alerts import Alert
from projections.views import Views
from services.alerts import ALERTS_TRACKING, AlertDesk
from services.application import SafetyMonitoring
from services.monitor import MONITOR_TRACKING, TrialMonitor

#: Derived aggregates: their histories are rebuilt and compared.
DERIVED = (Participant, Trial, DoseLevel, Alert)
_LAYERS = {
    (cls.__module__, cls.__qualname__): layer
    for cls, layer in zip(DERIVED, ("participant", "trial", "dose level", "alert"), strict=True)
}
#: Stored values that differ between two faithful runs: when an event was written
#: and which log position it got.
VOLATILE_KEYS = frozenset({"timestamp", "read_through", "recorded_at", "raised_at", "position"})
READ_BATCH = 1000
FLUSH_EVERY = 2000


class ReplayError(ToxWatchError):
    """The rebuild target is not usable (not empty, or the live store is)."""


@dataclass(frozen=True)
class Difference:
    """One derivation that differs between the live and the rebuilt store."""

    layer: str  # participant | trial | dose level | alert | input | view
    subject: str
    change: str  # changed | only live | only rebuilt | not re-applied
    what: str
    live: Any = None
    rebuilt: Any = None


@dataclass
class ReplayReport:
    live_events: int = 0
    rebuilt_events: int = 0
    compared: Counter[str] = field(default_factory=Counter)
    differences: list[Difference] = field(default_factory=list)
    views: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def identical(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "live_events": self.live_events,
            "rebuilt_events": self.rebuilt_events,
            "compared": dict(self.compared),
            "views": self.views,
            "differences": [_jsonable(asdict(d)) for d in self.differences],
            "seconds": round(self.seconds, 3),
        }


# ---------------------------------------------------------------- the rebuild


class Rebuild:
    """Rebuilds ``live``'s derivations into ``target`` (an empty store)."""

    def __init__(
        self, live: SafetyMonitoring, target: SafetyMonitoring, *, rederive: bool = True
    ) -> None:
        """``rederive`` False: participants' stored derivations are copied, not made
        again (only the trial monitor, the alerts and the views are rebuilt)."""
        if target.recorder.max_notification_id():
            raise ReplayError("the rebuild target is not empty: give a new store")
        self.live = live
        self.target = target
        self.rederive = rederive
        self.monitor = TrialMonitor(target)
        self.desk = AlertDesk(target)
        self.participants: dict[UUID, Participant] = {}
        self.pending: list[Any] = []
        #: live position -> rebuilt position after it (at the points that matter).
        self.positions: dict[int, int] = {}
        self.monitor_runs: set[int] = set()
        self.report = ReplayReport()
        self.live_histories: dict[UUID, list[Any]] = {}
        #: Each history's stored contents (``_content``), when both stores are plain.
        self.live_contents: dict[UUID, list[bytes]] = {}
        self.plain = _plain(live) and _plain(target)
        #: The read models of both stores, folded from the passes the rebuild makes.
        self.live_views = Views()
        self.rebuilt_views = Views()

    def run(self) -> ReplayReport:
        started = time.perf_counter()
        marks = self._marks()
        monitor_through = self.live.tracked(MONITOR_TRACKING) or 0
        desk_through = self.live.tracked(ALERTS_TRACKING) or 0
        for notification in _notifications(self.live):
            self.report.live_events += 1
            event = self.live.mapper.to_domain_event(notification)
            self.live_views.apply(event, notification.id)
            if _layer(event) is not None:
                self.live_histories.setdefault(event.originator_id, []).append(event)
                if self.plain:
                    self.live_contents.setdefault(event.originator_id, []).append(
                        _content(notification)
                    )
            self._replay(notification, event)
            if len(self.pending) >= FLUSH_EVERY or notification.id in marks:
                self._flush()
            if notification.id in marks:
                self.positions[notification.id] = self.target.recorder.max_notification_id()
        self._flush()
        # What the live processes had not yet read is not rebuilt either.
        if monitor_through:
            self.monitor.run_until_idle(through=self._rebuilt_position(monitor_through))
        if desk_through:
            self.desk.run_until_idle(through=self._rebuilt_position(desk_through))
        self._compare_histories()
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _marks(self) -> set[int]:
        """Live positions whose rebuilt counterpart the rebuild needs to know."""
        marks = {self.live.tracked(MONITOR_TRACKING) or 0, self.live.tracked(ALERTS_TRACKING) or 0}
        for notification in _notifications(self.live, topics=(_topic(Trial.FactObserved),)):
            event = self.live.mapper.to_domain_event(notification)
            if event.read_through is not None:
                marks.add(event.read_through)
        marks.discard(0)
        return marks

    def _rebuilt_position(self, live_position: int) -> int:
        return self.positions.get(live_position) or self.target.recorder.max_notification_id()

    def _replay(self, notification: Notification, event: Any) -> None:
        if not self.rederive and _layer(event) == "participant":
            self.pending.append(event)
            return
        if isinstance(event, Participant.Registered):
            parameters = ProtocolParameters.model_validate(event.parameters)
            participant = Participant.open(
                event.trial_id, event.participant_id, event.site_id, parameters
            )
            self.participants[participant.id] = participant
            self._collect(participant)
        elif isinstance(event, Participant.ProtocolApplied):
            participant = self.participants[event.originator_id]
            participant.follow_protocol(ProtocolParameters.model_validate(event.parameters))
            self._collect(participant)
        elif isinstance(event, Participant.ClinicalEventRecorded):
            participant = self.participants[event.originator_id]
            clinical = parse_recorded(event.event)
            if not participant.record(clinical, event.received_at):
                self._difference(
                    "input",
                    _subject(participant),
                    "not re-applied",
                    f"{event.event['type']} {event.event['event_id']} was not recorded again",
                )
            self._collect(participant)
        elif isinstance(event, Participant.Parked | Participant.Held):
            # Applied again: today's code may apply what the live code could not.
            participant = self.participants[event.originator_id]
            clinical = parse_recorded(event.event)
            before = copy.deepcopy(participant)
            try:
                participant.record(clinical, event.received_at)
            except Exception as error:  # parked again, as live
                participant = self.participants[event.originator_id] = before
                participant.park(
                    clinical,
                    event.received_at,
                    reason=f"{type(error).__name__}: {error}"[:500],
                    position=getattr(event, "position", ""),
                )
            self._collect(participant)
        elif isinstance(event, Participant.Released):
            participant = self.participants[event.originator_id]
            if participant.parked is not None:
                participant.release(by=event.by, at=event.at, reason=event.reason)
            self._collect(participant)
        elif isinstance(event, Trial.FactObserved):
            # The live monitor evaluated here, having read up to ``read_through``.
            through = event.read_through
            if through is None or through not in self.monitor_runs:
                self._flush()
                rebuilt = (
                    self.target.recorder.max_notification_id()
                    if through is None
                    else self._rebuilt_position(through)
                )
                self.monitor.run_until_idle(through=rebuilt)
                if through is not None:
                    self.monitor_runs.add(through)
        elif isinstance(event, Alert.Acknowledged):
            self._acknowledge(event)
        elif _layer(event) is not None:
            pass  # made again by the rebuilt participant, monitor or alerts process
        else:
            self.pending.append(event)

    def _acknowledge(self, event: Any) -> None:
        """Apply a person's acknowledgement again, once the rebuilt alerts process has
        reached the revision they saw."""
        self._flush()
        data = event.data
        alert_id = Alert.id_for(data["alert_id"])
        self.desk.run_until_idle(through=self.target.recorder.max_notification_id())
        try:
            alert: Alert = self.target.repository.get(alert_id)
            alert.acknowledge(
                by=data["by"],
                at=datetime.fromisoformat(data["at"]),
                comment=data.get("comment") or "",
                revision=data["revision"],
            )
        except Exception as error:
            self._difference(
                "alert",
                data["alert_id"],
                "not re-applied",
                f"acknowledgement by {data['by']} of revision {data['revision']}: {error}",
            )
            return
        self.target.save(alert)

    def _collect(self, aggregate: Aggregate) -> None:
        self.pending.extend(aggregate.collect_events())

    def _flush(self) -> None:
        if self.pending:
            self.target.save(*self.pending)
            self.report.rebuilt_events += len(self.pending)
            self.pending = []

    def _difference(self, layer: str, subject: str, change: str, what: str, **kw: Any) -> None:
        self.report.differences.append(Difference(layer, subject, change, what, **kw))

    # ------------------------------------------------------------ comparing

    def _compare_histories(self) -> None:
        rebuilt: dict[UUID, list[Any]] = {}
        contents: dict[UUID, list[bytes]] = {}
        count = 0
        for notification in _notifications(self.target):
            count += 1
            event = self.target.mapper.to_domain_event(notification)
            self.rebuilt_views.apply(event, notification.id)
            if _layer(event) is not None:
                rebuilt.setdefault(event.originator_id, []).append(event)
                if self.plain:
                    contents.setdefault(event.originator_id, []).append(_content(notification))
        self.report.rebuilt_events = count
        for originator in sorted(set(self.live_histories) | set(rebuilt), key=str):
            live = self.live_histories.get(originator, [])
            new = rebuilt.get(originator, [])
            layer, subject = _describe_aggregate(live or new)
            self.report.compared[layer] += 1
            self.report.compared[f"{layer} events"] += max(len(live), len(new))
            if self.plain and self.live_contents.get(originator) == contents.get(originator):
                continue  # stored alike, so alike in canonical form too
            self._compare(layer, subject, live, new)

    def _compare(self, layer: str, subject: str, live: list[Any], new: list[Any]) -> None:
        left = [canonical(e) for e in live]
        right = [canonical(e) for e in new]
        if left == right:
            return
        matcher = difflib.SequenceMatcher(a=left, b=right, autojunk=False)
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                continue
            for old, fresh in _pair(live[i1:i2], new[j1:j2]):
                change = "changed" if old and fresh else "only live" if old else "only rebuilt"
                self._difference(
                    layer,
                    subject,
                    change,
                    _what(old, fresh),
                    live=_state(old),
                    rebuilt=_state(fresh),
                )


def target_settings(settings: Settings, into: str) -> Settings:
    """Settings for a rebuilt store beside the live one: ``into`` is a new SQLite
    file, or a new schema of the live PostgreSQL database (created here)."""
    if settings.store == "sqlite":
        path = Path(into)
        if path.resolve() == settings.sqlite_path.resolve():
            raise ReplayError("the rebuilt store must not be the live one")
        if path.exists():
            raise ReplayError(f"{path} exists: give a new file")
        return settings.model_copy(update={"sqlite_file": path})
    if into == settings.postgres_schema:
        raise ReplayError("the rebuilt store must not be the live schema")
    with psycopg.connect(
        host=settings.postgres_host,
        port=settings.postgres_port,
        dbname=settings.postgres_dbname,
        user=settings.postgres_user,
        password=settings.postgres_password,
        autocommit=True,
    ) as connection:
        exists = connection.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (into,)
        ).fetchone()
        if exists:
            raise ReplayError(f"schema {into} exists: give a new one")
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(into)))
    return settings.model_copy(update={"postgres_schema": into})


def replay(
    live: SafetyMonitoring, target: SafetyMonitoring, *, rederive: bool = True
) -> ReplayReport:
    """Rebuild ``live`` into the empty ``target`` and compare histories and views
    (``rederive`` False: the participants' derivations are taken as stored)."""
    rebuild = Rebuild(live, target, rederive=rederive)
    report = rebuild.run()
    verdicts, differences = compare_snapshots(
        read_model_snapshots(rebuild.live_views, live.trial_protocol),
        read_model_snapshots(rebuild.rebuilt_views, target.trial_protocol),
    )
    report.views = verdicts
    report.differences.extend(
        Difference(
            "view",
            d["view"],
            "changed",
            f"{d['view']}: {d['item']}",
            live=d["live"],
            rebuilt=d["rebuilt"],
        )
        for d in differences
    )
    return report


# ---------------------------------------------------------------- views


def read_model_snapshots(
    views: Any, protocol_of: Callable[[str], ProtocolParameters] | None = None
) -> dict[str, dict[str, Any]]:
    """The read models of one generation (``projections.views.Views``, or an object
    with its alerts, safety, kinetics and participants) as plain data keyed by item,
    without what differs between two faithful runs (write times and log positions).
    With ``protocol_of`` (a trial's protocol in force), the DSMB packet's data of each
    trial too; the audit trail when the generation has one."""
    alerts = {row.alert_id: _normalise(asdict(row)) for row in views.alerts.rows.values()}
    gauges = {
        f"{name}{dict(labels)}": value
        for name, family in views.safety.gauges().items()
        for labels, value in family.items()
    }
    kinetics: dict[str, Any] = {}
    trials = sorted({trial for trial, _ in views.participants})
    for trial_id in trials:
        kinetics[f"{trial_id} by dose level"] = _normalise(
            views.kinetics.dose_level_summary(trial_id)
        )
    for (trial_id, participant_id), subject in sorted(views.kinetics.participants.items()):
        kinetics[f"{trial_id}/{participant_id}"] = _normalise(
            {
                "pk": {k: asdict(v) for k, v in subject.pk().items()},
                "disease": [asdict(c) for c in subject.disease_changes()],
                "b_cells": subject.b_cells(),
            }
        )
    snapshots: dict[str, dict[str, Any]] = {
        "alerts inbox": alerts,
        "safety metrics": gauges,
        "kinetics": kinetics,
        "participants": {
            f"{trial}/{participant}": site
            for (trial, participant), site in views.participants.items()
        },
    }
    audit = getattr(views, "audit", None)
    if audit is not None:
        snapshots["audit trail"] = _audit_snapshot(audit.entries)
    dsmb = getattr(views, "dsmb", None)
    if dsmb is not None and protocol_of is not None:
        snapshots["DSMB packet data"] = _dsmb_snapshot(dsmb, trials, protocol_of)
    return snapshots


def _audit_snapshot(entries: Iterable[Any]) -> dict[str, Any]:
    """Audit entries keyed by who did what when (a repeat numbered)."""
    out: dict[str, Any] = {}
    seen: Counter[str] = Counter()
    for entry in entries:
        key = f"{entry.at.isoformat()} {entry.who}: {entry.action} {entry.what}"
        seen[key] += 1
        out[f"{key} #{seen[key]}" if seen[key] > 1 else key] = _normalise(asdict(entry))
    return out


def _dsmb_snapshot(
    dsmb: Any, trials: Iterable[str], protocol_of: Callable[[str], ProtocolParameters]
) -> dict[str, Any]:
    from services.dashboard import planned_enrolment

    snapshot: dict[str, Any] = {}
    for trial_id in trials:
        protocol = protocol_of(trial_id)
        report = dsmb.report(
            trial_id=trial_id,
            as_of=None,
            planned_enrolment=planned_enrolment(protocol)[0],
            dose_levels=[level.id for level in protocol.dose_levels],
        )
        for section, value in _normalise(report.to_dict()).items():
            snapshot[f"{trial_id} {section}"] = value
    return snapshot


def view_snapshots(app: SafetyMonitoring) -> dict[str, dict[str, Any]]:
    """Every read model folded from ``app``'s log from position zero (the API's and
    the DSMB packet's data), as plain data."""
    from services.api import fold_views

    views = Views()
    fold_views(app, views)
    return read_model_snapshots(views, app.trial_protocol)


def compare_snapshots(
    left: Mapping[str, Mapping[str, Any]], right: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Per view, ``identical`` or ``differs``, and each differing item."""
    verdicts: dict[str, str] = {}
    differences: list[dict[str, Any]] = []
    for name in left:
        before, after = left[name], right.get(name, {})
        keys = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        verdicts[name] = "differs" if keys else "identical"
        differences.extend(
            {"view": name, "item": key, "live": before.get(key), "rebuilt": after.get(key)}
            for key in keys
        )
    return verdicts, differences


# ---------------------------------------------------------------- helpers


def _notifications(app: SafetyMonitoring, topics: Iterable[str] = ()) -> Iterable[Notification]:
    after = 0
    wanted = tuple(topics)
    while True:
        batch = app.recorder.select_notifications(
            start=after, limit=READ_BATCH, topics=wanted, inclusive_of_start=False
        )
        if not batch:
            return
        yield from batch
        after = batch[-1].id


def _plain(app: SafetyMonitoring) -> bool:
    return app.mapper.cipher is None and app.mapper.compressor is None


_STORED_AT = re.compile(rb'^\{"timestamp":\{"_type_":"datetime_iso","_data_":"[^"]*"\},?')


def _content(notification: Notification) -> bytes:
    """A plain stored event's topic and state without its write time: two events
    with equal contents (in one aggregate's history, at one place) have equal
    canonical forms (:func:`canonical`)."""
    state = _STORED_AT.sub(b"{", bytes(notification.state), count=1)
    return notification.topic.encode() + b"\x00" + state


def _topic(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def canonical(event: Any) -> str:
    """An event's class and state without its write time and version (two faithful
    runs store equal canonical forms; an event one run has and the other lacks
    shifts the versions of those after it, which is not a difference of theirs)."""
    state = {k: v for k, v in (_state(event) or {}).items() if k != "originator_version"}
    return json.dumps({"class": type(event).__qualname__, **state}, sort_keys=True, default=str)


def _state(event: Any) -> dict[str, Any] | None:
    if event is None:
        return None
    return _normalise({k: v for k, v in vars(event).items() if k not in VOLATILE_KEYS})


def _normalise(value: Any) -> Any:
    """JSON-ready, without volatile keys."""
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items() if str(k) not in VOLATILE_KEYS}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_normalise(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, float) and value != value:  # NaN equals itself here
        return "NaN"
    return value


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _subject(participant: Participant) -> str:
    return f"{participant.trial_id}/{participant.participant_id}"


def _layer(event: Any) -> str | None:
    """The derived aggregate an event belongs to (its layer), if any."""
    cls = type(event)
    return _LAYERS.get((cls.__module__, cls.__qualname__.split(".")[0]))


def _describe_aggregate(events: list[Any]) -> tuple[str, str]:
    first = events[0]
    layer = _layer(first)
    created: Any = next(
        (
            e
            for e in events
            if isinstance(e, Participant.Registered | Trial.Opened | DoseLevel.Opened)
        ),
        None,
    )
    if layer == "participant":
        return layer, (
            f"{created.trial_id}/{created.participant_id}" if created else str(first.originator_id)
        )
    if layer == "trial":
        return layer, created.trial_id if created else str(first.originator_id)
    if layer == "dose level":
        return layer, (
            f"{created.trial_id}/{created.dose_level}" if created else str(first.originator_id)
        )
    raised = next(
        (e.data for e in events if isinstance(e, SafetyEventRecorded) and "category" in e.data),
        None,
    )
    if raised is None:
        return "alert", str(first.originator_id)
    return "alert", f"{raised['alert_id']} ({raised['category']})"


def _pair(olds: list[Any], news: list[Any]) -> list[tuple[Any, Any]]:
    """Events of a differing stretch paired by class, in order: a pair is a changed
    derivation, the rest exist on one side only."""
    pairs: list[tuple[Any, Any]] = []
    unmatched = list(news)
    for old in olds:
        match = next((n for n in unmatched if type(n) is type(old)), None)
        if match is None:
            pairs.append((old, None))
        else:
            unmatched.remove(match)
            pairs.append((old, match))
    pairs.extend((None, fresh) for fresh in unmatched)
    return pairs


def _what(old: Any, new: Any) -> str:
    """A derivation named for people: its contract type, clinical time and what
    differs (``grade 2 → 3``)."""
    sample = old or new
    if isinstance(sample, SafetyEventRecorded):
        name = f"{sample.contract_type} effective {sample.effective_at.isoformat()}"
        if old is not None and new is not None:
            changes = _changes(_state(old) or {}, _state(new) or {})
            return f"{name}: {changes}" if changes else name
        return name
    name = type(sample).__qualname__
    if old is not None and new is not None:
        changes = _changes(_state(old) or {}, _state(new) or {})
        return f"{name}: {changes}" if changes else name
    return name


def _changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> str:
    parts: list[str] = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            nested = _changes(before, after, f"{prefix}{key}.")
            if nested:
                parts.append(nested)
        else:
            parts.append(f"{prefix}{key} {_short(before)} → {_short(after)}")
    return "; ".join(parts)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
