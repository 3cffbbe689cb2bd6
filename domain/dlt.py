"""Dose-limiting toxicity (DLT) evaluation: the template of reference §7.

A pure function over a participant's grade timelines (one :class:`TermCourse` per
term: CRS and ICANS from ASTCT 2019, the rest from CTCAE), deaths and the
committee's adjudications, evaluated at clinical time ``as_of``. Every value of the
template is a [parameter] of :class:`domain.protocol.DLTParameters`.

Window (reference §0.5, §7; vignettes 19-20): from the infusion through the end of
study day ``window_days`` under the protocol's day numbering, i.e. until midnight
after that day in the infusion's UTC offset (``[starts_at, ends_at)``). Only an
event whose onset (the first time its grade was met) lies inside the window counts;
a grade >= 3 first met after it is referred to the safety review committee.

Rules (reference §7), each a candidate with ``met_at`` (onset) and ``decide_by``
(when its time condition resolves):

==================================  =============================================
rule                                condition
==================================  =============================================
``grade_5``                         death, or a course reaching grade 5: at once
``crs_grade_4`` / ``icans_grade_4`` grade 4: at once
``*_grade_3_not_improving``         CRS / ICANS grade 3 not back to <= 2 within
                                    ``crs_grade3_max_hours`` / ``icans_...``
``hematologic_grade_4_persisting``  grade 4 still in force when the day after
                                    ``hematologic_grade4_persisting_beyond_day``
                                    starts
``nonhematologic_grade_4``          grade 4: at once
``nonhematologic_grade_3_not_...``  grade 3 not back to <= 2 within
                                    ``nonhematologic_grade3_max_days``
``iechs_licats_flare_grade_3``      IEC-HS, LICATS or autoimmune flare (category
                                    ``special``) at grade >= 3: at once, when
                                    ``special_grade3_counts`` (else these terms
                                    follow the non-haematologic rules)
==================================  =============================================

Decisions where the template is silent (documented for the safety review committee):

- **Events.** A course's event runs from a grade > 0 until it is back at grade 0;
  a grade >= 3 after a return to grade 0 is a new event with its own candidate.
  Grade 4 and grade 3 rules are independent: grade 3 for 80 h that reached grade
  4 on the way is both ``*_grade_4`` and ``*_grade_3_not_...`` (the count is per
  participant); an event whose first grade >= 3 is already grade 4 is judged by the
  grade 4 rule only. Each rule yields one candidate per event (the haematologic
  rule: one per run at grade 4).
- **Measuring "not improving"** (``first_to_sustained``): from the first grade >= 3
  inside the window to the start of the final return to <= 2 of the event; a
  re-escalation to >= 3 inside the window cancels a return, one after the window
  does not (it is referred). The limit is inclusive: back at <= 2 after exactly
  72 h is within 72 h. ``longest_run``: the longest continuous run at >= 3 that
  starts inside the window. The same measure serves the 7-day non-haematologic rule.
  A ruled-out verdict rests on the data up to ``as_of``: a later re-escalation in
  the same event reverses it, decided when that re-escalation happens.
- **Haematologic rule:** every course of category ``hematologic`` (neutropenia and
  thrombocytopenia; the caller chooses) is judged per run at grade 4: a run still
  in force when day ``beyond_day + 1`` starts is a DLT then; a run ending earlier
  is ruled out; a run first met after that day but inside the window (only when
  ``beyond_day < window_days``) is a DLT at once.
- **Exclusions:** category ``excluded`` and ``excluded_terms`` never count and are
  never referred (grade 5 included: a death is judged as a :class:`Death`).
- **Relatedness** (in order): attributed to the underlying disease -> not a DLT
  (template exclusion); attributed to lymphodepletion and that counts -> counts;
  a stated relatedness decides (``relatedness_required`` or more); CRS and ICANS
  count unless attributed to another cause; other terms attributed to the product
  count, to another cause do not. With nothing known the candidate stays pending;
  the adjudication question is raised when the rule is met (a candidate ruled out
  by its time condition needs no answer, so a recovering cytopenia asks nothing).
- **Adjudication** (contract ``adjudication.recorded``, target kind ``dlt``) wins
  over the rule: the latest ``reject`` with a reason rules the candidate out (the
  reason is kept), ``confirm`` confirms it; a reject without a reason, or a target
  that matches no candidate (late data can move an onset, and the id with it), is
  not applied and raises a question.
- **Closure.** The window closes evaluable with a DLT at the first confirmed DLT;
  candidates keep being evaluated through the window (each is reported), and the
  closure is recomputed if that DLT is later overturned. Without a DLT it closes
  when follow-up ends, once no candidate is pending (a candidate met inside the
  window may be decided after it, e.g. grade 3 CRS from day 27): evaluable when the
  window was completed; not evaluable when the participant withdrew or died before
  its end (a death is a grade 5 event: at least possibly related it is a DLT; not
  related, the participant left the window without a DLT). Events reported after a
  withdrawal still count. A candidate still pending when follow-up ended early
  raises a question.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from typing import Literal

from domain.protocol import DLTParameters, Relatedness
from domain.timeline import AdjudicationQuestion

Category = Literal["crs", "icans", "hematologic", "nonhematologic", "special", "excluded"]
Rule = Literal[
    "grade_5",
    "crs_grade_4",
    "crs_grade_3_not_improving",
    "icans_grade_4",
    "icans_grade_3_not_improving",
    "hematologic_grade_4_persisting",
    "nonhematologic_grade_4",
    "nonhematologic_grade_3_not_resolving",
    "iechs_licats_flare_grade_3",
]
Status = Literal["pending", "confirmed", "ruled_out"]

#: Relatedness, least to most (contract ``adverse_event.reported``).
RELATEDNESS_ORDER: tuple[Relatedness, ...] = (
    "not_related",
    "unlikely",
    "possible",
    "probable",
    "definite",
)
#: Death causes that name CRS or ICANS (ASTCT 2019 grade 5: death due to CRS / ICANS).
_CRS_NAMES = frozenset({"crs", "cytokine release syndrome"})
_ICANS_NAMES = frozenset({"icans", "immune effector cell-associated neurotoxicity syndrome"})
_NEVER = datetime.max.replace(tzinfo=UTC)


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class GradeStep:
    """The grade of a term from ``at`` until the next step (grade 0 steps included)."""

    at: datetime
    grade: int
    caused_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class TermCourse:
    """One term's grade timeline; ``relatedness`` None = not known."""

    term: str
    category: Category
    steps: tuple[GradeStep, ...]
    relatedness: Relatedness | None = None
    attributed_to: str | None = None


@dataclass(frozen=True)
class Death:
    at: datetime
    term_attributed: str | None
    related: Relatedness | None
    event_id: str


@dataclass(frozen=True)
class Overturn:
    """A committee decision on a DLT candidate (``adjudication.recorded``, kind ``dlt``)."""

    target_id: str
    decision: Literal["confirm", "reject"]
    reason: str
    at: datetime
    event_id: str


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True)
class DLTWindow:
    starts_at: datetime
    ends_at: datetime
    day_zero_is_infusion_day: bool

    def contains(self, at: datetime) -> bool:
        return self.starts_at <= at < self.ends_at


@dataclass(frozen=True)
class DLTCandidate:
    """A rule of reference §7 met by an event with onset ``met_at`` inside the window.

    ``decided_at`` is the clinical time the status was decided (None while pending);
    ``decided_by`` the events that decided it (the return, the adjudication).
    """

    id: str
    rule: Rule
    term: str
    grade: int
    evidence: tuple[str, ...]
    met_at: datetime
    decide_by: datetime
    status: Status
    reason: str
    decided_at: datetime | None = None
    decided_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class DLTClosure:
    at: datetime
    evaluable: bool
    had_dlt: bool


@dataclass(frozen=True)
class DLTReferral:
    """Grade >= 3 first met after the window: referred to the safety review committee."""

    term: str
    at: datetime
    grade: int
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class DLTEvaluation:
    window: DLTWindow | None
    candidates: tuple[DLTCandidate, ...]
    closed: DLTClosure | None
    referrals: tuple[DLTReferral, ...]
    questions: tuple[AdjudicationQuestion, ...]
    next_wake_at: datetime | None

    def candidate(self, rule: Rule, term: str | None = None) -> DLTCandidate:
        """The first candidate of ``rule`` (and ``term``); KeyError if none."""
        for candidate in self.candidates:
            if candidate.rule == rule and (term is None or candidate.term == term):
                return candidate
        raise KeyError(rule if term is None else f"{rule} {term}")


# ---------------------------------------------------------------- day numbering


def end_of_study_day(
    infusion_at: datetime, day: int, *, day_zero_is_infusion_day: bool
) -> datetime:
    """Midnight after study ``day`` in the infusion's UTC offset (reference §0.5), the
    inverse of :func:`domain.timeline.study_day`: the first instant of ``day + 1``."""
    days_after_infusion_day = day + 1 if day_zero_is_infusion_day else day
    return datetime.combine(
        infusion_at.date() + timedelta(days=days_after_infusion_day),
        time(0),
        tzinfo=infusion_at.tzinfo,
    )


# ---------------------------------------------------------------- timelines


@dataclass(frozen=True)
class _Run:
    """A maximal interval at or above a grade: ``[start, end)``, ``end`` None if ongoing."""

    start: datetime
    end: datetime | None
    start_ids: tuple[str, ...]
    end_ids: tuple[str, ...]
    end_grade: int | None
    start_grade: int

    def holds_at(self, at: datetime) -> bool:
        return self.start <= at < (self.end or _NEVER)


def _steps(course: TermCourse, as_of: datetime) -> list[GradeStep]:
    """Steps known at ``as_of`` in clinical order; the last of one instant wins."""
    ordered: list[GradeStep] = []
    for step in sorted((s for s in course.steps if s.at <= as_of), key=lambda s: s.at):
        if ordered and ordered[-1].at == step.at:
            ordered[-1] = step
        else:
            ordered.append(step)
    return ordered


def _runs(steps: Sequence[GradeStep], level: int) -> list[_Run]:
    runs: list[_Run] = []
    onset: GradeStep | None = None
    for step in steps:
        if step.grade >= level and onset is None:
            onset = step
        elif step.grade < level and onset is not None:
            runs.append(
                _Run(onset.at, step.at, onset.caused_by, step.caused_by, step.grade, onset.grade)
            )
            onset = None
    if onset is not None:
        runs.append(_Run(onset.at, None, onset.caused_by, (), None, onset.grade))
    return runs


def _within(event: _Run, runs: Sequence[_Run], window: DLTWindow) -> list[_Run]:
    """The runs of ``event`` whose onset is inside the window."""
    return [r for r in runs if event.holds_at(r.start) and window.contains(r.start)]


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


def _limit_text(limit: timedelta) -> str:
    if limit.total_seconds() % 86400 == 0 and limit >= timedelta(days=2):
        return f"{limit.days} days"
    return f"{limit.total_seconds() / 3600:g} h"


# ---------------------------------------------------------------- rule outcomes


@dataclass(frozen=True)
class _Outcome:
    status: Status
    reason: str
    decided_at: datetime | None = None
    decided_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Draft:
    """A candidate before relatedness and adjudication are applied."""

    rule: Rule
    term: str
    grade: int
    category: Category
    relatedness: Relatedness | None
    attributed_to: str | None
    evidence: tuple[str, ...]
    met_at: datetime
    decide_by: datetime
    outcome: _Outcome


def _at_once(grade: int, run: _Run) -> _Outcome:
    return _Outcome("confirmed", f"grade {grade} met", run.start, run.start_ids)


def _first_to_sustained(
    runs: Sequence[_Run], limit: timedelta, as_of: datetime, verb: str
) -> tuple[datetime, _Outcome]:
    """Reference §7: from the first grade >= 3 to the start of a sustained return to <= 2."""
    first, last = runs[0].start, runs[-1]
    deadline = first + limit
    if last.end is not None and last.end - first <= limit:
        reason = f"back to grade {last.end_grade} after {_hours(last.end - first)}, {verb} within"
        return deadline, _Outcome(
            "ruled_out", f"{reason} {_limit_text(limit)}", last.end, last.end_ids
        )
    if last.end is None and as_of < deadline:
        return deadline, _Outcome("pending", f"grade >= 3 since {first.isoformat()}")
    holding = next((r for r in runs if r.holds_at(deadline)), None)
    if holding is None:  # a return held at the deadline; a later re-escalation cancelled it
        holding = next(r for r in runs if r.start > deadline)
        decided_at, ids = holding.start, holding.start_ids
    else:
        decided_at, ids = deadline, holding.start_ids
    reason = f"grade >= 3 from {first.isoformat()} not {verb} to <= 2 within {_limit_text(limit)}"
    return deadline, _Outcome("confirmed", reason, decided_at, ids)


def _longest_run(
    runs: Sequence[_Run], limit: timedelta, as_of: datetime, verb: str
) -> tuple[datetime, _Outcome]:
    """Reference §7 alternative: the longest continuous run at grade >= 3."""
    for run in runs:
        deadline = run.start + limit
        if (run.end is None and as_of >= deadline) or (run.end is not None and run.end > deadline):
            reason = f"a run at grade >= 3 from {run.start.isoformat()} lasted over "
            return deadline, _Outcome(
                "confirmed", reason + _limit_text(limit), deadline, run.start_ids
            )
    last = runs[-1]
    if last.end is None:
        return last.start + limit, _Outcome("pending", f"grade >= 3 since {last.start.isoformat()}")
    longest = max((r.end or as_of) - r.start for r in runs)
    reason = f"longest run at grade >= 3 {_hours(longest)}, {verb} within {_limit_text(limit)}"
    return last.start + limit, _Outcome("ruled_out", reason, last.end, last.end_ids)


def _persistence(
    runs: Sequence[_Run], limit: timedelta, params: DLTParameters, as_of: datetime, verb: str
) -> tuple[datetime, _Outcome]:
    if params.improvement_measured_as == "longest_run":
        return _longest_run(runs, limit, as_of, verb)
    return _first_to_sustained(runs, limit, as_of, verb)


def _persisting_beyond(run: _Run, day: int, decision_at: datetime, as_of: datetime) -> _Outcome:
    """Reference §7 rule 4: grade 4 cytopenia still in force when day ``day + 1`` starts."""
    if run.holds_at(decision_at) and as_of >= decision_at:
        reason = f"grade 4 since {run.start.isoformat()}, persisting beyond day {day}"
        return _Outcome("confirmed", reason, decision_at, run.start_ids)
    if run.end is not None and run.end <= decision_at:
        reason = f"back to grade {run.end_grade} at {run.end.isoformat()}, by day {day}"
        return _Outcome("ruled_out", reason, run.end, run.end_ids)
    if run.start > decision_at:
        reason = f"grade 4 first met after day {day}, inside the window"
        return _Outcome("confirmed", reason, run.start, run.start_ids)
    return _Outcome("pending", f"grade 4 since {run.start.isoformat()}")


# ---------------------------------------------------------------- candidates of a course


def _is_excluded(course: TermCourse, params: DLTParameters) -> bool:
    excluded = {term.casefold() for term in params.excluded_terms}
    return course.category == "excluded" or course.term.casefold() in excluded


def _draft(
    course: TermCourse, rule: Rule, grade: int, run: _Run, decide_by: datetime, outcome: _Outcome
) -> _Draft:
    return _Draft(
        rule,
        course.term,
        grade,
        course.category,
        course.relatedness,
        course.attributed_to,
        run.start_ids,
        run.start,
        decide_by,
        outcome,
    )


_SEVERE_RULES: dict[str, tuple[Rule, Rule, str]] = {
    "crs": ("crs_grade_4", "crs_grade_3_not_improving", "improving"),
    "icans": ("icans_grade_4", "icans_grade_3_not_improving", "improving"),
    "nonhematologic": (
        "nonhematologic_grade_4",
        "nonhematologic_grade_3_not_resolving",
        "resolving",
    ),
}


def _grade3_limit(category: str, params: DLTParameters) -> timedelta:
    if category == "crs":
        return timedelta(hours=params.crs_grade3_max_hours)
    if category == "icans":
        return timedelta(hours=params.icans_grade3_max_hours)
    return timedelta(days=params.nonhematologic_grade3_max_days)


def _course_drafts(
    course: TermCourse,
    steps: Sequence[GradeStep],
    window: DLTWindow,
    params: DLTParameters,
    as_of: datetime,
) -> list[_Draft]:
    drafts: list[_Draft] = []
    whole = _Run(window.starts_at, None, (), (), None, 0)
    fatal = _within(whole, _runs(steps, 5), window)
    if fatal:
        drafts.append(_draft(course, "grade_5", 5, fatal[0], fatal[0].start, _at_once(5, fatal[0])))
    if course.category == "hematologic":
        beyond_day = params.hematologic_grade4_persisting_beyond_day
        decision_at = end_of_study_day(
            window.starts_at,
            beyond_day,
            day_zero_is_infusion_day=window.day_zero_is_infusion_day,
        )
        for run in _runs(steps, 4):
            if window.contains(run.start):
                outcome = _persisting_beyond(run, beyond_day, decision_at, as_of)
                rule: Rule = "hematologic_grade_4_persisting"
                drafts.append(_draft(course, rule, 4, run, max(decision_at, run.start), outcome))
        return drafts
    category: str = course.category
    if category == "special":
        if params.special_grade3_counts:
            for run in _runs(steps, 3):
                if window.contains(run.start):
                    rule = "iechs_licats_flare_grade_3"
                    outcome = _at_once(run.start_grade, run)
                    drafts.append(_draft(course, rule, run.start_grade, run, run.start, outcome))
            return drafts
        category = "nonhematologic"
    if category not in _SEVERE_RULES:
        return drafts
    grade4_rule, grade3_rule, verb = _SEVERE_RULES[category]
    limit = _grade3_limit(category, params)
    for event in _runs(steps, 1):
        severe = _within(event, _runs(steps, 4), window)
        if severe:
            drafts.append(
                _draft(course, grade4_rule, 4, severe[0], severe[0].start, _at_once(4, severe[0]))
            )
        runs = _within(event, _runs(steps, 3), window)
        if runs and runs[0].start_grade == 3:
            decide_by, outcome = _persistence(runs, limit, params, as_of, verb)
            drafts.append(_draft(course, grade3_rule, 3, runs[0], decide_by, outcome))
    return drafts


def _referrals(
    course: TermCourse, steps: Sequence[GradeStep], window: DLTWindow
) -> list[DLTReferral]:
    referrals: list[DLTReferral] = []
    previous = 0
    for step in steps:
        if step.at >= window.ends_at and step.grade >= 3 and step.grade > previous:
            referrals.append(DLTReferral(course.term, step.at, step.grade, step.caused_by))
        previous = step.grade
    return referrals


# ---------------------------------------------------------------- deaths


def _death_category(death: Death, courses: Sequence[TermCourse]) -> Category:
    name = (death.term_attributed or "").casefold()
    if name in _CRS_NAMES:
        return "crs"
    if name in _ICANS_NAMES:
        return "icans"
    for course in courses:
        if name and course.term.casefold() == name and course.category in ("crs", "icans"):
            return course.category
    return "nonhematologic"


def _death_drafts(
    deaths: Sequence[Death],
    courses: Sequence[TermCourse],
    drafts: list[_Draft],
    window: DLTWindow,
    as_of: datetime,
) -> tuple[list[_Draft], list[DLTReferral]]:
    """Reference §7 rule 1: a death is a grade 5 event; one already graded 5 on a
    course at the same instant adds its evidence to that candidate."""
    merged = list(drafts)
    referrals: list[DLTReferral] = []
    for death in sorted(deaths, key=lambda d: d.at):
        term = death.term_attributed or "Death"
        if death.at > as_of or death.at < window.starts_at:
            continue
        if death.at >= window.ends_at:
            referrals.append(DLTReferral(term, death.at, 5, (death.event_id,)))
            continue
        same = next(
            (i for i, d in enumerate(merged) if d.rule == "grade_5" and d.met_at == death.at), None
        )
        if same is not None:
            found = merged[same]
            evidence = found.evidence
            if death.event_id not in evidence:
                evidence = (*evidence, death.event_id)
            # The death report's own relatedness is the investigator's latest word on it.
            merged[same] = replace(
                found, evidence=evidence, relatedness=death.related or found.relatedness
            )
            continue
        outcome = _Outcome("confirmed", "death (grade 5)", death.at, (death.event_id,))
        merged.append(
            _Draft(
                "grade_5",
                term,
                5,
                _death_category(death, courses),
                death.related,
                None,
                (death.event_id,),
                death.at,
                death.at,
                outcome,
            )
        )
    return merged, referrals


# ---------------------------------------------------------------- relatedness


Attribution = Literal["counts", "does_not_count", "unknown"]
_OTHER_CAUSES = frozenset({"underlying_disease", "infection", "sedation", "other"})


def _attribution(draft: _Draft, params: DLTParameters) -> tuple[Attribution, str]:
    """Reference §7: counts when at least ``relatedness_required`` (to the product, or to
    lymphodepletion when that counts); CRS/ICANS are the product's unless attributed
    elsewhere; events clearly due to the underlying disease are excluded."""
    cause, related = draft.attributed_to, draft.relatedness
    if cause == "underlying_disease":
        return "does_not_count", "attributed to the underlying disease (excluded)"
    if cause == "lymphodepletion" and params.lymphodepletion_attribution_counts:
        return "counts", "attributed to lymphodepletion, which counts"
    if related is not None:
        required = params.relatedness_required
        if RELATEDNESS_ORDER.index(related) >= RELATEDNESS_ORDER.index(required):
            return "counts", f"relatedness {related}"
        return "does_not_count", f"relatedness {related} is below {required}"
    if cause == "lymphodepletion":
        return "does_not_count", "attributed to lymphodepletion, which does not count"
    if cause in _OTHER_CAUSES:
        return "does_not_count", f"attributed to {cause}"
    if draft.category in ("crs", "icans") or cause == "product":
        return "counts", "attributable to the product"
    return "unknown", "relatedness unknown"


# ---------------------------------------------------------------- the evaluation


@dataclass
class _Questions:
    items: dict[str, AdjudicationQuestion] = field(default_factory=dict)

    def ask(self, key: str, at: datetime, question: str, target_id: str, *evidence: str) -> None:
        target = {"kind": "dlt", "id": target_id}
        self.items.setdefault(key, AdjudicationQuestion(key, at, question, target, evidence))


def _candidate_id(draft: _Draft, taken: set[str]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", draft.term.casefold()).strip("_")
    base = f"DLT-{draft.rule}-{slug}-{draft.met_at.astimezone(UTC):%Y%m%dT%H%MZ}"
    candidate_id, n = base, 1
    while candidate_id in taken:
        n += 1
        candidate_id = f"{base}-{n}"
    taken.add(candidate_id)
    return candidate_id


def _with_attribution(
    draft: _Draft, candidate_id: str, params: DLTParameters, questions: _Questions
) -> DLTCandidate:
    """Apply relatedness to the rule's outcome; an unknown relatedness is asked about
    once the rule is met (a candidate ruled out by its time condition needs no answer)."""
    outcome = draft.outcome
    attribution, why = _attribution(draft, params)
    if outcome.status != "ruled_out" and attribution == "does_not_count":
        outcome = _Outcome("ruled_out", why, draft.met_at)
    elif outcome.status == "pending" and attribution == "unknown":
        outcome = _Outcome("pending", f"{why}; {outcome.reason}")
    elif outcome.status == "confirmed" and attribution == "unknown":
        met_at = outcome.decided_at or draft.met_at
        questions.ask(
            f"dlt-relatedness:{candidate_id}",
            met_at,
            f"{draft.term} grade {draft.grade} ({draft.rule}): how related is it to the "
            f"product (a DLT needs at least '{params.relatedness_required}')? The DLT "
            "candidate stays pending until relatedness is known.",
            candidate_id,
            *draft.evidence,
        )
        outcome = _Outcome("pending", f"{why}; rule met at {met_at.isoformat()}")
    return DLTCandidate(
        candidate_id,
        draft.rule,
        draft.term,
        draft.grade,
        draft.evidence,
        draft.met_at,
        draft.decide_by,
        outcome.status,
        outcome.reason,
        outcome.decided_at,
        outcome.decided_by,
    )


def _adjudicated(candidate: DLTCandidate, overturn: Overturn) -> DLTCandidate:
    """The committee's decision wins; an unchanged status keeps its first decision time."""
    status: Status = "confirmed" if overturn.decision == "confirm" else "ruled_out"
    reason = overturn.reason or "confirmed by adjudication"
    decided_at = overturn.at
    if candidate.status == status and candidate.decided_at is not None:
        decided_at = min(candidate.decided_at, overturn.at)
    return replace(
        candidate,
        status=status,
        reason=reason,
        decided_at=decided_at,
        decided_by=(*candidate.decided_by, overturn.event_id),
    )


def _apply_overturns(
    candidates: list[DLTCandidate],
    overturns: Sequence[Overturn],
    as_of: datetime,
    questions: _Questions,
) -> list[DLTCandidate]:
    by_id = {c.id: i for i, c in enumerate(candidates)}
    latest: dict[str, Overturn] = {}
    for overturn in sorted((o for o in overturns if o.at <= as_of), key=lambda o: o.at):
        if overturn.target_id not in by_id:
            questions.ask(
                f"dlt-overturn-target:{overturn.event_id}",
                overturn.at,
                f"Adjudication {overturn.event_id} targets DLT candidate {overturn.target_id}, "
                "which the current data do not produce (late data may have moved its onset): "
                "which candidate does it decide?",
                overturn.target_id,
                overturn.event_id,
            )
        elif overturn.decision == "reject" and not overturn.reason.strip():
            questions.ask(
                f"dlt-overturn-reason:{overturn.event_id}",
                overturn.at,
                f"Rejection {overturn.event_id} of DLT candidate {overturn.target_id} states no "
                "reason (reference §7 requires one); not applied.",
                overturn.target_id,
                overturn.event_id,
            )
        else:
            latest[overturn.target_id] = overturn
    decided = list(candidates)
    for target_id, overturn in latest.items():
        decided[by_id[target_id]] = _adjudicated(decided[by_id[target_id]], overturn)
    return decided


def _follow_up_end(
    window: DLTWindow, withdrawn_at: datetime | None, deaths: Sequence[Death], as_of: datetime
) -> tuple[datetime, str | None]:
    """When follow-up of the window ends: its end, or an earlier withdrawal or death."""
    end, left = window.ends_at, None
    if withdrawn_at is not None and withdrawn_at <= as_of and withdrawn_at < end:
        end, left = withdrawn_at, "withdrew"
    for death in deaths:
        if window.starts_at <= death.at <= as_of and death.at < end:
            end, left = death.at, "died"
    return end, left


def _closure(
    candidates: Sequence[DLTCandidate], follow_up_end: datetime, completed: bool, as_of: datetime
) -> DLTClosure | None:
    """Reference §7: evaluable when the window was completed or a DLT occurred."""
    confirmed = [c.decided_at for c in candidates if c.status == "confirmed" and c.decided_at]
    if confirmed:
        return DLTClosure(min(confirmed), evaluable=True, had_dlt=True)
    if as_of < follow_up_end or any(c.status == "pending" for c in candidates):
        return None
    decided = [c.decided_at for c in candidates if c.decided_at is not None]
    return DLTClosure(max([follow_up_end, *decided]), evaluable=completed, had_dlt=False)


def evaluate_dlt(
    courses: Sequence[TermCourse],
    *,
    params: DLTParameters,
    infusion_at: datetime | None,
    day_zero_is_infusion_day: bool,
    withdrawn_at: datetime | None,
    deaths: Sequence[Death],
    overturns: Sequence[Overturn],
    as_of: datetime,
) -> DLTEvaluation:
    """Evaluate the DLT window of one participant at clinical time ``as_of`` (reference §7).

    Pure: everything after ``as_of`` (steps, deaths, adjudications, a withdrawal) is
    ignored, so a replay at the same ``as_of`` gives the same result.
    """
    if infusion_at is None or infusion_at > as_of:
        return DLTEvaluation(None, (), None, (), (), None)
    ends_at = end_of_study_day(
        infusion_at, params.window_days, day_zero_is_infusion_day=day_zero_is_infusion_day
    )
    window = DLTWindow(infusion_at, ends_at, day_zero_is_infusion_day)
    drafts: list[_Draft] = []
    referrals: list[DLTReferral] = []
    for course in courses:
        if _is_excluded(course, params):
            continue
        steps = _steps(course, as_of)
        drafts.extend(_course_drafts(course, steps, window, params, as_of))
        referrals.extend(_referrals(course, steps, window))
    drafts, death_referrals = _death_drafts(deaths, courses, drafts, window, as_of)
    graded_fatal = {r.at for r in referrals if r.grade == 5}
    referrals.extend(r for r in death_referrals if r.at not in graded_fatal)
    drafts.sort(key=lambda d: (d.met_at, d.rule, d.term))

    questions = _Questions()
    taken: set[str] = set()
    candidates = [
        _with_attribution(draft, _candidate_id(draft, taken), params, questions) for draft in drafts
    ]
    candidates = _apply_overturns(candidates, overturns, as_of, questions)

    follow_up_end, left = _follow_up_end(window, withdrawn_at, deaths, as_of)
    if left is not None:
        for candidate in candidates:
            if candidate.status == "pending" and candidate.decide_by > follow_up_end:
                questions.ask(
                    f"dlt-follow-up-ended:{candidate.id}",
                    follow_up_end,
                    f"The participant {left} at {follow_up_end.isoformat()} while DLT candidate "
                    f"{candidate.id} ({candidate.term}) was pending until "
                    f"{candidate.decide_by.isoformat()}: is it a DLT?",
                    candidate.id,
                    *candidate.evidence,
                )
    closed = _closure(candidates, follow_up_end, left is None, as_of)
    wakes = [c.decide_by for c in candidates if c.status == "pending" and c.decide_by > as_of]
    if window.ends_at > as_of:
        wakes.append(window.ends_at)
    return DLTEvaluation(
        window,
        tuple(candidates),
        closed,
        tuple(sorted(referrals, key=lambda r: r.at)),
        tuple(sorted(questions.items.values(), key=lambda q: (q.at, q.key))),
        min(wakes, default=None),
    )
