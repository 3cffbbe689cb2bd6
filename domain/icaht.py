"""ICAHT grading: EHA/EBMT consensus (Rejeski et al., Blood 2023;142:865-877), reference §4.

A pure function over a participant's ANC results (``lab.resulted``, analyte ``anc``).
Operational definitions follow the public automated-grading code of Liang et al.
(Fred Hutch), which implements the consensus table:

- Days are study days (reference §0.5, ``domain.protocol.study_day``); each day
  takes its lowest ANC. ``/uL`` is converted to 10^9/L (1000/uL = 1.0).
- **Early ICAHT** (infusion day to day +30): duration = the longest run of days with
  ANC <= 0.5 (resp. <= 0.1) x 10^9/L. Runs separated by a non-stable recovery
  (fewer than 3 consecutive days above the threshold) are joined and the days
  between them count. A day without a result lying between two measured days is
  linearly interpolated when the gap is at most 7 days (Liang et al.: weekly
  outpatient draws), rounded to 10 cells/uL; longer gaps stay unknown. Results
  outside the window (before infusion, after day +30) serve as interpolation anchors
  only. Nothing is extrapolated past the last result.

  ==============================  =====  =====  ======  ================================
  row                             G1     G2     G3      G4
  ==============================  =====  =====  ======  ================================
  days with ANC <= 0.5            1-6    7-13   >= 14   a run starting by day 3 that is
                                                        still below on day 30
  days with ANC <= 0.1                          7-13    >= 14
  ==============================  =====  =====  ======  ================================

- **Late ICAHT** (after day +30): nadir ANC <= 1.5 / 1.0 / 0.5 / 0.1 -> G1/2/3/4, a
  grade needing at least 2 days with ANC at or below its threshold (measured days
  only, lowest per day).

The grade at clinical time t is the grade the results that occurred by t support, so
``at`` of a grade is the result that first made it true; an interpolated day is
known from the result that closes the gap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.contract import LabResulted
from domain.timeline import TimelineEntry, arrived, study_day

Phase = Literal["early", "late"]

CRITERIA = "ICAHT-2023"
SEVERE_ANC_10E9_L = 0.5
PROFOUND_ANC_10E9_L = 0.1
NEVER_RECOVERS_START_BY_DAY = 3
#: Late ICAHT, most severe first: (grade, nadir ANC at or below, 10^9/L).
LATE_THRESHOLDS_10E9_L: tuple[tuple[int, float], ...] = ((4, 0.1), (3, 0.5), (2, 1.0), (1, 1.5))
_PER_10E9_L = {"10*9/L": 1.0, "/uL": 1000.0}


class ICAHTParameters(BaseModel):
    """ICAHT grading parameters (reference §4; criteria fixed by ICAHT-2023 are marked)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    early_window_days: int = Field(
        default=30,
        ge=1,
        description="[criterion] ICAHT-2023: early ICAHT runs from the infusion day through "
        "this study day (day 0 to +30); later results count toward late ICAHT.",
    )
    recovery_stable_days: int = Field(
        default=3,
        ge=1,
        description="[criterion] ICAHT-2023 / CIBMTR engraftment: a recovery is stable after "
        "this many consecutive days above the threshold; runs separated by fewer are joined "
        "and the days between them count.",
    )
    late_min_measurements: int = Field(
        default=2,
        ge=1,
        description="[criterion] ICAHT-2023: a late ICAHT grade needs at least this many days "
        "with ANC at or below its threshold.",
    )
    max_interpolated_gap_days: int = Field(
        default=7,
        ge=0,
        description="[parameter] up to this many consecutive days without a result between "
        "two results are linearly interpolated (Liang et al.); longer gaps stay unknown.",
    )


@dataclass(frozen=True)
class ICAHTResult:
    """The ICAHT grade of one phase, as of the derivation's ``as_of``.

    ``days_anc_le_*``: early phase, the longest (joined) run; late phase, the number of
    days with a result at or below the threshold. ``at`` is when ``grade`` was first
    met and ``caused_by`` the results that made it true then.
    """

    phase: Phase
    grade: int
    days_anc_le_0_5: int
    days_anc_le_0_1: int
    nadir_anc_10e9_l: float
    at: datetime
    caused_by: tuple[str, ...]
    criteria: str = CRITERIA


@dataclass(frozen=True)
class ICAHTChange:
    """The ICAHT grade of ``phase`` changed at ``at``."""

    at: datetime
    phase: Phase
    grade: int
    previous_grade: int
    caused_by: tuple[str, ...]


@dataclass(frozen=True)
class ICAHTDerivation:
    early: ICAHTResult | None
    late: ICAHTResult | None
    changes: tuple[ICAHTChange, ...]

    def grade_at(self, phase: Phase, at: datetime) -> int:
        """The grade of ``phase`` in force at ``at`` (0 before any change)."""
        grade = 0
        for change in self.changes:
            if change.at > at:
                break
            if change.phase == phase:
                grade = change.grade
        return grade


def anc_10e9_l(result: LabResulted) -> float:
    """An ANC result in 10^9/L (1000/uL = 1.0 x 10^9/L)."""
    return result.value / _PER_10E9_L[result.unit]


@dataclass(frozen=True)
class _Reading:
    event_id: str
    at: datetime
    seq: int
    offset: int
    anc_10e9_l: float


@dataclass(frozen=True)
class _Day:
    """A day's ANC: its lowest result, or interpolated between two results."""

    offset: int
    anc_10e9_l: float
    measured: bool
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class _Run:
    """Consecutive days at or below a threshold, joined across non-stable recoveries."""

    start: int
    end: int
    below: tuple[_Day, ...]

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def evidence(self) -> tuple[str, ...]:
        return _unique(event_id for day in self.below for event_id in day.evidence)


@dataclass(frozen=True)
class _Assessment:
    grade: int
    days_anc_le_0_5: int
    days_anc_le_0_1: int
    nadir_anc_10e9_l: float
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class _Calendar:
    """Calendar-day offsets from the infusion day, and their protocol study days."""

    infusion_at: datetime
    day_zero_is_infusion_day: bool
    params: ICAHTParameters

    def offset(self, at: datetime) -> int:
        return study_day(at, self.infusion_at, day_zero_is_infusion_day=True)

    def study_day(self, offset: int) -> int:
        return study_day(
            self.infusion_at + timedelta(days=offset),
            self.infusion_at,
            day_zero_is_infusion_day=self.day_zero_is_infusion_day,
        )

    @property
    def last_early_offset(self) -> int:
        """The offset of the early window's last study day (day +30)."""
        first = self.study_day(0)
        return self.params.early_window_days - first


def _unique(ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ids))


def _anc_readings(
    timeline: Sequence[TimelineEntry], calendar: _Calendar, as_of: datetime
) -> list[_Reading]:
    readings = [
        _Reading(
            entry.event_id, entry.at, entry.seq, calendar.offset(entry.at), anc_10e9_l(entry.data)
        )
        for entry in arrived(timeline, ("lab.resulted",))
        if entry.type == "lab.resulted"
        and isinstance(entry.data, LabResulted)
        and entry.data.analyte == "anc"
        and entry.at <= as_of
    ]
    return sorted(readings, key=lambda r: (r.at, r.seq))


def _lowest_per_day(readings: Sequence[_Reading]) -> dict[int, _Day]:
    days: dict[int, _Day] = {}
    for reading in readings:
        day = days.get(reading.offset)
        if day is None or reading.anc_10e9_l < day.anc_10e9_l:
            days[reading.offset] = _Day(
                reading.offset, reading.anc_10e9_l, True, (reading.event_id,)
            )
    return days


def _interpolate(measured: dict[int, _Day], max_gap_days: int) -> dict[int, _Day]:
    """Fill short gaps between measured days linearly (nearest 10 cells/uL)."""
    days = dict(measured)
    offsets = sorted(measured)
    for left, right in pairwise(offsets):
        if right - left - 1 > max_gap_days:
            continue
        a, b = measured[left], measured[right]
        for offset in range(left + 1, right):
            value = a.anc_10e9_l + (b.anc_10e9_l - a.anc_10e9_l) * (offset - left) / (right - left)
            evidence = _unique((*a.evidence, *b.evidence))
            days[offset] = _Day(offset, round(value * 100) / 100, False, evidence)
    return days


def _runs(
    days: dict[int, _Day], first: int, last: int, threshold: float, stable_days: int
) -> list[_Run]:
    """Runs of days at or below ``threshold`` in [first, last]; runs separated by fewer
    than ``stable_days`` days are joined."""
    runs: list[_Run] = []
    for offset in range(first, last + 1):
        day = days.get(offset)
        if day is None or day.anc_10e9_l > threshold:
            continue
        if runs and offset - runs[-1].end - 1 < stable_days:
            previous = runs[-1]
            runs[-1] = _Run(previous.start, offset, (*previous.below, day))
        else:
            runs.append(_Run(offset, offset, (day,)))
    return runs


def _longest(runs: Sequence[_Run]) -> _Run | None:
    return max(runs, key=lambda run: (run.length, -run.start), default=None)


def _severe_row_grade(days: int) -> int:
    if days >= 14:
        return 3
    if days >= 7:
        return 2
    return 1 if days >= 1 else 0


def _profound_row_grade(days: int) -> int:
    if days >= 14:
        return 4
    return 3 if days >= 7 else 0


def _assess_early(
    measured: dict[int, _Day], calendar: _Calendar, params: ICAHTParameters
) -> _Assessment | None:
    last = calendar.last_early_offset
    in_window = [day for offset, day in sorted(measured.items()) if 0 <= offset <= last]
    if not in_window:
        return None
    days = _interpolate(measured, params.max_interpolated_gap_days)
    stable = params.recovery_stable_days
    severe_runs = _runs(days, 0, last, SEVERE_ANC_10E9_L, stable)
    profound_runs = _runs(days, 0, last, PROFOUND_ANC_10E9_L, stable)
    severe, profound = _longest(severe_runs), _longest(profound_runs)
    severe_days = severe.length if severe else 0
    profound_days = profound.length if profound else 0
    never_recovered = [
        run
        for run in severe_runs
        if calendar.study_day(run.start) <= NEVER_RECOVERS_START_BY_DAY and run.end == last
    ]
    candidates: list[tuple[int, _Run | None]] = [
        (_severe_row_grade(severe_days), severe),
        (_profound_row_grade(profound_days), profound),
        *((4, run) for run in never_recovered),
    ]
    grade = max(row_grade for row_grade, _ in candidates)
    if grade == 0:
        evidence = _unique(event_id for day in in_window for event_id in day.evidence)
    else:
        evidence = _unique(
            event_id
            for row_grade, run in candidates
            if row_grade == grade and run is not None
            for event_id in run.evidence
        )
    return _Assessment(
        grade=grade,
        days_anc_le_0_5=severe_days,
        days_anc_le_0_1=profound_days,
        nadir_anc_10e9_l=min(day.anc_10e9_l for day in in_window),
        evidence=evidence,
    )


def _assess_late(
    measured: dict[int, _Day], calendar: _Calendar, params: ICAHTParameters
) -> _Assessment | None:
    last = calendar.last_early_offset
    late = [day for offset, day in sorted(measured.items()) if offset > last]
    if not late:
        return None
    grade, evidence = 0, _unique(event_id for day in late for event_id in day.evidence)
    for row_grade, threshold in LATE_THRESHOLDS_10E9_L:
        qualifying = [day for day in late if day.anc_10e9_l <= threshold]
        if len(qualifying) >= params.late_min_measurements:
            grade = row_grade
            evidence = _unique(event_id for day in qualifying for event_id in day.evidence)
            break
    return _Assessment(
        grade=grade,
        days_anc_le_0_5=sum(day.anc_10e9_l <= SEVERE_ANC_10E9_L for day in late),
        days_anc_le_0_1=sum(day.anc_10e9_l <= PROFOUND_ANC_10E9_L for day in late),
        nadir_anc_10e9_l=min(day.anc_10e9_l for day in late),
        evidence=evidence,
    )


class _PhaseTrack:
    """A phase's assessments over clinical time: changes and when each grade was met."""

    def __init__(self, phase: Phase) -> None:
        self.phase: Phase = phase
        self.assessment: _Assessment | None = None
        self.first_met: dict[int, tuple[datetime, tuple[str, ...]]] = {}
        self.changes: list[ICAHTChange] = []

    def update(self, at: datetime, assessment: _Assessment | None) -> None:
        if assessment is None:
            return
        previous = self.assessment.grade if self.assessment is not None else 0
        if assessment.grade != previous:
            self.changes.append(
                ICAHTChange(at, self.phase, assessment.grade, previous, assessment.evidence)
            )
        self.first_met.setdefault(assessment.grade, (at, assessment.evidence))
        self.assessment = assessment

    def result(self) -> ICAHTResult | None:
        assessment = self.assessment
        if assessment is None:
            return None
        at, caused_by = self.first_met[assessment.grade]
        return ICAHTResult(
            phase=self.phase,
            grade=assessment.grade,
            days_anc_le_0_5=assessment.days_anc_le_0_5,
            days_anc_le_0_1=assessment.days_anc_le_0_1,
            nadir_anc_10e9_l=assessment.nadir_anc_10e9_l,
            at=at,
            caused_by=caused_by,
        )


def derive_icaht(
    timeline: Sequence[TimelineEntry],
    params: ICAHTParameters,
    *,
    infusion_at: datetime | None,
    day_zero_is_infusion_day: bool,
    as_of: datetime,
) -> ICAHTDerivation:
    """Derive early and late ICAHT from the ANC results that occurred by ``as_of``.

    A phase without an ANC result in its window has no grade (None). Each instant with
    a result is graded on the results up to it, giving the grade changes over time.
    """
    if infusion_at is None:
        return ICAHTDerivation(None, None, ())
    calendar = _Calendar(infusion_at, day_zero_is_infusion_day, params)
    readings = _anc_readings(timeline, calendar, as_of)
    early, late = _PhaseTrack("early"), _PhaseTrack("late")
    for index, reading in enumerate(readings):
        if index + 1 < len(readings) and readings[index + 1].at == reading.at:
            continue
        measured = _lowest_per_day(readings[: index + 1])
        early.update(reading.at, _assess_early(measured, calendar, params))
        late.update(reading.at, _assess_late(measured, calendar, params))
    changes = sorted((*early.changes, *late.changes), key=lambda c: c.at)
    return ICAHTDerivation(early.result(), late.result(), tuple(changes))
