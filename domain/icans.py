"""ICANS grading: ASTCT 2019 consensus, adults (Lee et al., BBMT 2019;25:625-638), reference §2.

A pure function over a participant's clinical timeline, the sibling of ``domain.crs``.
Each ``neuro.assessed`` is a full assessment whose grade holds until the next one
(reference §0.6); sedatives decide whether depressed consciousness can be graded, and a
death attributed to ICANS is grade 5. It returns every change of grade with its basis,
the episodes with onset and resolution, and the questions that need an adjudicator.

Grade of an assessment = the most severe domain (ICE = immune effector cell-associated
encephalopathy score, 10 points):

=====  ==================  =======================  ========================  ==================
grade  ICE                 depressed consciousness  seizure / motor           raised ICP /
                                                                              cerebral oedema
=====  ==================  =======================  ========================  ==================
1      7-9                 (awakens spontaneously)
2      3-6                 awakens to voice
3      0-2 (awake, incl.   awakens only to          clinical seizure          focal / local
       global aphasia)     tactile stimulus         resolving rapidly, or     oedema
                                                    non-convulsive on EEG
                                                    resolving with
                                                    intervention
4      0, unarousable      unarousable              prolonged or repetitive   diffuse oedema,
                                                    seizures; deep focal      posturing, CN VI
                                                    motor weakness            palsy, papilloedema,
                                                                              Cushing's triad
5      death due to ICANS
=====  ==================  =======================  ========================  ==================

Readings where the reference leaves room (the safer one is taken):

- **Consciousness ``awake`` grades 0.** ASTCT grade 1 is a *depressed* level of
  consciousness that awakens spontaneously; the contract's ``awake`` cannot tell a
  drowsy patient from an alert one, and reference §2 makes "ICE 10 with no other finding"
  grade 0, so ``awake`` contributes nothing and grade 1 comes from ICE 7-9. When ICE is
  not assessable, the assessment is referred for adjudication instead (see below).
- **ICE not performable** (``sedated``, ``intubated``, ``other``, or not recorded) gives
  no ICE domain; an adjudication question is raised unless the other domains already
  reach grade 3 (the highest ICE can give an arousable patient).
- **Sedation** (``sedated: true``, ICE unable because ``sedated``, or a ``sedative``
  within ``sedation_lookback_hours`` before the assessment, inclusive) makes depressed
  consciousness, and an ICE of 0 because unarousable, "not assessable" with a question.
  An ICE *scored* under sedation is graded, provisionally, with an attribution question
  (reference §0.3: attribution is an input, sedation is named).
- **Carry-forward.** A domain that is not assessable is not a new observation of it
  (reference §0.6): inside an episode, its last assessed grade is carried forward,
  provisionally, so sedation or intubation for ICANS never lowers the grade or starts
  the resolution clock by itself.
- **Intracranial haemorrhage** with neurological findings: the findings are not graded
  as ICANS (grade 0, reference §2; graded with CTCAE) and a question asks whether they
  are attributable to the haemorrhage. [parameter]
  ``exclude_findings_with_intracranial_hemorrhage = false`` grades them provisionally
  instead (reference §0.3). A haemorrhage with a normal examination changes nothing.
- **Inconsistent ICE fields** (a score above 0 with an unable reason, or "unable because
  unarousable" with a different consciousness level) are graded by the more severe
  reading and referred for adjudication.
- **Fields not recorded** in an assessment are no finding (consciousness, seizure, motor,
  oedema, ICP), except ICE, which is then not assessable. Two assessments at the same
  instant: the later-arriving one counts. Questions about a domain that is not
  assessable are asked once per run of such assessments.
- **Grade 5**: ``death.reported`` whose ``cause`` names ICANS, neurotoxicity or cerebral
  oedema; another cause during an episode is referred for adjudication.
- **Resolution** [parameter]: ASTCT defines none; an episode resolves when grade 0 with
  ICE 10/10 measured and no other finding (nothing not assessable, nothing excluded)
  holds for ``resolution_hours``; the resolution time is the start of that period.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.contract import DeathReported, MedicationAdministered, NeuroAssessed
from domain.timeline import AdjudicationQuestion, TimelineEntry, chronological

Consciousness = Literal["awake", "awakens_to_voice", "awakens_to_tactile", "unarousable"]
Seizure = Literal[
    "none",
    "rapidly_resolving",
    "nonconvulsive_resolved_with_intervention",
    "prolonged_or_repetitive",
]
MotorWeakness = Literal["none", "deep_focal"]
CerebralEdema = Literal["none", "focal", "diffuse"]
Domain = Literal[
    "ice", "consciousness", "seizure", "motor_weakness", "cerebral_edema", "raised_icp"
]

CONSCIOUSNESS_GRADE: dict[str, int] = {
    "awake": 0,
    "awakens_to_voice": 2,
    "awakens_to_tactile": 3,
    "unarousable": 4,
}
SEIZURE_GRADE: dict[str, int] = {
    "none": 0,
    "rapidly_resolving": 3,
    "nonconvulsive_resolved_with_intervention": 3,
    "prolonged_or_repetitive": 4,
}
MOTOR_WEAKNESS_GRADE: dict[str, int] = {"none": 0, "deep_focal": 4}
CEREBRAL_EDEMA_GRADE: dict[str, int] = {"none": 0, "focal": 3, "diffuse": 4}
RAISED_ICP_GRADE = 4
#: The most an ICE score can give a patient who is arousable (ICE 0-2).
_ICE_MAX_AROUSABLE = 3
_DOMAIN_ORDER: tuple[Domain, ...] = (
    "ice",
    "consciousness",
    "seizure",
    "motor_weakness",
    "cerebral_edema",
    "raised_icp",
)
_DOMAIN_LABEL: dict[str, str] = {
    "ice": "ICE",
    "consciousness": "consciousness",
    "seizure": "seizure",
    "motor_weakness": "motor weakness",
    "cerebral_edema": "cerebral oedema",
    "raised_icp": "raised ICP",
}
#: Domains an assessment can leave not assessable, carried forward (reference §0.6).
_CARRIED_DOMAINS: tuple[Domain, ...] = ("ice", "consciousness")
_ICANS_CAUSE = re.compile(
    r"\b(icans|neurotox\w*|(cerebral|brain) o?edema)\b",
    re.IGNORECASE,
)
ICANS_INPUT_TYPES = frozenset({"neuro.assessed", "medication.administered", "death.reported"})


class ICANSParameters(BaseModel):
    """ICANS grading parameters (reference §2; ASTCT 2019 fixes the grading table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resolution_hours: float = Field(
        default=24.0,
        gt=0,
        description="[parameter] episode resolved when grade 0 (ICE 10/10 with no other "
        "finding) holds for this long; resolution time is the start of that period.",
    )
    sedation_lookback_hours: float = Field(
        default=12.0,
        ge=0,
        description="[parameter] a sedative given within this time before an assessment "
        "(inclusive), or 'sedated' on the assessment, makes depressed consciousness "
        "not assessable (ASTCT 2019: not attributable to sedating medication).",
    )
    exclude_findings_with_intracranial_hemorrhage: bool = Field(
        default=True,
        description="[parameter] reference §2: intracranial haemorrhage is excluded from "
        "ICANS, so findings recorded with it are not graded (grade 0) pending adjudication; "
        "false grades them provisionally (reference §0.3). Either way a question is raised.",
    )


def ice_grade(score: int) -> int:
    """ASTCT 2019 ICE domain of an arousable patient: 10 -> 0, 7-9 -> 1, 3-6 -> 2, 0-2 -> 3."""
    if score >= 10:
        return 0
    if score >= 7:
        return 1
    if score >= 3:
        return 2
    return 3


@dataclass(frozen=True)
class ICANSBasis:
    """Why a grade holds: what each domain showed and what decided it.

    ``ice_score`` is the score graded (0 when ICE was not performable because the
    patient was unarousable or globally aphasic; None when ICE was not assessable);
    ``domain_grades`` holds each graded domain's grade, including carried-forward ones.
    """

    ice_score: int | None = None
    ice_items: dict[str, int] | None = None
    ice_unable_reason: str | None = None
    consciousness: Consciousness | None = None
    seizure: Seizure = "none"
    motor_weakness: MotorWeakness = "none"
    cerebral_edema: CerebralEdema = "none"
    raised_icp_signs: tuple[str, ...] = ()
    not_assessable: tuple[Domain, ...] = ()
    carried_forward: tuple[Domain, ...] = ()
    sedated_by: str | None = None
    excluded_by: str | None = None
    domain_grades: dict[Domain, int] = field(default_factory=dict)

    def explain(self, grade: int) -> str:
        if grade == 5:
            return "death attributed to ICANS"
        if self.excluded_by is not None:
            return (
                f"neurological findings not graded as ICANS: {self.excluded_by.replace('_', ' ')} "
                "(graded with CTCAE)"
            )
        parts = [
            self._describe(domain)
            for domain in _DOMAIN_ORDER
            if self.domain_grades.get(domain, 0) > 0
        ]
        if not parts and self.not_assessable:
            parts.append("no finding in the assessable domains")
        elif not parts:
            ice = " (ICE 10/10, no other finding)" if self.ice_score == 10 else ""
            parts.append(f"ICANS criteria not met{ice}")
        if self.not_assessable:
            parts.append(
                "not assessable: " + ", ".join(self._why_not(d) for d in self.not_assessable)
            )
        elif self.sedated_by is not None:
            parts.append(f"under sedation: {self.sedated_by}")
        return "; ".join(parts)

    def _describe(self, domain: Domain) -> str:
        grade = self.domain_grades[domain]
        if domain in self.carried_forward:
            return f"{_DOMAIN_LABEL[domain]} grade {grade} carried forward"
        if domain == "ice":
            reason = (
                f", {self.ice_unable_reason.replace('_', ' ')}" if self.ice_unable_reason else ""
            )
            text = f"ICE {self.ice_score}/10{reason}"
        elif domain == "consciousness":
            text = f"consciousness: {(self.consciousness or '').replace('_', ' ')}"
        elif domain == "seizure":
            text = f"seizure: {self.seizure.replace('_', ' ')}"
        elif domain == "motor_weakness":
            text = "deep focal motor weakness"
        elif domain == "cerebral_edema":
            text = f"{self.cerebral_edema} cerebral oedema"
        else:
            text = "raised ICP: " + ", ".join(s.replace("_", " ") for s in self.raised_icp_signs)
        return f"{text} (grade {grade})"

    def _why_not(self, domain: Domain) -> str:
        if domain == "consciousness" or (
            domain == "ice" and self.consciousness == "unarousable" and self.sedated_by
        ):
            return f"{_DOMAIN_LABEL[domain]} (sedation: {self.sedated_by})"
        reason = self.ice_unable_reason or "not recorded"
        return f"ICE ({reason.replace('_', ' ')})"


@dataclass(frozen=True)
class ICANSChange:
    """The ICANS grade changed at ``at`` (always inside an episode)."""

    at: datetime
    episode: int
    grade: int
    previous_grade: int
    basis: ICANSBasis
    caused_by: tuple[str, ...]
    provisional: bool


@dataclass(frozen=True)
class ICANSEpisode:
    number: int
    onset_at: datetime
    max_grade: int
    resolved_at: datetime | None
    onset_caused_by: tuple[str, ...]


@dataclass(frozen=True)
class ICANSDerivation:
    changes: tuple[ICANSChange, ...]
    episodes: tuple[ICANSEpisode, ...]
    questions: tuple[AdjudicationQuestion, ...]
    next_wake_at: datetime | None

    def grade_at(self, at: datetime) -> int:
        return grade_at(self.changes, at)


def grade_at(changes: Sequence[ICANSChange], at: datetime) -> int:
    """The grade in force at ``at`` (the last change at or before it)."""
    grade = 0
    for change in changes:
        if change.at > at:
            break
        grade = change.grade
    return grade


# ---------------------------------------------------------------- one assessment


@dataclass(frozen=True)
class Reading:
    """The domains of one assessment, before carry-forward and exclusion.

    ``grades`` has every assessable domain (0 = no finding); ``not_assessable`` the
    domains that could not be graded.
    """

    grades: dict[Domain, int]
    not_assessable: tuple[Domain, ...]
    ice_score: int | None
    consciousness: Consciousness | None
    inconsistencies: tuple[str, ...]

    @property
    def grade(self) -> int:
        return max(self.grades.values(), default=0)

    @property
    def has_findings(self) -> bool:
        return self.grade > 0 or bool(self.not_assessable)


_IceReading = tuple[int | None, int | None]  # (score graded, grade); grade None = not assessable


def _ice_unable(reason: str, *, sedated: bool) -> _IceReading:
    if reason == "unarousable":
        return (None, None) if sedated else (0, 4)
    if reason == "global_aphasia":
        return 0, _ICE_MAX_AROUSABLE
    return None, None


def _ice_domain(
    measured: int | None, unable: str | None, consciousness: str | None, *, sedated: bool
) -> _IceReading:
    """ICE 0 while awake (incl. global aphasia) -> 3; ICE 0 because unarousable -> 4."""
    readings: list[_IceReading] = []
    if measured is not None and (unable is None or measured > 0):
        if measured == 0 and consciousness == "unarousable":
            readings.append(_ice_unable("unarousable", sedated=sedated))
        else:
            readings.append((measured, ice_grade(measured)))
    if unable is not None:
        readings.append(_ice_unable(unable, sedated=sedated))
    elif measured is None and consciousness == "unarousable":
        readings.append(_ice_unable("unarousable", sedated=sedated))
    return max(readings, key=lambda r: -1 if r[1] is None else r[1], default=(None, None))


def read_assessment(data: NeuroAssessed, *, sedated: bool) -> Reading:
    """Grade each ASTCT 2019 domain of one assessment (reference §2)."""
    unable = data.ice_unable_reason
    measured = data.ice_items.total if data.ice_items is not None else data.ice_score
    consciousness: Consciousness | None = data.consciousness
    inconsistencies: list[str] = []
    if unable == "unarousable":
        if consciousness not in (None, "unarousable"):
            inconsistencies.append(f"ICE unable because unarousable, consciousness {consciousness}")
        consciousness = "unarousable"
    if unable is not None and measured:
        inconsistencies.append(f"ICE {measured}/10 recorded with ICE unable reason {unable}")
    grades: dict[Domain, int] = {}
    not_assessable: list[Domain] = []
    ice_score, ice = _ice_domain(measured, unable, consciousness, sedated=sedated)
    if ice is None:
        not_assessable.append("ice")
    else:
        grades["ice"] = ice
    if sedated and consciousness not in (None, "awake"):
        not_assessable.append("consciousness")
    else:
        grades["consciousness"] = CONSCIOUSNESS_GRADE[consciousness or "awake"]
    grades["seizure"] = SEIZURE_GRADE[data.seizure or "none"]
    grades["motor_weakness"] = MOTOR_WEAKNESS_GRADE[data.motor_weakness or "none"]
    grades["cerebral_edema"] = CEREBRAL_EDEMA_GRADE[data.cerebral_edema or "none"]
    grades["raised_icp"] = RAISED_ICP_GRADE if data.raised_icp_signs else 0
    return Reading(grades, tuple(not_assessable), ice_score, consciousness, tuple(inconsistencies))


# ---------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class _Sedation:
    source: str
    event_id: str | None


@dataclass
class _Episode:
    number: int
    onset_at: datetime
    onset_caused_by: tuple[str, ...]
    max_grade: int = 0
    quiet_since: datetime | None = None
    resolved_at: datetime | None = None
    questions: int = 0


class _Sweep:
    def __init__(
        self, params: ICANSParameters, infusion_at: datetime | None, as_of: datetime
    ) -> None:
        self.params = params
        self.infusion_at = infusion_at
        self.as_of = as_of
        self.sedatives: list[tuple[datetime, str, str]] = []
        self.last_assessed: dict[Domain, tuple[int, str]] = {}
        self.episodes: list[_Episode] = []
        self.current: _Episode | None = None
        self.changes: list[ICANSChange] = []
        self.questions: dict[str, AdjudicationQuestion] = {}
        self.grade = 0
        self.unassessable_since: datetime | None = None
        self.dead = False

    def apply(self, at: datetime, entries: Sequence[TimelineEntry]) -> None:
        """Apply every observation at the instant ``at`` (arrival order breaks ties;
        the last assessment at an instant is the one that counts)."""
        assessment: tuple[TimelineEntry, NeuroAssessed] | None = None
        death: tuple[TimelineEntry, DeathReported] | None = None
        for entry in entries:
            data = entry.data
            if isinstance(data, MedicationAdministered) and data.drug_class == "sedative":
                self.sedatives.append((entry.at, data.drug, entry.event_id))
            elif isinstance(data, NeuroAssessed):
                assessment = (entry, data)
            elif isinstance(data, DeathReported):
                death = (entry, data)
        if self.dead or not self._after_infusion(at):
            return
        self._resolve_if_quiet_long_enough(at)
        if assessment is not None:
            self._assess(*assessment)
        if death is not None:
            self._settle_death(*death)

    def _after_infusion(self, at: datetime) -> bool:
        return self.infusion_at is not None and at >= self.infusion_at

    def _sedation(self, at: datetime, data: NeuroAssessed) -> _Sedation | None:
        lookback = timedelta(hours=self.params.sedation_lookback_hours)
        recent = [s for s in self.sedatives if at - lookback <= s[0] <= at]
        reasons: list[str] = []
        if data.sedated:
            reasons.append("sedated at assessment")
        if data.ice_unable_reason == "sedated":
            reasons.append("ICE not performable: sedated")
        event_id = None
        if recent:
            given_at, drug, event_id = recent[-1]
            reasons.append(f"{drug} at {given_at.isoformat()}")
        return _Sedation("; ".join(reasons), event_id) if reasons else None

    # -- an assessment

    def _assess(self, entry: TimelineEntry, data: NeuroAssessed) -> None:
        at = entry.at
        sedation = self._sedation(at, data)
        reading = read_assessment(data, sedated=sedation is not None)
        hemorrhage = bool(data.intracranial_hemorrhage) and reading.has_findings
        excluded = hemorrhage and self.params.exclude_findings_with_intracranial_hemorrhage
        carried = {} if excluded else self._carried(reading)
        domain_grades = dict(reading.grades)
        domain_grades.update({domain: grade for domain, (grade, _) in carried.items()})
        grade = 0 if excluded else max(domain_grades.values(), default=0)
        evidence = [entry.event_id, *(event_id for _, event_id in carried.values())]
        sedation_counted = (
            "consciousness" in reading.not_assessable or reading.grades.get("ice", 0) > 0
        )
        if sedation and sedation.event_id and sedation_counted and not excluded:
            evidence.append(sedation.event_id)
        basis = ICANSBasis(
            ice_score=reading.ice_score,
            ice_items=data.ice_items.model_dump() if data.ice_items is not None else None,
            ice_unable_reason=data.ice_unable_reason,
            consciousness=reading.consciousness,
            seizure=data.seizure or "none",
            motor_weakness=data.motor_weakness or "none",
            cerebral_edema=data.cerebral_edema or "none",
            raised_icp_signs=tuple(data.raised_icp_signs or ()),
            not_assessable=reading.not_assessable,
            carried_forward=tuple(carried),
            sedated_by=sedation.source if sedation is not None else None,
            excluded_by="intracranial_hemorrhage" if excluded else None,
            domain_grades=domain_grades,
        )
        if not excluded:
            for domain in _CARRIED_DOMAINS:
                if domain in reading.grades:
                    self.last_assessed[domain] = (reading.grades[domain], entry.event_id)
        episode = self.current
        if episode is None and grade >= 1:
            episode = self._open_episode(at, tuple(dict.fromkeys(evidence)))
        asked = self._ask_about(entry, reading, basis, grade, sedation, hemorrhage=hemorrhage)
        if episode is None:
            return
        quiet = grade == 0 and not reading.has_findings and reading.ice_score == 10
        if not quiet:
            episode.quiet_since = None
        elif episode.quiet_since is None:
            episode.quiet_since = at
        self._set_grade(at, episode, grade, basis, evidence, provisional=asked or bool(carried))

    def _carried(self, reading: Reading) -> dict[Domain, tuple[int, str]]:
        """Last assessed grade of each domain not assessable now (reference §0.6)."""
        return {
            domain: self.last_assessed[domain]
            for domain in reading.not_assessable
            if domain in self.last_assessed and self.last_assessed[domain][0] > 0
        }

    def _ask_about(
        self,
        entry: TimelineEntry,
        reading: Reading,
        basis: ICANSBasis,
        grade: int,
        sedation: _Sedation | None,
        *,
        hemorrhage: bool,
    ) -> bool:
        """Raise this assessment's questions; True when its grade awaits adjudication."""
        at, event_id = entry.at, entry.event_id
        sedative = (sedation.event_id,) if sedation and sedation.event_id else ()
        asked = False
        if reading.inconsistencies:
            asked = True
            self._ask(
                f"inconsistent:{event_id}",
                at,
                "Inconsistent neurological assessment ("
                + "; ".join(reading.inconsistencies)
                + f"): graded by the more severe reading, grade {grade}. Which is right?",
                event_id,
            )
        if hemorrhage:
            asked = True
            would_be = max(basis.domain_grades.values(), default=0)
            findings = replace(basis, excluded_by=None).explain(would_be)
            outcome = (
                "Not graded as ICANS"
                if basis.excluded_by
                else f"Graded provisionally as ICANS grade {grade}"
            )
            self._ask(
                f"hemorrhage:{event_id}",
                at,
                f"Intracranial haemorrhage with neurological findings ({findings}): "
                f"attributable to the haemorrhage (CTCAE) rather than ICANS? {outcome}.",
                event_id,
            )
            if basis.excluded_by:
                self.unassessable_since = None
                return asked
        unassessable = "consciousness" in reading.not_assessable or (
            "ice" in reading.not_assessable and reading.grade < _ICE_MAX_AROUSABLE
        )
        if unassessable:
            asked = True
            if self.unassessable_since is None:
                self.unassessable_since = at
                carried = ", last assessed grade carried forward" if basis.carried_forward else ""
                cause = (
                    " Is the depressed consciousness attributable to sedation?"
                    if "consciousness" in reading.not_assessable
                    else ""
                )
                self._ask(
                    f"not-assessable:{at.isoformat()}",
                    at,
                    f"ICANS not fully assessable ({basis.explain(grade)}). Provisional grade "
                    f"{grade}{carried}.{cause}",
                    event_id,
                    *sedative,
                )
        else:
            self.unassessable_since = None
        if sedation is not None and reading.grades.get("ice", 0) > 0:
            asked = True
            self._ask(
                f"ice-under-sedation:{event_id}",
                at,
                f"ICE {reading.ice_score}/10 performed under sedation ({sedation.source}): "
                f"attributable to ICANS or to sedation? Graded provisionally.",
                event_id,
                *sedative,
            )
        return asked

    # -- questions

    def _ask(self, key: str, at: datetime, question: str, *evidence: str) -> None:
        if key in self.questions:
            return
        episode = self.current
        if episode is not None:
            target = {"kind": "icans_episode", "id": f"ICANS-{episode.number}"}
            episode.questions += 1
        else:
            target = {"kind": "event", "id": evidence[0]}
        self.questions[key] = AdjudicationQuestion(key, at, question, target, tuple(evidence))

    # -- death, episodes, grades

    def _settle_death(self, entry: TimelineEntry, report: DeathReported) -> None:
        self.dead = True
        if not _ICANS_CAUSE.search(report.cause):
            if self.current is not None:
                self._ask(
                    f"death-in-episode:{entry.event_id}",
                    entry.at,
                    f"Death ({report.cause}) during ICANS episode {self.current.number}: "
                    "was ICANS the principal cause (grade 5)?",
                    entry.event_id,
                )
            return
        episode = self.current or self._open_episode(entry.at, (entry.event_id,))
        self._set_grade(entry.at, episode, 5, ICANSBasis(), [entry.event_id])

    def _open_episode(self, at: datetime, caused_by: tuple[str, ...]) -> _Episode:
        episode = _Episode(number=len(self.episodes) + 1, onset_at=at, onset_caused_by=caused_by)
        self.episodes.append(episode)
        self.current = episode
        return episode

    def _set_grade(
        self,
        at: datetime,
        episode: _Episode,
        grade: int,
        basis: ICANSBasis,
        evidence: list[str],
        *,
        provisional: bool = False,
    ) -> None:
        episode.max_grade = max(episode.max_grade, grade)
        if grade == self.grade and self.changes and self.changes[-1].episode == episode.number:
            return
        self.changes.append(
            ICANSChange(
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

    def _resolve_if_quiet_long_enough(self, at: datetime) -> None:
        episode = self.current
        if episode is None or episode.quiet_since is None:
            return
        if at - episode.quiet_since >= timedelta(hours=self.params.resolution_hours):
            episode.resolved_at = episode.quiet_since
            self.current = None
            self.last_assessed.clear()
            self.unassessable_since = None

    def finish(self) -> ICANSDerivation:
        if not self.dead:
            self._resolve_if_quiet_long_enough(self.as_of)
        wake = None
        if not self.dead and self.current is not None and self.current.quiet_since is not None:
            wake = self.current.quiet_since + timedelta(hours=self.params.resolution_hours)
        episodes = tuple(
            ICANSEpisode(e.number, e.onset_at, e.max_grade, e.resolved_at, e.onset_caused_by)
            for e in self.episodes
        )
        questions = tuple(sorted(self.questions.values(), key=lambda q: (q.at, q.key)))
        return ICANSDerivation(tuple(self.changes), episodes, questions, wake)


def derive_icans(
    timeline: Sequence[TimelineEntry],
    params: ICANSParameters,
    *,
    infusion_at: datetime | None,
    as_of: datetime,
) -> ICANSDerivation:
    """Derive ICANS grades, episodes and adjudication questions from a timeline.

    Only ``neuro.assessed``, sedative ``medication.administered`` and ``death.reported``
    matter, and only from the infusion on. ``as_of`` is how far the participant's
    clinical time has advanced: it decides whether a quiet period has lasted long
    enough to resolve an episode.
    """
    entries = chronological(timeline, ICANS_INPUT_TYPES)
    sweep = _Sweep(params, infusion_at, as_of)
    index = 0
    while index < len(entries):
        instant = entries[index].at
        group: list[TimelineEntry] = []
        while index < len(entries) and entries[index].at == instant:
            group.append(entries[index])
            index += 1
        sweep.apply(instant, group)
    return sweep.finish()
