"""Pre-infusion gates (reference §7, EBMT/EHA autoimmune recommendations [V]; §12).

A pure function over a participant's clinical timeline that returns the protocol
deviations of its infusion (contract ``protocol.deviation`` {rule, detail}) and the
questions it cannot answer alone (reference §9):

============================================  ============================================
rule                                          when
============================================  ============================================
``infusion_within_48h_of_fever``              a temperature >= 38.0 C recorded after the
                                              first lymphodepletion less than
                                              ``afebrile_hours_before_infusion`` before the
                                              infusion (exactly 48 h afebrile passes)
``infusion_without_confirmed_eligibility``    no ``eligibility.confirmed`` at or before the
                                              infusion, when the protocol requires it
``duplicate_infusion``                        every infusion after the first
``eligibility_criterion_not_met``             a disease-specific criterion of the
                                              enrolment's ``eligibility`` object fails
============================================  ============================================

Readings: the fever and eligibility gates apply to the first infusion (clinical
order); a later one is flagged as a duplicate only. Without a recorded
lymphodepletion before the infusion, every fever in the afebrile window counts (the
gate protects an infusion into an infection, whatever the record misses).

Disease-specific eligibility is a rule table of :class:`EligibilityRule`. Reference §12
supports one criterion, SSc: mRSS > 10. It gives no eligibility threshold for SLE
(SLEDAI-2K), AAV (BVAS v3), IIM (MMT-8), TAK (ITAS2010) or IgG4-RD (responder index),
so the default table has no rule for them; a protocol adds its own. A criterion
absent from the enrolment data (or not a value its rule can compare) raises a
question, not a deviation.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from domain.contract import (
    Disease,
    EligibilityConfirmed,
    InfusionAdministered,
    LymphodepletionAdministered,
    ParticipantEnrolled,
    VitalsRecorded,
)
from domain.protocol import PreInfusionParameters
from domain.timeline import AdjudicationQuestion, TimelineEntry, chronological

DeviationRule = Literal[
    "infusion_within_48h_of_fever",
    "infusion_without_confirmed_eligibility",
    "duplicate_infusion",
    "eligibility_criterion_not_met",
]
FEVER_C: Final = 38.0

Comparison = Literal[">", ">=", "<", "<=", "=="]
_COMPARE: Final[dict[str, Callable[[float, float], bool]]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
}


class EligibilityRule(BaseModel):
    """One disease-specific eligibility criterion: ``eligibility[criterion] <op> threshold``.

    A boolean ``threshold`` only supports ``==``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    disease: Disease
    criterion: str = Field(min_length=1, description="key in the enrolment's eligibility")
    comparison: Comparison
    threshold: bool | float
    source: str = Field(min_length=1, description="where the criterion comes from")

    def describe(self) -> str:
        threshold = self.threshold if isinstance(self.threshold, bool) else f"{self.threshold:g}"
        return f"{self.criterion} {self.comparison} {threshold}"

    def check(self, value: JsonValue) -> bool | None:
        """Whether ``value`` meets the criterion; None when it cannot be compared."""
        if isinstance(self.threshold, bool):
            if not isinstance(value, bool) or self.comparison != "==":
                return None
            return value == self.threshold
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return _COMPARE[self.comparison](float(value), self.threshold)


DEFAULT_ELIGIBILITY_RULES: Final[tuple[EligibilityRule, ...]] = (
    EligibilityRule(
        disease="SSC",
        criterion="mrss",
        comparison=">",
        threshold=10,
        source="reference §12: SSc eligibility requires mRSS > 10",
    ),
)


@dataclass(frozen=True)
class Deviation:
    """A protocol deviation at ``at`` (contract ``protocol.deviation`` {rule, detail})."""

    at: datetime
    rule: DeviationRule
    detail: str
    caused_by: tuple[str, ...]


@dataclass(frozen=True)
class PreInfusionCheck:
    deviations: tuple[Deviation, ...]
    questions: tuple[AdjudicationQuestion, ...]


def check_pre_infusion(
    timeline: Sequence[TimelineEntry],
    params: PreInfusionParameters,
    *,
    eligibility_rules: Sequence[EligibilityRule] = DEFAULT_ELIGIBILITY_RULES,
) -> PreInfusionCheck:
    """Deviations of the infusion and of enrolment eligibility, and open questions."""

    def of(kind: str) -> Sequence[TimelineEntry]:
        return chronological(timeline, (kind,))

    infusions = _infusions(timeline)
    deviations: list[Deviation] = []
    if infusions:
        first = infusions[0]
        deviations.extend(
            _fever_before(first, of("lymphodepletion.administered"), of("vitals.recorded"), params)
        )
        if params.require_confirmed_eligibility:
            deviations.extend(_unconfirmed_eligibility(first, of("eligibility.confirmed")))
        deviations.extend(
            Deviation(
                at=later.at,
                rule="duplicate_infusion",
                detail=f"second infusion (first at {first.at.isoformat()})",
                caused_by=(first.event_id, later.event_id),
            )
            for later in infusions[1:]
        )
    eligibility, questions = _eligibility(of("participant.enrolled"), eligibility_rules)
    deviations.extend(eligibility)
    return PreInfusionCheck(
        deviations=tuple(sorted(deviations, key=lambda d: (d.at, d.rule))),
        questions=tuple(sorted(questions, key=lambda q: (q.at, q.key))),
    )


def reads_vitals_at(timeline: Sequence[TimelineEntry], at: datetime) -> bool:
    """Whether ``check_pre_infusion`` reads vital signs taken at ``at``: only those up
    to the first infusion (its afebrile window, reference §7); with no infusion
    recorded, none."""
    infusions = _infusions(timeline)
    return bool(infusions) and at <= infusions[0].at


def _infusions(timeline: Sequence[TimelineEntry]) -> list[TimelineEntry]:
    """The infusions in clinical order: the gates are checked at the first."""
    return [
        e
        for e in chronological(timeline, ("infusion.administered",))
        if isinstance(e.data, InfusionAdministered)
    ]


def pre_infusion_deviations(
    timeline: Sequence[TimelineEntry],
    params: PreInfusionParameters,
    *,
    eligibility_rules: Sequence[EligibilityRule] = DEFAULT_ELIGIBILITY_RULES,
) -> tuple[Deviation, ...]:
    """The deviations of :func:`check_pre_infusion`, in clinical order."""
    return check_pre_infusion(timeline, params, eligibility_rules=eligibility_rules).deviations


def _fever_before(
    infusion: TimelineEntry,
    lymphodepletions: Sequence[TimelineEntry],
    vitals: Sequence[TimelineEntry],
    params: PreInfusionParameters,
) -> list[Deviation]:
    """``lymphodepletions`` and ``vitals`` in clinical order: only the vital signs of the
    window before the infusion are read, however long the record after it."""
    lymphodepletion = next(
        (
            e
            for e in lymphodepletions
            if isinstance(e.data, LymphodepletionAdministered) and e.at <= infusion.at
        ),
        None,
    )
    window = timedelta(hours=params.afebrile_hours_before_infusion)
    since = bisect.bisect_right(vitals, infusion.at - window, key=_at)
    until = bisect.bisect_right(vitals, infusion.at, key=_at)
    fevers = [
        (e, e.data.temperature_c)
        for e in vitals[since:until]
        if isinstance(e.data, VitalsRecorded)
        and e.data.temperature_c is not None
        and e.data.temperature_c >= FEVER_C
        and (lymphodepletion is None or e.at >= lymphodepletion.at)
    ]
    if not fevers:
        return []
    last, temperature_c = fevers[-1]
    hours = (infusion.at - last.at).total_seconds() / 3600
    after = "after lymphodepletion" if lymphodepletion else "(no lymphodepletion recorded)"
    detail = (
        f"infusion {hours:.1f} h after a temperature of {temperature_c:.1f} C "
        f"{after}; {params.afebrile_hours_before_infusion:g} h afebrile required"
    )
    evidence = [lymphodepletion.event_id] if lymphodepletion else []
    evidence.extend(e.event_id for e, _ in fevers)
    evidence.append(infusion.event_id)
    return [Deviation(infusion.at, "infusion_within_48h_of_fever", detail, tuple(evidence))]


def _at(entry: TimelineEntry) -> datetime:
    return entry.at


def _unconfirmed_eligibility(
    infusion: TimelineEntry, entries: Sequence[TimelineEntry]
) -> list[Deviation]:
    confirmed = any(
        isinstance(e.data, EligibilityConfirmed) and e.at <= infusion.at for e in entries
    )
    if confirmed:
        return []
    return [
        Deviation(
            infusion.at,
            "infusion_without_confirmed_eligibility",
            "infusion without a prior eligibility confirmation",
            (infusion.event_id,),
        )
    ]


def _eligibility(
    entries: Sequence[TimelineEntry], rules: Sequence[EligibilityRule]
) -> tuple[list[Deviation], list[AdjudicationQuestion]]:
    enrolments = [(e, e.data) for e in entries if isinstance(e.data, ParticipantEnrolled)]
    if not enrolments:
        return [], []
    enrolment, data = enrolments[-1]
    values = data.eligibility or {}
    deviations: list[Deviation] = []
    questions: list[AdjudicationQuestion] = []
    for rule in (r for r in rules if r.disease == data.disease):
        value = values.get(rule.criterion)
        met = None if value is None else rule.check(value)
        if met is None:
            state = "absent from" if value is None else f"not comparable ({value!r}) in"
            questions.append(
                AdjudicationQuestion(
                    key=f"eligibility:{rule.disease}:{rule.criterion}",
                    at=enrolment.at,
                    question=f"{data.disease} eligibility criterion {rule.describe()} is "
                    f"{state} the enrolment data ({rule.source}): was it met?",
                    target={"kind": "event", "id": enrolment.event_id},
                    evidence=(enrolment.event_id,),
                )
            )
        elif not met:
            deviations.append(
                Deviation(
                    enrolment.at,
                    "eligibility_criterion_not_met",
                    f"{data.disease}: {rule.criterion} = {value!r}, requires "
                    f"{rule.describe()} ({rule.source})",
                    (enrolment.event_id,),
                )
            )
    return deviations, questions
