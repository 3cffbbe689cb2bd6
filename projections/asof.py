"""What ToxWatch knew, and what was clinically true, at a moment (issue 7, item 2).

Two time axes:

- **as recorded** (``recorded_at``): only the events ToxWatch had stored by then count
  (their ``timestamp``): the derived events it had published and the alerts that had
  fired, with their state at that moment.
- **as clinically true** (``clinical_at``): each term's grade in force at that clinical
  time, from the published grades and their revisions (a late, back-charted record
  revises the past; ``grade.revised`` replaces the grade at its time).

Both combine: "the grades at D+3 12:00 given everything known now" is ``clinical_at``
alone; "what it would have said then" adds ``recorded_at``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from domain.participant import SafetyEventRecorded
from domain.trial import TRIAL_PARTICIPANT, DoseLevel
from projections.alerts import ALERT_EVENT_CLASSES, Alert

_GRADED = ("crs.graded", "icans.graded", "toxicity.graded")


@dataclass
class AsOf:
    """A participant's (or the trial's) record folded up to a recording time."""

    recorded_at: datetime | None
    derived: list[dict[str, Any]] = field(default_factory=list)
    clinical: list[dict[str, Any]] = field(default_factory=list)
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    points: dict[str, dict[datetime, int]] = field(default_factory=dict)

    def apply(self, event: Any) -> None:
        if self.recorded_at is not None and event.timestamp > self.recorded_at:
            return
        wire = getattr(event, "event", None)
        if isinstance(wire, dict):  # a recorded clinical event
            if wire.get("type") != "clock.ticked":
                self.clinical.append(wire)
            return
        if not isinstance(event, SafetyEventRecorded):
            return
        contract = event.to_contract().to_wire()
        self.derived.append(contract)
        data = contract["data"]
        if isinstance(event, Alert.Raised):
            self.alerts[data["alert_id"]] = {
                "alert_id": data["alert_id"],
                "category": data["category"],
                "severity": data["severity"],
                "title": data["title"],
                "revision": data["revision"],
                "status": "open",
                "raised_at": contract["recorded_at"],
            }
        elif isinstance(event, Alert.Acknowledged | Alert.Resolved):
            alert = self.alerts.get(data["alert_id"])
            if alert is not None:
                alert["status"] = (
                    "acknowledged" if isinstance(event, Alert.Acknowledged) else "resolved"
                )
        elif contract["type"] in _GRADED:
            term = data.get("term") or contract["type"].split(".")[0].upper()
            self._point(term, event.effective_at, data["grade"])
        elif contract["type"] == "grade.revised":
            self._point(data["term"], event.effective_at, data["to_grade"])

    def _point(self, term: str, at: datetime, grade: int) -> None:
        self.points.setdefault(term, {})[at] = grade

    def grades_at(self, clinical_at: datetime) -> dict[str, int]:
        """Each term's grade in force at ``clinical_at`` (the latest point not after it)."""
        grades = {}
        for term, points in sorted(self.points.items()):
            before = [at for at in points if at <= clinical_at]
            if before:
                grades[term] = points[max(before)]
        return grades


def as_of(events: Iterable[Any], *, recorded_at: datetime | None) -> AsOf:
    """Fold ``events`` (stored domain events in log order) up to ``recorded_at``."""
    state = AsOf(recorded_at)
    for event in events:
        state.apply(event)
    return state


@dataclass
class TrialAsOf:
    """The trial as ToxWatch knew it up to ``recorded_at``: each participant's record
    (as :class:`AsOf`), the dose levels' tallies, the monitor's findings (latest per
    key) and the alerts with their state then."""

    trial_id: str
    recorded_at: datetime | None
    whole: AsOf = field(init=False)
    participants: dict[str, AsOf] = field(default_factory=dict)
    dose_of: dict[str, str] = field(default_factory=dict)
    dose_levels: dict[str, dict[str, Any]] = field(default_factory=dict)
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)
    _levels: dict[Any, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.whole = AsOf(self.recorded_at)

    def apply(self, event: Any) -> None:
        if self.recorded_at is not None and event.timestamp > self.recorded_at:
            return
        if isinstance(event, DoseLevel.Opened):
            if event.trial_id == self.trial_id:
                self._levels[event.originator_id] = event.dose_level
            return
        if isinstance(event, DoseLevel.Tallied):
            level = self._levels.get(event.originator_id)
            if level is not None:
                self.dose_levels[level] = dict(event.tally)
            return
        if not isinstance(event, SafetyEventRecorded) or event.trial_id != self.trial_id:
            return
        self.whole.apply(event)
        if isinstance(event, ALERT_EVENT_CLASSES):
            return
        participant = event.participant_id
        if participant == TRIAL_PARTICIPANT:
            contract = event.to_contract().to_wire()
            data = dict(contract["data"])
            key = data.pop("key", None) or contract["event_id"]
            self.findings[key] = {
                "type": contract["type"],
                "effective_at": contract["effective_at"],
                "dose_level": contract["dose_level"],
                **data,
            }
            return
        if event.dose_level:
            self.dose_of[participant] = event.dose_level
        self.participants.setdefault(participant, AsOf(self.recorded_at)).apply(event)

    def summary(self, clinical_at: datetime | None) -> dict[str, Any]:
        """JSON-ready: grades in force at ``clinical_at`` (default: the recording time,
        else the latest clinical time known)."""
        times = [
            at for state in self.participants.values() for points in state.points.values()
            for at in points
        ]  # fmt: skip
        when = clinical_at or self.recorded_at or (max(times) if times else None)
        findings = {
            key: finding
            for key, finding in sorted(self.findings.items())
            if not finding.get("withdrawn")
        }
        alerts = sorted(self.whole.alerts.values(), key=lambda a: (a["raised_at"], a["alert_id"]))
        return {
            "trial_id": self.trial_id,
            "recorded_at": self.recorded_at.isoformat() if self.recorded_at else None,
            "clinical_at": when.isoformat() if when else None,
            "derived_events_known": len(self.whole.derived),
            "participants": {
                participant: {
                    "dose_level": self.dose_of.get(participant),
                    "grades": state.grades_at(when) if when else {},
                }
                for participant, state in sorted(self.participants.items())
            },
            "dose_levels": dict(sorted(self.dose_levels.items())),
            "trial_findings": findings,
            "alerts": alerts,
            "open_alerts": sum(a["status"] == "open" for a in alerts),
        }
