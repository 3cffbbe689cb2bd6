"""Alert decisions over the event log (architecture decision 8).

:class:`AlertBook` folds the log, in its order, into alert commands: a derived
safety event or clinical record that matches a protocol alert rule (``alert_rules``)
raises the alert of its clinical situation, or revises it when the severity or the
grade rises; a clock tick escalates a critical or high alert nobody acknowledged in
time to the next role of its route; data-quality findings (records for a participant
whose enrolment is not on record, a burst of rejected messages, an inbound topic found
replaced) raise alerts too.
The book reads no clock: time is what the log's ``clock.ticked`` events say, so a
replay of the same log gives the same alerts, revisions and escalations.

:class:`Alert` is the aggregate of one alert (id: a UUID derived from trial,
category and situation); its events are the contract's ``alert.raised`` (one per
revision), ``alert.acknowledged`` and ``alert.escalated``. :class:`AlertsView` is the
read model the API lists and filters.
"""

from __future__ import annotations

import string
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from domain.contract import TRIAL_LEVEL_PARTICIPANT, SafetyEvent
from domain.errors import AlertAlreadyAcknowledged, AlertRevisionChanged
from domain.participant import NAMESPACE, SafetyEventRecorded
from domain.protocol import AlertRoute, AlertRule, AlertRules, ProtocolParameters, severity_rank

ALERT_NAMESPACE = uuid5(NAMESPACE, "alerts")
MAX_EVIDENCE = 50
#: An inbound topic found replaced: what its old incarnation held beyond the applied
#: positions may be missing from the picture until the producers send it again.
SOURCE_REPLACED_SEVERITY = "critical"
_FORMATTER = string.Formatter()


def alert_id_for(trial_id: str, category: str, situation: str) -> str:
    """The deterministic id of the alert of one clinical situation."""
    return str(uuid5(ALERT_NAMESPACE, f"{trial_id}/{category}/{situation}"))


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class Finding:
    """One rule matched one event: the alert its situation should have."""

    trial_id: str
    participant_id: str
    site_id: str | None
    dose_level: str | None
    category: str
    situation: str
    severity: str
    title: str
    effective_at: datetime
    evidence: tuple[str, ...]
    grade: int | None = None
    resolves: bool = False

    @property
    def alert_id(self) -> str:
        return alert_id_for(self.trial_id, self.category, self.situation)


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def _fields(event: Mapping[str, Any]) -> _Fields:
    fields = _Fields({k: v for k, v in event.items() if k != "data"})
    for key, value in (event.get("data") or {}).items():
        if value is not None or key not in fields:
            fields[key] = value
    return fields


def _matches(fields: Mapping[str, Any], condition: Mapping[str, Any]) -> bool:
    for key, expected in condition.items():
        value = fields.get(key)
        if isinstance(expected, list):
            if value not in expected:
                return False
        elif value != expected:
            return False
    return True


def _render(template: str, fields: _Fields) -> str:
    return _FORMATTER.vformat(template, (), fields)


def _grade(fields: Mapping[str, Any]) -> int | None:
    grade = fields.get("to_grade", fields.get("grade"))
    return grade if isinstance(grade, int) and not isinstance(grade, bool) else None


def _severity(rule: AlertRule, grade: int | None) -> str | None:
    if rule.severity is not None:
        return rule.severity
    met = [t for t in rule.severity_by_grade if grade is not None and grade >= t]
    return rule.severity_by_grade[max(met)] if met else None


def findings(
    event: Mapping[str, Any],
    rules: Sequence[AlertRule],
    *,
    site_id: str | None,
    dose_level: str | None = None,
) -> list[Finding]:
    """The findings of one contract event (derived §3 or clinical §2, as wire JSON).

    Evidence is the event itself followed by the clinical events it was derived from.
    """
    fields = _fields(event)
    found: list[Finding] = []
    for rule in rules:
        if fields.get("type") not in rule.on:
            continue
        if not _matches(fields, rule.when) or (rule.unless and _matches(fields, rule.unless)):
            continue
        grade = _grade(fields)
        if rule.min_grade is not None and (grade is None or grade < rule.min_grade):
            continue
        severity = "info" if rule.resolves else _severity(rule, grade)
        if severity is None:
            continue
        at = fields.get("effective_at") or fields["occurred_at"]
        found.append(
            Finding(
                trial_id=fields["trial_id"],
                participant_id=fields["participant_id"],
                site_id=site_id,
                dose_level=fields.get("dose_level") or dose_level,
                category=rule.category,
                situation=_render(rule.situation, fields),
                severity=severity,
                title=_render(rule.title, fields),
                effective_at=at if isinstance(at, datetime) else datetime.fromisoformat(at),
                evidence=_unique((fields["event_id"], *(fields.get("caused_by") or ()))),
                grade=grade,
                resolves=rule.resolves,
            )
        )
    return found


def _unique(ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ids))


def route_for(protocol: ProtocolParameters, severity: str) -> AlertRoute | None:
    return next((r for r in protocol.alert_routing.routes if r.severity == severity), None)


# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class RaiseAlert:
    """Raise an alert, or revise it (``revision`` > 1)."""

    finding: Finding
    revision: int
    previous_severity: str | None
    raised_clock: datetime
    evidence: tuple[str, ...]
    notify: tuple[str, ...]
    channels: tuple[str, ...]
    acknowledge_within_minutes: float | None
    escalate_to: tuple[str, ...]

    @property
    def alert_id(self) -> str:
        return self.finding.alert_id


@dataclass(frozen=True)
class EscalateAlert:
    alert_id: str
    to: str
    level: int
    at: datetime
    overdue_minutes: float


@dataclass(frozen=True)
class ResolveAlert:
    """The situation is over (a CRS episode resolved, a DLT candidate ruled out, a
    trial finding withdrawn): the alert no longer escalates."""

    alert_id: str
    reason: str
    at: datetime
    evidence: tuple[str, ...]
    notify: tuple[str, ...]
    channels: tuple[str, ...]


AlertCommand = RaiseAlert | EscalateAlert | ResolveAlert


@dataclass
class _State:
    command: RaiseAlert
    acknowledged_revision: int = 0
    resolved_revision: int = 0
    level: int = 0

    @property
    def open(self) -> bool:
        revision = self.command.revision
        return self.acknowledged_revision < revision and self.resolved_revision < revision

    def escalation_due(self) -> datetime | None:
        minutes = self.command.acknowledge_within_minutes
        if not self.open or minutes is None or self.level >= len(self.command.escalate_to):
            return None
        return self.command.raised_clock + timedelta(minutes=minutes * (self.level + 1))


@dataclass
class AlertBook:
    """The alert state the log implies, and the commands each log entry gives."""

    alerts: dict[str, _State] = field(default_factory=dict)
    clocks: dict[str, datetime] = field(default_factory=dict)
    sites: dict[tuple[str, str], str] = field(default_factory=dict)
    doses: dict[tuple[str, str], str] = field(default_factory=dict)
    enrolled: set[tuple[str, str]] = field(default_factory=set)
    unknown_flagged: set[tuple[str, str]] = field(default_factory=set)
    awaiting_enrolment: dict[tuple[str, str], tuple[dict[str, Any], datetime]] = field(
        default_factory=dict
    )
    rejections: dict[str, deque[datetime]] = field(default_factory=dict)
    last_burst: dict[str, datetime] = field(default_factory=dict)

    # -------------------------------------------------------------- inputs

    def registered(self, trial_id: str, participant_id: str, site_id: str) -> None:
        self.sites[(trial_id, participant_id)] = site_id

    def on_safety_event(
        self, event: SafetyEvent, protocol: ProtocolParameters
    ) -> list[AlertCommand]:
        key = (event.trial_id, event.participant_id)
        if event.dose_level and event.participant_id != TRIAL_LEVEL_PARTICIPANT:
            self.doses[key] = event.dose_level
        found = findings(
            event.to_wire(),
            protocol.alert_rules.rules,
            site_id=self.sites.get(key),
            dose_level=self.doses.get(key),
        )
        return self._raise_all(found, protocol)

    def on_clinical_event(
        self, wire: Mapping[str, Any], protocol: ProtocolParameters
    ) -> list[AlertCommand]:
        key = (wire["trial_id"], wire["participant_id"])
        if wire["participant_id"] != TRIAL_LEVEL_PARTICIPANT:
            self.sites.setdefault(key, wire["site_id"])
        site = self.sites.get(key)
        found = findings(
            wire, protocol.alert_rules.rules, site_id=site, dose_level=self.doses.get(key)
        )
        if wire["type"] == "participant.enrolled":
            self.enrolled.add(key)
            self.awaiting_enrolment.pop(key, None)
        elif wire["type"] != "clock.ticked" and not self._accounted_for(key):
            at = datetime.fromisoformat(wire["occurred_at"])
            clock = self.clocks.get(key[0])
            self.awaiting_enrolment[key] = (dict(wire), max(clock, at) if clock else at)
        return self._raise_all(found, protocol)

    def _accounted_for(self, key: tuple[str, str]) -> bool:
        return key in self.enrolled or key in self.unknown_flagged or key in self.awaiting_enrolment

    def on_rejection(
        self,
        *,
        trial_id: str,
        received_at: datetime,
        reference: str,
        code: str,
        protocol: ProtocolParameters,
    ) -> list[AlertCommand]:
        """A rejected message: ``rejected_burst_count`` of them within a sliding window
        of ``rejected_burst_window_minutes`` is a data-quality alert (one per window)."""
        params = protocol.alert_rules
        window = timedelta(minutes=params.rejected_burst_window_minutes)
        recent = self.rejections.setdefault(trial_id, deque())
        recent.append(received_at)
        while recent and recent[0] < received_at - window:
            recent.popleft()
        count = len(recent)
        last = self.last_burst.get(trial_id)
        if count < params.rejected_burst_count or (
            last is not None and received_at < last + window
        ):
            return []
        self.last_burst[trial_id] = received_at
        start = recent[0]
        finding = Finding(
            trial_id=trial_id,
            participant_id=TRIAL_LEVEL_PARTICIPANT,
            site_id=None,
            dose_level=None,
            category="data_quality",
            situation=f"rejected:{start.isoformat()}",
            severity=params.rejected_burst_severity,
            title=(
                f"{count} messages rejected within {params.rejected_burst_window_minutes:g} min "
                f"from {start.isoformat()} (latest: {code})"
            ),
            effective_at=received_at,
            evidence=(reference,),
        )
        return self._raise_all([finding], protocol)

    def on_source_replaced(
        self,
        *,
        trial_id: str,
        topic: str,
        incarnation: int,
        positions_then: Mapping[str, int],
        detected_at: datetime,
        protocol: ProtocolParameters,
    ) -> list[AlertCommand]:
        """The ingest found its inbound topic replaced (deleted and created again, or
        lost with the broker's data) and started applying it afresh from offset 0."""
        positions = ", ".join(f"{p}@{o}" for p, o in sorted(positions_then.items())) or "none"
        finding = Finding(
            trial_id=trial_id,
            participant_id=TRIAL_LEVEL_PARTICIPANT,
            site_id=None,
            dose_level=None,
            category="data_quality",
            situation=f"source_replaced:{topic}:{incarnation}",
            severity=SOURCE_REPLACED_SEVERITY,
            title=(
                f"Inbound topic {topic} was replaced (deleted and created again, or lost "
                f"by the broker): applied from offset 0 as incarnation {incarnation}; what "
                f"the old topic held beyond partition positions {positions} must be sent again"
            ),
            effective_at=detected_at,
            evidence=(f"{topic}~{incarnation}",),
        )
        return self._raise_all([finding], protocol)

    def on_parked(
        self,
        *,
        trial_id: str,
        participant_id: str,
        event_type: str,
        event_id: str,
        reference: str,
        received_at: datetime,
        protocol: ProtocolParameters,
    ) -> list[AlertCommand]:
        """An accepted event could not be applied: the participant's record is held
        (nothing is derived for them) until a person releases it."""
        return self._raise_all([self._parked(trial_id, participant_id, protocol, (
            f"{event_type} at {reference} could not be applied: the record is held, "
            "nothing is derived until it is released"
        ), received_at, (event_id,))], protocol)  # fmt: skip

    def on_released(
        self,
        *,
        trial_id: str,
        participant_id: str,
        by: str,
        at: datetime,
        protocol: ProtocolParameters,
    ) -> list[AlertCommand]:
        finding = self._parked(trial_id, participant_id, protocol, "", at, ())
        released = replace(finding, resolves=True, title=f"Record released by {by}")
        return self._raise_all([released], protocol)

    def _parked(
        self,
        trial_id: str,
        participant_id: str,
        protocol: ProtocolParameters,
        title: str,
        at: datetime,
        evidence: tuple[str, ...],
    ) -> Finding:
        key = (trial_id, participant_id)
        return Finding(
            trial_id=trial_id,
            participant_id=participant_id,
            site_id=self.sites.get(key),
            dose_level=self.doses.get(key),
            category="data_quality",
            situation=f"{participant_id}:parked",
            severity=protocol.alert_rules.parked_participant_severity,
            title=f"Record parked: {title}",
            effective_at=at,
            evidence=evidence,
        )

    def on_tick(
        self, trial_id: str, at: datetime, protocol: ProtocolParameters
    ) -> list[AlertCommand]:
        """Time passed: escalate each open alert whose acknowledgement is overdue, and
        flag records whose participant's enrolment is still not on record after the
        grace period."""
        latest = self.clocks.get(trial_id)
        if latest is not None and at <= latest:
            return []
        self.clocks[trial_id] = at
        commands: list[AlertCommand] = []
        grace = timedelta(hours=protocol.alert_rules.unknown_participant_grace_hours)
        for key, (wire, since) in sorted(self.awaiting_enrolment.items()):
            if key[0] == trial_id and at >= since + grace:
                del self.awaiting_enrolment[key]
                self.unknown_flagged.add(key)
                finding = _unknown_participant(wire, self.sites.get(key), protocol.alert_rules)
                commands.extend(self._raise_all([finding], protocol))
        for alert_id in sorted(self.alerts):
            state = self.alerts[alert_id]
            if state.command.finding.trial_id != trial_id:
                continue
            while (due := state.escalation_due()) is not None and at >= due:
                commands.append(
                    EscalateAlert(
                        alert_id=alert_id,
                        to=state.command.escalate_to[state.level],
                        level=state.level + 1,
                        at=at,
                        overdue_minutes=round((at - due).total_seconds() / 60, 2),
                    )
                )
                state.level += 1
        return commands

    def on_acknowledged(self, alert_id: str, revision: int) -> None:
        state = self.alerts.get(alert_id)
        if state is not None:
            state.acknowledged_revision = max(state.acknowledged_revision, revision)

    # -------------------------------------------------------------- decisions

    def _raise_all(
        self, found: Iterable[Finding], protocol: ProtocolParameters
    ) -> list[AlertCommand]:
        commands: list[AlertCommand] = []
        for finding in found:
            command = self._resolve(finding) if finding.resolves else self._raise(finding, protocol)
            if command is not None:
                commands.append(command)
        return commands

    def _resolve(self, finding: Finding) -> ResolveAlert | None:
        state = self.alerts.get(finding.alert_id)
        if state is None or state.resolved_revision >= state.command.revision:
            return None
        state.resolved_revision = state.command.revision
        raised = state.command
        return ResolveAlert(
            alert_id=finding.alert_id,
            reason=finding.title,
            at=finding.effective_at,
            evidence=finding.evidence,
            notify=raised.notify,
            channels=raised.channels,
        )

    def _raise(self, finding: Finding, protocol: ProtocolParameters) -> RaiseAlert | None:
        state = self.alerts.get(finding.alert_id)
        previous = state.command if state else None
        recurs = state is not None and state.resolved_revision >= state.command.revision
        if previous is not None and not recurs and not _rises(previous.finding, finding):
            return None
        if previous is not None and severity_rank(finding.severity) < severity_rank(
            previous.finding.severity
        ):
            finding = replace(finding, severity=previous.finding.severity)
        route = route_for(protocol, finding.severity)
        clock = self.clocks.get(finding.trial_id)
        evidence = _unique((*(previous.evidence if previous else ()), *finding.evidence))
        command = RaiseAlert(
            finding=finding,
            revision=previous.revision + 1 if previous else 1,
            previous_severity=previous.finding.severity if previous else None,
            raised_clock=max(clock, finding.effective_at) if clock else finding.effective_at,
            evidence=evidence[-MAX_EVIDENCE:],
            notify=route.notify if route else (),
            channels=route.channels if route else (),
            acknowledge_within_minutes=route.acknowledge_within_minutes if route else None,
            escalate_to=route.escalate_to if route else (),
        )
        self.alerts[finding.alert_id] = _State(
            command,
            acknowledged_revision=state.acknowledged_revision if state else 0,
            resolved_revision=state.resolved_revision if state else 0,
        )
        return command


def _rises(before: Finding, after: Finding) -> bool:
    """A later finding revises an open alert only when it is more severe or of a
    higher grade: the same situation seen again is not a new alert (a resolved
    situation that recurs is)."""
    if severity_rank(after.severity) > severity_rank(before.severity):
        return True
    return after.grade is not None and (before.grade is None or after.grade > before.grade)


def _unknown_participant(wire: Mapping[str, Any], site: str | None, params: AlertRules) -> Finding:
    return Finding(
        trial_id=wire["trial_id"],
        participant_id=wire["participant_id"],
        site_id=site,
        dose_level=None,
        category="data_quality",
        situation=f"{wire['participant_id']}:unknown_participant",
        severity=params.unknown_participant_severity,
        title=(
            f"{wire['type']} for a participant whose enrolment is not on record "
            f"after {params.unknown_participant_grace_hours:g} h"
        ),
        effective_at=datetime.fromisoformat(wire["occurred_at"]),
        evidence=(wire["event_id"],),
    )


# ---------------------------------------------------------------- aggregate


class Alert(Aggregate):
    """One alert: its revisions, acknowledgements and escalations."""

    @staticmethod
    def id_for(alert_id: str) -> UUID:
        return UUID(alert_id)

    class Opened(Aggregate.Created):
        trial_id: str
        participant_id: str
        site_id: str | None
        category: str
        situation: str

    class Raised(SafetyEventRecorded):
        contract_type = "alert.raised"

        def apply(self, aggregate: Aggregate) -> None:
            alert = cast(Alert, aggregate)
            alert.revision = self.data["revision"]
            alert.severity = self.data["severity"]
            alert.title = self.data["title"]
            alert.dose_level = self.dose_level or alert.dose_level

    class Acknowledged(SafetyEventRecorded):
        contract_type = "alert.acknowledged"

        def apply(self, aggregate: Aggregate) -> None:
            cast(Alert, aggregate).acknowledged_revision = self.data["revision"]

    class Escalated(SafetyEventRecorded):
        contract_type = "alert.escalated"

    class Resolved(SafetyEventRecorded):
        contract_type = "alert.resolved"

    def __init__(
        self, trial_id: str, participant_id: str, site_id: str | None, category: str, situation: str
    ) -> None:
        self.trial_id = trial_id
        self.participant_id = participant_id
        self.site_id = site_id
        self.category = category
        self.situation = situation
        self.revision = 0
        self.severity = "info"
        self.title = ""
        self.dose_level: str | None = None
        self.acknowledged_revision = 0

    @classmethod
    def open(cls, finding: Finding) -> Alert:
        return cls._create(
            cls.Opened,
            id=cls.id_for(finding.alert_id),
            trial_id=finding.trial_id,
            participant_id=finding.participant_id,
            site_id=finding.site_id,
            category=finding.category,
            situation=finding.situation,
        )

    @property
    def alert_id(self) -> str:
        return str(self.id)

    def raise_revision(self, command: RaiseAlert) -> None:
        finding = command.finding
        self._publish(
            self.Raised,
            effective_at=finding.effective_at,
            caused_by=list(finding.evidence),
            dose_level=finding.dose_level,
            data={
                "alert_id": self.alert_id,
                "revision": command.revision,
                "severity": finding.severity,
                "previous_severity": command.previous_severity,
                "category": finding.category,
                "situation": finding.situation,
                "title": finding.title,
                "evidence": list(command.evidence),
                "grade": finding.grade,
                "site_id": self.site_id,
                "raised_clock": command.raised_clock.isoformat(),
                "notify": list(command.notify),
                "channels": list(command.channels),
                "acknowledge_within_minutes": command.acknowledge_within_minutes,
                "escalate_to": list(command.escalate_to),
            },
        )

    def acknowledge(
        self, *, by: str, at: datetime, comment: str, revision: int | None = None
    ) -> None:
        """A person acknowledges the current revision (a human action, with who and why)."""
        self.check_revision(revision)
        self.check_not_acknowledged()
        self._publish(
            self.Acknowledged,
            effective_at=at,
            caused_by=[],
            dose_level=self.dose_level,
            data={
                "alert_id": self.alert_id,
                "revision": self.revision,
                "by": by,
                "at": at.isoformat(),
                "comment": comment,
            },
        )

    def escalate(self, command: EscalateAlert) -> None:
        self._publish(
            self.Escalated,
            effective_at=command.at,
            caused_by=[],
            dose_level=self.dose_level,
            data={
                "alert_id": self.alert_id,
                "revision": self.revision,
                "severity": self.severity,
                "category": self.category,
                "title": self.title,
                "to": command.to,
                "level": command.level,
                "at": command.at.isoformat(),
                "overdue_minutes": command.overdue_minutes,
                "site_id": self.site_id,
            },
        )

    def resolve(self, command: ResolveAlert) -> None:
        self._publish(
            self.Resolved,
            effective_at=command.at,
            caused_by=list(command.evidence),
            dose_level=self.dose_level,
            data={
                "alert_id": self.alert_id,
                "revision": self.revision,
                "severity": self.severity,
                "category": self.category,
                "title": self.title,
                "reason": command.reason,
                "evidence": list(command.evidence),
                "site_id": self.site_id,
                "notify": list(command.notify),
                "channels": list(command.channels),
            },
        )

    def _publish(
        self,
        cls: type[SafetyEventRecorded],
        *,
        effective_at: datetime,
        caused_by: list[str],
        dose_level: str | None,
        data: dict[str, Any],
    ) -> None:
        """Record one of the alert's contract events (they share the envelope)."""
        self.trigger_event(
            cls,
            trial_id=self.trial_id,
            participant_id=self.participant_id,
            dose_level=dose_level,
            effective_at=effective_at,
            caused_by=caused_by,
            data=data,
        )

    def check_revision(self, revision: int | None) -> None:
        if revision is not None and revision != self.revision:
            raise AlertRevisionChanged(
                f"alert {self.alert_id} is at revision {self.revision}, not {revision}"
            )

    def check_not_acknowledged(self) -> None:
        if self.acknowledged_revision >= self.revision:
            raise AlertAlreadyAcknowledged(
                f"alert {self.alert_id} revision {self.revision} is already acknowledged"
            )


ALERT_EVENT_CLASSES = (Alert.Raised, Alert.Acknowledged, Alert.Escalated, Alert.Resolved)


# ---------------------------------------------------------------- read model


@dataclass
class AlertRow:
    """One alert as the inbox shows it."""

    alert_id: str
    trial_id: str
    participant_id: str
    site_id: str | None
    dose_level: str | None
    category: str
    severity: str
    title: str
    revision: int
    effective_at: datetime
    raised_at: datetime
    evidence: list[str]
    status: str = "open"
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    acknowledgement_comment: str | None = None
    escalated_to: list[str] = field(default_factory=list)
    resolution: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class AlertsView:
    """The alerts inbox: a fold of the alert events, in log order."""

    def __init__(self) -> None:
        self.rows: dict[str, AlertRow] = {}
        self.position = 0

    def route(self, cls: type) -> Callable[[Any, int], None] | None:
        """The fold of a stored-event class (``projections.fold``): the alert events."""
        return self._stored if issubclass(cls, ALERT_EVENT_CLASSES) else None

    def _stored(self, event: Any, position: int) -> None:
        self.apply(event.to_contract(), position)

    def apply(self, event: SafetyEvent, position: int) -> None:
        data = event.data
        alert_id = cast(str, data["alert_id"])
        row = self.rows.get(alert_id)
        if event.type == "alert.raised":
            evidence = [str(e) for e in cast(list[Any], data["evidence"])]
            if row is None:
                row = self.rows[alert_id] = AlertRow(
                    alert_id=alert_id,
                    trial_id=event.trial_id,
                    participant_id=event.participant_id,
                    site_id=cast(str | None, data.get("site_id")),
                    dose_level=event.dose_level,
                    category=cast(str, data["category"]),
                    severity=cast(str, data["severity"]),
                    title=cast(str, data["title"]),
                    revision=cast(int, data["revision"]),
                    effective_at=event.effective_at,
                    raised_at=event.recorded_at,
                    evidence=evidence,
                )
            row.severity = cast(str, data["severity"])
            row.title = cast(str, data["title"])
            row.revision = cast(int, data["revision"])
            row.evidence = evidence
            row.dose_level = event.dose_level or row.dose_level
            row.status = "open"
            row.resolution = None
        elif row is not None and event.type == "alert.acknowledged":
            if row.status != "resolved":
                row.status = "acknowledged"
            row.acknowledged_by = cast(str, data["by"])
            row.acknowledged_at = event.effective_at
            row.acknowledgement_comment = cast(str, data.get("comment") or "")
        elif row is not None and event.type == "alert.escalated":
            row.escalated_to.append(cast(str, data["to"]))
        elif row is not None and event.type == "alert.resolved":
            row.status = "resolved"
            row.resolution = cast(str, data["reason"])
        if row is not None:
            row.history.append({"position": position, **event.to_wire()})
        self.position = max(self.position, position)

    def select(
        self,
        *,
        status: str | None = None,
        severity: str | None = None,
        category: str | None = None,
        trial_id: str | None = None,
        participant_id: str | None = None,
        site_ids: frozenset[str | None] | None = None,
    ) -> list[AlertRow]:
        """Rows matching every given filter, most severe first, then newest."""
        rows = [
            row
            for row in self.rows.values()
            if (status is None or row.status == status)
            and (severity is None or row.severity == severity)
            and (category is None or row.category == category)
            and (trial_id is None or row.trial_id == trial_id)
            and (participant_id is None or row.participant_id == participant_id)
            and (site_ids is None or row.site_id in site_ids)
        ]
        rows.sort(key=lambda r: r.raised_at, reverse=True)
        rows.sort(key=lambda r: severity_rank(r.severity), reverse=True)
        return rows


# ---------------------------------------------------------------- deliveries


class Delivery(Aggregate):
    """The delivery of one alert event to one endpoint: each failed attempt and the
    receipt (architecture decision 8: receipts and failures are on the record)."""

    @staticmethod
    def id_for(endpoint_id: str, event_id: str) -> UUID:
        return uuid5(ALERT_NAMESPACE, f"delivery/{endpoint_id}/{event_id}")

    class Opened(Aggregate.Created):
        endpoint_id: str
        event_id: str
        alert_id: str

    class AttemptFailed(Aggregate.Event):
        attempt: int
        reason: str
        retryable: bool
        at: datetime

        def apply(self, aggregate: Aggregate) -> None:
            cast(Delivery, aggregate).attempts = self.attempt

    class Delivered(Aggregate.Event):
        attempt: int
        channel: str
        endpoint: str
        detail: str
        at: datetime

        def apply(self, aggregate: Aggregate) -> None:
            delivery = cast(Delivery, aggregate)
            delivery.attempts = self.attempt
            delivery.delivered_at = self.at

    def __init__(self, endpoint_id: str, event_id: str, alert_id: str) -> None:
        self.endpoint_id = endpoint_id
        self.event_id = event_id
        self.alert_id = alert_id
        self.attempts = 0
        self.delivered_at: datetime | None = None

    @classmethod
    def open(cls, endpoint_id: str, event_id: str, alert_id: str) -> Delivery:
        return cls._create(
            cls.Opened,
            id=cls.id_for(endpoint_id, event_id),
            endpoint_id=endpoint_id,
            event_id=event_id,
            alert_id=alert_id,
        )

    def failed(self, *, reason: str, retryable: bool, at: datetime) -> None:
        self.trigger_event(
            self.AttemptFailed, attempt=self.attempts + 1, reason=reason, retryable=retryable, at=at
        )

    def delivered(self, *, channel: str, endpoint: str, detail: str, at: datetime) -> None:
        self.trigger_event(
            self.Delivered,
            attempt=self.attempts + 1,
            channel=channel,
            endpoint=endpoint,
            detail=detail,
            at=at,
        )
