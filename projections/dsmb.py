"""The data of a DSMB open-session safety report, as of a moment (issue 6).

:class:`DSMBData` folds the stored domain events, in log (notification) order, and
:meth:`DSMBData.report` answers with a :class:`DSMBReport`: study status, enrolment,
exposure, AEs by term and maximum grade per dose level, SAE and death listings, the
DLT table with the design's decisions, CRS and ICANS summaries, the swimmer plot,
cytopenia, alerts, cellular kinetics, disease activity and the optimal-dose view.
:func:`dsmb_data` folds only the events ToxWatch had **recorded** by ``as_of`` (the
stored event's ``timestamp``), so the report of a past moment is reproducible from
the same log, whatever was recorded since.

Conventions used by every section:

- **Clinical records** are the ``Participant.ClinicalEventRecorded`` events, with
  ``record.corrected`` (the latest correction's data replaces the target's) and
  ``record.voided`` applied, whatever order they arrived in.
- A participant's **dose level** is the infusion's ``dose_level``, else the
  enrolment's; the **disease** is the enrolment's. A participant is in the report when
  an enrolment or an infusion is on record.
- **Day** (swimmer, ANC series): exact days since the infusion, ``(t - infused_at) /
  24 h``, rounded to 3 decimals (negative before the infusion). **Study day**
  (listings, onset): the protocol's calendar study day (``domain.timeline.study_day``)
  under the day-zero convention of the protocol version the participant's record was
  last given.
- **Data cut-off** of a trial: the latest clinical time on record (``occurred_at`` of
  the effective clinical records, and the trial's recorded clock ticks). It is clinical
  time; ``as_of`` is recording time, so the two are not compared.
- **Last known time** of an infused participant: the earliest of the data cut-off,
  the death and the withdrawal.
- Every list is ordered: dose levels in the protocol order given (others after them,
  alphabetically, ``unknown`` last), then participant id, then time.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

from pydantic import ValidationError
from scipy.stats import beta

from domain.adverse_events import TERM_SYNONYMS, ReportedAE, names_of, reported_aes
from domain.contract import DATA_MODELS
from domain.participant import Participant, SafetyEventRecorded
from domain.protocol import severity_rank
from domain.records import TrialClock
from domain.timeline import TimelineEntry, study_day
from domain.trial import DoseLevel, TrialSafetyEvent
from domain.units import UnitConversionError, convert
from projections.alerts import ALERT_EVENT_CLASSES, AlertsView
from projections.fold import Handler, Routed
from projections.kinetics import KineticsView, ParticipantKinetics

UNKNOWN: Final = "unknown"
#: [parameter] CD19 B-cell depletion threshold, cells/uL: a template value (the public
#: record of LUCAR-G79 states none); reported with its source in the optimal-dose view.
B_CELL_THRESHOLD_PER_UL: Final = 10.0
B_CELL_THRESHOLD_SOURCE: Final = "template value [parameter]: < 10 CD19+ B cells/uL"
#: ANC recovery threshold, 10^9/L: the ICAHT neutropenia threshold (Rejeski et al.,
#: Blood 2023), used for the day of recovery after a nadir below it.
ANC_RECOVERY_10E9_L: Final = 0.5
#: The equal-tailed posterior interval of the DLT rate: Beta(1, 1) prior.
PRIOR: Final = (1.0, 1.0)
CREDIBLE_LEVEL: Final = 0.95
CRS_TERM: Final = "Cytokine release syndrome"
ICANS_TERM: Final = "ICANS"
_SYNDROMES: Final = {"CRS": CRS_TERM, "ICANS": ICANS_TERM}
_TERM_DISPLAY: Final = {min(TERM_SYNONYMS[0]): CRS_TERM, min(TERM_SYNONYMS[1]): ICANS_TERM}
_ICAHT_PREFIX: Final = "ICAHT "
_TICKED: Final[Any] = TrialClock.Ticked  # type: ignore[attr-defined]


# ================================================================ the fold


@dataclass(frozen=True)
class _Record:
    """One clinical record: its type, clinical time, data (wire JSON) and log position."""

    event_id: str
    kind: str
    at: datetime
    data: dict[str, Any]
    position: int


@dataclass(frozen=True)
class _Finding:
    """A trial-level safety event as last published under its key."""

    position: int
    type: str
    at: datetime
    dose_level: str | None
    data: dict[str, Any]

    @property
    def withdrawn(self) -> bool:
        return bool(self.data.get("withdrawn"))


@dataclass
class _Subject:
    """What the log says of one participant."""

    trial_id: str
    participant_id: str
    day_zero_is_infusion_day: bool = True
    records: dict[str, _Record] = field(default_factory=dict)
    corrections: dict[str, dict[str, Any]] = field(default_factory=dict)
    voided: set[str] = field(default_factory=set)
    #: Published grade timeline per term: clinical time -> (episode, grade).
    grades: dict[str, dict[datetime, tuple[int, int]]] = field(default_factory=dict)
    resolutions: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    sae_clocks: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    overdue: set[tuple[str, str]] = field(default_factory=set)
    candidates: dict[str, datetime] = field(default_factory=dict)
    dlt_decisions: dict[str, tuple[str, datetime, dict[str, Any]]] = field(default_factory=dict)

    def record(self, wire: Mapping[str, Any], position: int) -> None:
        kind, data = wire["type"], wire["data"]
        if kind == "record.corrected":
            self.corrections[data["corrects_event_id"]] = dict(data["data"])
        elif kind == "record.voided":
            self.voided.add(data["voids_event_id"])
        elif wire["event_id"] not in self.records:
            at = datetime.fromisoformat(wire["occurred_at"])
            self.records[wire["event_id"]] = _Record(
                wire["event_id"], kind, at, dict(data), position
            )

    def effective(self) -> list[_Record]:
        """The records with corrections and voids applied, in clinical order."""
        out = [
            _corrected(record, self.corrections.get(event_id))
            for event_id, record in self.records.items()
            if event_id not in self.voided
        ]
        return sorted(out, key=lambda r: (r.at, r.position))

    def put_grade(self, term: str, at: datetime, episode: int, grade: int) -> None:
        """A published grade point replaces any other at the same moment (as in the
        Participant aggregate's published timeline)."""
        self.grades.setdefault(term, {})[at] = (episode, grade)

    def max_grade(self, term: str) -> int:
        return max((g for _, g in self.grades.get(term, {}).values()), default=0)


def _corrected(record: _Record, replacement: dict[str, Any] | None) -> _Record:
    if replacement is None:
        return record
    try:
        model = DATA_MODELS[record.kind].model_validate(replacement, strict=False)
    except ValidationError:
        return record  # an inapplicable correction: the aggregate asks a question instead
    data = model.model_dump(mode="json", exclude_none=True)
    return _Record(record.event_id, record.kind, record.at, data, record.position)


@dataclass
class _Trial:
    """What the log says of one trial as a whole."""

    findings: dict[str, _Finding] = field(default_factory=dict)
    tallies: dict[str, dict[str, Any]] = field(default_factory=dict)
    latest_tick: datetime | None = None

    def latest(self, kind: str, dose_level: str | None = None) -> _Finding | None:
        """The standing finding of a type (and dose level): not withdrawn, latest in
        clinical time, ties by log position."""
        found = [
            f
            for f in self.standing(kind)
            if dose_level is None or f.data.get("dose_level") == dose_level
        ]
        return found[-1] if found else None

    def standing(self, *kinds: str) -> list[_Finding]:
        """The findings of these types not withdrawn, in clinical order (ties: log)."""
        found = [f for f in self.findings.values() if f.type in kinds and not f.withdrawn]
        return sorted(found, key=lambda f: (f.at, f.position))


@dataclass
class DSMBData:
    """A fold of the stored domain events, in log order, into the DSMB report's data."""

    subjects: dict[tuple[str, str], _Subject] = field(default_factory=dict)
    trials: dict[str, _Trial] = field(default_factory=dict)
    dose_level_ids: dict[UUID, tuple[str, str]] = field(default_factory=dict)
    participant_ids: dict[UUID, tuple[str, str]] = field(default_factory=dict)
    alerts: AlertsView = field(default_factory=AlertsView)
    kinetics: KineticsView = field(default_factory=KineticsView)
    position: int = 0

    def apply(self, event: Any, position: int) -> None:
        """Fold one stored domain event at its notification ``position``; events the
        report does not read are ignored."""
        self.position = max(self.position, position)
        cls = type(event)
        for part in self.parts():
            handler = part.route(cls)
            if handler is not None:
                handler(event, position)

    def parts(self) -> tuple[Routed, ...]:
        """The models a fan-out fold feeds (``projections.fold``): this one, its
        alerts and its kinetics (which another fold may share)."""
        return (self, self.alerts, self.kinetics)

    def route(self, cls: type) -> Handler | None:
        """The fold of a stored-event class by this model itself (its alerts and
        kinetics route their own), None if it does not read it."""
        if issubclass(cls, Participant.Registered | Participant.ProtocolApplied):
            return self._protocol
        if issubclass(cls, Participant.ClinicalEventRecorded):
            return self._recorded
        if issubclass(cls, _TICKED):
            return self._ticked
        if issubclass(cls, DoseLevel.Opened):
            return self._dose_level_opened
        if issubclass(cls, DoseLevel.Tallied):
            return self._tallied
        if issubclass(cls, ALERT_EVENT_CLASSES):
            return None  # the alerts view's
        if issubclass(cls, TrialSafetyEvent):
            return self._trial_finding
        if issubclass(cls, SafetyEventRecorded):
            return self._derived
        return None

    def _subject(self, trial_id: str, participant_id: str) -> _Subject:
        key = (trial_id, participant_id)
        if key not in self.subjects:
            self.subjects[key] = _Subject(trial_id, participant_id)
        return self.subjects[key]

    def _trial(self, trial_id: str) -> _Trial:
        trial = self.trials.get(trial_id)
        if trial is None:
            trial = self.trials[trial_id] = _Trial()
        return trial

    def _protocol(self, event: Any, position: int) -> None:
        if isinstance(event, Participant.Registered):
            self.participant_ids[event.originator_id] = (event.trial_id, event.participant_id)
        key = self.participant_ids.get(event.originator_id)
        if key is not None:
            subject = self._subject(*key)
            subject.day_zero_is_infusion_day = bool(
                event.parameters.get("day_zero_is_infusion_day", True)
            )

    def _recorded(self, event: Any, position: int) -> None:
        wire = event.event
        if wire["type"] == "clock.ticked":
            self._tick(wire["trial_id"], datetime.fromisoformat(wire["occurred_at"]))
            return
        self._subject(wire["trial_id"], wire["participant_id"]).record(wire, position)

    def _ticked(self, event: Any, position: int) -> None:
        self._tick(event.trial_id, event.at)

    def _tick(self, trial_id: str, at: datetime) -> None:
        trial = self._trial(trial_id)
        if trial.latest_tick is None or at > trial.latest_tick:
            trial.latest_tick = at

    def _dose_level_opened(self, event: Any, position: int) -> None:
        self.dose_level_ids[event.originator_id] = (event.trial_id, event.dose_level)

    def _tallied(self, event: DoseLevel.Tallied, position: int) -> None:
        key = self.dose_level_ids.get(event.originator_id)
        if key is not None:
            self._trial(key[0]).tallies[key[1]] = dict(event.tally)

    def _trial_finding(self, event: TrialSafetyEvent, position: int) -> None:
        data = dict(event.data)
        key = str(data.get("key") or f"{event.contract_type}:{position}")
        self._trial(event.trial_id).findings[key] = _Finding(
            position, event.contract_type, event.effective_at, event.dose_level, data
        )

    def _derived(self, event: SafetyEventRecorded, position: int) -> None:
        subject = self._subject(event.trial_id, event.participant_id)
        kind, data, at = event.contract_type, event.data, event.effective_at
        if kind in ("crs.graded", "icans.graded"):
            subject.put_grade(kind.split(".")[0].upper(), at, data["episode"], data["grade"])
        elif kind == "toxicity.graded":
            subject.put_grade(data["term"], at, data.get("episode", 0), data["grade"])
        elif kind == "icaht.graded":
            subject.put_grade(f"{_ICAHT_PREFIX}{data['phase']}", at, 0, data["grade"])
        elif kind == "grade.revised":
            self._revised(subject, at, data)
        elif kind in ("crs.resolved", "icans.resolved"):
            subject.resolutions[(kind.split(".")[0].upper(), data["episode"])] = dict(data)
        elif kind == "sae.clock_started":
            subject.sae_clocks[(data["ae_id"], data["obligation"])] = dict(data)
        elif kind == "sae.reminder_due" and data.get("overdue"):
            subject.overdue.add((data["ae_id"], data["obligation"]))
        elif kind == "dlt.candidate":
            subject.candidates[data["candidate_id"]] = at
        elif kind in ("dlt.confirmed", "dlt.ruled_out"):
            subject.dlt_decisions[data["candidate_id"]] = (kind, at, dict(data))

    @staticmethod
    def _revised(subject: _Subject, at: datetime, data: Mapping[str, Any]) -> None:
        term = data["term"]
        episode = data.get("episode", 0)
        if data.get("resolution_withdrawn"):
            subject.resolutions.pop((term, episode), None)
        subject.put_grade(term, at, episode, data["to_grade"])

    # ------------------------------------------------------------ the report

    def report(
        self,
        *,
        trial_id: str,
        as_of: datetime | None = None,
        planned_enrolment: int | None = None,
        dose_levels: Sequence[str] = (),
        b_cell_threshold_per_ul: float = B_CELL_THRESHOLD_PER_UL,
    ) -> DSMBReport:
        """The report of ``trial_id`` from what was folded (``as_of`` is stated, not
        applied: :func:`dsmb_data` filters by it)."""
        trial = self.trials.get(trial_id, _Trial())
        cutoff = _cutoff(trial, self.subjects.values(), trial_id)
        cases = _cases(self.subjects.values(), trial_id, cutoff)
        order = _dose_order(dose_levels, [c.dose_level for c in cases], trial.tallies)
        cases.sort(key=lambda c: (order.index(c.dose_level), c.participant_id))
        context = _Context(trial_id, trial, cases, order)
        return DSMBReport(
            study_status=_study_status(context, as_of, self.position, cutoff, planned_enrolment),
            enrolment=_enrolment(context),
            exposure=_exposure(context),
            adverse_events=_adverse_events(context),
            sae_listing=_sae_listing(context),
            death_listing=_death_listing(context),
            dlt_table=_dlt_table(context),
            crs_summary=_syndrome_summary(context, "CRS"),
            icans_summary=_syndrome_summary(context, "ICANS"),
            swimmer=_swimmer(context),
            cytopenia=_cytopenia(context),
            alerts=_alert_summary(self.alerts, trial_id),
            kinetics=_kinetics_rows(self.kinetics, context),
            disease=_disease_rows(self.kinetics, context),
            kinetics_by_dose_level=tuple(self.kinetics.dose_level_summary(trial_id)),
            optimal_dose=_optimal_dose(context, self.kinetics, b_cell_threshold_per_ul),
        )


def dsmb_data(
    events: Iterable[tuple[int, Any]],
    *,
    trial_id: str,
    as_of: datetime | None,
    planned_enrolment: int | None,
    dose_levels: Sequence[str],
    b_cell_threshold_per_ul: float = B_CELL_THRESHOLD_PER_UL,
) -> DSMBReport:
    """The DSMB report of ``trial_id`` from ``(notification position, domain event)``
    pairs in log order, folding only the events recorded at or before ``as_of`` (the
    stored event's ``timestamp``; None: all). ``as_of`` must carry a UTC offset."""
    if as_of is not None and as_of.utcoffset() is None:
        raise ValueError("as_of must carry a UTC offset")
    data = DSMBData()
    for position, event in events:
        if as_of is None or event.timestamp <= as_of:
            data.apply(event, position)
    return data.report(
        trial_id=trial_id,
        as_of=as_of,
        planned_enrolment=planned_enrolment,
        dose_levels=dose_levels,
        b_cell_threshold_per_ul=b_cell_threshold_per_ul,
    )


# ================================================================ cases


@dataclass(frozen=True)
class _Episode:
    kind: str
    number: int
    start_at: datetime
    end_at: datetime | None
    max_grade: int
    duration_hours: float | None


@dataclass(frozen=True)
class _Case:
    """One participant's effective record, with the facts every section reads."""

    subject: _Subject
    records: tuple[_Record, ...]
    dose_level: str
    disease: str
    enrolled: bool
    infused_at: datetime | None
    death: _Record | None
    withdrawn_at: datetime | None
    last_known_at: datetime | None

    @property
    def participant_id(self) -> str:
        return self.subject.participant_id

    def of(self, kind: str) -> list[_Record]:
        return [r for r in self.records if r.kind == kind]

    def day(self, at: datetime) -> float | None:
        """Exact days since the infusion."""
        if self.infused_at is None:
            return None
        return round((at - self.infused_at) / timedelta(days=1), 3)

    def study_day(self, at: datetime) -> int | None:
        if self.infused_at is None:
            return None
        zero = self.subject.day_zero_is_infusion_day
        return study_day(at, self.infused_at, day_zero_is_infusion_day=zero)

    def reported_aes(self) -> list[ReportedAE]:
        """Investigator AEs by ``ae_id``, versions in arrival order (domain rules)."""
        entries = []
        for record in sorted(self.of("adverse_event.reported"), key=lambda r: r.position):
            model = DATA_MODELS[record.kind].model_validate(record.data, strict=False)
            entries.append(
                TimelineEntry(record.event_id, record.kind, record.at, model, record.position)
            )
        return reported_aes(entries)

    def episodes(self, kind: str) -> list[_Episode]:
        """CRS or ICANS episodes as published: start at the first grade >= 1, end at the
        standing resolution (``*.resolved``), maximum grade over the episode's points;
        an episode revised to grade 0 throughout is not one."""
        points: dict[int, list[tuple[datetime, int]]] = {}
        for at, (number, grade) in sorted(self.subject.grades.get(kind, {}).items()):
            points.setdefault(number, []).append((at, grade))
        episodes = []
        for number, course in sorted(points.items()):
            graded = [at for at, grade in course if grade >= 1]
            if not graded:
                continue
            resolution = self.subject.resolutions.get((kind, number), {})
            end = resolution.get("resolved_at")
            episodes.append(
                _Episode(
                    kind,
                    number,
                    graded[0],
                    datetime.fromisoformat(end) if end else None,
                    max(grade for _, grade in course),
                    resolution.get("duration_hours"),
                )
            )
        return episodes


def _cutoff(trial: _Trial, subjects: Iterable[_Subject], trial_id: str) -> datetime | None:
    times = [r.at for s in subjects if s.trial_id == trial_id for r in s.effective()]
    if trial.latest_tick is not None:
        times.append(trial.latest_tick)
    return max(times, default=None)


def _cases(subjects: Iterable[_Subject], trial_id: str, cutoff: datetime | None) -> list[_Case]:
    cases = []
    for subject in subjects:
        if subject.trial_id == trial_id:
            case = _case(subject, cutoff)
            if case is not None:
                cases.append(case)
    return cases


def _case(subject: _Subject, cutoff: datetime | None) -> _Case | None:
    """The latest enrolment and death reported, the first infusion and withdrawal."""
    records = tuple(subject.effective())
    enrolment = _last_reported(records, "participant.enrolled")
    infusion = next((r for r in records if r.kind == "infusion.administered"), None)
    if enrolment is None and infusion is None:
        return None
    death = _last_reported(records, "death.reported")
    withdrawn_at = next((r.at for r in records if r.kind == "participant.withdrawn"), None)
    ends = [t for t in (cutoff, death.at if death else None, withdrawn_at) if t is not None]
    return _Case(
        subject=subject,
        records=records,
        dose_level=_dose_level(infusion, enrolment),
        disease=str(enrolment.data.get("disease", UNKNOWN)) if enrolment else UNKNOWN,
        enrolled=enrolment is not None,
        infused_at=infusion.at if infusion else None,
        death=death,
        withdrawn_at=withdrawn_at,
        last_known_at=min(ends) if infusion is not None and ends else None,
    )


def _last_reported(records: Iterable[_Record], kind: str) -> _Record | None:
    return max((r for r in records if r.kind == kind), key=lambda r: r.position, default=None)


def _dose_level(*records: _Record | None) -> str:
    """The first dose level stated by the records given (infusion, then enrolment)."""
    stated = [r.data.get("dose_level") for r in records if r is not None]
    return str(next((d for d in stated if d), UNKNOWN))


def _dose_order(listed: Sequence[str], seen: Sequence[str], tallied: Iterable[str]) -> list[str]:
    order = list(dict.fromkeys(listed))
    extra = {d for d in [*seen, *tallied] if d not in order and d != UNKNOWN}
    order.extend(sorted(extra))
    if UNKNOWN in seen or UNKNOWN in order:
        order = [d for d in order if d != UNKNOWN] + [UNKNOWN]
    return order


@dataclass(frozen=True)
class _Context:
    trial_id: str
    trial: _Trial
    cases: list[_Case]
    dose_levels: list[str]

    def at_dose(self, dose_level: str, *, infused: bool = False) -> list[_Case]:
        return [
            c
            for c in self.cases
            if c.dose_level == dose_level and (not infused or c.infused_at is not None)
        ]

    @property
    def infused(self) -> list[_Case]:
        return [c for c in self.cases if c.infused_at is not None]


# ================================================================ report types


@dataclass(frozen=True)
class Spread:
    """Median and range of a set of values (None when empty)."""

    n: int
    median: float | None
    minimum: float | None
    maximum: float | None


def _spread(values: Iterable[float]) -> Spread:
    data = sorted(values)
    if not data:
        return Spread(0, None, None, None)
    return Spread(len(data), round(float(statistics.median(data)), 4), data[0], data[-1])


@dataclass(frozen=True)
class StoppingRuleState:
    rule_id: str
    scope: str
    n: int
    y: int
    boundary: float | None
    statistic: float | None
    effective_at: datetime
    detail: str | None


@dataclass(frozen=True)
class MTDState:
    dose_level: str | None
    design: str | None
    estimates: dict[str, float | None]
    reason: str | None
    effective_at: datetime


@dataclass(frozen=True)
class StudyStatus:
    """Counts are of participants with an enrolment or infusion on record: ``enrolled``
    with an enrolment, ``infused`` with an infusion, ``withdrawn`` with a
    ``participant.withdrawn``, ``died`` with a ``death.reported`` (not exclusive).
    Enrolment is paused when the standing ``enrollment.paused``/``resumed`` latest in
    clinical time is a pause; ``last_pause_*`` describe the latest standing pause,
    resumed or not; stopping rules are the standing (not withdrawn)
    ``stopping_rule.triggered``; the MTD is the latest standing ``mtd.estimated``.
    ``log_position`` is the last notification folded."""

    trial_id: str
    as_of: datetime | None
    log_position: int
    data_cutoff: datetime | None
    planned_enrolment: int | None
    enrolled: int
    infused: int
    withdrawn: int
    died: int
    enrolment_paused: bool
    trial_stopped: bool
    last_pause_at: datetime | None
    last_pause_by: str | None
    last_pause_reason: str | None
    stopping_rules: tuple[StoppingRuleState, ...]
    mtd: MTDState | None


@dataclass(frozen=True)
class EnrolmentCell:
    dose_level: str
    disease: str
    enrolled: int
    infused: int


@dataclass(frozen=True)
class Enrolment:
    """Participants per dose level x disease (every disease on record, zeros
    included); the first and last infusion times."""

    cells: tuple[EnrolmentCell, ...]
    first_infusion_at: datetime | None
    last_infusion_at: datetime | None


@dataclass(frozen=True)
class ExposureRow:
    """Infused participants and their follow-up: per participant, days from the
    infusion to the last known time (data cut-off, death or withdrawal, whichever is
    earliest); ``follow_up_days`` is their sum."""

    dose_level: str
    infused: int
    follow_up_days: float
    median_follow_up_days: float | None


@dataclass(frozen=True)
class AERow:
    """Participants with ``term`` at a dose level by their maximum grade (index 0 =
    grade 1 ... 4 = grade 5), each counted once at the highest grade from every
    source: published ``toxicity.graded`` and ``grade.revised`` (the standing grade
    timeline), CRS (``crs.graded``) and ICANS (``icans.graded``), and investigator
    ``adverse_event.reported`` (per ``ae_id``: term of the latest report, worst grade
    of its course, ``domain.adverse_events``). Synonyms are one term (CRS and
    "Cytokine release syndrome"). ICAHT is not a term here (see the cytopenia rows)."""

    term: str
    dose_level: str
    participants: int
    by_max_grade: tuple[int, int, int, int, int]


@dataclass(frozen=True)
class SAEClockRow:
    obligation: str
    awareness_at: datetime
    deadline_at: datetime
    overdue: bool


@dataclass(frozen=True)
class SAERow:
    """A serious AE: the latest report of an ``ae_id`` with ``serious`` true; onset is
    the reported ``onset_at``, else the first report's clinical time; its clocks are
    the ``sae.clock_started`` of that ``ae_id`` (``overdue``: an overdue
    ``sae.reminder_due`` was published)."""

    participant_id: str
    dose_level: str
    ae_id: str
    term: str
    grade: int
    worst_grade: int
    seriousness: tuple[str, ...]
    relatedness: str
    expected: bool | None
    onset_at: datetime
    onset_study_day: int | None
    resolved_at: datetime | None
    outcome: str | None
    clocks: tuple[SAEClockRow, ...]


@dataclass(frozen=True)
class DeathRow:
    """The latest ``death.reported`` of a participant."""

    participant_id: str
    dose_level: str
    died_at: datetime
    study_day: int | None
    cause: str
    attributed_to: str
    related: str | None


@dataclass(frozen=True)
class DLTEntry:
    """A standing ``dlt.confirmed`` (not ruled out later): ``met_at`` when the
    candidate met its rule (``dlt.candidate``), ``confirmed_at`` when it was decided."""

    participant_id: str
    rule: str
    term: str | None
    grade: int | None
    met_at: datetime
    confirmed_at: datetime
    study_day: int | None


@dataclass(frozen=True)
class DoseDecisionState:
    decision: str
    design: str
    n: int
    y: int
    effective_at: datetime
    reason: str | None


@dataclass(frozen=True)
class DLTRow:
    """Per dose level: the monitor's tally (``DoseLevel.Tallied``), the standing
    ``dose.decision`` latest in clinical time, and each confirmed DLT."""

    dose_level: str
    infused: int
    evaluable: int
    dlts: int
    open_windows: int
    eliminated: bool
    suspended: bool
    decision: DoseDecisionState | None
    confirmed: tuple[DLTEntry, ...]


@dataclass(frozen=True)
class SyndromeRow:
    """CRS or ICANS among the infused participants of a dose level: ``by_max_grade``
    index g = participants whose highest grade is g (0 = none); ``onset_study_day``
    per participant with the syndrome, the study day of its first grade >= 1;
    ``duration_hours`` per resolved episode (``*.resolved``); ``anti_il6`` and
    ``corticosteroid``: participants with the syndrome given a drug of that class
    (``medication.administered``) at or after their first onset."""

    dose_level: str
    infused: int
    with_any_grade: int
    incidence_pct: float | None
    by_max_grade: tuple[int, int, int, int, int, int]
    onset_study_day: Spread
    duration_hours: Spread
    ongoing_episodes: int
    anti_il6: int
    corticosteroid: int


@dataclass(frozen=True)
class SwimmerEpisode:
    kind: str
    number: int
    start_day: float
    end_day: float | None
    max_grade: int


@dataclass(frozen=True)
class SwimmerMarker:
    kind: str  # dlt | sae | death | withdrawal
    day: float
    label: str


@dataclass(frozen=True)
class SwimmerRow:
    """An infused participant's lane, in days since the infusion: to the last known
    time; CRS and ICANS episodes (end None: ongoing); markers for confirmed DLTs (when
    met), SAEs (onset), death and withdrawal."""

    participant_id: str
    dose_level: str
    disease: str
    infused_at: datetime
    last_known_at: datetime | None
    end_day: float
    episodes: tuple[SwimmerEpisode, ...]
    markers: tuple[SwimmerMarker, ...]


@dataclass(frozen=True)
class CytopeniaRow:
    """An infused participant's ANC (``lab.resulted`` anc, in 10^9/L, by day since
    infusion); the post-infusion nadir; the first day after it with ANC >= 0.5 when
    the nadir was below 0.5; and the current ICAHT grade per phase (the standing
    ``icaht.graded`` timeline's latest point)."""

    participant_id: str
    dose_level: str
    anc: tuple[tuple[float, float], ...]
    nadir_10e9_l: float | None
    nadir_day: float | None
    recovered_day: float | None
    icaht: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class AlertCount:
    category: str
    severity: str
    total: int
    open: int
    acknowledged: int
    resolved: int


@dataclass(frozen=True)
class OpenAlert:
    alert_id: str
    severity: str
    category: str
    title: str
    participant_id: str
    dose_level: str | None
    effective_at: datetime
    raised_at: datetime


@dataclass(frozen=True)
class AlertSummary:
    """Alerts of the trial (``alert.raised``/``acknowledged``/``resolved``, as the
    inbox folds them) by category x severity and status; the open ones (neither
    acknowledged nor resolved), most severe first, then oldest."""

    counts: tuple[AlertCount, ...]
    open: tuple[OpenAlert, ...]


@dataclass(frozen=True)
class KineticsRow:
    """An infused participant's NCA of one analyte (reference §11, ``domain.pk``);
    ``profile`` is the (day, value) series the AUC integrates."""

    participant_id: str
    dose_level: str
    analyte: str
    cmax: float | None
    tmax_day: float | None
    clast: float | None
    tlast_day: float | None
    auc_0_28: float | None
    auc_complete: bool
    n_quantifiable: int
    profile: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class DiseaseRow:
    """Change from baseline of one instrument at a visit week (reference §12,
    ``domain.disease_scores``)."""

    participant_id: str
    dose_level: str
    disease: str
    instrument: str
    week: int
    score: float
    baseline_score: float
    change: float
    percent_change: float | None
    improved: bool
    rule_met: bool | None


@dataclass(frozen=True)
class OptimalDoseRow:
    """Per dose level: the DLT rate y/n of the monitor's tally with the equal-tailed
    95 % interval of its Beta(1 + y, 1 + n - y) posterior; B-cell depletion (infused
    participants with a CD19 B-cell count after the infusion below the threshold,
    among the infused and among those assessed); median Cmax and AUC0-28 per analyte
    and the disease response at weeks 12 and 24 (``KineticsView``)."""

    dose_level: str
    evaluable: int
    dlts: int
    dlt_rate: float | None
    dlt_rate_interval: tuple[float, float]
    infused: int
    b_cell_assessed: int
    b_cell_depleted: int
    b_cell_depleted_pct: float | None
    pk: dict[str, dict[str, Any]]
    disease_response: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class OptimalDose:
    b_cell_threshold_per_ul: float
    b_cell_threshold_source: str
    prior: tuple[float, float]
    credible_level: float
    rows: tuple[OptimalDoseRow, ...]


@dataclass(frozen=True)
class DSMBReport:
    """The data of the DSMB open-session packet and dashboard."""

    study_status: StudyStatus
    enrolment: Enrolment
    exposure: tuple[ExposureRow, ...]
    adverse_events: tuple[AERow, ...]
    sae_listing: tuple[SAERow, ...]
    death_listing: tuple[DeathRow, ...]
    dlt_table: tuple[DLTRow, ...]
    crs_summary: tuple[SyndromeRow, ...]
    icans_summary: tuple[SyndromeRow, ...]
    swimmer: tuple[SwimmerRow, ...]
    cytopenia: tuple[CytopeniaRow, ...]
    alerts: AlertSummary
    kinetics: tuple[KineticsRow, ...]
    disease: tuple[DiseaseRow, ...]
    kinetics_by_dose_level: tuple[dict[str, Any], ...]
    optimal_dose: OptimalDose

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601, tuples as lists, mapping keys as strings."""
        result: dict[str, Any] = _jsonable(asdict(self))
        return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# ================================================================ sections


def _study_status(
    context: _Context,
    as_of: datetime | None,
    position: int,
    cutoff: datetime | None,
    planned: int | None,
) -> StudyStatus:
    cases, trial = context.cases, context.trial
    latest = trial.latest("enrollment.paused")
    states = trial.standing("enrollment.paused", "enrollment.resumed")
    state = states[-1] if states else None
    paused = state is not None and state.type == "enrollment.paused"
    return StudyStatus(
        trial_id=context.trial_id,
        as_of=as_of,
        log_position=position,
        data_cutoff=cutoff,
        planned_enrolment=planned,
        enrolled=sum(c.enrolled for c in cases),
        infused=sum(c.infused_at is not None for c in cases),
        withdrawn=sum(c.withdrawn_at is not None for c in cases),
        died=sum(c.death is not None for c in cases),
        enrolment_paused=paused,
        trial_stopped=bool(state and paused and state.data.get("trial_stopped")),
        last_pause_at=latest.at if latest else None,
        last_pause_by=latest.data.get("by") if latest else None,
        last_pause_reason=latest.data.get("reason") if latest else None,
        stopping_rules=tuple(_stopping(f) for f in trial.standing("stopping_rule.triggered")),
        mtd=_mtd(trial.latest("mtd.estimated")),
    )


def _stopping(finding: _Finding) -> StoppingRuleState:
    data = finding.data
    return StoppingRuleState(
        rule_id=data["rule_id"],
        scope=str(data["scope"]),
        n=data["n"],
        y=data["y"],
        boundary=data.get("boundary"),
        statistic=data.get("statistic"),
        effective_at=finding.at,
        detail=data.get("detail"),
    )


def _mtd(finding: _Finding | None) -> MTDState | None:
    if finding is None:
        return None
    data = finding.data
    return MTDState(
        dose_level=data.get("dose_level"),
        design=data.get("design"),
        estimates=dict(data.get("estimates") or {}),
        reason=data.get("reason"),
        effective_at=finding.at,
    )


def _enrolment(context: _Context) -> Enrolment:
    diseases = sorted({c.disease for c in context.cases})
    cells = []
    for dose_level in context.dose_levels:
        for disease in diseases:
            group = [c for c in context.at_dose(dose_level) if c.disease == disease]
            cells.append(
                EnrolmentCell(
                    dose_level,
                    disease,
                    enrolled=sum(c.enrolled for c in group),
                    infused=sum(c.infused_at is not None for c in group),
                )
            )
    infusions = sorted(c.infused_at for c in context.infused if c.infused_at is not None)
    return Enrolment(
        tuple(cells), infusions[0] if infusions else None, infusions[-1] if infusions else None
    )


def _follow_up_days(case: _Case) -> float:
    if case.infused_at is None or case.last_known_at is None:
        return 0.0
    return max(0.0, (case.last_known_at - case.infused_at) / timedelta(days=1))


def _exposure(context: _Context) -> tuple[ExposureRow, ...]:
    rows = []
    for dose_level in context.dose_levels:
        days = [_follow_up_days(c) for c in context.at_dose(dose_level, infused=True)]
        median = _spread(days).median
        rows.append(
            ExposureRow(
                dose_level,
                len(days),
                round(sum(days), 3),
                round(median, 3) if median is not None else None,
            )
        )
    return tuple(rows)


def _term_key(term: str) -> str:
    return min(names_of(term))


def _participant_terms(case: _Case) -> dict[str, tuple[str, int]]:
    """term key -> (a spelling, maximum grade) over every source (see AERow)."""
    found: dict[str, tuple[str, int]] = {}

    def put(term: str, grade: int) -> None:
        if grade < 1:
            return
        key = _term_key(term)
        spelling, before = found.get(key, (term, 0))
        found[key] = (_TERM_DISPLAY.get(key, min(spelling, term)), max(before, grade))

    for term in case.subject.grades:
        if not term.startswith(_ICAHT_PREFIX):
            put(_SYNDROMES.get(term, term), case.subject.max_grade(term))
    for ae in case.reported_aes():
        put(ae.latest.term, ae.worst_grade)
    return found


def _adverse_events(context: _Context) -> tuple[AERow, ...]:
    table: dict[tuple[str, str], list[int]] = {}
    spellings: dict[str, str] = {}
    for case in context.cases:
        for key, (spelling, grade) in _participant_terms(case).items():
            spellings[key] = min(spellings.get(key, spelling), spelling)
            table.setdefault((key, case.dose_level), [0] * 5)[grade - 1] += 1
    rows = [
        AERow(spellings[key], dose_level, sum(counts), (counts[0], counts[1], counts[2],
              counts[3], counts[4]))
        for (key, dose_level), counts in table.items()
    ]  # fmt: skip
    rows.sort(key=lambda r: (r.term.casefold(), context.dose_levels.index(r.dose_level)))
    return tuple(rows)


def _sae_listing(context: _Context) -> tuple[SAERow, ...]:
    rows = []
    for case in context.cases:
        for ae in case.reported_aes():
            latest = ae.latest
            if latest.serious:
                rows.append(_sae_row(case, ae))
    rows.sort(key=lambda r: (r.onset_at, r.participant_id, r.ae_id))
    return tuple(rows)


def _sae_row(case: _Case, ae: ReportedAE) -> SAERow:
    latest = ae.latest
    clocks = sorted(
        (
            SAEClockRow(
                obligation,
                datetime.fromisoformat(data["awareness_at"]),
                datetime.fromisoformat(data["deadline_at"]),
                (ae_id, obligation) in case.subject.overdue,
            )
            for (ae_id, obligation), data in case.subject.sae_clocks.items()
            if ae_id == ae.ae_id
        ),
        key=lambda c: (c.deadline_at, c.obligation),
    )
    return SAERow(
        participant_id=case.participant_id,
        dose_level=case.dose_level,
        ae_id=ae.ae_id,
        term=latest.term,
        grade=latest.grade,
        worst_grade=ae.worst_grade,
        seriousness=tuple(latest.seriousness),
        relatedness=latest.relatedness,
        expected=latest.expected,
        onset_at=ae.onset_at,
        onset_study_day=case.study_day(ae.onset_at),
        resolved_at=latest.resolved_at,
        outcome=latest.outcome,
        clocks=tuple(clocks),
    )


def _death_listing(context: _Context) -> tuple[DeathRow, ...]:
    rows = [
        DeathRow(
            participant_id=case.participant_id,
            dose_level=case.dose_level,
            died_at=case.death.at,
            study_day=case.study_day(case.death.at),
            cause=case.death.data["cause"],
            attributed_to=case.death.data["attributed_to"],
            related=case.death.data.get("related"),
        )
        for case in context.cases
        if case.death is not None
    ]
    rows.sort(key=lambda r: (r.died_at, r.participant_id))
    return tuple(rows)


def _confirmed_dlts(case: _Case) -> list[DLTEntry]:
    entries = []
    for candidate_id, (kind, at, data) in case.subject.dlt_decisions.items():
        if kind != "dlt.confirmed":
            continue
        met_at = case.subject.candidates.get(candidate_id, at)
        entries.append(
            DLTEntry(
                participant_id=case.participant_id,
                rule=str(data["rule"]),
                term=data.get("term"),
                grade=data.get("grade"),
                met_at=met_at,
                confirmed_at=at,
                study_day=case.study_day(met_at),
            )
        )
    return sorted(entries, key=lambda e: (e.met_at, e.rule))


def _decision(finding: _Finding | None) -> DoseDecisionState | None:
    if finding is None:
        return None
    data = finding.data
    return DoseDecisionState(
        decision=data["decision"],
        design=data["design"],
        n=data["n"],
        y=data["y"],
        effective_at=finding.at,
        reason=data.get("reason"),
    )


def _dlt_table(context: _Context) -> tuple[DLTRow, ...]:
    rows = []
    for dose_level in context.dose_levels:
        tally = context.trial.tallies.get(dose_level, {})
        confirmed = [e for c in context.at_dose(dose_level) for e in _confirmed_dlts(c)]
        rows.append(
            DLTRow(
                dose_level=dose_level,
                infused=int(tally.get("infused", 0)),
                evaluable=int(tally.get("evaluable", 0)),
                dlts=int(tally.get("dlts", 0)),
                open_windows=int(tally.get("open_windows", 0)),
                eliminated=bool(tally.get("eliminated", False)),
                suspended=bool(tally.get("suspended", False)),
                decision=_decision(context.trial.latest("dose.decision", dose_level)),
                confirmed=tuple(sorted(confirmed, key=lambda e: (e.participant_id, e.met_at))),
            )
        )
    return tuple(rows)


def _treated(case: _Case, drug_class: str, since: datetime) -> bool:
    return any(
        r.data.get("drug_class") == drug_class and r.at >= since
        for r in case.of("medication.administered")
    )


@dataclass(frozen=True)
class _SyndromeCourse:
    """One infused participant's CRS or ICANS, as the summary counts it."""

    max_grade: int
    onset_study_day: int | None
    durations: tuple[float, ...]
    ongoing: int
    anti_il6: bool
    corticosteroid: bool


def _syndrome_course(case: _Case, kind: str) -> _SyndromeCourse:
    episodes = case.episodes(kind)
    if not episodes:
        return _SyndromeCourse(0, None, (), 0, False, False)
    onset = episodes[0].start_at
    return _SyndromeCourse(
        max_grade=min(max(e.max_grade for e in episodes), 5),
        onset_study_day=case.study_day(onset),
        durations=tuple(float(e.duration_hours) for e in episodes if e.duration_hours is not None),
        ongoing=sum(e.end_at is None for e in episodes),
        anti_il6=_treated(case, "anti_il6", onset),
        corticosteroid=_treated(case, "corticosteroid", onset),
    )


def _syndrome_row(dose_level: str, courses: Sequence[_SyndromeCourse]) -> SyndromeRow:
    grades = [sum(c.max_grade == g for c in courses) for g in range(6)]
    with_any = len(courses) - grades[0]
    return SyndromeRow(
        dose_level=dose_level,
        infused=len(courses),
        with_any_grade=with_any,
        incidence_pct=round(100 * with_any / len(courses), 1) if courses else None,
        by_max_grade=(grades[0], grades[1], grades[2], grades[3], grades[4], grades[5]),
        onset_study_day=_spread(
            float(c.onset_study_day) for c in courses if c.onset_study_day is not None
        ),
        duration_hours=_spread(d for c in courses for d in c.durations),
        ongoing_episodes=sum(c.ongoing for c in courses),
        anti_il6=sum(c.anti_il6 for c in courses),
        corticosteroid=sum(c.corticosteroid for c in courses),
    )


def _syndrome_summary(context: _Context, kind: str) -> tuple[SyndromeRow, ...]:
    return tuple(
        _syndrome_row(
            dose_level,
            [_syndrome_course(c, kind) for c in context.at_dose(dose_level, infused=True)],
        )
        for dose_level in context.dose_levels
    )


def _markers(case: _Case) -> list[SwimmerMarker]:
    def day(at: datetime) -> float:
        return case.day(at) or 0.0

    markers = [SwimmerMarker("dlt", day(e.met_at), e.rule) for e in _confirmed_dlts(case)]
    markers += [
        SwimmerMarker("sae", day(ae.onset_at), ae.latest.term)
        for ae in case.reported_aes()
        if ae.latest.serious
    ]
    if case.death is not None:
        markers.append(SwimmerMarker("death", day(case.death.at), case.death.data["cause"]))
    for record in case.of("participant.withdrawn")[:1]:
        markers.append(SwimmerMarker("withdrawal", day(record.at), record.data["reason"]))
    return sorted(markers, key=lambda m: (m.day, m.kind, m.label))


def _swimmer(context: _Context) -> tuple[SwimmerRow, ...]:
    rows = []
    for case in context.infused:
        if case.infused_at is None:
            continue
        episodes = [
            SwimmerEpisode(
                e.kind,
                e.number,
                case.day(e.start_at) or 0.0,
                case.day(e.end_at) if e.end_at is not None else None,
                e.max_grade,
            )
            for kind in ("CRS", "ICANS")
            for e in case.episodes(kind)
        ]
        end = case.day(case.last_known_at) if case.last_known_at else 0.0
        rows.append(
            SwimmerRow(
                participant_id=case.participant_id,
                dose_level=case.dose_level,
                disease=case.disease,
                infused_at=case.infused_at,
                last_known_at=case.last_known_at,
                end_day=end or 0.0,
                episodes=tuple(sorted(episodes, key=lambda e: (e.start_day, e.kind))),
                markers=tuple(_markers(case)),
            )
        )
    return tuple(rows)


def _anc_series(case: _Case) -> list[tuple[float, float]]:
    series = []
    for record in case.of("lab.resulted"):
        data = record.data
        day = case.day(record.at)
        if data.get("analyte") != "anc" or day is None:
            continue
        try:
            value = convert("anc", float(data["value"]), data["unit"], "10*9/L")
        except UnitConversionError:
            continue
        series.append((day, round(value, 6)))
    return series


def _cytopenia_row(case: _Case) -> CytopeniaRow:
    anc = _anc_series(case)
    after = [(day, value) for day, value in anc if day >= 0]
    nadir = min(after, key=lambda p: (p[1], p[0]), default=None)
    recovered = None
    if nadir is not None and nadir[1] < ANC_RECOVERY_10E9_L:
        recovered = next((d for d, v in after if d > nadir[0] and v >= ANC_RECOVERY_10E9_L), None)
    icaht = [
        (term.removeprefix(_ICAHT_PREFIX), points[max(points)][1])
        for term, points in sorted(case.subject.grades.items())
        if term.startswith(_ICAHT_PREFIX) and points
    ]
    return CytopeniaRow(
        participant_id=case.participant_id,
        dose_level=case.dose_level,
        anc=tuple(anc),
        nadir_10e9_l=nadir[1] if nadir else None,
        nadir_day=nadir[0] if nadir else None,
        recovered_day=recovered,
        icaht=tuple(icaht),
    )


def _cytopenia(context: _Context) -> tuple[CytopeniaRow, ...]:
    return tuple(_cytopenia_row(case) for case in context.infused)


def _alert_summary(view: AlertsView, trial_id: str) -> AlertSummary:
    rows = view.select(trial_id=trial_id)
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for row in rows:
        entry = counts.setdefault((row.category, row.severity), {})
        entry[row.status] = entry.get(row.status, 0) + 1
    table = [
        AlertCount(category, severity, sum(entry.values()), entry.get("open", 0),
                   entry.get("acknowledged", 0), entry.get("resolved", 0))
        for (category, severity), entry in counts.items()
    ]  # fmt: skip
    table.sort(key=lambda a: (a.category, -severity_rank(a.severity)))
    open_alerts = [
        OpenAlert(r.alert_id, r.severity, r.category, r.title, r.participant_id,
                  r.dose_level, r.effective_at, r.raised_at)
        for r in rows
        if r.status == "open"
    ]  # fmt: skip
    open_alerts.sort(key=lambda a: (-severity_rank(a.severity), a.raised_at, a.alert_id))
    return AlertSummary(tuple(table), tuple(open_alerts))


def _kinetics_subjects(
    view: KineticsView, context: _Context
) -> list[tuple[str, ParticipantKinetics]]:
    """(dose level, kinetics) of the trial's infused participants, in report order."""
    dose_of = {c.participant_id: c.dose_level for c in context.cases}
    found = [
        (dose_of.get(pid) or subject.dose_level or UNKNOWN, subject)
        for (trial, pid), subject in view.participants.items()
        if trial == context.trial_id and subject.infused_at is not None
    ]
    order = context.dose_levels
    return sorted(
        found,
        key=lambda p: (order.index(p[0]) if p[0] in order else len(order), p[0],
                       p[1].participant_id),
    )  # fmt: skip


def _kinetics_rows(view: KineticsView, context: _Context) -> tuple[KineticsRow, ...]:
    rows = []
    for dose_level, subject in _kinetics_subjects(view, context):
        for analyte, result in subject.pk().items():
            rows.append(
                KineticsRow(
                    participant_id=subject.participant_id,
                    dose_level=dose_level,
                    analyte=analyte,
                    cmax=result.cmax,
                    tmax_day=result.tmax_day,
                    clast=result.clast,
                    tlast_day=result.tlast_day,
                    auc_0_28=result.auc_0_28,
                    auc_complete=result.auc_complete,
                    n_quantifiable=result.n_quantifiable,
                    profile=tuple(result.profile),
                )
            )
    return tuple(rows)


def _disease_rows(view: KineticsView, context: _Context) -> tuple[DiseaseRow, ...]:
    rows: list[DiseaseRow] = []
    for dose_level, subject in _kinetics_subjects(view, context):
        changes = sorted(subject.disease_changes(), key=lambda c: (c.instrument, c.week))
        rows.extend(
            DiseaseRow(
                participant_id=subject.participant_id,
                dose_level=dose_level,
                disease=subject.disease or UNKNOWN,
                instrument=change.instrument,
                week=change.week,
                score=change.score,
                baseline_score=change.baseline_score,
                change=change.change,
                percent_change=change.percent_change,
                improved=change.improved,
                rule_met=change.rule_met,
            )
            for change in changes
        )
    return tuple(rows)


def posterior_interval(
    y: int, n: int, *, level: float = CREDIBLE_LEVEL, prior: tuple[float, float] = PRIOR
) -> tuple[float, float]:
    """Equal-tailed credible interval of a rate after y events in n, Beta prior."""
    a, b = prior[0] + y, prior[1] + n - y
    tail = (1 - level) / 2
    return (round(float(beta.ppf(tail, a, b)), 4), round(float(beta.ppf(1 - tail, a, b)), 4))


def _b_cells(view: KineticsView, context: _Context, threshold: float) -> dict[str, tuple[int, int]]:
    """dose level -> (assessed after infusion, depleted below ``threshold`` cells/uL)."""
    out: dict[str, tuple[int, int]] = {}
    for dose_level, subject in _kinetics_subjects(view, context):
        infused_at = subject.infused_at
        counts = []
        for at, value, unit in subject.b_cells():
            if infused_at is not None and at >= infused_at:
                try:
                    counts.append(convert("cd19_b_cells", value, unit, "/uL"))
                except UnitConversionError:
                    continue
        assessed, depleted = out.get(dose_level, (0, 0))
        out[dose_level] = (assessed + bool(counts), depleted + any(c < threshold for c in counts))
    return out


def _optimal_dose(context: _Context, view: KineticsView, threshold: float) -> OptimalDose:
    b_cells = _b_cells(view, context, threshold)
    summary = {s["dose_level"]: s for s in view.dose_level_summary(context.trial_id)}
    rows = []
    for dose_level in context.dose_levels:
        tally = context.trial.tallies.get(dose_level, {})
        n, y = int(tally.get("evaluable", 0)), int(tally.get("dlts", 0))
        infused = len(context.at_dose(dose_level, infused=True))
        assessed, depleted = b_cells.get(dose_level, (0, 0))
        kinetics = summary.get(dose_level, {})
        rows.append(
            OptimalDoseRow(
                dose_level=dose_level,
                evaluable=n,
                dlts=y,
                dlt_rate=round(y / n, 4) if n else None,
                dlt_rate_interval=posterior_interval(y, n),
                infused=infused,
                b_cell_assessed=assessed,
                b_cell_depleted=depleted,
                b_cell_depleted_pct=round(100 * depleted / infused, 1) if infused else None,
                pk=dict(kinetics.get("pk", {})),
                disease_response={
                    str(week): dict(v) for week, v in kinetics.get("disease_response", {}).items()
                },
            )
        )
    return OptimalDose(threshold, B_CELL_THRESHOLD_SOURCE, PRIOR, CREDIBLE_LEVEL, tuple(rows))
