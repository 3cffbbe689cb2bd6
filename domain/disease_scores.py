"""Disease activity change from baseline, reference §12 (secondary endpoints, 52 weeks).

Input: a participant's ``disease.assessed`` events (contract §2) and the infusion time.
Each instrument is followed on its own:

- **Baseline** (week 0) is the last assessment at or before the infusion (ties in time:
  the later in arrival order). No baseline -> no changes for that instrument.
- **Visits** are weeks 4, 12, 24, 52 (§12). An assessment after the infusion belongs
  to a week when its ``visit`` label names it (``W12``, ``Week 12``), else when it lies
  in the week's window, counted in calendar days since infusion (independent of the
  §0.5 day numbering). The windows are a **[parameter]** (no source in §12; protocol
  choice): +/-1 week around week 4, +/-2 around 12, +/-4 around 24 and 52. Outside
  every window and unlabelled -> no visit. Of several assessments for one week, a
  labelled one wins, then the one closest to the nominal day, then the later (choice).
- **Change**: absolute (score - baseline) and percent (of baseline; None when the
  baseline is 0); ``improved`` follows the instrument's direction (lower is better for
  all but MMT-8). Where §12 states a response/remission rule, ``rule_met`` says
  whether the visit meets it.

A score outside its instrument's range is an error (ValueError).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from domain.contract import Disease, DiseaseAssessed
from domain.timeline import study_day

InstrumentCode = Literal[
    "SLEDAI-2K", "MRSS", "BVAS-V3", "MMT-8", "ITAS2010", "ITAS-A", "IGG4-RD-RI"
]
RuleKind = Literal["score_at_most", "score_below", "decline_more_than_pct"]

BASELINE_WEEK = 0
#: [parameter] visit week -> half-width of its window in days (protocol choice; §12
#: names the weeks, not the windows).
VISIT_WINDOWS_DAYS: Mapping[int, int] = MappingProxyType({4: 7, 12: 14, 24: 28, 52: 28})
_VISIT_LABEL = re.compile(r"^\s*W(?:EEK)?\s*(\d{1,3})\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ResponseRule:
    """A response or remission rule stated in §12, met by a score (and its baseline)."""

    name: str
    kind: RuleKind
    threshold: float
    source: str

    def is_met(self, score: float, baseline: float) -> bool | None:
        """Whether ``score`` meets the rule; None if undefined (a decline from 0)."""
        if self.kind == "score_at_most":
            return score <= self.threshold
        if self.kind == "score_below":
            return score < self.threshold
        if baseline <= 0:
            return None
        return score * 100 < baseline * (100 - self.threshold)


@dataclass(frozen=True)
class InstrumentSpec:
    """An instrument of the contract, its range and direction (§12)."""

    code: InstrumentCode
    disease: Disease
    score_min: float
    score_max: float | None
    lower_is_better: bool
    rule: ResponseRule | None
    note: str = ""

    def check_score(self, score: float) -> None:
        """Raise ValueError for a score outside the instrument's range."""
        above = self.score_max is not None and score > self.score_max
        if score < self.score_min or above:
            raise ValueError(f"{self.code} score {score} outside {self.score_min}-{self.score_max}")


_ITAS_INACTIVE = ResponseRule(
    "inactive_disease", "score_below", 2, "§12: ITAS2010 / ITAS-A active >= 2, so < 2 is inactive"
)

#: The instruments of ``disease.assessed``, reference §12.
INSTRUMENTS: Mapping[InstrumentCode, InstrumentSpec] = MappingProxyType(
    {
        "SLEDAI-2K": InstrumentSpec(
            "SLEDAI-2K",
            "SLE",
            0,
            105,
            lower_is_better=True,
            rule=ResponseRule(
                "low_disease_activity",
                "score_at_most",
                4,
                "§12: LLDAS SLEDAI-2K <= 4 (the score criterion only; LLDAS needs more)",
            ),
            note="DORIS remission also needs PGA and prednisolone dose: not derived here",
        ),
        "MRSS": InstrumentSpec("MRSS", "SSC", 0, 51, lower_is_better=True, rule=None),
        "BVAS-V3": InstrumentSpec(
            "BVAS-V3",
            "AAV",
            0,
            63,
            lower_is_better=True,
            rule=ResponseRule("remission", "score_at_most", 0, "§12: remission BVAS = 0"),
            note="persistent 0-33, new/worse 0-63: one score, bounded by 63",
        ),
        "MMT-8": InstrumentSpec(
            "MMT-8",
            "IIM",
            0,
            150,
            lower_is_better=False,
            rule=None,
            note="0-80 unilateral, 0-150 bilateral: one score, bounded by 150",
        ),
        "ITAS2010": InstrumentSpec(
            "ITAS2010", "TAK", 0, 51, lower_is_better=True, rule=_ITAS_INACTIVE
        ),
        "ITAS-A": InstrumentSpec(
            "ITAS-A",
            "TAK",
            0,
            None,
            lower_is_better=True,
            rule=_ITAS_INACTIVE,
            note="0-51 plus an acute-phase reactant band whose width §12 does not state",
        ),
        "IGG4-RD-RI": InstrumentSpec(
            "IGG4-RD-RI",
            "IGG4RD",
            0,
            None,
            lower_is_better=True,
            rule=ResponseRule(
                "response", "decline_more_than_pct", 50, "§12: response = > 50 % decline"
            ),
        ),
    }
)


@dataclass(frozen=True)
class VisitChange:
    """One instrument's score at a visit week against its baseline (§12)."""

    instrument: InstrumentCode
    week: int
    assessed_at: datetime
    score: float
    baseline_score: float
    baseline_at: datetime
    change: float
    percent_change: float | None
    improved: bool
    rule: str | None
    rule_met: bool | None


def labelled_week(
    visit: str | None, windows_days: Mapping[int, int] = VISIT_WINDOWS_DAYS
) -> int | None:
    """The visit week a label such as ``W12`` names, if it is one of ``windows_days``."""
    match = _VISIT_LABEL.match(visit) if visit else None
    week = int(match.group(1)) if match else None
    return week if week in windows_days else None


def visit_week(
    assessed_at: datetime,
    infused_at: datetime,
    *,
    visit: str | None = None,
    windows_days: Mapping[int, int] = VISIT_WINDOWS_DAYS,
) -> int | None:
    """The nominal visit week of an assessment: 0 at or before infusion (a baseline
    candidate), else the week its label names or whose window holds it, else None."""
    if assessed_at <= infused_at:
        return BASELINE_WEEK
    labelled = labelled_week(visit, windows_days)
    if labelled is not None:
        return labelled
    days = study_day(assessed_at, infused_at, day_zero_is_infusion_day=True)
    for week, half_width_days in sorted(windows_days.items()):
        if abs(days - 7 * week) <= half_width_days:
            return week
    return None


def changes_from_baseline(
    assessments: Iterable[tuple[datetime, DiseaseAssessed]],
    infused_at: datetime,
    *,
    windows_days: Mapping[int, int] = VISIT_WINDOWS_DAYS,
) -> list[VisitChange]:
    """Change from baseline per instrument and visit week, by week (§12)."""
    by_instrument: dict[InstrumentCode, list[_Assessed]] = {}
    for order, (at, data) in enumerate(assessments):
        INSTRUMENTS[data.instrument].check_score(data.score)
        by_instrument.setdefault(data.instrument, []).append(_Assessed(order, at, data))
    changes = [
        change
        for code, assessed in by_instrument.items()
        for change in _instrument_changes(INSTRUMENTS[code], assessed, infused_at, windows_days)
    ]
    return sorted(changes, key=lambda change: (change.week, change.instrument))


@dataclass(frozen=True)
class _Assessed:
    order: int
    at: datetime
    data: DiseaseAssessed


def _instrument_changes(
    spec: InstrumentSpec,
    assessed: list[_Assessed],
    infused_at: datetime,
    windows_days: Mapping[int, int],
) -> list[VisitChange]:
    pre = [item for item in assessed if item.at <= infused_at]
    if not pre:
        return []
    baseline = max(pre, key=lambda item: (item.at, item.order))
    chosen: dict[int, tuple[tuple[float, ...], _Assessed]] = {}
    for item in assessed:
        if item.at <= infused_at:
            continue
        week = visit_week(item.at, infused_at, visit=item.data.visit, windows_days=windows_days)
        if week is None:
            continue
        rank = _rank(item, week, infused_at, windows_days)
        if week not in chosen or rank < chosen[week][0]:
            chosen[week] = (rank, item)
    return [_change(spec, week, item, baseline) for week, (_, item) in sorted(chosen.items())]


def _rank(
    item: _Assessed, week: int, infused_at: datetime, windows_days: Mapping[int, int]
) -> tuple[float, ...]:
    labelled = labelled_week(item.data.visit, windows_days) == week
    days = study_day(item.at, infused_at, day_zero_is_infusion_day=True)
    later = (item.at - infused_at).total_seconds()
    return (0 if labelled else 1, abs(days - 7 * week), -later, -item.order)


def _change(spec: InstrumentSpec, week: int, item: _Assessed, baseline: _Assessed) -> VisitChange:
    score, base = item.data.score, baseline.data.score
    change = score - base
    return VisitChange(
        instrument=spec.code,
        week=week,
        assessed_at=item.at,
        score=score,
        baseline_score=base,
        baseline_at=baseline.at,
        change=change,
        percent_change=change / base * 100 if base else None,
        improved=change < 0 if spec.lower_is_better else change > 0,
        rule=spec.rule.name if spec.rule else None,
        rule_met=spec.rule.is_met(score, base) if spec.rule else None,
    )
