"""Investigator-reported adverse events and committee decisions (reference §3, §6, §7, §9).

Pure functions over a participant's timeline.

**Reported AEs** (contract ``adverse_event.reported``). Reports with the same
``ae_id`` are versions of one AE, in arrival order; the latest version is the AE as
the investigator now states it (term, relatedness, seriousness, expectedness,
onset, resolution). Its *grade course* keeps the clinical history of the versions:

- the first step is at the latest stated ``onset_at`` (else the first report's
  ``occurred_at``) with the first version's grade;
- each later version whose ``occurred_at`` is after that onset and whose grade
  differs is a step at its ``occurred_at`` (the AE worsened or improved then); a
  version dated at or before the onset restates the grade from the onset;
- the latest ``resolved_at`` (when after the onset) returns the course to grade 0.

A grade that was simply wrong is corrected with ``record.corrected``, not with a
new version. Seriousness is separate from grade: a serious grade 1 and a non-serious
grade 4 are both possible.

**Terms the engine grades itself** (CRS and ICANS by ASTCT 2019, the CTCAE lab
terms): a report naming one of them (by name or synonym, e.g. "Cytokine release
syndrome" for CRS) does not make a second course; it contributes the
investigator's relatedness. When the resolved AE's worst grade differs from the
engine's worst grade over the AE's time (onset minus ``MATCH_SLACK`` to resolution),
an adjudication question is raised instead of choosing between them.

**Committee decisions** on CRS and ICANS episodes (``adjudication.recorded`` with
target kind ``crs_episode`` / ``icans_episode`` and id = the episode number as
published in ``crs.graded``/``icans.graded``): the latest decision per episode is
applied to the derived grade course of that episode, replayed like any event:

- ``reject``: the episode is not CRS (ICANS): grade 0 throughout;
- ``regrade`` to G: grades above G are capped at G; if the episode never reached G,
  its first moment at its worst grade is raised to G (until the next change);
- ``confirm``: the derived grades stand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Final, Literal

from domain.contract import AdjudicationRecorded, AdverseEventReported
from domain.timeline import AdjudicationQuestion, TimelineEntry, arrived

#: How far before a reported onset the engine's grades still count as the same AE.
MATCH_SLACK: Final = timedelta(hours=24)

#: Names that denote the same toxicity (ASTCT acronyms and their spelled-out terms).
TERM_SYNONYMS: Final[tuple[frozenset[str], ...]] = (
    frozenset({"crs", "cytokine release syndrome"}),
    frozenset({"icans", "immune effector cell associated neurotoxicity syndrome"}),
    frozenset(
        {
            "iec hs",
            "iechs",
            "immune effector cell associated hlh like syndrome",
            "immune effector cell associated hemophagocytic lymphohistiocytosis like syndrome",
        }
    ),
    frozenset({"licats", "local immune effector cell associated toxicity syndrome"}),
)
#: Rule 6 of the DLT template (reference §7): IEC-HS, LICATS, autoimmune flare.
_SPECIAL_NAMES: Final = frozenset(TERM_SYNONYMS[2] | TERM_SYNONYMS[3])
_FLARE: Final = re.compile(r"\bflares?\b")


@lru_cache(maxsize=4096)
def normal_name(text: str) -> str:
    """A term name compared case- and punctuation-insensitively."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


@lru_cache(maxsize=4096)
def names_of(term: str) -> frozenset[str]:
    """The normalised names of ``term`` and its synonyms."""
    name = normal_name(term)
    for group in TERM_SYNONYMS:
        if name in group:
            return group
    return frozenset({name})


def same_term(a: str, b: str) -> bool:
    return bool(names_of(a) & names_of(b))


def is_special_term(term: str, grading_scale: str | None = None) -> bool:
    """IEC-HS, LICATS or an autoimmune flare (DLT rule 6, reference §6-7)."""
    return (
        grading_scale == "LICATS-2025"
        or bool(names_of(term) & _SPECIAL_NAMES)
        or bool(_FLARE.search(normal_name(term)))
    )


@dataclass(frozen=True)
class CourseStep:
    at: datetime
    grade: int
    caused_by: tuple[str, ...]


@dataclass(frozen=True)
class ReportedAE:
    """One AE (``ae_id``) with every version reported, in arrival order."""

    ae_id: str
    versions: tuple[TimelineEntry, ...]

    @property
    def latest(self) -> AdverseEventReported:
        data = self.versions[-1].data
        assert isinstance(data, AdverseEventReported)
        return data

    @property
    def event_ids(self) -> tuple[str, ...]:
        return tuple(v.event_id for v in self.versions)

    @property
    def onset_at(self) -> datetime:
        return self.latest.onset_at or self.versions[0].at

    @property
    def worst_grade(self) -> int:
        return max(step.grade for step in self.course())

    def course(self) -> list[CourseStep]:
        """The AE's grade course (module docstring)."""
        onset = self.onset_at
        first = self.versions[0]
        assert isinstance(first.data, AdverseEventReported)
        steps = [CourseStep(onset, first.data.grade, (first.event_id,))]
        for version in sorted(self.versions[1:], key=lambda v: v.order):
            assert isinstance(version.data, AdverseEventReported)
            at = max(version.at, onset)
            if at == onset:
                steps[0] = CourseStep(onset, version.data.grade, (version.event_id,))
            elif version.data.grade != steps[-1].grade:
                steps.append(CourseStep(at, version.data.grade, (version.event_id,)))
        resolved = self.latest.resolved_at
        if resolved is not None and resolved > onset:
            steps = [s for s in steps if s.at < resolved]
            steps.append(CourseStep(resolved, 0, (self.versions[-1].event_id,)))
        return steps


def reported_aes(timeline: Iterable[TimelineEntry]) -> list[ReportedAE]:
    """The participant's reported AEs, by ``ae_id`` in order of first report."""
    versions: dict[str, list[TimelineEntry]] = {}
    for entry in arrived(timeline, ("adverse_event.reported",)):
        if isinstance(entry.data, AdverseEventReported):
            versions.setdefault(entry.data.ae_id, []).append(entry)
    return [ReportedAE(ae_id, tuple(v)) for ae_id, v in versions.items()]


def term_course(aes: Sequence[ReportedAE]) -> list[CourseStep]:
    """The combined course of several AEs of one term: the worst grade at each moment."""
    instants = sorted({s.at for ae in aes for s in ae.course()})
    courses = [ae.course() for ae in aes]
    steps: list[CourseStep] = []
    for at in instants:
        grade = 0
        caused_by: tuple[str, ...] = ()
        for course in courses:
            current = [s for s in course if s.at <= at]
            if current and current[-1].grade > grade:
                grade, caused_by = current[-1].grade, current[-1].caused_by
        if not steps or steps[-1].grade != grade:
            if not caused_by:
                caused_by = next(s.caused_by for c in courses for s in c if s.at == at)
            steps.append(CourseStep(at, grade, caused_by))
    return steps


def grade_discrepancy(
    ae: ReportedAE, engine_term: str, engine_steps: Sequence[tuple[datetime, int]]
) -> AdjudicationQuestion | None:
    """A question when a resolved AE's worst grade differs from the engine's worst grade
    of the same term over the AE's time (module docstring)."""
    resolved = ae.latest.resolved_at
    if resolved is None:
        return None
    start = ae.onset_at - MATCH_SLACK
    in_force = [g for at, g in engine_steps if at <= start][-1:]
    during = [g for at, g in engine_steps if start < at <= resolved]
    engine = max(in_force + during, default=0)
    reported = ae.worst_grade
    if engine == reported:
        return None
    latest = ae.versions[-1]
    return AdjudicationQuestion(
        key=f"ae-grade:{ae.ae_id}:{reported}:{engine}",
        at=latest.at,
        question=f"AE {ae.ae_id} ({ae.latest.term}) is reported at worst grade {reported} "
        f"({ae.latest.grading_scale}), but the grade derived from the clinical data is "
        f"{engine} for {engine_term} between {start.isoformat()} and {resolved.isoformat()}: "
        "which is right?",
        target={"kind": "event", "id": latest.event_id},
        evidence=ae.event_ids,
    )


# ---------------------------------------------------------------- committee decisions

EpisodeKind = Literal["crs_episode", "icans_episode"]


@dataclass(frozen=True)
class EpisodeDecision:
    episode: int
    decision: Literal["confirm", "reject", "regrade"]
    grade: int | None
    reason: str
    event_id: str
    at: datetime


def episode_decisions(
    timeline: Iterable[TimelineEntry], kind: EpisodeKind
) -> tuple[dict[int, EpisodeDecision], tuple[AdjudicationQuestion, ...]]:
    """The latest committee decision on each episode of ``kind`` (arrival order), and a
    question for a decision whose target is not an episode number."""
    decisions: dict[int, EpisodeDecision] = {}
    questions = []
    for entry in arrived(timeline, ("adjudication.recorded",)):
        data = entry.data
        if not isinstance(data, AdjudicationRecorded) or data.target.kind != kind:
            continue
        if not data.target.id.isdigit() or int(data.target.id) < 1:
            questions.append(
                AdjudicationQuestion(
                    key=f"episode-target:{entry.event_id}",
                    at=entry.at,
                    question=f"Adjudication {entry.event_id} targets {kind} "
                    f"'{data.target.id}', which is not an episode number: not applied.",
                    target={"kind": "event", "id": entry.event_id},
                    evidence=(entry.event_id,),
                )
            )
            continue
        episode = int(data.target.id)
        decisions[episode] = EpisodeDecision(
            episode, data.decision, data.grade, data.reason or "", entry.event_id, entry.at
        )
    return decisions, tuple(questions)


@dataclass(frozen=True)
class Adjusted:
    """A grade point after a committee decision: ``grade`` replaces ``derived``."""

    at: datetime
    episode: int
    derived: int
    grade: int
    decision: EpisodeDecision | None


def adjudicate_episodes(
    points: Sequence[tuple[datetime, int, int]], decisions: dict[int, EpisodeDecision]
) -> list[Adjusted]:
    """Apply the decisions to a derived grade course ``(at, episode, grade)`` (module
    docstring); points of undecided episodes are unchanged."""
    worst: dict[int, int] = {}
    for _, episode, grade in points:
        worst[episode] = max(worst.get(episode, 0), grade)
    raised: set[int] = set()
    adjusted = []
    for at, episode, grade in points:
        decision = decisions.get(episode) if episode > 0 else None
        new = grade
        if decision is not None and decision.decision == "reject":
            new = 0
        elif decision is not None and decision.decision == "regrade":
            target = decision.grade if decision.grade is not None else grade
            new = min(grade, target)
            if worst[episode] < target and grade == worst[episode] and episode not in raised:
                raised.add(episode)
                new = target
        adjusted.append(Adjusted(at, episode, grade, new, decision))
    return adjusted


def event_attributions(timeline: Iterable[TimelineEntry]) -> dict[str, str]:
    """``attributed_to`` stated by the latest adjudication of each clinical event
    (target kind ``event``), by the event's id."""
    stated: dict[str, str] = {}
    for entry in arrived(timeline, ("adjudication.recorded",)):
        data = entry.data
        if (
            isinstance(data, AdjudicationRecorded)
            and data.target.kind == "event"
            and data.attributed_to is not None
        ):
            stated[data.target.id] = data.attributed_to
    return stated


def event_decisions(timeline: Iterable[TimelineEntry]) -> dict[str, str]:
    """The latest decision (``confirm``/``reject``/``regrade``) on each clinical event."""
    return {
        e.data.target.id: e.data.decision
        for e in arrived(timeline, ("adjudication.recorded",))
        if isinstance(e.data, AdjudicationRecorded) and e.data.target.kind == "event"
    }
