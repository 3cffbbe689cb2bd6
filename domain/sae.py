"""SAE reporting clocks (reference §3 SAE definition, §10 reporting clocks).

Pure functions over the ``adverse_event.reported`` reports of a participant, each with
the two times that define awareness (contract §1): the source's ``reported_at`` and
ToxWatch's ``received_at``. Awareness is the earlier of the two, never the onset.

==========================  ==========================================================
obligation                  clock
==========================  ==========================================================
``site_to_sponsor_24h``     any SAE (``serious``): 24 h after awareness (ICH E6(R3),
                            EU CTR Art 41)
``susar_7d``                fatal or life-threatening (``death``/``life_threatening``)
                            SUSAR: 7 days after first knowledge (ICH E2A, 21 CFR
                            312.32(c)(2))
``susar_15d``               other SUSAR: 15 days (ICH E2A, 21 CFR 312.32(c)(1))
==========================  ==========================================================

SUSAR = serious, at least possibly related to the product (``relatedness`` >=
``possible``) and unexpected (``expected`` false; expectedness is an input, §10).

Readings:

- A later report with the same ``ae_id`` (arrival order) updates the AE. A clock starts
  at the awareness of the first report that meets its condition (an AE becoming
  serious in an update starts its clock then; an update adding death or
  life-threatening to a SUSAR starts the 7-day clock then). A clock once started is
  never withdrawn: it was published.
- Deadlines are ``awareness + hours`` (or calendar days x 24 h), in absolute time.
- **Protocol-mandated admission** (``encounter.changed`` ``planned``) is not an SAE by
  itself when ``protocol_mandated_admission_is_sae`` is false: an AE whose only
  seriousness is ``hospitalization`` and whose onset (else its ``occurred_at``) falls in
  a planned stay starts no clock and raises a question (was the stay prolonged or
  caused by the AE?).
- Questions instead of a SUSAR clock: a serious, related AE whose expectedness is not
  stated; a serious, unexpected AE related only to lymphodepletion (whether the
  lymphodepleting agents are investigational products is the protocol's call).
- **Death**: ``death_grade5`` maps a ``death.reported`` to grade 5 of the graded term
  its cause names, else asks which toxicity it is attributed to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from domain.adverse_events import names_of, normal_name
from domain.contract import AdverseEventReported, DeathReported, EncounterChanged
from domain.protocol import ReportingClocks
from domain.timeline import AdjudicationQuestion, TimelineEntry

Obligation = Literal["site_to_sponsor_24h", "susar_7d", "susar_15d"]
RELATEDNESS_ORDER: Final = ("not_related", "unlikely", "possible", "probable", "definite")
_AT_LEAST_POSSIBLE: Final = frozenset(RELATEDNESS_ORDER[2:])
_FATAL_OR_LIFE_THREATENING: Final = frozenset({"death", "life_threatening"})


@dataclass(frozen=True)
class ReceivedEvent:
    """A clinical event with its awareness times (contract §1): ``reported_at`` from the
    source (optional) and ``received_at`` stamped by ToxWatch on arrival."""

    entry: TimelineEntry
    received_at: datetime
    reported_at: datetime | None = None

    @property
    def awareness_at(self) -> datetime:
        if self.reported_at is None:
            return self.received_at
        return min(self.reported_at, self.received_at)


@dataclass(frozen=True)
class SAEClock:
    """A reporting clock started at ``at`` (contract ``sae.clock_started``)."""

    at: datetime
    ae_id: str
    obligation: Obligation
    awareness_at: datetime
    deadline_at: datetime
    caused_by: tuple[str, ...]


@dataclass(frozen=True)
class SAEDerivation:
    clocks: tuple[SAEClock, ...]
    questions: tuple[AdjudicationQuestion, ...]


@dataclass(frozen=True)
class SAEReminder:
    """A reminder of ``clock`` due at ``at``, ``hours_before`` its deadline (0 = at it)."""

    at: datetime
    ae_id: str
    obligation: Obligation
    deadline_at: datetime
    hours_before: float
    caused_by: tuple[str, ...]


def _planned_stays(
    events: Sequence[ReceivedEvent],
) -> list[tuple[datetime, datetime | None, str]]:
    """Planned (protocol-mandated) inpatient stays: (admitted, discharged, event id)."""
    encounters = sorted(
        (
            (e.entry, e.entry.data)
            for e in events
            if isinstance(e.entry.data, EncounterChanged)
            and e.entry.data.kind in ("admission", "discharge")
        ),
        key=lambda pair: pair[0].order,
    )
    stays: list[tuple[datetime, datetime | None, str]] = []
    open_stay: tuple[datetime, str] | None = None
    for entry, data in encounters:
        if data.kind == "admission" and data.planned and open_stay is None:
            open_stay = (entry.at, entry.event_id)
        elif data.kind == "discharge" and open_stay is not None:
            stays.append((open_stay[0], entry.at, open_stay[1]))
            open_stay = None
    if open_stay is not None:
        stays.append((open_stay[0], None, open_stay[1]))
    return stays


def _planned_stay_at(
    stays: Sequence[tuple[datetime, datetime | None, str]], at: datetime
) -> str | None:
    for admitted, discharged, event_id in stays:
        if admitted <= at and (discharged is None or at < discharged):
            return event_id
    return None


class _Clocks:
    def __init__(
        self,
        params: ReportingClocks,
        stays: Sequence[tuple[datetime, datetime | None, str]],
        decisions: Mapping[str, str],
    ) -> None:
        self.params = params
        self.stays = stays
        self.decisions = decisions
        self.clocks: dict[tuple[str, Obligation], SAEClock] = {}
        self.questions: dict[str, AdjudicationQuestion] = {}

    def report(self, event: ReceivedEvent, ae: AdverseEventReported) -> None:
        if not ae.serious:
            return
        entry = event.entry
        awareness = event.awareness_at
        onset = ae.onset_at or entry.at
        stay = _planned_stay_at(self.stays, onset)
        if (
            set(ae.seriousness) == {"hospitalization"}
            and stay is not None
            and not self.params.protocol_mandated_admission_is_sae
            and self.decisions.get(ae.ae_id) != "confirm"
        ):
            if self.decisions.get(ae.ae_id) == "reject":
                return  # the committee found the stay was not caused or prolonged by it
            deadline = awareness + timedelta(hours=self.params.site_to_sponsor_hours)
            self._ask(
                f"planned-admission:{ae.ae_id}",
                awareness,
                f"AE {ae.ae_id} ({ae.term}) is serious only by hospitalisation, during a "
                "protocol-mandated admission: was the stay caused or prolonged by the AE? "
                f"If so it is an SAE, due to the sponsor by {deadline.isoformat()}.",
                entry.event_id,
                stay,
            )
            return
        self._start(ae.ae_id, "site_to_sponsor_24h", event, self.params.site_to_sponsor_hours)
        self._susar(event, ae)

    def _susar(self, event: ReceivedEvent, ae: AdverseEventReported) -> None:
        related = ae.relatedness in _AT_LEAST_POSSIBLE
        if related and ae.expected is None:
            self._ask(
                f"expectedness:{ae.ae_id}",
                event.awareness_at,
                f"Serious AE {ae.ae_id} ({ae.term}) is at least possibly related but its "
                "expectedness is not stated: is it a SUSAR?",
                event.entry.event_id,
            )
            return
        if ae.expected is not False:
            return
        if not related:
            if ae.relatedness_lymphodepletion in _AT_LEAST_POSSIBLE:
                self._ask(
                    f"lymphodepletion-susar:{ae.ae_id}",
                    event.awareness_at,
                    f"Serious unexpected AE {ae.ae_id} ({ae.term}) is related to "
                    "lymphodepletion only: is it a SUSAR under this protocol?",
                    event.entry.event_id,
                )
            return
        if _FATAL_OR_LIFE_THREATENING & set(ae.seriousness):
            days = self.params.susar_fatal_or_life_threatening_days
            self._start(ae.ae_id, "susar_7d", event, days * 24)
        else:
            self._start(ae.ae_id, "susar_15d", event, self.params.susar_other_days * 24)

    def _start(
        self, ae_id: str, obligation: Obligation, event: ReceivedEvent, hours: float
    ) -> None:
        if (ae_id, obligation) in self.clocks:
            return
        awareness = event.awareness_at
        self.clocks[(ae_id, obligation)] = SAEClock(
            at=awareness,
            ae_id=ae_id,
            obligation=obligation,
            awareness_at=awareness,
            deadline_at=awareness + timedelta(hours=hours),
            caused_by=(event.entry.event_id,),
        )

    def _ask(self, key: str, at: datetime, question: str, *evidence: str) -> None:
        if key not in self.questions:
            target = {"kind": "event", "id": evidence[0]}
            self.questions[key] = AdjudicationQuestion(key, at, question, target, evidence)


def sae_clocks(
    events: Sequence[ReceivedEvent],
    params: ReportingClocks,
    planned_stay_decisions: Mapping[str, str] | None = None,
) -> SAEDerivation:
    """Reporting clocks of every SAE among ``events`` (reference §10).

    ``events`` are the participant's ``adverse_event.reported`` and ``encounter.changed``
    events (others are ignored); reports are applied in arrival order
    (``received_at``, then ``seq``). ``planned_stay_decisions`` answers, by ``ae_id``, the
    question raised for an AE serious only by a protocol-mandated stay: ``confirm`` (the
    stay was caused or prolonged by it: an SAE, its clock running from the original
    awareness) or ``reject`` (not an SAE).
    """
    clocks = _Clocks(params, _planned_stays(events), planned_stay_decisions or {})
    reports = sorted(
        ((e, e.entry.data) for e in events if isinstance(e.entry.data, AdverseEventReported)),
        key=lambda pair: (pair[0].received_at, pair[0].entry.seq),
    )
    for event, ae in reports:
        clocks.report(event, ae)
    return SAEDerivation(
        clocks=tuple(sorted(clocks.clocks.values(), key=lambda c: (c.at, c.ae_id, c.obligation))),
        questions=tuple(sorted(clocks.questions.values(), key=lambda q: (q.at, q.key))),
    )


def sae_reminders(
    clocks: Iterable[SAEClock], reminder_hours_before: Sequence[float], as_of: datetime
) -> tuple[SAEReminder, ...]:
    """Reminders due at or before ``as_of``: ``reminder_hours_before`` each deadline
    (``ReportingClocks.reminder_hours_before``) and at the deadline itself. A reminder
    that would fall before the clock started is skipped."""
    hours_before = sorted({*reminder_hours_before, 0.0}, reverse=True)
    reminders = [
        SAEReminder(
            at=clock.deadline_at - timedelta(hours=hours),
            ae_id=clock.ae_id,
            obligation=clock.obligation,
            deadline_at=clock.deadline_at,
            hours_before=hours,
            caused_by=clock.caused_by,
        )
        for clock in clocks
        for hours in hours_before
        if clock.awareness_at <= clock.deadline_at - timedelta(hours=hours) <= as_of
    ]
    return tuple(sorted(reminders, key=lambda r: (r.at, r.ae_id, r.obligation)))


def next_reminder_at(
    clocks: Iterable[SAEClock], reminder_hours_before: Sequence[float], as_of: datetime
) -> datetime | None:
    """When the next reminder after ``as_of`` falls due (the time a clock tick must
    reach for :func:`sae_reminders` to return more)."""
    hours_before = {*reminder_hours_before, 0.0}
    upcoming = [
        clock.deadline_at - timedelta(hours=hours)
        for clock in clocks
        for hours in hours_before
        if clock.deadline_at - timedelta(hours=hours) > as_of
        and clock.deadline_at - timedelta(hours=hours) >= clock.awareness_at
    ]
    return min(upcoming, default=None)


# ---------------------------------------------------------------- death


@dataclass(frozen=True)
class DeathGrade:
    """Grade 5 of ``term`` at ``at``: a death whose cause names that graded term."""

    at: datetime
    term: str
    cause: str
    caused_by: tuple[str, ...]
    grade: int = 5


@dataclass(frozen=True)
class DeathGrading:
    grades: tuple[DeathGrade, ...]
    questions: tuple[AdjudicationQuestion, ...]


def _names_in(cause: str, term: str) -> bool:
    padded = f" {normal_name(cause)} "
    return any(f" {name} " in padded for name in names_of(term))


def death_grade5(deaths: Sequence[TimelineEntry], terms_graded: Iterable[str]) -> DeathGrading:
    """Grade 5 of the graded toxicity each ``death.reported`` names in its cause
    (CTCAE and ASTCT: grade 5 is death related to the AE). A cause naming none, or
    more than one, of ``terms_graded`` raises a question instead."""
    terms = list(dict.fromkeys(terms_graded))
    grades: list[DeathGrade] = []
    questions: list[AdjudicationQuestion] = []
    for entry in sorted(deaths, key=lambda e: e.order):
        death = entry.data
        if not isinstance(death, DeathReported):
            continue
        named = [term for term in terms if _names_in(death.cause, term)]
        if len(named) == 1:
            grades.append(DeathGrade(entry.at, named[0], death.cause, (entry.event_id,)))
            continue
        which = "names none" if not named else f"names several ({', '.join(named)})"
        questions.append(
            AdjudicationQuestion(
                key=f"death-term:{entry.event_id}",
                at=entry.at,
                question=f"Death (cause '{death.cause}', attributed to {death.attributed_to}) "
                f"{which} of the graded toxicities: which toxicity is grade 5?",
                target={"kind": "event", "id": entry.event_id},
                evidence=(entry.event_id,),
            )
        )
    return DeathGrading(tuple(grades), tuple(questions))
