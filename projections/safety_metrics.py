"""The trial's safety picture as metrics (issue 6: the metrics catalogue).

:class:`SafetyPicture` folds the stored events, in log order, into the counts the
DSMB dashboards show: participants by status, dose level and disease; CRS and ICANS
by each participant's highest grade; DLT tallies and open windows by dose level; the
latest dose decision; stopping rules; enrolment pauses; open alerts by severity and
overdue SAE reports. :meth:`SafetyPicture.gauges` gives them as metric families with
bounded labels (trial, dose level, disease, grade, severity, status): never a
participant id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.contract import TRIAL_LEVEL_PARTICIPANT
from domain.participant import Participant, SafetyEventRecorded
from domain.trial import DoseLevel
from projections.alerts import Alert

UNKNOWN = "unknown"
#: The derived safety events the picture reads (``SafetyPicture._derived``).
_DERIVED_TYPES = frozenset(
    {
        "crs.graded",
        "icans.graded",
        "grade.revised",
        "dose.decision",
        "stopping_rule.triggered",
        "enrollment.paused",
        "enrollment.resumed",
    }
)
Labels = tuple[tuple[str, str], ...]
Gauges = dict[str, dict[Labels, float]]


@dataclass
class _Subject:
    trial_id: str
    dose_level: str = UNKNOWN
    disease: str = UNKNOWN
    status: str = "enrolled"
    #: CRS / ICANS grade published at each clinical time (a revision replaces it).
    points: dict[str, dict[datetime, int]] = field(default_factory=dict)

    def max_grade(self, term: str) -> int:
        return max(self.points.get(term, {}).values(), default=0)


@dataclass
class _Alert:
    trial_id: str
    severity: str
    category: str
    open: bool


@dataclass
class SafetyPicture:
    """What the log says of the trial's safety, as counts."""

    subjects: dict[tuple[str, str], _Subject] = field(default_factory=dict)
    tallies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    dose_levels: dict[UUID, tuple[str, str]] = field(default_factory=dict)
    decisions: dict[tuple[str, str], str] = field(default_factory=dict)
    stopping: dict[tuple[str, str], bool] = field(default_factory=dict)
    paused: dict[str, bool] = field(default_factory=dict)
    alerts: dict[str, _Alert] = field(default_factory=dict)

    def apply(self, event: Any) -> None:
        """Fold one stored domain event."""
        handler = self.route(type(event))
        if handler is not None:
            handler(event, 0)

    def route(self, cls: type) -> Callable[[Any, int], None] | None:
        """The fold of a stored-event class (``projections.fold``), None if the
        picture does not read it."""
        if issubclass(cls, Participant.ClinicalEventRecorded):
            return self._recorded
        if issubclass(cls, DoseLevel.Opened):
            return self._dose_level_opened
        if issubclass(cls, DoseLevel.Tallied):
            return self._tallied
        if issubclass(cls, Alert.Raised | Alert.Acknowledged | Alert.Resolved):
            return self._alert
        if issubclass(cls, SafetyEventRecorded) and _contract_type(cls) in _DERIVED_TYPES:
            return self._derived_event
        return None

    def _recorded(self, event: Any, position: int) -> None:
        self._clinical(event.event)

    def _dose_level_opened(self, event: Any, position: int) -> None:
        self.dose_levels[event.originator_id] = (event.trial_id, event.dose_level)

    def _tallied(self, event: Any, position: int) -> None:
        key = self.dose_levels.get(event.originator_id)
        if key is not None:
            self.tallies[key] = dict(event.tally)

    def _derived_event(self, event: Any, position: int) -> None:
        self._derived(
            event.contract_type,
            event.trial_id,
            event.participant_id,
            event.effective_at,
            event.data,
        )

    def _clinical(self, wire: Mapping[str, Any]) -> None:
        kind = wire["type"]
        if wire["participant_id"] == TRIAL_LEVEL_PARTICIPANT or kind == "clock.ticked":
            return
        key = (wire["trial_id"], wire["participant_id"])
        subject = self.subjects.get(key)
        if subject is None:
            subject = self.subjects[key] = _Subject(wire["trial_id"])
        data = wire["data"]
        if kind == "participant.enrolled":
            subject.disease = data["disease"]
            subject.dose_level = data.get("dose_level") or subject.dose_level
        elif kind == "infusion.administered":
            subject.dose_level = data.get("dose_level") or subject.dose_level
            if subject.status == "enrolled":
                subject.status = "infused"
        elif kind == "participant.withdrawn" and subject.status != "died":
            subject.status = "withdrawn"
        elif kind == "death.reported":
            subject.status = "died"

    def _derived(
        self,
        kind: str,
        trial_id: str,
        participant_id: str,
        at: datetime,
        data: Mapping[str, Any],
    ) -> None:
        if kind in ("crs.graded", "icans.graded"):
            self._grade(trial_id, participant_id, kind.split(".")[0].upper(), at, data["grade"])
        elif kind == "grade.revised" and data.get("term") in ("CRS", "ICANS"):
            self._grade(trial_id, participant_id, data["term"], at, data["to_grade"])
        elif kind == "dose.decision" and not data.get("withdrawn"):
            self.decisions[(trial_id, data["dose_level"])] = data["decision"]
        elif kind == "stopping_rule.triggered":
            self.stopping[(trial_id, data["rule_id"])] = not data.get("withdrawn")
        elif kind == "enrollment.paused":
            self.paused[trial_id] = True
        elif kind == "enrollment.resumed":
            self.paused[trial_id] = False

    def _grade(
        self, trial_id: str, participant_id: str, term: str, at: datetime, grade: int
    ) -> None:
        """The grade published for a clinical time; a ``grade.revised`` for that time
        replaces it (late data, corrections, adjudication), so the highest grade is
        the highest standing one (as the DSMB packet counts it)."""
        key = (trial_id, participant_id)
        subject = self.subjects.get(key)
        if subject is None:
            subject = self.subjects[key] = _Subject(trial_id)
        subject.points.setdefault(term, {})[at] = grade

    def _alert(self, event: Any, position: int = 0) -> None:
        data = event.data
        alert_id = data["alert_id"]
        if isinstance(event, Alert.Raised):
            self.alerts[alert_id] = _Alert(event.trial_id, data["severity"], data["category"], True)
        elif alert_id in self.alerts:
            self.alerts[alert_id].open = False

    # ------------------------------------------------------------ metrics

    def gauges(self) -> Gauges:
        """Metric name -> labels -> value."""
        out: Gauges = {}

        def put(name: str, value: float, **labels: str) -> None:
            key = tuple(sorted(labels.items()))
            family = out.setdefault(name, {})
            family[key] = family.get(key, 0.0) + value

        for subject in self.subjects.values():
            base = {
                "trial": subject.trial_id,
                "dose_level": subject.dose_level,
                "disease": subject.disease,
            }
            put("toxwatch_participants", 1, status=subject.status, **base)
            if subject.status != "enrolled":
                for term in ("CRS", "ICANS"):
                    grade = str(subject.max_grade(term))
                    put(f"toxwatch_{term.lower()}_max_grade_participants", 1, grade=grade, **base)
        for (trial, dose_level), tally in sorted(self.tallies.items()):
            labels = {"trial": trial, "dose_level": dose_level}
            put("toxwatch_dlt_evaluable_participants", float(tally.get("evaluable", 0)), **labels)
            put("toxwatch_dlt_participants", float(tally.get("dlts", 0)), **labels)
            put("toxwatch_dlt_windows_open", float(tally.get("open_windows", 0)), **labels)
        for (trial, dose_level), decision in sorted(self.decisions.items()):
            put("toxwatch_dose_level_decision", 1, trial=trial, dose_level=dose_level,
                decision=decision)  # fmt: skip
        for (trial, rule_id), crossed in sorted(self.stopping.items()):
            put("toxwatch_stopping_rule_triggered", float(crossed), trial=trial, rule_id=rule_id)
        for trial, paused in sorted(self.paused.items()):
            put("toxwatch_enrollment_paused", float(paused), trial=trial)
        trials = {s.trial_id for s in self.subjects.values()} | set(self.paused)
        open_alerts = Counter((a.trial_id, a.severity) for a in self.alerts.values() if a.open)
        overdue = Counter(
            a.trial_id
            for a in self.alerts.values()
            if a.open and a.category == "sae_deadline" and a.severity == "critical"
        )
        for trial in sorted(trials | {a.trial_id for a in self.alerts.values()}):
            for severity in ("critical", "high", "medium", "info"):
                put("toxwatch_alerts_open", float(open_alerts[(trial, severity)]), trial=trial,
                    severity=severity)  # fmt: skip
            put("toxwatch_sae_reports_overdue", float(overdue[trial]), trial=trial)
            if trial not in self.paused:
                put("toxwatch_enrollment_paused", 0.0, trial=trial)
        return out


def _contract_type(cls: type) -> str | None:
    return getattr(cls, "contract_type", None)
