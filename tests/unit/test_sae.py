"""SAE reporting clock vignettes (reference §3 SAE definition, §10 reporting clocks).

Each test is a short series of adverse-event reports whose expected clocks follow from
/work/shared/clinical/reference.md; the section is cited in each docstring. Infusion
at D0 08:00 (+08:00).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from domain.contract import DATA_MODELS
from domain.protocol import ReportingClocks
from domain.sae import (
    ReceivedEvent,
    SAEClock,
    SAEDerivation,
    death_grade5,
    sae_clocks,
    sae_reminders,
)
from domain.timeline import TimelineEntry

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


class Reports:
    """One participant's AE reports and encounters, in arrival order."""

    def __init__(self) -> None:
        self.events: list[ReceivedEvent] = []

    def record(
        self,
        type_: str,
        at: datetime,
        *,
        received_at: datetime | None = None,
        reported_at: datetime | None = None,
        **data: Any,
    ) -> str:
        seq = len(self.events) + 1
        event_id = f"ev{seq:03d}-{type_}"
        entry = TimelineEntry(event_id, type_, at, DATA_MODELS[type_](**data), seq)
        self.events.append(ReceivedEvent(entry, received_at or at, reported_at))
        return event_id

    def ae(
        self,
        received_at: datetime,
        *,
        ae_id: str = "AE-1",
        serious: bool = True,
        seriousness: tuple[str, ...] = ("hospitalization",),
        relatedness: str = "possible",
        expected: bool | None = True,
        onset_at: datetime | None = None,
        reported_at: datetime | None = None,
        **extra: Any,
    ) -> str:
        return self.record(
            "adverse_event.reported",
            onset_at or received_at,
            received_at=received_at,
            reported_at=reported_at,
            ae_id=ae_id,
            term="Pneumonia",
            grading_scale="CTCAE-5.0",
            grade=3,
            serious=serious,
            seriousness=list(seriousness) if serious else [],
            relatedness=relatedness,
            expected=expected,
            onset_at=onset_at,
            **extra,
        )

    def encounter(self, at: datetime, kind: str, *, planned: bool) -> str:
        return self.record("encounter.changed", at, kind=kind, planned=planned)

    def clocks(self, **params: Any) -> SAEDerivation:
        return sae_clocks(self.events, ReportingClocks(**params))

    def obligations(self, **params: Any) -> dict[str, SAEClock]:
        return {c.obligation: c for c in self.clocks(**params).clocks}


# ---------------------------------------------------------------- site -> sponsor


def test_sae_clock_runs_24_hours_from_awareness_not_onset():
    """Reference §10: site -> sponsor <= 24 h after awareness; clocks start at
    awareness, not at onset (onset D+1, reported D+3 10:00)."""
    reports = Reports()
    received = D0 + 3 * DAY + 2 * HOUR
    report = reports.ae(received, onset_at=D0 + DAY)
    (clock,) = reports.clocks().clocks
    assert clock.obligation == "site_to_sponsor_24h"
    assert clock.awareness_at == clock.at == received
    assert clock.deadline_at == received + 24 * HOUR
    assert clock.caused_by == (report,)


def test_awareness_is_reported_at_when_earlier_than_arrival():
    """Reference §10, contract §1: awareness is the earlier of reported_at and received_at."""
    reports = Reports()
    received = D0 + 3 * DAY
    reports.ae(received, reported_at=received - 5 * HOUR)
    (clock,) = reports.clocks().clocks
    assert clock.awareness_at == received - 5 * HOUR
    assert clock.deadline_at == received + 19 * HOUR


def test_awareness_is_arrival_when_reported_at_is_later():
    """Contract §1: the earlier of the two (a source clock ahead of ToxWatch's)."""
    reports = Reports()
    received = D0 + 3 * DAY
    reports.ae(received, reported_at=received + 10 * HOUR)
    (clock,) = reports.clocks().clocks
    assert clock.awareness_at == received


def test_a_non_serious_ae_starts_no_clock():
    """Reference §3: severity and seriousness are separate; grade 3 non-serious is no SAE."""
    reports = Reports()
    reports.ae(D0 + DAY, serious=False, relatedness="definite", expected=False)
    assert reports.clocks() == SAEDerivation((), ())


def test_the_24_hour_window_is_a_protocol_parameter():
    """Reference §10: the reporting clocks are protocol parameters (hours from awareness)."""
    reports = Reports()
    reports.ae(D0 + DAY)
    (clock,) = reports.clocks(site_to_sponsor_hours=12).clocks
    assert clock.deadline_at == D0 + DAY + 12 * HOUR


# ---------------------------------------------------------------- SUSAR


def test_life_threatening_susar_has_a_7_day_clock():
    """Reference §10: fatal or life-threatening SUSAR -> regulator <= 7 days (ICH E2A)."""
    reports = Reports()
    received = D0 + 2 * DAY
    reports.ae(received, seriousness=("life_threatening",), expected=False)
    clocks = reports.obligations()
    assert set(clocks) == {"site_to_sponsor_24h", "susar_7d"}
    assert clocks["susar_7d"].deadline_at == received + 7 * DAY


def test_fatal_susar_has_a_7_day_clock():
    """Reference §10: a fatal SUSAR (seriousness death) -> 7 days."""
    reports = Reports()
    reports.ae(D0 + 2 * DAY, seriousness=("death",), relatedness="probable", expected=False)
    assert "susar_7d" in reports.obligations()


def test_other_susar_has_a_15_day_clock():
    """Reference §10: other SUSAR -> regulator <= 15 days (21 CFR 312.32(c)(1))."""
    reports = Reports()
    received = D0 + 2 * DAY
    reports.ae(received, seriousness=("hospitalization",), expected=False)
    clocks = reports.obligations()
    assert set(clocks) == {"site_to_sponsor_24h", "susar_15d"}
    assert clocks["susar_15d"].deadline_at == received + 15 * DAY


def test_an_expected_serious_reaction_is_not_a_susar():
    """Reference §10: a serious CRS expected for the product is an SAE, not a SUSAR."""
    reports = Reports()
    reports.ae(D0 + DAY, seriousness=("life_threatening",), relatedness="definite", expected=True)
    assert set(reports.obligations()) == {"site_to_sponsor_24h"}


def test_an_unlikely_related_serious_unexpected_event_is_not_a_susar():
    """Reference §10: a SUSAR is at least possibly related; 'unlikely' is not."""
    reports = Reports()
    reports.ae(D0 + DAY, seriousness=("life_threatening",), relatedness="unlikely", expected=False)
    assert set(reports.obligations()) == {"site_to_sponsor_24h"}


def test_a_not_related_serious_unexpected_event_is_not_a_susar():
    """Reference §10: not related -> no SUSAR clock."""
    reports = Reports()
    reports.ae(D0 + DAY, relatedness="not_related", expected=False)
    derivation = reports.clocks()
    assert [c.obligation for c in derivation.clocks] == ["site_to_sponsor_24h"]
    assert derivation.questions == ()


def test_unknown_expectedness_of_a_related_sae_is_a_question():
    """Reference §9-10: expectedness is an input; when absent the engine asks."""
    reports = Reports()
    report = reports.ae(D0 + DAY, relatedness="probable", expected=None)
    derivation = reports.clocks()
    assert [c.obligation for c in derivation.clocks] == ["site_to_sponsor_24h"]
    (question,) = derivation.questions
    assert question.target == {"kind": "event", "id": report}


def test_serious_unexpected_event_related_only_to_lymphodepletion_is_a_question():
    """Reference §7, §9-10: relatedness is to the product; lymphodepletion is asked about."""
    reports = Reports()
    reports.ae(
        D0 + DAY,
        relatedness="unlikely",
        relatedness_lymphodepletion="probable",
        expected=False,
    )
    derivation = reports.clocks()
    assert [c.obligation for c in derivation.clocks] == ["site_to_sponsor_24h"]
    assert [q.key for q in derivation.questions] == ["lymphodepletion-susar:AE-1"]


# ---------------------------------------------------------------- updates


def test_an_update_making_the_ae_serious_starts_the_clock_at_the_update():
    """Contract §2 (same ae_id updates), reference §10: awareness of seriousness."""
    reports = Reports()
    reports.ae(D0 + DAY, serious=False)
    update = reports.ae(D0 + 3 * DAY)
    (clock,) = reports.clocks().clocks
    assert clock.awareness_at == D0 + 3 * DAY
    assert clock.caused_by == (update,)


def test_a_follow_up_report_does_not_restart_the_clock():
    """Reference §10: the clock starts at first awareness of the SAE."""
    reports = Reports()
    first = reports.ae(D0 + DAY)
    reports.ae(D0 + 2 * DAY, seriousness=("hospitalization", "important_medical_event"))
    (clock,) = reports.clocks().clocks
    assert clock.caused_by == (first,)


def test_an_update_to_life_threatening_starts_the_7_day_clock_then():
    """Reference §10 (ICH E2A: first knowledge that the case is life-threatening)."""
    reports = Reports()
    reports.ae(D0 + DAY, expected=False)
    reports.ae(D0 + 4 * DAY, seriousness=("life_threatening",), expected=False)
    clocks = reports.obligations()
    assert clocks["susar_15d"].deadline_at == D0 + 16 * DAY
    assert clocks["susar_7d"].deadline_at == D0 + 11 * DAY


def test_updates_apply_in_arrival_order_per_ae():
    """Contract §2: each ae_id is its own AE; a later report updates only its own."""
    reports = Reports()
    reports.ae(D0 + DAY, ae_id="AE-1", serious=False)
    reports.ae(D0 + 2 * DAY, ae_id="AE-2")
    (clock,) = reports.clocks().clocks
    assert clock.ae_id == "AE-2"


# ---------------------------------------------------------------- planned admissions


def test_hospitalisation_during_a_planned_admission_is_a_question_not_a_clock():
    """Reference §3 [parameter]: a protocol-mandated admission is not an SAE by itself."""
    reports = Reports()
    admission = reports.encounter(D0 - DAY, "admission", planned=True)
    report = reports.ae(D0 + 2 * DAY, onset_at=D0 + DAY)
    derivation = reports.clocks()
    assert derivation.clocks == ()
    (question,) = derivation.questions
    assert question.evidence == (report, admission)
    assert "protocol-mandated" in question.question


def test_planned_admission_counts_as_sae_when_the_protocol_says_so():
    """Reference §3 [parameter protocol_mandated_admission_is_sae = true]."""
    reports = Reports()
    reports.encounter(D0 - DAY, "admission", planned=True)
    reports.ae(D0 + 2 * DAY, onset_at=D0 + DAY)
    derivation = reports.clocks(protocol_mandated_admission_is_sae=True)
    assert [c.obligation for c in derivation.clocks] == ["site_to_sponsor_24h"]
    assert derivation.questions == ()


def test_another_seriousness_criterion_during_a_planned_admission_is_an_sae():
    """Reference §3: an important medical event is serious whatever the admission."""
    reports = Reports()
    reports.encounter(D0 - DAY, "admission", planned=True)
    reports.ae(D0 + DAY, seriousness=("hospitalization", "important_medical_event"))
    assert set(reports.obligations()) == {"site_to_sponsor_24h"}


def test_hospitalisation_after_the_planned_stay_ended_is_an_sae():
    """Reference §3: onset after the planned discharge -> a hospitalisation SAE."""
    reports = Reports()
    reports.encounter(D0 - DAY, "admission", planned=True)
    reports.encounter(D0 + 7 * DAY, "discharge", planned=True)
    reports.ae(D0 + 9 * DAY, onset_at=D0 + 8 * DAY)
    assert set(reports.obligations()) == {"site_to_sponsor_24h"}


def test_an_unplanned_admission_is_an_sae():
    """Reference §3: only a protocol-mandated (planned) admission is exempt."""
    reports = Reports()
    reports.encounter(D0 + DAY, "admission", planned=False)
    reports.ae(D0 + DAY + HOUR, onset_at=D0 + DAY)
    assert set(reports.obligations()) == {"site_to_sponsor_24h"}


def test_a_planned_admission_ae_that_becomes_life_threatening_starts_its_clocks_then():
    """Reference §3, §10: the update adds a criterion beyond hospitalisation."""
    reports = Reports()
    reports.encounter(D0 - DAY, "admission", planned=True)
    reports.ae(D0 + DAY, onset_at=D0 + DAY, expected=False)
    reports.ae(
        D0 + 2 * DAY,
        onset_at=D0 + DAY,
        seriousness=("hospitalization", "life_threatening"),
        expected=False,
    )
    clocks = reports.obligations()
    assert set(clocks) == {"site_to_sponsor_24h", "susar_7d"}
    assert clocks["site_to_sponsor_24h"].awareness_at == D0 + 2 * DAY


# ---------------------------------------------------------------- reminders


def clock(awareness: datetime, hours: float = 24) -> SAEClock:
    return SAEClock(
        awareness, "AE-1", "site_to_sponsor_24h", awareness, awareness + hours * HOUR, ("ev",)
    )


def test_reminders_are_due_before_and_at_the_deadline():
    """Reference §10 [parameter reminder_hours_before = (12, 2)]: 12 h and 2 h before the
    deadline, and at it."""
    started = clock(D0)
    deadline = D0 + 24 * HOUR
    reminders = sae_reminders([started], (12.0, 2.0), deadline)
    assert [(r.at, r.hours_before) for r in reminders] == [
        (deadline - 12 * HOUR, 12.0),
        (deadline - 2 * HOUR, 2.0),
        (deadline, 0.0),
    ]


def test_only_reminders_due_by_as_of_are_returned():
    """Reference §10: a reminder is due at its time, not before (as_of inclusive)."""
    started = clock(D0)
    assert sae_reminders([started], (12.0, 2.0), D0 + 11 * HOUR) == ()
    (due,) = sae_reminders([started], (12.0, 2.0), D0 + 12 * HOUR)
    assert due.hours_before == 12.0
    almost = D0 + 23 * HOUR + timedelta(minutes=59)
    assert len(sae_reminders([started], (12.0, 2.0), almost)) == 2


def test_a_reminder_before_the_clock_started_is_skipped():
    """Reference §10: a 48 h reminder of a 24 h clock would precede awareness."""
    reminders = sae_reminders([clock(D0)], (48.0, 2.0), D0 + 30 * HOUR)
    assert [r.hours_before for r in reminders] == [2.0, 0.0]


def test_reminders_of_derived_clocks_carry_their_obligation():
    """Reference §10: a 7-day SUSAR clock reminds 12 h and 2 h before its deadline."""
    reports = Reports()
    reports.ae(D0, seriousness=("life_threatening",), expected=False)
    clocks = reports.clocks().clocks
    reminders = sae_reminders(clocks, ReportingClocks().reminder_hours_before, D0 + 7 * DAY)
    assert [(r.obligation, r.hours_before) for r in reminders] == [
        ("site_to_sponsor_24h", 12.0),
        ("site_to_sponsor_24h", 2.0),
        ("site_to_sponsor_24h", 0.0),
        ("susar_7d", 12.0),
        ("susar_7d", 2.0),
        ("susar_7d", 0.0),
    ]


# ---------------------------------------------------------------- death


def death(cause: str, event_id: str = "ev-death") -> TimelineEntry:
    data = DATA_MODELS["death.reported"](cause=cause, attributed_to="product")
    return TimelineEntry(event_id, "death.reported", D0 + 10 * DAY, data, 1)


def test_a_death_naming_a_graded_term_is_grade_5_of_that_term():
    """Reference §1, §3 (grade 5 = death due to the toxicity); CRS named in full."""
    grading = death_grade5([death("Cytokine release syndrome")], ["CRS", "Anemia"])
    (grade,) = grading.grades
    assert (grade.term, grade.grade, grade.at) == ("CRS", 5, D0 + 10 * DAY)
    assert grade.caused_by == ("ev-death",)
    assert grading.questions == ()


def test_a_death_naming_a_ctcae_term_maps_case_insensitively():
    """Reference §3: 'febrile neutropenia' in the cause -> Febrile neutropenia grade 5."""
    grading = death_grade5([death("sepsis after febrile neutropenia")], ["Febrile neutropenia"])
    assert [g.term for g in grading.grades] == ["Febrile neutropenia"]


def test_a_death_naming_no_graded_term_is_a_question():
    """Reference §9: attribution needs judgement; the engine asks."""
    grading = death_grade5([death("Pulmonary embolism")], ["CRS", "ICANS"])
    assert grading.grades == ()
    (question,) = grading.questions
    assert question.target == {"kind": "event", "id": "ev-death"}


def test_a_death_naming_two_graded_terms_is_a_question():
    """Reference §9: CRS and ICANS both named -> which toxicity is grade 5?"""
    grading = death_grade5([death("CRS with ICANS")], ["CRS", "ICANS"])
    assert grading.grades == ()
    assert "several" in grading.questions[0].question
