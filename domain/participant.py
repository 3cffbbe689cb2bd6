"""The Participant aggregate (architecture decision 1).

It records every accepted clinical event of one participant, ignores a repeated
``event_id``, keeps the clinical timeline (with corrections and voids applied) and
derives the safety events of the contract from it with the pure grading functions.

Derivation is re-run over the whole timeline after each recorded event and compared
with what was already published, so the result does not depend on how events were
batched, and a late or corrected record that changes the past yields
``grade.revised`` (reference §0.4).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache, partial
from typing import Any, ClassVar, TypeVar, cast
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate
from pydantic import BaseModel, ValidationError

from domain.adverse_events import (
    Adjusted,
    EpisodeKind,
    ReportedAE,
    adjudicate_episodes,
    episode_decisions,
    event_attributions,
    event_decisions,
    grade_discrepancy,
    is_special_term,
    reported_aes,
    same_term,
    term_course,
)
from domain.contract import (
    DATA_MODELS,
    AdjudicationRecorded,
    AdverseEventReported,
    ClinicalEvent,
    DeathReported,
    InfusionAdministered,
    LabResulted,
    ParticipantEnrolled,
    RecordCorrected,
    RecordVoided,
    SafetyEvent,
    VitalsRecorded,
    parse_recorded,
)
from domain.crs import CRS_INPUT_TYPES, CRSDerivation, CRSEpisode, crs_sweep, derive_crs
from domain.ctcae import (
    CTCAE_INPUT_TYPES,
    FEVER_TERM,
    CTCAEVersion,
    ToxicitySweep,
    lab_baselines,
)
from domain.ctcae import TERMS as CTCAE_TERMS
from domain.dlt import (
    Category,
    Death,
    DLTEvaluation,
    GradeStep,
    Overturn,
    TermCourse,
    evaluate_dlt,
)
from domain.gates import Deviation, check_pre_infusion, reads_vitals_at
from domain.icaht import ICAHTDerivation, derive_icaht
from domain.icans import ICANS_INPUT_TYPES, ICANSDerivation, ICANSEpisode, derive_icans
from domain.protocol import DLTParameters, ProtocolParameters, study_day
from domain.sae import (
    DeathGrade,
    DeathGrading,
    ReceivedEvent,
    SAEClock,
    SAEReminder,
    death_grade5,
    next_reminder_at,
    sae_clocks,
    sae_reminders,
)
from domain.screens import (
    FEVER_C,
    FN_INPUT_TYPES,
    FN_TERM,
    FNEpisode,
    fn_sweep,
    iechs_screen,
)
from domain.timeline import (
    AdjudicationQuestion,
    Chronological,
    Resumable,
    Sweep,
    Timeline,
    TimelineEntry,
    arrived,
    chronological,
    group,
)

NAMESPACE = uuid5(NAMESPACE_URL, "https://toxwatch.example/ns")
T = TypeVar("T")
S = TypeVar("S", bound=Sweep)


@lru_cache(maxsize=65536)
def participant_aggregate_id(trial_id: str, participant_id: str) -> UUID:
    """Deterministic aggregate id of a participant record."""
    return uuid5(NAMESPACE, f"participant/{trial_id}/{participant_id}")


class SafetyEventRecorded(Aggregate.Event):
    """Base of every derived safety event (contract §3) an aggregate records."""

    contract_type: ClassVar[str]
    trial_id: str
    participant_id: str
    dose_level: str | None
    effective_at: datetime
    caused_by: list[str]
    data: dict[str, Any]

    def to_contract(self) -> SafetyEvent:
        return SafetyEvent(
            event_id=str(uuid5(self.originator_id, str(self.originator_version))),
            type=self.contract_type,
            trial_id=self.trial_id,
            participant_id=self.participant_id,
            dose_level=self.dose_level,
            effective_at=self.effective_at,
            recorded_at=self.timestamp,
            caused_by=self.caused_by,
            data=self.data,
        )


ALL_SYSTEMS = frozenset(
    {"CRS", "ICANS", "ICAHT", "CTCAE", "GATES", "SAE", "FN", "IECHS", "AE", "DLT"}
)
#: Systems whose published grades the DLT rules read.
_GRADING_SYSTEMS = frozenset({"CRS", "ICANS", "CTCAE", "FN", "AE"})
#: Investigator reports, deaths and committee decisions.
_AE_TYPES = frozenset({"adverse_event.reported", "death.reported", "adjudication.recorded"})
_DLT_TYPES = frozenset(
    {"adverse_event.reported", "death.reported", "participant.withdrawn", "adjudication.recorded"}
)
#: The timeline entries the DLT evaluation reads besides the published grades.
_DLT_INPUT_TYPES = ("death.reported", "participant.withdrawn", "adjudication.recorded")
_GATE_TYPES = frozenset({"eligibility.confirmed", "lymphodepletion.administered"})
_SAE_TYPES = frozenset({"adverse_event.reported", "encounter.changed", "adjudication.recorded"})
_IECHS_ANALYTES = frozenset(
    {"anc", "platelets", "hemoglobin", "ferritin", "fibrinogen", "alt", "ast"}
)
#: The terms the CTCAE lab and temperature grading publishes (either version).
_CTCAE_TERM_NAMES = frozenset(
    {term for by_analyte in CTCAE_TERMS.values() for term in by_analyte.values()} | {FEVER_TERM}
)
#: Event types that can change every derivation (the timeline's frame, or any record).
_FRAME_TYPES = frozenset(
    {
        "participant.enrolled",
        "lymphodepletion.administered",
        "infusion.administered",
        "record.corrected",
        "record.voided",
    }
)


def _systems_for(event: ClinicalEvent) -> frozenset[str]:
    """The rule systems whose derivation the arrival of ``event`` can change (others
    change only with time, through a due clock tick)."""
    if event.type in _FRAME_TYPES:
        return ALL_SYSTEMS
    systems = set()
    if event.type in CRS_INPUT_TYPES:
        systems.add("CRS")
    if event.type in ICANS_INPUT_TYPES:
        systems.add("ICANS")
    if isinstance(event.data, LabResulted):
        systems.add("CTCAE")
        if event.data.analyte == "anc":
            systems |= {"ICAHT", "FN"}
        if event.data.analyte in _IECHS_ANALYTES:
            systems.add("IECHS")
    if isinstance(event.data, VitalsRecorded) and event.data.temperature_c is not None:
        systems |= {"CTCAE", "FN", "GATES"}
    if event.type in _GATE_TYPES:
        systems.add("GATES")
    if event.type in _SAE_TYPES:
        systems.add("SAE")
    if event.type in _AE_TYPES:
        # A death can be grade 5 of any term; a committee decision can change an episode.
        systems |= (
            {"AE", "CTCAE", "CRS", "ICANS"} if event.type != "adverse_event.reported" else {"AE"}
        )
    if systems & _GRADING_SYSTEMS or event.type in _DLT_TYPES:
        systems.add("DLT")
    return frozenset(systems)


def _input_kinds(entry: TimelineEntry) -> list[str]:
    """The kinds of input an entry is: its type, and the ``subject:`` of a CTCAE
    result (an analyte, or temperature)."""
    subject = _ctcae_subject(entry.data)
    if subject is None:
        return [entry.type]
    return [entry.type, f"subject:{subject}", "subject:*"]


def _entry_subject(entry: TimelineEntry) -> str | None:
    return _ctcae_subject(entry.data)


def _ctcae_subject(entry_data: BaseModel) -> str | None:
    """What a CTCAE derivation is about: an analyte, or temperature (Fever)."""
    if isinstance(entry_data, LabResulted):
        return entry_data.analyte
    if isinstance(entry_data, VitalsRecorded) and entry_data.temperature_c is not None:
        return "temperature"
    return None


class KeyedSafetyEvent(SafetyEventRecorded):
    """A one-off finding (deviation, SAE clock, screen, DLT step), published once per
    ``data["key"]``."""

    def apply(self, aggregate: Aggregate) -> None:
        cast(Participant, aggregate).published_keys.add(self.data["key"])


_Published = tuple[datetime, int, int]  # (effective_at, episode, grade)


def _grade_from(points: list[_Published], at: datetime) -> int:
    index = bisect.bisect_right(points, (at, 10**9, 10**9))
    return points[index - 1][2] if index else 0


def _put_point(points: list[_Published], point: _Published) -> None:
    index = bisect.bisect_left(points, (point[0], -1, -1))
    while index < len(points) and points[index][0] == point[0]:
        del points[index]
    points.insert(index, point)


class Participant(Aggregate):
    """One trial participant's safety record."""

    class Registered(Aggregate.Created):
        trial_id: str
        participant_id: str
        site_id: str
        parameters: dict[str, Any]

    class ProtocolApplied(Aggregate.Event):
        """The protocol version in force for the trial changed: later derivations
        use these parameters."""

        parameters: dict[str, Any]
        effective_from: datetime | None

        def apply(self, aggregate: Aggregate) -> None:
            participant = cast(Participant, aggregate)
            participant.parameters = ProtocolParameters.model_validate(self.parameters)
            participant.parameter_schedule.append((self.effective_from, participant.parameters))
            participant._followed = None

    class WakeScheduled(Aggregate.Event):
        """When each rule system next changes with time alone, and the earliest of
        them: a clock tick before ``wake_at`` changes nothing."""

        wakes: dict[str, str | None]
        wake_at: datetime | None

        def apply(self, aggregate: Aggregate) -> None:
            participant = cast(Participant, aggregate)
            participant.wakes = {
                k: datetime.fromisoformat(v) if v else None for k, v in self.wakes.items()
            }
            participant.wake_at = self.wake_at

    class ClinicalEventRecorded(Aggregate.Event):
        event: dict[str, Any]
        received_at: datetime

        def apply(self, aggregate: Aggregate) -> None:
            cast(Participant, aggregate).apply_recorded(self.event, self.received_at)

    class Parked(Aggregate.Event):
        """An accepted event could not be applied (a defect, not bad input): the
        participant's record is held from here until a person releases it."""

        event: dict[str, Any]
        received_at: datetime
        reason: str
        position: str

        def apply(self, aggregate: Aggregate) -> None:
            participant = cast(Participant, aggregate)
            participant.parked = {
                "reason": self.reason,
                "position": self.position,
                "event_type": self.event["type"],
                "received_at": self.received_at.isoformat(),
            }
            participant.held.append((self.event, self.received_at))

    class Held(Aggregate.Event):
        """An event for a parked participant, kept unapplied in arrival order."""

        event: dict[str, Any]
        received_at: datetime

        def apply(self, aggregate: Aggregate) -> None:
            cast(Participant, aggregate).held.append((self.event, self.received_at))

    class Released(Aggregate.Event):
        """A person released a parked participant: the held events are applied next,
        in arrival order (a human action, with who, when and why)."""

        by: str
        at: datetime
        reason: str

        def apply(self, aggregate: Aggregate) -> None:
            participant = cast(Participant, aggregate)
            participant.parked = None
            participant.held = []

    class CRSGraded(SafetyEventRecorded):
        contract_type = "crs.graded"

        def apply(self, aggregate: Aggregate) -> None:
            cast(Participant, aggregate).put_published(
                "CRS", self.effective_at, self.data, self.caused_by
            )

    class CRSResolved(SafetyEventRecorded):
        contract_type = "crs.resolved"

        def apply(self, aggregate: Aggregate) -> None:
            resolved = cast(Participant, aggregate).published_resolutions
            resolved[("CRS", self.data["episode"])] = self.data["resolved_at"]

    class ICANSGraded(SafetyEventRecorded):
        contract_type = "icans.graded"

        def apply(self, aggregate: Aggregate) -> None:
            cast(Participant, aggregate).put_published(
                "ICANS", self.effective_at, self.data, self.caused_by
            )

    class ICANSResolved(SafetyEventRecorded):
        contract_type = "icans.resolved"

        def apply(self, aggregate: Aggregate) -> None:
            resolved = cast(Participant, aggregate).published_resolutions
            resolved[("ICANS", self.data["episode"])] = self.data["resolved_at"]

    class ICAHTGraded(SafetyEventRecorded):
        contract_type = "icaht.graded"

        def apply(self, aggregate: Aggregate) -> None:
            term = f"ICAHT {self.data['phase']}"
            cast(Participant, aggregate).put_published(
                term, self.effective_at, self.data, self.caused_by
            )

    class ToxicityGraded(SafetyEventRecorded):
        contract_type = "toxicity.graded"

        def apply(self, aggregate: Aggregate) -> None:
            participant = cast(Participant, aggregate)
            participant.put_published(
                self.data["term"], self.effective_at, self.data, self.caused_by
            )

    class ProtocolDeviationFound(KeyedSafetyEvent):
        contract_type = "protocol.deviation"

    class SAEClockStarted(KeyedSafetyEvent):
        contract_type = "sae.clock_started"

    class SAEReminderDue(KeyedSafetyEvent):
        contract_type = "sae.reminder_due"

    class IECHSScreenPositive(KeyedSafetyEvent):
        contract_type = "iechs.screen_positive"

    class DLTWindowOpened(KeyedSafetyEvent):
        contract_type = "dlt.window_opened"

    class DLTCandidateRaised(KeyedSafetyEvent):
        contract_type = "dlt.candidate"

    class DLTConfirmed(KeyedSafetyEvent):
        contract_type = "dlt.confirmed"

    class DLTRuledOut(KeyedSafetyEvent):
        contract_type = "dlt.ruled_out"

    class DLTWindowClosed(KeyedSafetyEvent):
        contract_type = "dlt.window_closed"

    class GradeRevised(SafetyEventRecorded):
        contract_type = "grade.revised"

        def apply(self, aggregate: Aggregate) -> None:
            participant = cast(Participant, aggregate)
            term = self.data["term"]
            if self.data.get("resolution_withdrawn"):
                participant.published_resolutions.pop((term, self.data["episode"]), None)
            data = {"episode": self.data.get("episode", 0), "grade": self.data["to_grade"]}
            participant.put_published(term, self.effective_at, data, self.caused_by)

    class AdjudicationRequested(SafetyEventRecorded):
        contract_type = "adjudication.requested"

        def apply(self, aggregate: Aggregate) -> None:
            cast(Participant, aggregate).published_questions.add(self.data["key"])

    #: Reuse earlier derivations: resume the rules' sweeps where they stopped while
    #: only later entries arrived (``Resumable``), and keep the last DLT evaluation
    #: while nothing it is made from has changed and clinical time has not reached its
    #: next wake (``_DLTMemo``). False derives everything afresh after every event
    #: (the tests compare the two).
    reuse_earlier_derivations = True

    def __init__(
        self, trial_id: str, participant_id: str, site_id: str, parameters: dict[str, Any]
    ) -> None:
        self.trial_id = trial_id
        self.participant_id = participant_id
        self.site_id = site_id
        self.parameters = ProtocolParameters.model_validate(parameters)
        #: Each protocol version with the clinical time after which it is in force.
        self.parameter_schedule: list[tuple[datetime | None, ProtocolParameters]] = [
            (None, self.parameters)
        ]
        self.entries: list[TimelineEntry] = []
        #: The latest clinical time of each kind of input (see ``_input_kinds``).
        self.latest_inputs: dict[str, datetime] = {}
        self._effective: tuple[Timeline, list[AdjudicationQuestion]] | None = None
        self.seen: set[str] = set()
        self.corrections: dict[str, RecordCorrected] = {}
        self.voided: set[str] = set()
        self.horizon: datetime | None = None
        #: What was published, per term: the grade timeline consumers were told.
        self.published: dict[str, list[_Published]] = {}
        self.evidence: dict[tuple[str, datetime], tuple[str, ...]] = {}
        #: Changes of ``published``/``evidence`` (what the DLT courses are made of).
        self._published_revision = 0
        self._dlt_courses_cache: tuple[tuple[object, ...], list[TermCourse]] | None = None
        #: The last DLT evaluation, what it was made from and the clinical time it was
        #: made at (see ``_derive_dlt``).
        self._dlt_memo: _DLTMemo | None = None
        #: The rules' sweeps kept between derivations, by rule and what the sweep
        #: depends on (see ``_swept``).
        self._sweeps: dict[Hashable, Resumable[Any]] = {}
        #: The protocol object last found equal to the parameters in force (see
        #: ``follow_protocol``); None once other parameters are applied.
        self._followed: ProtocolParameters | None = None
        self.published_resolutions: dict[tuple[str, int], str] = {}
        self.published_questions: set[str] = set()
        #: Keys of the one-off findings published (deviations, SAE clocks, screens).
        self.published_keys: set[str] = set()
        #: When each recorded event arrived and when its source recorded it.
        self.awareness: dict[str, tuple[datetime, datetime | None]] = {}
        self.wake_at: datetime | None = None
        #: Why the record is parked (``Parked``), and the events held since, in order.
        self.parked: dict[str, str] | None = None
        self.held: list[tuple[dict[str, Any], datetime]] = []
        #: When each rule system next changes with time alone (as of its last derivation).
        self.wakes: dict[str, datetime | None] = {}
        self._next_wakes: dict[str, datetime | None] = {}

    def put_published(
        self, term: str, at: datetime, data: dict[str, Any], caused_by: list[str]
    ) -> None:
        _put_point(self.published.setdefault(term, []), (at, data.get("episode", 0), data["grade"]))
        self.evidence[(term, at)] = tuple(caused_by)
        self._published_revision += 1

    @classmethod
    def open(
        cls, trial_id: str, participant_id: str, site_id: str, parameters: ProtocolParameters
    ) -> Participant:
        return cls._create(
            cls.Registered,
            id=participant_aggregate_id(trial_id, participant_id),
            trial_id=trial_id,
            participant_id=participant_id,
            site_id=site_id,
            parameters=parameters.model_dump(mode="json"),
        )

    # ------------------------------------------------------------------ commands

    def follow_protocol(self, protocol: ProtocolParameters) -> None:
        """Use the trial's protocol version in force from now on."""
        if protocol is self._followed:
            return  # the same object as last time, and no other version applied since
        if protocol != self.parameters:
            self.trigger_event(
                self.ProtocolApplied,
                parameters=protocol.model_dump(mode="json"),
                effective_from=self.horizon,
            )
        self._followed = protocol

    @property
    def followed(self) -> ProtocolParameters | None:
        """The protocol object the record last followed (``follow_protocol``): handed
        the same object again, it applies nothing."""
        return self._followed

    def record(self, event: ClinicalEvent, received_at: datetime) -> bool:
        """Record an accepted clinical event and derive what follows from it.

        Returns False, recording nothing, for a repeated ``event_id`` and for a
        clock tick that no pending time-based rule is waiting for.
        """
        if event.event_id in self.seen:
            return False
        if self.parked is not None:
            if event.type == "clock.ticked" or any(
                held["event_id"] == event.event_id for held, _ in self.held
            ):
                return False  # time rules catch up on release; a repeat is a repeat
            self.trigger_event(self.Held, event=event.to_wire(), received_at=received_at)
            return True
        if event.type == "clock.ticked" and (
            self.wake_at is None or event.occurred_at < self.wake_at
        ):
            return False
        latest_before = dict(self.latest_inputs)
        self.trigger_event(
            self.ClinicalEventRecorded, event=event.to_wire(), received_at=received_at
        )
        due = self.wake_at is not None and self.horizon is not None and self.horizon >= self.wake_at
        systems = _systems_for(event) | (ALL_SYSTEMS if due else frozenset())
        if systems:
            self._derive(event, systems, latest_before)
        return True

    def park(
        self, event: ClinicalEvent, received_at: datetime, *, reason: str, position: str
    ) -> None:
        """Hold ``event``, which could not be applied, and every later one until
        :meth:`release` (the rest of the trial goes on)."""
        if self.parked is not None:
            self.trigger_event(self.Held, event=event.to_wire(), received_at=received_at)
            return
        self.trigger_event(
            self.Parked,
            event=event.to_wire(),
            received_at=received_at,
            reason=reason,
            position=position,
        )

    def release(self, *, by: str, at: datetime, reason: str) -> int:
        """Apply the held events in arrival order (after the defect was fixed); the
        number applied. An event that fails again raises: nothing is then saved."""
        if self.parked is None:
            raise ValueError("the participant is not parked")
        held = list(self.held)
        self.trigger_event(self.Released, by=by, at=at, reason=reason)
        applied = 0
        for wire, received_at in held:
            if self.record(parse_recorded(wire), received_at):
                applied += 1
        return applied

    def _swept(
        self,
        key: Hashable,
        start: Callable[[], S],
        timeline: Sequence[TimelineEntry],
        entries: Sequence[TimelineEntry],
    ) -> S:
        """The state of a rule's sweep over ``entries`` (of ``timeline``), resumed
        from the last derivation where it can be (``_kept_sweep``)."""
        state: S = (self._kept_sweep(key, start) or Resumable(start)).sweep(timeline, entries)
        return state

    def _kept_sweep(self, key: Hashable, start: Callable[[], S]) -> Resumable[S] | None:
        """The rule's sweep kept between derivations (None when earlier derivations
        are not reused). ``key`` names the rule and every value the sweep depends on
        besides the entries."""
        if not self.reuse_earlier_derivations:
            return None
        resumable = self._sweeps.get(key)
        if resumable is None:
            resumable = self._sweeps[key] = Resumable(start)
        return resumable

    def _versions(self, section: Callable[[ProtocolParameters], T]) -> list[tuple[Owns, T]]:
        """Each distinct value of a protocol ``section`` with the clinical times it
        governs: a version is in force after the clinical time (the horizon) at which
        it was applied, until the next one (architecture decision 3)."""
        schedule = self.parameter_schedule
        result: list[tuple[Owns, T]] = []
        for index, (since, parameters) in enumerate(schedule):
            until = schedule[index + 1][0] if index + 1 < len(schedule) else None
            value = section(parameters)
            if result and result[-1][1] == value:
                result[-1] = (result[-1][0].extended(until), value)
            else:
                result.append((Owns(since, until), value))
        return result

    # ------------------------------------------------------------------ state

    def apply_recorded(self, wire: dict[str, Any], received_at: datetime) -> None:
        event_type = wire["type"]
        at = datetime.fromisoformat(wire["occurred_at"])
        data = DATA_MODELS[event_type].model_validate(wire["data"], strict=False)
        entry = TimelineEntry(wire["event_id"], event_type, at, data, len(self.entries))
        self.entries.append(entry)
        self.seen.add(entry.event_id)
        reported_at = wire.get("reported_at")
        self.awareness[entry.event_id] = (
            received_at,
            datetime.fromisoformat(reported_at) if reported_at else None,
        )
        if self.horizon is None or at > self.horizon:
            self.horizon = at
        for key in _input_kinds(entry):
            if key not in self.latest_inputs or at > self.latest_inputs[key]:
                self.latest_inputs[key] = at
        if isinstance(data, RecordCorrected):
            self.corrections[data.corrects_event_id] = data
            self._effective = None
        elif isinstance(data, RecordVoided):
            self.voided.add(data.voids_event_id)
            self._effective = None
        elif entry.event_id in self.corrections or entry.event_id in self.voided:
            self._effective = None  # it was named by a correction before it arrived
        elif self._effective is not None:
            self._effective[0].append(entry)

    def effective_timeline(self) -> tuple[Timeline, list[AdjudicationQuestion]]:
        """The timeline with corrections and voids applied, and questions about
        corrections that cannot be applied (kept up to date as entries arrive; read
        only)."""
        if self._effective is None:
            self._effective = self._build_effective_timeline()
        return self._effective

    def _build_effective_timeline(
        self,
    ) -> tuple[Timeline, list[AdjudicationQuestion]]:
        timeline = Timeline()
        questions: list[AdjudicationQuestion] = []
        by_id = {entry.event_id: entry for entry in self.entries}
        for target_id in sorted(set(self.corrections) | self.voided):
            if target_id not in by_id:
                questions.append(
                    AdjudicationQuestion(
                        key=f"unknown-target:{target_id}",
                        at=self.horizon or datetime.min,
                        question=f"A correction or void names event {target_id}, "
                        "which this participant's record does not hold.",
                        target={"kind": "event", "id": target_id},
                        evidence=(target_id,),
                    )
                )
        for entry in self.entries:
            if entry.event_id in self.voided or entry.type in ("record.corrected", "record.voided"):
                continue
            correction = self.corrections.get(entry.event_id)
            if correction is not None:
                try:
                    data: BaseModel = DATA_MODELS[entry.type].model_validate(
                        correction.data, strict=False
                    )
                except ValidationError as error:
                    questions.append(
                        AdjudicationQuestion(
                            key=f"invalid-correction:{entry.event_id}",
                            at=entry.at,
                            question=f"The correction of {entry.event_id} is not valid "
                            f"{entry.type} data and was not applied: "
                            f"{error.errors()[0]['msg']}",
                            target={"kind": "event", "id": entry.event_id},
                            evidence=(entry.event_id,),
                        )
                    )
                else:
                    entry = TimelineEntry(entry.event_id, entry.type, entry.at, data, entry.seq)
            timeline.append(entry)
        return timeline, questions

    @staticmethod
    def dose_level_in(timeline: Sequence[TimelineEntry]) -> str | None:
        """The dose level given at infusion, else the one assigned at enrolment."""
        dose_level = None
        for entry in arrived(timeline, ("infusion.administered", "participant.enrolled")):
            if isinstance(entry.data, InfusionAdministered | ParticipantEnrolled):
                dose_level = entry.data.dose_level
        return dose_level

    # ------------------------------------------------------------------ derivation

    def _derive(
        self, cause: ClinicalEvent, systems: frozenset[str], latest_before: dict[str, datetime]
    ) -> None:
        """Re-derive the rule systems the event can affect and publish what changed.

        What a system had already published for a moment before the latest of its
        own inputs (other than ``cause``) is the past: changing it is a revision.
        """
        timeline, questions = self.effective_timeline()
        latest = latest_before

        def known_until(*kinds: str) -> datetime | None:
            return max((latest[k] for k in kinds if k in latest), default=None)

        infusion = next(iter(arrived(timeline, ("infusion.administered",))), None)
        infusion_at = infusion.at if infusion is not None else None
        as_of = self.horizon or cause.occurred_at
        parameters = self.parameters
        context = _Context(
            dose_level=self.dose_level_in(timeline),
            infusion_at=infusion_at,
            day_zero_is_infusion_day=parameters.day_zero_is_infusion_day,
            because=_because(cause),
            cause_id=cause.event_id,
            cause_at=cause.occurred_at,
        )
        found: list[AdjudicationQuestion] = list(questions)
        if "CRS" in systems:
            known = known_until(*CRS_INPUT_TYPES)
            found.extend(self._derive_crs(timeline, context, infusion_at, as_of, known))
        if "ICANS" in systems:
            known = known_until(*ICANS_INPUT_TYPES)
            found.extend(self._derive_icans(timeline, context, infusion_at, as_of, known))
        if "ICAHT" in systems:
            known = known_until("subject:anc")
            derived = [
                (
                    owns,
                    in_force,
                    derive_icaht(
                        timeline,
                        in_force.icaht,
                        infusion_at=infusion_at,
                        day_zero_is_infusion_day=in_force.day_zero_is_infusion_day,
                        as_of=as_of,
                    ),
                )
                for owns, in_force in self._versions(lambda p: p)
            ]
            for phase in ("early", "late"):
                points = _splice(
                    [
                        (owns, _icaht_points(icaht, phase, timeline, in_force, infusion_at))
                        for owns, in_force, icaht in derived
                    ]
                )
                self._publish_grades(f"ICAHT {phase}", self.ICAHTGraded, points, context, known)
        if "CTCAE" in systems:
            subject = _ctcae_subject(cause.data) if cause.type not in _FRAME_TYPES else None
            known = known_until(f"subject:{subject}" if subject else "subject:*")
            self._derive_ctcae(timeline, context, known, subject)
        if "GATES" in systems and not self._gates_unchanged_by(cause, timeline):
            found.extend(self._derive_gates(timeline, context))
        if "SAE" in systems:
            found.extend(self._derive_sae(timeline, context, as_of))
        if "FN" in systems:
            known = known_until("subject:anc", "subject:temperature")
            self._derive_febrile_neutropenia(timeline, context, as_of, known)
        if "IECHS" in systems:
            self._derive_iechs(timeline, context, as_of)
        if "AE" in systems:
            known = known_until(*_AE_TYPES)
            found.extend(self._derive_reported(timeline, context, known))
        if "DLT" in systems:
            found.extend(self._derive_dlt(timeline, context, as_of))
        self._publish_questions(found, context)
        wakes = self.wakes | self._next_wakes
        self._next_wakes = {}
        wake_at = min((w for w in wakes.values() if w is not None and w > as_of), default=None)
        if wakes != self.wakes or wake_at != self.wake_at:
            self.trigger_event(
                self.WakeScheduled,
                wakes={k: (v.isoformat() if v else None) for k, v in sorted(wakes.items())},
                wake_at=wake_at,
            )

    def _derive_crs(
        self,
        timeline: Sequence[TimelineEntry],
        context: _Context,
        infusion_at: datetime | None,
        as_of: datetime,
        known_until: datetime | None,
    ) -> tuple[AdjudicationQuestion, ...]:
        parameters = self.parameters
        schedule = [(since, version.crs) for since, version in self.parameter_schedule]
        kept = self._kept_sweep(
            ("CRS", tuple(schedule), infusion_at), partial(crs_sweep, schedule, infusion_at)
        )
        crs = derive_crs(timeline, schedule, infusion_at=infusion_at, as_of=as_of, resumable=kept)
        points, decided = _adjudicated(_crs_points(crs, context), timeline, "crs_episode")
        self._publish_grades("CRS", self.CRSGraded, points, context, known_until)
        self._publish_episodes(
            "CRS",
            self.CRSResolved,
            crs.episodes,
            crs.grade_at,
            context,
            {
                "criteria": "ASTCT-2019",
                "resolution_rule": "afebrile, no hypotension, off vasopressors and oxygen "
                f"for {parameters.crs.resolution_hours:g} h",
            },
        )
        self._next_wakes["CRS"] = crs.next_wake_at
        return crs.questions + decided

    def _derive_ctcae(
        self,
        timeline: Sequence[TimelineEntry],
        context: _Context,
        known_until: datetime | None,
        subject: str | None,
    ) -> None:
        """CTCAE terms from labs and temperatures (reference §3). A term depends only
        on its own analyte's results, so one new result re-derives only its terms."""
        # Treatment starts with lymphodepletion (or, if none is recorded, the infusion):
        # results before it are baseline, not toxicity (reference §3 [parameter]).
        start = next(
            (e.at for e in arrived(timeline, ("lymphodepletion.administered",))),
            context.infusion_at,
        )
        if subject is None:
            entries = Chronological(
                e for e in chronological(timeline, CTCAE_INPUT_TYPES) if _entry_subject(e)
            )
        else:
            entries = group(timeline, CTCAE_INPUT_TYPES, _entry_subject, subject)
        deaths = self._death_grades(timeline).grades
        versions = [
            (owns, self._ctcae_points(timeline, subject, entries, version, start, deaths, context))
            for owns, version in self._versions(lambda p: p.ctcae_version)
        ]
        by_term = {
            term: _splice([(owns, points.get(term, [])) for owns, points in versions])
            for term in sorted({t for _, points in versions for t in points})
        }
        if subject is None:
            terms = set(by_term) | {t for t in self.published if t in _CTCAE_TERM_NAMES}
        elif subject == "temperature":
            terms = set(by_term) | {FEVER_TERM}
        else:
            named = {
                CTCAE_TERMS[v].get(subject) for _, v in self._versions(lambda p: p.ctcae_version)
            }
            terms = set(by_term) | {t for t in named if t}
        for term in sorted(terms):
            self._publish_grades(
                term, self.ToxicityGraded, by_term.get(term, []), context, known_until
            )

    def _ctcae_points(
        self,
        timeline: Sequence[TimelineEntry],
        subject: str | None,
        entries: Sequence[TimelineEntry],
        version: CTCAEVersion,
        start: datetime | None,
        deaths: Sequence[DeathGrade],
        context: _Context,
    ) -> dict[str, list[_GradePoint]]:
        """``entries``: the results and temperatures of ``subject`` (all: None) in
        clinical order (``derive_toxicities``)."""
        changes = (
            self._swept(
                ("CTCAE", subject, version, start),
                lambda: ToxicitySweep(version, start),
                timeline,
                entries,
            ).changes
            if start is not None
            else ()
        )
        by_term: dict[str, list[_GradePoint]] = {}
        for change in changes:
            data: dict[str, Any] = {
                "term": change.term,
                "grade": change.grade,
                "criteria": change.criteria,
                "value": change.value,
                "unit": change.unit,
                "basis": dict(change.basis),
                "study_day": context.study_day(change.at),
            }
            point = _GradePoint(change.at, 0, change.grade, change.caused_by, data)
            by_term.setdefault(change.term, []).append(point)
        for death in deaths:
            if death.term in _CTCAE_TERM_NAMES:
                point = _fatal_point(death, f"CTCAE-{version}", context)
                by_term.setdefault(death.term, []).append(point)
                by_term[death.term].sort(key=lambda p: p.at)
        return by_term

    def _death_grades(
        self, timeline: Sequence[TimelineEntry], own: dict[str, list[ReportedAE]] | None = None
    ) -> DeathGrading:
        """Grade 5 of the graded term each ``death.reported`` names (CTCAE, ASTCT);
        ``own``: the investigator terms, if the caller has them."""
        deaths = arrived(timeline, ("death.reported",))
        if not deaths:
            return DeathGrading((), ())
        if own is None:
            own = _investigator_terms(reported_aes(timeline))
        terms = [*self.published, *own, "CRS", "ICANS"]
        return death_grade5(deaths, [t for t in terms if not t.startswith("ICAHT")])

    def _derive_reported(
        self, timeline: Sequence[TimelineEntry], context: _Context, known_until: datetime | None
    ) -> tuple[AdjudicationQuestion, ...]:
        """Investigator-reported AEs (``domain.adverse_events``): terms the engine does
        not grade are published as the investigator grades them; for terms it does, a
        resolved AE whose grade differs from the derived one raises a question."""
        questions: list[AdjudicationQuestion] = []
        reported = reported_aes(timeline)
        own = _investigator_terms(reported)
        for ae in reported:
            engine = _engine_term(ae.latest.term)
            if engine is not None:
                steps = [(at, grade) for at, _, grade in self.published.get(engine, ())]
                question = grade_discrepancy(ae, engine, steps)
                if question is not None:
                    questions.append(question)
        deaths = self._death_grades(timeline, own)
        questions.extend(deaths.questions)
        for term, aes in sorted(own.items()):
            latest = aes[-1].latest
            points = [
                _GradePoint(
                    step.at,
                    0,
                    step.grade,
                    step.caused_by,
                    {
                        "term": term,
                        "grade": step.grade,
                        "criteria": latest.grading_scale,
                        "value": None,
                        "unit": None,
                        "basis": {
                            "source": "investigator",
                            "ae_ids": [ae.ae_id for ae in aes],
                            "serious": any(ae.latest.serious for ae in aes),
                            "seriousness": sorted({c for ae in aes for c in ae.latest.seriousness}),
                            "relatedness": latest.relatedness,
                            "expected": latest.expected,
                        },
                        "study_day": context.study_day(step.at),
                    },
                )
                for step in term_course(aes)
            ]
            points.extend(
                _fatal_point(death, latest.grading_scale, context)
                for death in deaths.grades
                if death.term == term
            )
            points.sort(key=lambda p: p.at)
            self._publish_grades(term, self.ToxicityGraded, points, context, known_until)
        return tuple(questions)

    def _derive_gates(
        self, timeline: Sequence[TimelineEntry], context: _Context
    ) -> tuple[AdjudicationQuestion, ...]:
        """Pre-infusion gates and eligibility (reference §7)."""
        found: list[AdjudicationQuestion] = []
        for owns, pre_infusion in self._versions(lambda p: p.pre_infusion):
            check = check_pre_infusion(timeline, pre_infusion)
            found.extend(q for q in check.questions if owns(q.at))
            self._publish_deviations([d for d in check.deviations if owns(d.at)], context)
        return tuple(found)

    def _gates_unchanged_by(self, cause: ClinicalEvent, timeline: Sequence[TimelineEntry]) -> bool:
        """True for a vital sign taken after the first infusion, under one protocol
        version: the pre-infusion gates read only the vital signs up to it (reference
        §7, ``reads_vitals_at``), and their deviations and questions are published
        once each, so deriving them again would publish nothing. False when earlier
        derivations are not reused (the tests compare the two)."""
        return (
            self.reuse_earlier_derivations
            and cause.type == "vitals.recorded"
            and len(self.parameter_schedule) == 1
            and not reads_vitals_at(timeline, cause.occurred_at)
        )

    def _publish_deviations(self, deviations: Sequence[Deviation], context: _Context) -> None:
        for deviation in deviations:
            key = f"deviation:{deviation.rule}:{deviation.at.isoformat()}"
            if key not in self.published_keys:
                self._emit(
                    self.ProtocolDeviationFound,
                    context,
                    deviation.at,
                    list(deviation.caused_by),
                    {"key": key, "rule": deviation.rule, "detail": deviation.detail},
                )

    def _derive_sae(
        self, timeline: Sequence[TimelineEntry], context: _Context, as_of: datetime
    ) -> tuple[AdjudicationQuestion, ...]:
        """Reporting clocks from awareness (reference §10)."""
        received = [
            ReceivedEvent(e, *self.awareness[e.event_id]) for e in arrived(timeline, _SAE_TYPES)
        ]
        ae_of_event = {
            e.event_id: e.data.ae_id
            for e in arrived(timeline, ("adverse_event.reported",))
            if isinstance(e.data, AdverseEventReported)
        }
        decisions = {
            ae_of_event[target]: decision
            for target, decision in event_decisions(timeline).items()
            if target in ae_of_event
        }
        found: list[AdjudicationQuestion] = []
        wakes: list[datetime] = []
        for owns, reporting in self._versions(lambda p: p.reporting):
            derivation = sae_clocks(received, reporting, decisions)
            clocks = [c for c in derivation.clocks if owns(c.awareness_at)]
            self._publish_clocks(clocks, reporting.reminder_hours_before, context, as_of)
            found.extend(q for q in derivation.questions if owns(q.at))
            wake = next_reminder_at(clocks, reporting.reminder_hours_before, as_of)
            wakes.extend([wake] if wake is not None else [])
        self._next_wakes["SAE"] = min(wakes, default=None)
        return tuple(found)

    def _publish_clocks(
        self,
        clocks: Sequence[SAEClock],
        reminder_hours_before: Sequence[float],
        context: _Context,
        as_of: datetime,
    ) -> None:
        for clock in clocks:
            key = f"sae:{clock.ae_id}:{clock.obligation}"
            if key not in self.published_keys:
                self._emit(
                    self.SAEClockStarted,
                    context,
                    clock.awareness_at,
                    list(clock.caused_by),
                    {
                        "key": key,
                        "ae_id": clock.ae_id,
                        "obligation": clock.obligation,
                        "awareness_at": clock.awareness_at.isoformat(),
                        "deadline_at": clock.deadline_at.isoformat(),
                    },
                )
        # Reminders are due as clock ticks pass; one discovered late (a clock started
        # after some of its reminder times, or ticks that skipped ahead) is superseded by
        # the latest reminder due for the same clock.
        due: dict[tuple[str, str], SAEReminder] = {}
        for reminder in sae_reminders(clocks, reminder_hours_before, as_of):
            due[(reminder.ae_id, reminder.obligation)] = reminder
        for reminder in due.values():
            hours = reminder.hours_before
            self._emit_once(
                self.SAEReminderDue,
                context,
                reminder.at,
                list(reminder.caused_by),
                f"sae-reminder:{reminder.ae_id}:{reminder.obligation}:{hours:g}",
                {
                    "ae_id": reminder.ae_id,
                    "obligation": reminder.obligation,
                    "deadline_at": reminder.deadline_at.isoformat(),
                    "hours_before": hours,
                    "overdue": hours == 0,
                },
            )

    def _derive_febrile_neutropenia(
        self,
        timeline: Sequence[TimelineEntry],
        context: _Context,
        as_of: datetime,
        known_until: datetime | None,
    ) -> None:
        """Febrile neutropenia (CTCAE, reference §3) as a toxicity term."""
        parameters = self.parameters
        spliced = []
        for owns, (version, fn_params) in self._versions(
            lambda p: (p.ctcae_version, p.febrile_neutropenia)
        ):
            sweep = self._swept(
                ("FN", version, fn_params, context.infusion_at),
                partial(fn_sweep, fn_params, version, context.infusion_at),
                timeline,
                chronological(timeline, FN_INPUT_TYPES),
            )
            episodes = sweep.episodes_as_of(as_of)
            spliced.append((owns, _fn_points(episodes, context)))
        points = _splice(spliced)
        self._publish_grades(FN_TERM, self.ToxicityGraded, points, context, known_until)
        # An open episode resolves a day after its fever ended: time alone can change it.
        afebrile_since: datetime | None = None
        onset = next((e.at for e in episodes if e.resolved_at is None), None)
        if onset is not None:
            for entry in chronological(timeline, ("vitals.recorded",)):
                vitals = entry.data
                if not isinstance(vitals, VitalsRecorded) or vitals.temperature_c is None:
                    continue
                if entry.at >= onset and vitals.temperature_c >= FEVER_C:
                    afebrile_since = None
                elif entry.at >= onset and afebrile_since is None:
                    afebrile_since = entry.at
        hours = parameters.febrile_neutropenia.afebrile_hours_to_resolve
        self._next_wakes["FN"] = (
            afebrile_since + timedelta(hours=hours) if afebrile_since is not None else None
        )

    def _derive_iechs(
        self, timeline: Sequence[TimelineEntry], context: _Context, as_of: datetime
    ) -> None:
        """The IEC-HS screen (reference §5): a prompt for the investigator, once per
        CRS episode."""
        episodes = self._published_episodes("CRS")
        if not episodes:
            return
        start = next((e.at for e in arrived(timeline, ("lymphodepletion.administered",))), None)
        baseline = lab_baselines(timeline, start).get("ferritin")
        screens = [
            screen
            for owns, (iechs_params, version) in self._versions(
                lambda p: (p.iechs, p.ctcae_version)
            )
            for screen in iechs_screen(
                timeline,
                crs_episodes=episodes,
                baseline_ferritin=baseline,
                params=iechs_params,
                version=version,
            )
            if owns(screen.at)
        ]
        for screen in screens:
            key = f"iechs:{screen.crs_episode}"
            if key not in self.published_keys:
                self._emit(
                    self.IECHSScreenPositive,
                    context,
                    screen.at,
                    list(screen.caused_by),
                    {
                        "key": key,
                        "criteria_met": list(screen.criteria_met),
                        "crs_episode": screen.crs_episode,
                        "ferritin_ng_ml": screen.ferritin_ng_ml,
                    },
                )

    def _derive_dlt(
        self, timeline: Sequence[TimelineEntry], context: _Context, as_of: datetime
    ) -> tuple[AdjudicationQuestion, ...]:
        """DLT window and rules (reference §7) over the grades published so far."""
        courses = self._dlt_courses(timeline)
        inputs = (
            courses,
            timeline,
            context.infusion_at,
            *self.parameter_schedule,
            *arrived(timeline, _DLT_INPUT_TYPES),
        )
        memo = self._dlt_memo
        if self.reuse_earlier_derivations and memo is not None and memo.holds(inputs, as_of):
            return self._publish_dlt(memo.evaluation, context)
        evaluations = [
            (owns, self._evaluate_dlt(courses, timeline, context, as_of, dlt, day_zero))
            for owns, (dlt, day_zero) in self._versions(
                lambda p: (p.dlt, p.day_zero_is_infusion_day)
            )
        ]
        evaluation = _combined(evaluations, context.infusion_at)
        latest = max(
            (
                *(step.at for course in courses for step in course.steps),
                *(entry.at for entry in arrived(timeline, _DLT_INPUT_TYPES)),
            ),
            default=None,
        )
        self._dlt_memo = _DLTMemo(inputs, as_of, latest, evaluation)
        return self._publish_dlt(evaluation, context)

    def _evaluate_dlt(
        self,
        courses: list[TermCourse],
        timeline: Sequence[TimelineEntry],
        context: _Context,
        as_of: datetime,
        params: DLTParameters,
        day_zero_is_infusion_day: bool,
    ) -> DLTEvaluation:
        return evaluate_dlt(
            courses,
            params=params,
            infusion_at=context.infusion_at,
            day_zero_is_infusion_day=day_zero_is_infusion_day,
            withdrawn_at=next((e.at for e in arrived(timeline, ("participant.withdrawn",))), None),
            deaths=[
                Death(e.at, _cause_term(e.data.cause, self.published), e.data.related, e.event_id)
                for e in arrived(timeline, ("death.reported",))
                if isinstance(e.data, DeathReported)
            ],
            overturns=[
                Overturn(
                    e.data.target.id,
                    "reject" if e.data.decision == "reject" else "confirm",
                    e.data.reason or "",
                    e.at,
                    e.event_id,
                )
                for e in arrived(timeline, ("adjudication.recorded",))
                if isinstance(e.data, AdjudicationRecorded) and e.data.target.kind == "dlt"
            ],
            as_of=as_of,
        )

    def _publish_dlt(
        self, evaluation: DLTEvaluation, context: _Context
    ) -> tuple[AdjudicationQuestion, ...]:
        self._next_wakes["DLT"] = evaluation.next_wake_at
        window = evaluation.window
        if window is not None:
            self._emit_once(
                self.DLTWindowOpened,
                context,
                window.starts_at,
                [context.cause_id],
                f"dlt-window:{window.starts_at.isoformat()}",
                {
                    "starts_at": window.starts_at.isoformat(),
                    "ends_at": window.ends_at.isoformat(),
                    "day_zero_is_infusion_day": window.day_zero_is_infusion_day,
                },
            )
        for candidate in evaluation.candidates:
            detail = {
                "candidate_id": candidate.id,
                "rule": candidate.rule,
                "term": candidate.term,
                "grade": candidate.grade,
            }
            self._emit_once(
                self.DLTCandidateRaised,
                context,
                candidate.met_at,
                list(candidate.evidence),
                f"dlt-candidate:{candidate.id}",
                detail
                | {
                    "evidence": list(candidate.evidence),
                    "decide_by": candidate.decide_by.isoformat(),
                },
            )
            if candidate.status != "pending" and candidate.decided_at is not None:
                event_class = (
                    self.DLTConfirmed if candidate.status == "confirmed" else self.DLTRuledOut
                )
                self._emit_once(
                    event_class,
                    context,
                    candidate.decided_at,
                    list(candidate.decided_by or candidate.evidence),
                    f"dlt-{candidate.status}:{candidate.id}",
                    detail | {"reason": candidate.reason},
                )
        closed = evaluation.closed
        if closed is not None:
            self._emit_once(
                self.DLTWindowClosed,
                context,
                closed.at,
                [context.cause_id],
                f"dlt-closed:{closed.at.isoformat()}:{closed.evaluable}:{closed.had_dlt}",
                {"evaluable": closed.evaluable, "had_dlt": closed.had_dlt},
            )
        referrals = tuple(
            AdjudicationQuestion(
                key=f"dlt-referral:{r.term}:{r.at.isoformat()}",
                at=r.at,
                question=f"Grade {r.grade} {r.term} after the DLT window: refer to the safety "
                "review committee (reference §7).",
                target={"kind": "event", "id": r.evidence[0] if r.evidence else context.cause_id},
                evidence=r.evidence,
            )
            for r in evaluation.referrals
        )
        return evaluation.questions + referrals

    def _dlt_courses(self, timeline: Sequence[TimelineEntry]) -> list[TermCourse]:
        """Every published term's grade course, with the relatedness the investigator
        reported for it (latest report naming it) and an attribution stated by the
        committee on one of its reports. Made again only when one of these changed
        (the DLT rules run after most events; the courses seldom change)."""
        key = (
            timeline,
            self._published_revision,
            arrived(timeline, ("adverse_event.reported",)),
            arrived(timeline, ("adjudication.recorded",)),
        )
        cached = self._dlt_courses_cache
        if (
            cached is not None
            and len(cached[0]) == len(key)
            and all(a is b or a == b for a, b in zip(cached[0], key, strict=True))
        ):
            return cached[1]
        courses = self._make_dlt_courses(timeline)
        self._dlt_courses_cache = (key, courses)
        return courses

    def _make_dlt_courses(self, timeline: Sequence[TimelineEntry]) -> list[TermCourse]:
        aes = reported_aes(timeline)
        attributions = event_attributions(timeline)
        courses = []
        for term, points in sorted(self.published.items()):
            category = _dlt_category(term)
            steps = tuple(
                GradeStep(at, grade, self.evidence.get((term, at), ())) for at, _, grade in points
            )
            reports = [ae for ae in aes if same_term(ae.latest.term, term)]
            if category == "nonhematologic" and any(
                is_special_term(ae.latest.term, ae.latest.grading_scale) for ae in reports
            ):
                category = "special"  # e.g. "Nephritis" reported on the LICATS scale
            stated = [attributions[i] for ae in reports for i in ae.event_ids if i in attributions]
            courses.append(
                TermCourse(
                    term,
                    category,
                    steps,
                    relatedness=reports[-1].latest.relatedness if reports else None,
                    attributed_to=stated[-1] if stated else None,
                )
            )
        return courses

    def _emit_once(
        self,
        event_class: type[SafetyEventRecorded],
        context: _Context,
        effective_at: datetime,
        caused_by: list[str],
        key: str,
        data: dict[str, Any],
    ) -> None:
        if key not in self.published_keys:
            self._emit(event_class, context, effective_at, caused_by, {"key": key} | data)

    def _published_episodes(self, term: str) -> list[tuple[datetime, datetime | None]]:
        """The episodes of a term as published: onset and resolution, if any."""
        onsets: dict[int, datetime] = {}
        for at, episode, _ in self.published.get(term, ()):
            if episode > 0 and episode not in onsets:
                onsets[episode] = at
        resolved = self.published_resolutions
        return [
            (
                onset,
                datetime.fromisoformat(resolved[(term, n)]) if (term, n) in resolved else None,
            )
            for n, onset in sorted(onsets.items())
        ]

    def _derive_icans(
        self,
        timeline: Sequence[TimelineEntry],
        context: _Context,
        infusion_at: datetime | None,
        as_of: datetime,
        known_until: datetime | None,
    ) -> tuple[AdjudicationQuestion, ...]:
        parameters = self.parameters
        spliced = []
        for owns, icans_params in self._versions(lambda p: p.icans):
            icans = derive_icans(timeline, icans_params, infusion_at=infusion_at, as_of=as_of)
            spliced.append((owns, _icans_points(icans, context)))
        points, decided = _adjudicated(_splice(spliced), timeline, "icans_episode")
        self._publish_grades("ICANS", self.ICANSGraded, points, context, known_until)
        self._publish_episodes(
            "ICANS",
            self.ICANSResolved,
            icans.episodes,
            icans.grade_at,
            context,
            {
                "criteria": "ASTCT-2019",
                "resolution_rule": "ICE 10 with no other finding for "
                f"{parameters.icans.resolution_hours:g} h",
            },
        )
        self._next_wakes["ICANS"] = icans.next_wake_at
        return icans.questions + decided

    def _emit(
        self,
        event_class: type[SafetyEventRecorded],
        context: _Context,
        effective_at: datetime,
        caused_by: list[str],
        data: dict[str, Any],
    ) -> None:
        self.trigger_event(
            event_class,
            trial_id=self.trial_id,
            participant_id=self.participant_id,
            dose_level=context.dose_level,
            effective_at=effective_at,
            caused_by=caused_by,
            data=data,
        )

    def _publish_grades(
        self,
        term: str,
        event_class: type[SafetyEventRecorded],
        points: Sequence[_GradePoint],
        context: _Context,
        known_until: datetime | None,
    ) -> None:
        """Publish a term's derived grade timeline against what was published before.

        Where the grade of a moment already published (before ``known_until``, the
        latest input the term had been derived from)
        changed, ``grade.revised``; each change point not published before, the
        term's graded event with ``previous_grade`` = what was published for that
        moment until now.
        """
        published_before = list(self.published.get(term, ()))
        derived = [(p.at, p.episode, p.grade) for p in points]
        if derived == published_before:
            return  # every moment's grade stands as published: nothing to revise or add
        self._publish_revisions(term, published_before, derived, context, known_until)
        believed = list(published_before)
        for point in points:
            key = (point.at, point.episode, point.grade)
            index = bisect.bisect_left(published_before, key)
            if index < len(published_before) and published_before[index] == key:
                continue
            previous_grade = _grade_from(believed, point.at)
            _put_point(believed, key)
            data = dict(point.data)
            data["previous_grade"] = previous_grade
            self._emit(event_class, context, point.at, list(point.caused_by), data)

    def _publish_revisions(
        self,
        term: str,
        old: list[_Published],
        new: list[_Published],
        context: _Context,
        known_until: datetime | None,
    ) -> None:
        """``grade.revised`` wherever the published grade of a moment changed: before
        ``known_until`` when the cause is late, corrected or voided data; otherwise only
        where no new change point (published as a graded event) stands at that moment.
        A rule that decides the past only after time has passed (an episode that ends
        after a day without fever) publishes that decision as a graded event."""
        late = context.is_late(known_until)
        old_instants = {p[0] for p in old}
        new_instants = {p[0] for p in new}
        previous_pair: tuple[int, int] | None = None
        for at in sorted(old_instants | new_instants):
            pair = (_grade_from(old, at), _grade_from(new, at))
            # A committee decision is about the past: every moment it changes is revised.
            past = late and (
                context.because == "adjudication" or (known_until is not None and at < known_until)
            )
            # A published change point at this moment carries its own (now wrong) grade.
            changed = pair != previous_pair or at in old_instants
            if pair[0] != pair[1] and changed and (past or at not in new_instants):
                self._revise(term, context, at, *pair, episode=_episode_from(new, at))
            previous_pair = pair

    def _revise(
        self,
        term: str,
        context: _Context,
        at: datetime,
        from_grade: int,
        to_grade: int,
        *,
        episode: int,
        **extra: Any,
    ) -> None:
        data = {
            "term": term,
            "from_grade": from_grade,
            "to_grade": to_grade,
            "because": context.because,
            "episode": episode,
        }
        self._emit(self.GradeRevised, context, at, [context.cause_id], data | extra)

    def _publish_episodes(
        self,
        term: str,
        event_class: type[SafetyEventRecorded],
        episodes: Sequence[CRSEpisode | ICANSEpisode],
        grade_at: Callable[[datetime], int],
        context: _Context,
        rule: dict[str, Any],
    ) -> None:
        """Publish resolved episodes; withdraw a published resolution that no longer
        holds (late or corrected data) with ``grade.revised``."""
        resolved_now = {e.number: e for e in episodes if e.resolved_at is not None}
        for (published_term, number), resolved_at in sorted(self.published_resolutions.items()):
            if published_term == term and number not in resolved_now:
                at = datetime.fromisoformat(resolved_at)
                self._revise(
                    term, context, at, 0, grade_at(at), episode=number, resolution_withdrawn=True
                )
        for number, episode in sorted(resolved_now.items()):
            assert episode.resolved_at is not None  # narrowed by resolved_now
            resolved_at = episode.resolved_at.isoformat()
            if self.published_resolutions.get((term, number)) == resolved_at:
                continue
            hours = (episode.resolved_at - episode.onset_at).total_seconds() / 3600
            data = {
                "episode": number,
                "max_grade": episode.max_grade,
                "onset_at": episode.onset_at.isoformat(),
                "resolved_at": resolved_at,
                "duration_hours": round(hours, 2),
            }
            self._emit(
                event_class,
                context,
                episode.resolved_at,
                list(episode.onset_caused_by),
                data | rule,
            )

    def _publish_questions(self, questions: list[AdjudicationQuestion], context: _Context) -> None:
        for question in questions:
            if question.key in self.published_questions:
                continue
            self._emit(
                self.AdjudicationRequested,
                context,
                question.at,
                list(question.evidence),
                {
                    "key": question.key,
                    "question": question.question,
                    "target": dict(question.target),
                    "evidence": list(question.evidence),
                },
            )


@dataclass(frozen=True)
class _DLTMemo:
    """A DLT evaluation made at clinical time ``as_of`` from ``inputs`` (the grade
    courses, the timeline, the infusion, the protocol versions and the deaths,
    withdrawal and committee decisions), whose latest instant was ``latest``.

    ``evaluate_dlt`` is pure and changes with time alone only at its
    ``next_wake_at`` (the clock ticks rely on the same), so the evaluation holds
    for the same inputs at any later ``as_of`` before that wake, provided none of
    them lay after ``as_of`` (where the evaluation ignored them).
    """

    inputs: tuple[object, ...]
    as_of: datetime
    latest: datetime | None
    evaluation: DLTEvaluation

    def holds(self, inputs: tuple[object, ...], as_of: datetime) -> bool:
        wake = self.evaluation.next_wake_at
        return (
            self.as_of <= as_of
            and (wake is None or as_of < wake)
            and (self.latest is None or self.latest <= self.as_of)
            and len(inputs) == len(self.inputs)
            and all(a is b or a == b for a, b in zip(inputs, self.inputs, strict=True))
        )


@dataclass(frozen=True)
class _Context:
    dose_level: str | None
    infusion_at: datetime | None
    day_zero_is_infusion_day: bool
    because: str
    cause_id: str
    cause_at: datetime

    def is_late(self, known_until: datetime | None) -> bool:
        """Whether the cause changes the past of a term derived up to ``known_until``:
        a correction or void always, another record when it is older than that."""
        if self.because != "late_data":
            return True
        return known_until is not None and self.cause_at < known_until

    def study_day(self, at: datetime) -> int | None:
        if self.infusion_at is None:
            return None
        return study_day(
            at, self.infusion_at, day_zero_is_infusion_day=self.day_zero_is_infusion_day
        )


def _because(cause: ClinicalEvent) -> str:
    return {
        "record.corrected": "correction",
        "record.voided": "void",
        "adjudication.recorded": "adjudication",
    }.get(cause.type, "late_data")


_HEMATOLOGIC_TERMS = frozenset(
    {
        "Neutrophil count decreased",
        "Platelet count decreased",
        "Thrombocytopenia",
        "Anemia",
        "Lymphocyte count decreased",
        "White blood cell decreased",
    }
)


def _dlt_category(term: str) -> Category:
    """How the DLT rules treat a term (reference §7; exclusions are protocol data)."""
    if term == "CRS":
        return "crs"
    if term == "ICANS":
        return "icans"
    if term.startswith("ICAHT"):
        return "excluded"  # haematotoxicity counts through the CTCAE cytopenia terms
    if term in _HEMATOLOGIC_TERMS:
        return "hematologic"
    if is_special_term(term):
        return "special"  # IEC-HS, LICATS, autoimmune flare: rule 6
    return "nonhematologic"


#: The terms the engine grades from clinical data (an investigator's report of one of
#: them adds relatedness, not a second course).
_ENGINE_TERMS = ("CRS", "ICANS", FN_TERM, *sorted(_CTCAE_TERM_NAMES))


def _investigator_terms(aes: Sequence[ReportedAE]) -> dict[str, list[ReportedAE]]:
    """Reported AEs of terms the engine does not grade itself, by reported term."""
    terms: dict[str, list[ReportedAE]] = {}
    for ae in aes:
        if _engine_term(ae.latest.term) is None:
            first = next((t for t in terms if same_term(t, ae.latest.term)), ae.latest.term)
            terms.setdefault(first, []).append(ae)
    return terms


def _engine_term(term: str) -> str | None:
    return next((t for t in _ENGINE_TERMS if same_term(t, term)), None)


def _fatal_point(death: DeathGrade, criteria: str, context: _Context) -> _GradePoint:
    data = {
        "term": death.term,
        "grade": 5,
        "criteria": criteria,
        "value": None,
        "unit": None,
        "basis": {"death": death.cause},
        "study_day": context.study_day(death.at),
    }
    return _GradePoint(death.at, 0, 5, death.caused_by, data)


def _adjudicated(
    points: list[_GradePoint], timeline: Sequence[TimelineEntry], kind: EpisodeKind
) -> tuple[list[_GradePoint], tuple[AdjudicationQuestion, ...]]:
    """The episode grade points with the committee's decisions applied
    (``domain.adverse_events.adjudicate_episodes``)."""
    decisions, questions = episode_decisions(timeline, kind)
    if not decisions:
        return points, questions
    adjusted: list[Adjusted] = adjudicate_episodes(
        [(p.at, p.episode, p.grade) for p in points], decisions
    )
    result: list[_GradePoint] = []
    for point, change in zip(points, adjusted, strict=True):
        decision = change.decision
        if decision is None or change.grade == change.derived:
            new = point
        else:
            data = point.data | {
                "grade": change.grade,
                "derived_grade": change.derived,
                "adjudication": {
                    "decision": decision.decision,
                    "reason": decision.reason,
                    "event_id": decision.event_id,
                },
            }
            caused_by = (*point.caused_by, decision.event_id)
            new = _GradePoint(point.at, point.episode, change.grade, caused_by, data)
        if result and (result[-1].grade, result[-1].episode) == (new.grade, new.episode):
            continue  # the decision made this point no change
        result.append(new)
    return result, questions


def _cause_term(cause: str, published: dict[str, list[_Published]]) -> str | None:
    """The graded term a death's cause names, if exactly one."""
    words = cause.casefold()
    named = [t for t in published if t.casefold() in words]
    return named[0] if len(named) == 1 else None


@dataclass(frozen=True)
class _GradePoint:
    """A derived change of a term's grade, with its event data (less previous_grade)."""

    at: datetime
    episode: int
    grade: int
    caused_by: tuple[str, ...]
    data: dict[str, Any]


def _fn_points(episodes: Sequence[FNEpisode], context: _Context) -> list[_GradePoint]:
    points: list[_GradePoint] = []
    for episode in episodes:
        data = {
            "term": episode.term,
            "grade": episode.grade,
            "criteria": episode.criteria,
            "value": episode.anc_10e9_l,
            "unit": "10*9/L",
            "basis": {"rule": episode.basis, "temperature_c": episode.temperature_c},
            "study_day": context.study_day(episode.at),
        }
        points.append(_GradePoint(episode.at, 0, episode.grade, episode.caused_by, data))
        if episode.resolved_at is not None:
            resolved = data | {"grade": 0, "study_day": context.study_day(episode.resolved_at)}
            points.append(_GradePoint(episode.resolved_at, 0, 0, episode.caused_by, resolved))
    return points


def _combined(
    evaluations: Sequence[tuple[Owns, DLTEvaluation]], infusion_at: datetime | None
) -> DLTEvaluation:
    """One DLT evaluation from those under each protocol version: the window of the
    version in force at infusion; each candidate, referral, question and the closure
    from the version in force at its clinical time."""
    if len(evaluations) == 1:
        return evaluations[0][1]
    window = next(
        (e.window for owns, e in evaluations if infusion_at is not None and owns(infusion_at)),
        None,
    )
    closed = next(
        (e.closed for owns, e in evaluations if e.closed is not None and owns(e.closed.at)), None
    )
    wakes = [e.next_wake_at for _, e in evaluations if e.next_wake_at is not None]
    return DLTEvaluation(
        window,
        tuple(c for owns, e in evaluations for c in e.candidates if owns(c.met_at)),
        closed,
        tuple(r for owns, e in evaluations for r in e.referrals if owns(r.at)),
        tuple(q for owns, e in evaluations for q in e.questions if owns(q.at)),
        min(wakes, default=None),
    )


@dataclass(frozen=True)
class Owns:
    """The clinical times a protocol version governs: after ``since``, up to and
    including ``until`` (None: unbounded)."""

    since: datetime | None
    until: datetime | None

    def __call__(self, at: datetime) -> bool:
        return (self.since is None or at > self.since) and (self.until is None or at <= self.until)

    def extended(self, until: datetime | None) -> Owns:
        return Owns(self.since, until)


#: A version takes over just after the clinical time it was applied at.
_TAKEOVER = timedelta(microseconds=1)


def _splice(versions: Sequence[tuple[Owns, list[_GradePoint]]]) -> list[_GradePoint]:
    """One grade course from the courses derived under each protocol version: each
    version's change points in the times it governs; where a version takes over with a
    different grade in force than the one before it, a change point just after the
    takeover (so a new CTCAE version re-grades an ongoing toxicity from then on)."""
    if len(versions) == 1:
        return versions[0][1]
    result: list[_GradePoint] = []
    for owns, points in versions:
        if owns.since is not None:
            carried = [p for p in points if p.at <= owns.since][-1:]
            current = result[-1:]
            new = (carried[0].grade, carried[0].episode) if carried else (0, 0)
            old = (current[0].grade, current[0].episode) if current else (0, 0)
            if new != old:
                source = (carried or current)[0]
                at = owns.since + _TAKEOVER
                data = source.data | {"grade": new[0]}
                result.append(_GradePoint(at, new[1], new[0], source.caused_by, data))
        for point in points:
            if owns(point.at) and not (
                result and (result[-1].grade, result[-1].episode) == (point.grade, point.episode)
            ):
                result.append(point)
    return result


def _episode_from(points: list[_Published], at: datetime) -> int:
    index = bisect.bisect_right(points, (at, 10**9, 10**9))
    return points[index - 1][1] if index else 0


def _crs_points(crs: CRSDerivation, context: _Context) -> list[_GradePoint]:
    points = []
    for change in crs.changes:
        basis = change.basis
        data: dict[str, Any] = {
            "episode": change.episode,
            "grade": change.grade,
            "provisional": change.provisional,
            "criteria": "ASTCT-2019",
            "basis": {
                "fever_c": basis.fever_c,
                "fever_waived_by": basis.fever_waived_by,
                "hypotension": basis.hypotension,
                "hypoxia": basis.hypoxia,
                "vasopressors": list(basis.vasopressors),
                "oxygen_device": basis.oxygen_device,
                "flow_l_min": basis.flow_l_min,
            },
            "explanation": basis.explain(change.grade),
            "study_day": context.study_day(change.at),
        }
        points.append(_GradePoint(change.at, change.episode, change.grade, change.caused_by, data))
    return points


def _icans_points(icans: ICANSDerivation, context: _Context) -> list[_GradePoint]:
    points = []
    for change in icans.changes:
        basis = change.basis
        data: dict[str, Any] = {
            "episode": change.episode,
            "grade": change.grade,
            "provisional": change.provisional,
            "criteria": "ASTCT-2019",
            "basis": {
                "ice_score": basis.ice_score,
                "ice_items": basis.ice_items,
                "consciousness": basis.consciousness,
                "seizure": basis.seizure,
                "motor_weakness": basis.motor_weakness,
                "cerebral_edema": basis.cerebral_edema,
                "raised_icp_signs": list(basis.raised_icp_signs),
                "not_assessable": list(basis.not_assessable),
            },
            "explanation": basis.explain(change.grade),
            "study_day": context.study_day(change.at),
        }
        points.append(_GradePoint(change.at, change.episode, change.grade, change.caused_by, data))
    return points


def _icaht_points(
    icaht: ICAHTDerivation,
    phase: str,
    timeline: Sequence[TimelineEntry],
    parameters: ProtocolParameters,
    infusion_at: datetime | None,
) -> list[_GradePoint]:
    points = []
    for change in icaht.changes:
        if change.phase != phase:
            continue
        then = derive_icaht(
            timeline,
            parameters.icaht,
            infusion_at=infusion_at,
            day_zero_is_infusion_day=parameters.day_zero_is_infusion_day,
            as_of=change.at,
        )
        result = then.early if phase == "early" else then.late
        data: dict[str, Any] = {
            "phase": phase,
            "grade": change.grade,
            "criteria": "ICAHT-2023",
            "days_anc_le_0_5": result.days_anc_le_0_5 if result else 0,
            "days_anc_le_0_1": result.days_anc_le_0_1 if result else 0,
            "nadir_anc_10e9_l": result.nadir_anc_10e9_l if result else None,
        }
        points.append(_GradePoint(change.at, 0, change.grade, change.caused_by, data))
    return points
