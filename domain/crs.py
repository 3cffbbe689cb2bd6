"""CRS grading: ASTCT 2019 consensus (Lee et al., BBMT 2019;25:625-638), reference §1.

A pure function over a participant's clinical timeline. It sweeps the observations in
clinical order, carrying each kind of observation forward until the next one of its
kind (reference §0.6), and returns every change of grade with its basis, the
episodes with onset and resolution, and the questions that need an adjudicator.

Grade at a moment = fever gate (>= 38.0 C, or waived inside an episode after
antipyretic / anti-cytokine therapy) and the more severe of hypotension and hypoxia:

====================  ===========================  ==============================
grade                 hypotension                  hypoxia
====================  ===========================  ==============================
1                     none                         none
2                     not requiring vasopressors   low-flow cannula <= 6 L/min, blow-by
3                     one vasopressor (+/- AVP)    > 6 L/min, facemask, NRB, Venturi
4                     >= 2 non-vasopressin agents  CPAP, BiPAP, mechanical ventilation
5                     death due to CRS
====================  ===========================  ==============================
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from domain.contract import (
    DeathReported,
    FluidBolus,
    MedicationAdministered,
    OxygenChanged,
    VasopressorChanged,
    VitalsRecorded,
)
from domain.protocol import CRSParameters
from domain.timeline import AdjudicationQuestion, Resumable, TimelineEntry, chronological

Hypotension = Literal["none", "fluids_only", "single_vasopressor", "multiple_vasopressors"]
Hypoxia = Literal["none", "low_flow", "high_flow", "positive_pressure"]

HYPOTENSION_GRADE: dict[str, int] = {
    "none": 0,
    "fluids_only": 2,
    "single_vasopressor": 3,
    "multiple_vasopressors": 4,
}
HYPOXIA_GRADE: dict[str, int] = {"none": 0, "low_flow": 2, "high_flow": 3, "positive_pressure": 4}
_MASKS = frozenset({"simple_face_mask", "non_rebreather_mask", "venturi_mask"})
_POSITIVE_PRESSURE = frozenset({"cpap", "bipap", "mechanical_ventilation"})
_CANNULAS = frozenset({"nasal_cannula", "high_flow_nasal_cannula"})
_CRS_CAUSE = re.compile(r"\b(crs|cytokine[ -]release)\b", re.IGNORECASE)
CRS_INPUT_TYPES = frozenset(
    {
        "vitals.recorded",
        "oxygen.changed",
        "vasopressor.changed",
        "fluid.bolus",
        "medication.administered",
        "death.reported",
    }
)


@dataclass(frozen=True)
class CRSBasis:
    """Why a grade holds: the criterion values and the observations behind them."""

    fever_c: float | None
    fever_waived_by: str | None
    hypotension: Hypotension
    hypoxia: Hypoxia
    vasopressors: tuple[str, ...] = ()
    oxygen_device: str | None = None
    flow_l_min: float | None = None

    def explain(self, grade: int) -> str:
        if grade == 5:
            return "death attributed to CRS"
        if grade == 0:
            return "CRS criteria not met"
        fever = (
            f"fever {self.fever_c:.1f} C"
            if self.fever_c is not None
            else f"fever waived after {self.fever_waived_by}"
        )
        parts = [fever]
        if self.hypotension != "none":
            drugs = f" ({', '.join(self.vasopressors)})" if self.vasopressors else ""
            parts.append(f"hypotension {self.hypotension.replace('_', ' ')}{drugs}")
        if self.hypoxia != "none":
            flow = f" {self.flow_l_min:g} L/min" if self.flow_l_min is not None else ""
            parts.append(f"hypoxia {self.hypoxia.replace('_', ' ')} ({self.oxygen_device}{flow})")
        return "; ".join(parts)


@dataclass(frozen=True)
class CRSChange:
    """The CRS grade changed at ``at`` (episode 0 = outside any episode)."""

    at: datetime
    episode: int
    grade: int
    previous_grade: int
    basis: CRSBasis
    caused_by: tuple[str, ...]
    provisional: bool


@dataclass(frozen=True)
class CRSEpisode:
    number: int
    onset_at: datetime
    max_grade: int
    resolved_at: datetime | None
    onset_caused_by: tuple[str, ...]


@dataclass(frozen=True)
class CRSDerivation:
    changes: tuple[CRSChange, ...]
    episodes: tuple[CRSEpisode, ...]
    questions: tuple[AdjudicationQuestion, ...]
    next_wake_at: datetime | None

    def grade_at(self, at: datetime) -> int:
        return grade_at(self.changes, at)


def grade_at(changes: Sequence[CRSChange], at: datetime) -> int:
    """The grade in force at ``at`` (the last change at or before it)."""
    grade = 0
    for change in changes:
        if change.at > at:
            break
        grade = change.grade
    return grade


def classify_oxygen(device: str, flow_l_min: float | None, params: CRSParameters) -> Hypoxia:
    """ASTCT hypoxia category of an oxygen device and flow (6 L/min is low flow)."""
    if device in _POSITIVE_PRESSURE:
        return "positive_pressure"
    if device in _MASKS:
        return "high_flow"
    if device in _CANNULAS:
        if flow_l_min is not None and flow_l_min > params.low_flow_max_l_min:
            return "high_flow"
        return "low_flow"
    if device == "blow_by":
        return "low_flow"
    return "none"


@dataclass(frozen=True)
class _Run:
    drug: str
    start: datetime
    stop: datetime | None
    start_id: str
    stop_id: str | None


@dataclass(frozen=True)
class _Concurrency:
    """A period when two or more non-vasopressin agents ran together."""

    start: datetime
    stop: datetime | None
    evidence: tuple[str, ...]


_VASOPRESSOR: Final = ("vasopressor.changed",)


def _vasopressor_runs(entries: Sequence[TimelineEntry]) -> list[_Run]:
    open_runs: dict[str, tuple[datetime, str]] = {}
    runs: list[_Run] = []
    for entry in entries:
        if entry.type != "vasopressor.changed":
            continue
        data = entry.data
        if not isinstance(data, VasopressorChanged):
            continue
        if data.action == "stop":
            started = open_runs.pop(data.drug, None)
            if started is not None:
                runs.append(_Run(data.drug, started[0], entry.at, started[1], entry.event_id))
        elif data.drug not in open_runs:
            open_runs[data.drug] = (entry.at, entry.event_id)
    for drug, (start, start_id) in open_runs.items():
        runs.append(_Run(drug, start, None, start_id, None))
    return sorted(runs, key=lambda run: (run.start, run.drug))


def _concurrent_periods(runs: Sequence[_Run]) -> list[_Concurrency]:
    """Maximal periods with >= 2 non-vasopressin agents running (vasopressin and
    unknown agents never count toward 'multiple vasopressors'). A run stopped at
    the instant it started ran alongside nothing."""
    counted = [
        r
        for r in runs
        if r.drug not in ("vasopressin", "other") and (r.stop is None or r.stop > r.start)
    ]
    boundaries: list[tuple[datetime, int, _Run]] = []
    for run in counted:
        boundaries.append((run.start, 1, run))
        if run.stop is not None:
            boundaries.append((run.stop, -1, run))
    boundaries.sort(key=lambda b: (b[0], b[1]))  # stops before starts at the same instant
    periods: list[_Concurrency] = []
    running: list[_Run] = []
    start: datetime | None = None
    evidence: list[str] = []
    for at, delta, run in boundaries:
        if delta == 1:
            running.append(run)
            if len(running) == 2:
                start = at
                evidence = [r.start_id for r in running]
            elif len(running) > 2:
                evidence.append(run.start_id)
        else:
            running.remove(run)
            if len(running) == 1 and start is not None:
                if at > start:
                    periods.append(_Concurrency(start, at, tuple(evidence)))
                start = None
    if start is not None:
        periods.append(_Concurrency(start, None, tuple(evidence)))
    return periods


def _counts_as_multiple(period: _Concurrency, params: CRSParameters, as_of: datetime) -> bool:
    overlap = timedelta(minutes=params.vasopressor_overlap_minutes)
    if period.stop is None:
        return as_of - period.start >= overlap
    return period.stop - period.start >= overlap


@dataclass
class _State:
    """What is in force at the sweep's current instant."""

    temperature: tuple[float, str, datetime] | None = None
    bp: tuple[datetime, bool, str] | None = None
    boluses: list[tuple[datetime, str]] = field(default_factory=list)
    running: dict[str, str] = field(default_factory=dict)
    oxygen: tuple[OxygenChanged, str] | None = None
    waiver_drugs: list[tuple[datetime, str, str]] = field(default_factory=list)
    death: tuple[DeathReported, str] | None = None


@dataclass
class _Episode:
    number: int
    onset_at: datetime
    onset_caused_by: tuple[str, ...]
    max_grade: int = 0
    quiet_since: datetime | None = None
    resolved_at: datetime | None = None
    questions: int = 0


#: Parameter versions, oldest first, each with the clinical time after which it is in
#: force (None: from the start).
ParameterSchedule = Sequence[tuple[datetime | None, CRSParameters]]


def params_at(schedule: ParameterSchedule, at: datetime) -> CRSParameters:
    """The parameters in force at clinical time ``at``."""
    current = schedule[0][1]
    for in_force_after, params in schedule:
        if in_force_after is None or at > in_force_after:
            current = params
    return current


class CRSSweep:
    def __init__(
        self, schedule: ParameterSchedule, infusion_at: datetime | None, as_of: datetime
    ) -> None:
        self.schedule = schedule
        self.params = params_at(schedule, as_of)
        self.infusion_at = infusion_at
        self.as_of = as_of
        self.state = _State()
        self.episodes: list[_Episode] = []
        self.current: _Episode | None = None
        self.changes: list[CRSChange] = []
        self.questions: dict[str, AdjudicationQuestion] = {}
        self.grade = 0
        self.concurrency: list[_Concurrency] = []
        self.masked_spell: datetime | None = None
        self.afebrile_spell: datetime | None = None
        self.dead = False
        #: The instant whose observations are in but not yet settled (``observe``).
        self.pending: datetime | None = None

    # -- resumable (``domain.timeline.Resumable``): without concurrent vasopressors,
    # -- the instants to settle are the entries' own, and nothing depends on ``as_of``
    # -- before ``finish``

    def observe(self, entry: TimelineEntry) -> None:
        """Observe ``entry`` (entries in clinical order), settling the instant before
        it first: the instant it is at stays open to later entries at it."""
        if entry.at != self.pending:
            if self.pending is not None:
                self.settle(self.pending)
            self.pending = entry.at
            self.params = params_at(self.schedule, entry.at)
        self._observe(entry)

    def settle_pending(self) -> None:
        if self.pending is not None:
            self.settle(self.pending)
            self.pending = None

    def copy(self) -> CRSSweep:
        other = copy.copy(self)
        other.state = replace(
            self.state,
            boluses=list(self.state.boluses),
            running=dict(self.state.running),
            waiver_drugs=list(self.state.waiver_drugs),
        )
        other.episodes = [replace(episode) for episode in self.episodes]
        if self.current is not None:  # episodes are numbered by their place
            other.current = other.episodes[self.current.number - 1]
        other.changes = list(self.changes)
        other.questions = dict(self.questions)
        other.concurrency = list(self.concurrency)
        return other

    # -- observations

    def _observe(self, entry: TimelineEntry) -> None:
        data = entry.data
        state = self.state
        if isinstance(data, VitalsRecorded):
            if data.temperature_c is not None:
                state.temperature = (data.temperature_c, entry.event_id, entry.at)
            if data.systolic_bp_mmhg is not None or data.mean_arterial_pressure_mmhg is not None:
                state.bp = (entry.at, self._is_hypotensive(data), entry.event_id)
        elif isinstance(data, FluidBolus):
            if data.indication == "hypotension":
                state.boluses.append((entry.at, entry.event_id))
        elif isinstance(data, VasopressorChanged):
            self._observe_vasopressor(entry, data)
        elif isinstance(data, OxygenChanged):
            state.oxygen = (data, entry.event_id)
            if data.reason == "other" and data.device != "room_air":
                self._ask(
                    f"oxygen-reason:{entry.event_id}",
                    entry.at,
                    f"Oxygen ({data.device}) started for reason 'other': is it CRS hypoxia?",
                    entry.event_id,
                )
        elif isinstance(data, MedicationAdministered):
            self._observe_medication(entry, data)
        elif isinstance(data, DeathReported):
            state.death = (data, entry.event_id)

    def _is_hypotensive(self, vitals: VitalsRecorded) -> bool:
        p = self.params
        sbp, mean = vitals.systolic_bp_mmhg, vitals.mean_arterial_pressure_mmhg
        return (sbp is not None and sbp < p.hypotension_sbp_below_mmhg) or (
            mean is not None and mean < p.hypotension_map_below_mmhg
        )

    def _observe_vasopressor(self, entry: TimelineEntry, data: VasopressorChanged) -> None:
        if data.action == "stop":
            self.state.running.pop(data.drug, None)
            return
        if data.drug not in self.state.running:
            self.state.running[data.drug] = entry.event_id
            if data.drug == "other":
                self._ask(
                    f"unknown-vasopressor:{entry.event_id}",
                    entry.at,
                    "Unknown vasopressor 'other' started: which agent (vasopressin or not)? "
                    "Graded provisionally as a single vasopressor.",
                    entry.event_id,
                )

    def _observe_medication(self, entry: TimelineEntry, data: MedicationAdministered) -> None:
        if data.drug_class in self.params.waiver_drug_classes:
            self.state.waiver_drugs.append((entry.at, data.drug, entry.event_id))
        elif data.drug_class == "inotrope" and self._after_infusion(entry.at):
            self._ask(
                f"inotrope:{entry.event_id}",
                entry.at,
                f"Inotrope {data.drug} is not in the ASTCT 2019 criteria: does it indicate "
                "CRS hypotension requiring vasopressors?",
                entry.event_id,
            )

    # -- questions

    def _ask(self, key: str, at: datetime, question: str, *evidence: str) -> None:
        if key in self.questions:
            return
        episode = self.current
        if episode is not None:
            target = {"kind": "crs_episode", "id": f"CRS-{episode.number}"}
            episode.questions += 1
        else:
            target = {"kind": "event", "id": evidence[0]}
        self.questions[key] = AdjudicationQuestion(key, at, question, target, tuple(evidence))

    # -- the grade at an instant

    def _after_infusion(self, at: datetime) -> bool:
        return self.infusion_at is not None and at >= self.infusion_at

    def _under_review(self, at: datetime) -> bool:
        """The hypotension category at ``at`` rests on something an adjudicator must
        confirm: an unknown agent, or a brief overlap that may be a switch."""
        if "other" in self.state.running:
            return True
        review = timedelta(minutes=self.params.vasopressor_switch_review_minutes)
        return any(
            p.start <= at < p.stop and p.stop - p.start < review
            for p in self.concurrency
            if p.stop is not None
        )

    def _hypotension(self, at: datetime) -> tuple[Hypotension, list[str]]:
        state = self.state
        for period in self.concurrency:
            in_period = period.start <= at and (period.stop is None or at < period.stop)
            in_force = params_at(self.schedule, period.start)
            if in_period and _counts_as_multiple(period, in_force, self.as_of):
                ids = [i for d, i in sorted(state.running.items()) if d != "vasopressin"]
                return "multiple_vasopressors", ids
        if state.running:
            return "single_vasopressor", [i for _, i in sorted(state.running.items())]
        if state.bp is not None and state.bp[1]:
            window = timedelta(hours=self.params.fluid_bolus_window_hours)
            treated = [
                bolus_id
                for bolus_at, bolus_id in state.boluses
                if state.bp[0] - window <= bolus_at <= at
            ]
            if treated:
                return "fluids_only", [state.bp[2], treated[-1]]
        return "none", []

    def _hypoxia(self) -> tuple[Hypoxia, list[str]]:
        if self.state.oxygen is None:
            return "none", []
        oxygen, event_id = self.state.oxygen
        if oxygen.reason != "hypoxia":
            return "none", []
        category = classify_oxygen(oxygen.device, oxygen.flow_l_min, self.params)
        return category, ([event_id] if category != "none" else [])

    def _waiver(self, episode: _Episode | None, at: datetime) -> tuple[str, str] | None:
        if episode is None:
            return None
        for given_at, drug, event_id in self.state.waiver_drugs:
            if episode.onset_at <= given_at <= at:
                return drug, event_id
        return None

    def settle(self, at: datetime) -> None:
        """Grade the instant ``at`` after all observations at it were applied."""
        if self.dead:
            return
        self._resolve_if_quiet_long_enough(at)
        state = self.state
        temperature = state.temperature
        fever = temperature is not None and temperature[0] >= self.params.fever_threshold_c
        hypotension, hypotension_ids = self._hypotension(at)
        hypoxia, hypoxia_ids = self._hypoxia()
        support = max(HYPOTENSION_GRADE[hypotension], HYPOXIA_GRADE[hypoxia])
        support_ids = hypotension_ids + hypoxia_ids
        if state.death is not None:
            self._settle_death(at, state.death)
            return
        episode = self.current
        if episode is None:
            if fever and temperature is not None and self._after_infusion(temperature[2]):
                episode = self._open_episode(at, (temperature[1], *support_ids))
            else:
                self._check_masked_fever(at, support, support_ids)
                return
        waiver = None if fever else self._waiver(episode, at)
        if fever or waiver is not None:
            self.afebrile_spell = None
            grade = max(1, support) if fever else support
        else:
            grade = 0
            self._check_afebrile_support(episode, at, support, support_ids)
        quiet = not fever and hypotension == "none" and hypoxia == "none"
        if not quiet:
            episode.quiet_since = None
        elif episode.quiet_since is None:
            episode.quiet_since = at
        basis = CRSBasis(
            fever_c=temperature[0] if fever and temperature is not None else None,
            fever_waived_by=waiver[0] if waiver is not None else None,
            hypotension=hypotension,
            hypoxia=hypoxia,
            vasopressors=tuple(sorted(state.running))
            if hypotension.endswith("vasopressor") or hypotension.endswith("vasopressors")
            else (),
            oxygen_device=state.oxygen[0].device if hypoxia != "none" and state.oxygen else None,
            flow_l_min=state.oxygen[0].flow_l_min if hypoxia != "none" and state.oxygen else None,
        )
        evidence: list[str] = []
        if fever and temperature is not None:
            evidence.append(temperature[1])
        if waiver is not None:
            evidence.append(waiver[1])
        if grade > 0:
            evidence.extend(support_ids)
        provisional = grade > 0 and hypotension != "none" and self._under_review(at)
        self._set_grade(at, episode, grade, basis, evidence, provisional=provisional)

    def _settle_death(self, at: datetime, death: tuple[DeathReported, str]) -> None:
        report, event_id = death
        self.dead = True
        if not _CRS_CAUSE.search(report.cause):
            if self.current is not None:
                self._ask(
                    f"death-in-episode:{event_id}",
                    at,
                    f"Death ({report.cause}) during CRS episode {self.current.number}: "
                    "was CRS the principal cause (grade 5)?",
                    event_id,
                )
            return
        episode = self.current or self._open_episode(at, (event_id,))
        basis = CRSBasis(None, None, "none", "none")
        self._set_grade(at, episode, 5, basis, [event_id])

    def _open_episode(self, at: datetime, caused_by: tuple[str, ...]) -> _Episode:
        episode = _Episode(number=len(self.episodes) + 1, onset_at=at, onset_caused_by=caused_by)
        self.episodes.append(episode)
        self.current = episode
        self.afebrile_spell = None
        return episode

    def _set_grade(
        self,
        at: datetime,
        episode: _Episode,
        grade: int,
        basis: CRSBasis,
        evidence: list[str],
        *,
        provisional: bool = False,
    ) -> None:
        episode.max_grade = max(episode.max_grade, grade)
        if grade == self.grade and self.changes and self.changes[-1].episode == episode.number:
            return
        self.changes.append(
            CRSChange(
                at=at,
                episode=episode.number,
                grade=grade,
                previous_grade=self.grade,
                basis=basis,
                caused_by=tuple(dict.fromkeys(evidence)),
                provisional=provisional or episode.questions > 0,
            )
        )
        self.grade = grade

    def _check_masked_fever(self, at: datetime, support: int, support_ids: list[str]) -> None:
        lookback = timedelta(hours=self.params.masked_fever_lookback_hours)
        recent = [
            event_id
            for given_at, _, event_id in self.state.waiver_drugs
            if at - lookback <= given_at <= at
        ]
        if support >= 2 and recent and self._after_infusion(at):
            if self.masked_spell is None:
                self.masked_spell = at
                self._ask(
                    f"masked-fever:{at.isoformat()}",
                    at,
                    "Possible masked CRS: hypotension or hypoxia without a qualifying fever "
                    "after antipyretic or anti-cytokine therapy. Not graded.",
                    *support_ids,
                    *recent,
                )
        else:
            self.masked_spell = None

    def _check_afebrile_support(
        self, episode: _Episode, at: datetime, support: int, support_ids: list[str]
    ) -> None:
        if support < 2:
            self.afebrile_spell = None
            return
        if self.afebrile_spell is None:
            self.afebrile_spell = at
            self._ask(
                f"afebrile-support:{episode.number}:{at.isoformat()}",
                at,
                f"Hypotension or hypoxia without fever during CRS episode {episode.number} and "
                "no antipyretic or anti-cytokine therapy: attributable to CRS?",
                *support_ids,
            )

    def _resolve_if_quiet_long_enough(self, at: datetime) -> None:
        episode = self.current
        if episode is None or episode.quiet_since is None:
            return
        if at - episode.quiet_since >= timedelta(hours=self.params.resolution_hours):
            episode.resolved_at = episode.quiet_since
            self.current = None
            self.masked_spell = None

    def finish(self) -> CRSDerivation:
        self.params = params_at(self.schedule, self.as_of)
        if not self.dead:
            self._resolve_if_quiet_long_enough(self.as_of)
        wake: list[datetime] = []
        if not self.dead and self.current is not None and self.current.quiet_since is not None:
            wake.append(self.current.quiet_since + timedelta(hours=self.params.resolution_hours))
        overlap = timedelta(minutes=self.params.vasopressor_overlap_minutes)
        wake.extend(
            p.start + overlap
            for p in self.concurrency
            if p.stop is None and p.start + overlap > self.as_of
        )
        episodes = tuple(
            CRSEpisode(e.number, e.onset_at, e.max_grade, e.resolved_at, e.onset_caused_by)
            for e in self.episodes
        )
        questions = tuple(sorted(self.questions.values(), key=lambda q: (q.at, q.key)))
        return CRSDerivation(tuple(self.changes), episodes, questions, min(wake, default=None))


def derive_crs(
    timeline: Sequence[TimelineEntry],
    params: CRSParameters | ParameterSchedule,
    *,
    infusion_at: datetime | None,
    as_of: datetime,
    resumable: Resumable[CRSSweep] | None = None,
) -> CRSDerivation:
    """Derive CRS grades, episodes and adjudication questions from a timeline.

    ``params`` is one parameter set, or a schedule of protocol versions by the
    clinical time from which each is in force: every instant is graded with the
    version in force then. ``as_of`` is how far the participant's clinical time has
    advanced (the latest observation or clock tick): it decides whether a quiet
    period has lasted long enough to resolve an episode. ``resumable``: the sweep
    kept from the last derivation, made by :func:`crs_sweep` with the same
    ``params`` and ``infusion_at``.
    """
    schedule: ParameterSchedule = [(None, params)] if isinstance(params, CRSParameters) else params
    entries = chronological(timeline, CRS_INPUT_TYPES)
    # The vasopressor entries alone, in the same order: not every vital sign again.
    concurrency = _concurrent_periods(_vasopressor_runs(chronological(timeline, _VASOPRESSOR)))
    if resumable is not None and not concurrency:
        # Without concurrent vasopressors the instants settled are the entries' own
        # and nothing before ``finish`` depends on ``as_of``: the sweep resumes.
        resumed = resumable.sweep(timeline, entries)
        resumed.as_of = as_of
        resumed.settle_pending()
        return resumed.finish()
    sweep = CRSSweep(schedule, infusion_at, as_of)
    sweep.concurrency = concurrency
    for period in sweep.concurrency:
        in_force = params_at(schedule, period.start)
        review = timedelta(minutes=in_force.vasopressor_switch_review_minutes)
        if (
            period.stop is not None
            and period.stop - period.start < review
            and _counts_as_multiple(period, in_force, as_of)
        ):
            sweep.questions[f"overlap:{period.start.isoformat()}"] = AdjudicationQuestion(
                f"overlap:{period.start.isoformat()}",
                period.start,
                "Two vasopressors overlapped briefly: escalation to multiple vasopressors "
                "(grade 4) or a switch between agents?",
                {"kind": "event", "id": period.evidence[0]},
                period.evidence,
            )
    boundaries = sorted({e.at for e in entries} | _period_boundaries(sweep.concurrency))
    index = 0
    for instant in boundaries:
        sweep.params = params_at(schedule, instant)
        while index < len(entries) and entries[index].at == instant:
            sweep._observe(entries[index])
            index += 1
        sweep.settle(instant)
    return sweep.finish()


def _period_boundaries(periods: Sequence[_Concurrency]) -> set[datetime]:
    instants: set[datetime] = set()
    for period in periods:
        instants.add(period.start)
        if period.stop is not None:
            instants.add(period.stop)
    return instants


def crs_sweep(schedule: ParameterSchedule, infusion_at: datetime | None) -> CRSSweep:
    """A new CRS sweep (before any entry), to keep in a ``Resumable`` for
    :func:`derive_crs`."""
    return CRSSweep(schedule, infusion_at, datetime.min.replace(tzinfo=UTC))
