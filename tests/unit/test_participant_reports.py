"""The Participant with investigator reports, deaths, committee decisions and reporting
reminders (reference §3, §6, §7, §9, §10; event contract §2-3).

Each test drives one participant with clinical events and reads the safety events it
publishes; the expected result follows from /work/shared/clinical/reference.md (the
section is cited in each docstring) and the default ``ProtocolParameters()``
(28-day DLT window under Day 0 numbering, 7 days for grade 3 non-haematologic
toxicity, 24 h site-to-sponsor clock with reminders 12 h and 2 h before the deadline).
Infusion at D0 08:00 (+08:00); ``at(n, "hh:mm")`` is D+n.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from domain.contract import CLINICAL_EVENT_ADAPTER
from domain.participant import Participant, SafetyEventRecorded
from domain.protocol import DLTParameters, ProtocolParameters

TZ = timezone(timedelta(hours=8))
INFUSION = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
DEFAULT = ProtocolParameters()
SITE_TO_SPONSOR = timedelta(hours=DEFAULT.reporting.site_to_sponsor_hours)
REMINDERS_BEFORE = sorted(DEFAULT.reporting.reminder_hours_before, reverse=True)  # 12, 2
ALT = "Alanine aminotransferase increased"
AST = "Aspartate aminotransferase increased"


def at(day: int, clock: str = "08:00") -> datetime:
    hour, minute = map(int, clock.split(":"))
    return INFUSION.replace(hour=hour, minute=minute) + timedelta(days=day)


def clinical(event_id: str, type_: str, when: datetime, participant: str = "G79-001", **data: Any):
    return CLINICAL_EVENT_ADAPTER.validate_json(
        json.dumps(
            {
                "schema": "toxwatch.clinical.v1",
                "event_id": event_id,
                "type": type_,
                "trial_id": "NCT07049081",
                "site_id": "CN-001",
                "participant_id": participant,
                "occurred_at": when.isoformat(),
                "data": data,
            }
        )
    )


def tick(when: datetime):
    """A clock tick is trial-level (contract §2: participant ``-``)."""
    return clinical(f"tick-{when.isoformat()}", "clock.ticked", when, participant="-")


class Trial:
    """One participant, enrolled and infused; ``send`` records an event received at
    ``received_at`` (default: its clinical time)."""

    def __init__(self, parameters: ProtocolParameters = DEFAULT, *, infused: bool = True):
        self.participant = Participant.open("NCT07049081", "G79-001", "CN-001", parameters)
        self.send("enrol", "participant.enrolled", at(-7), disease="SLE", dose_level="DL2")
        if infused:
            self.infuse()

    def infuse(self) -> None:
        self.send("infusion", "infusion.administered", INFUSION, dose_level="DL2", cells_per_kg=2e6)

    def send(
        self, event_id: str, type_: str, when: datetime, received_at: datetime | None = None, **data
    ) -> bool:
        return self.participant.record(clinical(event_id, type_, when, **data), received_at or when)

    def ae(
        self,
        event_id: str,
        when: datetime,
        *,
        received_at: datetime | None = None,
        ae_id: str = "AE-1",
        term: str = "Pneumonia",
        grading_scale: str = "CTCAE-5.0",
        grade: int = 3,
        seriousness: tuple[str, ...] = (),
        relatedness: str = "possible",
        **extra: Any,
    ) -> bool:
        for key in ("onset_at", "resolved_at"):
            if isinstance(extra.get(key), datetime):
                extra[key] = extra[key].isoformat()
        return self.send(
            event_id,
            "adverse_event.reported",
            when,
            received_at,
            ae_id=ae_id,
            term=term,
            grading_scale=grading_scale,
            grade=grade,
            serious=bool(seriousness),
            seriousness=list(seriousness),
            relatedness=relatedness,
            **extra,
        )

    def adjudicate(self, event_id: str, when: datetime, kind: str, target_id: str, **data) -> bool:
        return self.send(
            event_id,
            "adjudication.recorded",
            when,
            target={"kind": kind, "id": target_id},
            adjudicator="SRC",
            **data,
        )

    def tick(self, when: datetime) -> bool:
        return self.participant.record(tick(when), when)

    def published(self) -> list[dict[str, Any]]:
        """The safety events published since the last call (contract §3 wire form)."""
        events = self.participant.collect_events()
        return [e.to_contract().to_wire() for e in events if isinstance(e, SafetyEventRecorded)]


def of_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_]


def keys(events: list[dict[str, Any]], type_: str) -> list[str]:
    return [e["data"]["key"] for e in of_type(events, type_)]


def grades_of(events: list[dict[str, Any]], term: str) -> list[tuple[str, int, int]]:
    return [
        (e["effective_at"], e["data"]["grade"], e["data"]["previous_grade"])
        for e in of_type(events, "toxicity.graded")
        if e["data"]["term"] == term
    ]


def dlt_rules(events: list[dict[str, Any]], type_: str) -> list[tuple[str, str, str]]:
    return [
        (e["data"]["rule"], e["data"]["term"], e["effective_at"]) for e in of_type(events, type_)
    ]


# ---------------------------------------------------------------- investigator terms


def test_an_investigator_term_is_published_with_its_scale_and_each_worsening():
    """Contract §3 ``toxicity.graded``: a term the engine cannot grade from data (here
    pneumonia, CTCAE by the investigator) is published as the investigator grades it,
    with the AE's scale; worsening 2 -> 3 on D+7 is a grade change on D+7 (§0.4)."""
    trial = Trial()
    trial.published()
    trial.ae("a1", at(5), grade=2)
    trial.ae("a2", at(7), grade=3)
    events = trial.published()
    assert grades_of(events, "Pneumonia") == [
        (at(5).isoformat(), 2, 0),
        (at(7).isoformat(), 3, 2),
    ]
    first = of_type(events, "toxicity.graded")[0]
    assert first["data"]["criteria"] == "CTCAE-5.0"
    assert first["data"]["basis"]["source"] == "investigator"
    assert first["data"]["basis"]["ae_ids"] == ["AE-1"]
    assert first["caused_by"] == ["a1"]
    assert first["data"]["study_day"] == 5


def test_a_resolved_investigator_term_returns_to_grade_0_at_its_resolution():
    """Reference §0.6: the grade holds until the charted stop (``resolved_at`` D+9 06:00,
    reported on D+10)."""
    trial = Trial()
    trial.ae("a1", at(5), grade=2)
    trial.published()
    trial.ae("a2", at(10), grade=2, resolved_at=at(9, "06:00"))
    assert grades_of(trial.published(), "Pneumonia") == [(at(9, "06:00").isoformat(), 0, 2)]


def test_a_reported_term_the_engine_grades_makes_no_second_course():
    """Reference §0.1: CRS is graded by ASTCT 2019 from the data; an investigator's
    "Cytokine release syndrome" report is not a second CRS course."""
    trial = Trial()
    trial.send("v1", "vitals.recorded", at(1, "06:00"), temperature_c=38.6)
    trial.published()
    trial.ae(
        "a1",
        at(1, "12:00"),
        term="Cytokine release syndrome",
        grading_scale="ASTCT-2019",
        grade=1,
        onset_at=at(1, "06:00"),
    )
    events = trial.published()
    assert of_type(events, "toxicity.graded") == []
    assert of_type(events, "crs.graded") == []


def test_a_serious_grade_1_is_grade_1_and_starts_the_sae_clock():
    """Reference §3: severity and seriousness are separate axes; §10: any SAE is due to
    the sponsor within 24 h of awareness (received 10:00, two hours after onset)."""
    trial = Trial()
    trial.published()
    trial.ae(
        "a1", at(5), received_at=at(5, "10:00"), grade=1, seriousness=("important_medical_event",)
    )
    events = trial.published()
    assert grades_of(events, "Pneumonia") == [(at(5).isoformat(), 1, 0)]
    (clock,) = of_type(events, "sae.clock_started")
    assert clock["data"]["obligation"] == "site_to_sponsor_24h"
    assert clock["data"]["deadline_at"] == (at(5, "10:00") + SITE_TO_SPONSOR).isoformat()


def test_a_non_serious_grade_4_is_grade_4_a_dlt_and_no_sae():
    """Reference §3: a non-serious grade 4 is still grade 4, so no reporting clock, but
    §7 rule 5: grade 4 non-haematologic toxicity, possibly related, is a DLT at once."""
    trial = Trial()
    trial.published()
    trial.ae("a1", at(5), term="Colitis", grade=4)
    events = trial.published()
    assert grades_of(events, "Colitis") == [(at(5).isoformat(), 4, 0)]
    assert of_type(events, "sae.clock_started") == []
    assert dlt_rules(events, "dlt.confirmed") == [
        ("nonhematologic_grade_4", "Colitis", at(5).isoformat())
    ]


# ---------------------------------------------------------------- DLT rule 6


def test_grade_3_iechs_on_the_last_day_of_the_window_is_a_dlt_at_onset():
    """Reference §7 rule 6: grade >= 3 IEC-HS is a DLT [parameter: counts]; D+28 23:00 is
    inside the window (through day 28 under Day 0 numbering, §0.5)."""
    trial = Trial()
    trial.published()
    trial.ae("a1", at(28, "23:00"), term="IEC-HS", grade=3)
    events = trial.published()
    onset = at(28, "23:00").isoformat()
    assert dlt_rules(events, "dlt.candidate") == [("iechs_licats_flare_grade_3", "IEC-HS", onset)]
    assert dlt_rules(events, "dlt.confirmed") == [("iechs_licats_flare_grade_3", "IEC-HS", onset)]
    (closed,) = of_type(events, "dlt.window_closed")
    assert (closed["data"]["evaluable"], closed["data"]["had_dlt"]) == (True, True)


def test_grade_3_iechs_just_after_the_window_is_referred_not_a_candidate():
    """Reference §7: the window ends at midnight after day 28; grade >= 3 after it is
    referred to the safety review committee."""
    trial = Trial()
    trial.published()
    trial.ae("a1", at(29, "00:00"), term="IEC-HS", grade=3)
    events = trial.published()
    assert of_type(events, "dlt.candidate") == []
    assert [k for k in keys(events, "adjudication.requested") if k.startswith("dlt-referral:")]


def test_grade_2_licats_is_no_dlt_candidate():
    """Reference §7 rule 6 needs grade >= 3; §6 LICATS grade 2 (glucocorticoids >= 1 week)
    is below it, and rule 5 starts at grade 3 too."""
    trial = Trial()
    trial.published()
    trial.ae("a1", at(10), term="LICATS", grading_scale="LICATS-2025", grade=2)
    assert of_type(trial.published(), "dlt.candidate") == []


def test_grade_3_licats_reported_under_its_organ_term_is_rule_6():
    """Reference §6: LICATS is an organ-specific flare, reported by investigators as an AE
    with scale LICATS-2025; grade 3 (hospitalisation) is rule 6 of §7, a DLT at once,
    whatever organ term names it."""
    trial = Trial()
    trial.published()
    trial.ae("a1", at(10), term="Nephritis", grading_scale="LICATS-2025", grade=3)
    events = trial.published()
    assert dlt_rules(events, "dlt.confirmed") == [
        ("iechs_licats_flare_grade_3", "Nephritis", at(10).isoformat())
    ]


def test_grade_3_flare_unlikely_related_is_ruled_out():
    """Reference §7: a DLT must be at least possibly related [parameter]; "unlikely" is
    below that."""
    trial = Trial()
    trial.published()
    trial.ae("a1", at(10), term="Lupus flare", grade=3, relatedness="unlikely")
    events = trial.published()
    assert dlt_rules(events, "dlt.confirmed") == []
    assert dlt_rules(events, "dlt.ruled_out") == [
        ("iechs_licats_flare_grade_3", "Lupus flare", at(10).isoformat())
    ]


NO_RULE_6 = ProtocolParameters(dlt=DLTParameters(special_grade3_counts=False))


def test_without_rule_6_a_flare_back_to_grade_2_in_6_days_is_not_a_dlt():
    """Reference §7 rule 6 is a [parameter]; off, a flare is a non-haematologic toxicity
    (rule 5): grade 3 resolving to <= 2 within 7 days (here 6) is not a DLT."""
    trial = Trial(NO_RULE_6)
    trial.published()
    trial.ae("a1", at(10), term="Lupus flare", grade=3)
    trial.ae("a2", at(16), term="Lupus flare", grade=2)
    events = trial.published()
    assert dlt_rules(events, "dlt.candidate") == [
        ("nonhematologic_grade_3_not_resolving", "Lupus flare", at(10).isoformat())
    ]
    assert dlt_rules(events, "dlt.confirmed") == []
    assert dlt_rules(events, "dlt.ruled_out") == [
        ("nonhematologic_grade_3_not_resolving", "Lupus flare", at(16).isoformat())
    ]


def test_without_rule_6_a_flare_still_grade_3_after_7_days_is_a_dlt():
    """Reference §7 rule 5: grade 3 not resolving to <= 2 within 7 days is a DLT, decided
    when the 7 days end (a clock tick at D+17); the flare is back to grade 2 only on D+18."""
    trial = Trial(NO_RULE_6)
    trial.published()
    trial.ae("a1", at(10), term="Lupus flare", grade=3)
    trial.tick(at(17))
    trial.ae("a2", at(18), term="Lupus flare", grade=2)
    events = trial.published()
    assert dlt_rules(events, "dlt.confirmed") == [
        ("nonhematologic_grade_3_not_resolving", "Lupus flare", at(17).isoformat())
    ]
    assert dlt_rules(events, "dlt.ruled_out") == []


# ---------------------------------------------------------------- death


def _alt(trial: Trial, event_id: str, when: datetime, value: float) -> None:
    trial.send(
        event_id,
        "lab.resulted",
        when,
        analyte="alt",
        value=value,
        unit="U/L",
        reference_low=7,
        reference_high=40,
    )


def _liver_injury() -> Trial:
    """Normal ALT at baseline (20 U/L, ULN 40), then 250 U/L (> 5-20 x ULN: grade 3) on
    D+8 and 900 U/L (> 20 x ULN: grade 4) on D+9 (reference §3)."""
    trial = Trial(infused=False)
    _alt(trial, "alt0", at(-6), 20)
    trial.send("ld", "lymphodepletion.administered", at(-5), agent="fludarabine", dose_mg_m2=25)
    trial.infuse()
    _alt(trial, "alt1", at(8), 250)
    _alt(trial, "alt2", at(9), 900)
    return trial


def test_a_death_from_a_graded_lab_term_is_grade_5_of_that_term_at_death():
    """CTCAE v5.0: grade 5 is death related to the AE. The cause names the ALT rise graded
    from the labs (grade 4 on D+9), so ALT increased is grade 5 at the time of death."""
    trial = _liver_injury()
    assert grades_of(trial.published(), ALT)[-1][1:] == (4, 3)
    trial.send(
        "death",
        "death.reported",
        at(10, "03:00"),
        cause="Acute liver failure with alanine aminotransferase increased",
        attributed_to="product",
        related="probable",
    )
    events = trial.published()
    assert grades_of(events, ALT) == [(at(10, "03:00").isoformat(), 5, 4)]
    (fatal,) = [e for e in of_type(events, "toxicity.graded") if e["data"]["term"] == ALT]
    assert fatal["data"]["criteria"] == "CTCAE-5.0"
    assert fatal["caused_by"] == ["death"]
    assert not [k for k in keys(events, "adjudication.requested") if k.startswith("death-term:")]


def test_a_death_from_an_investigator_term_is_grade_5_of_that_term():
    """CTCAE: grade 5 = death; the cause names the pneumonia the investigator graded 4."""
    trial = Trial()
    trial.ae("a1", at(6), grade=4, seriousness=("life_threatening",), expected=True)
    trial.published()
    trial.send(
        "death",
        "death.reported",
        at(9, "03:00"),
        cause="Pneumonia",
        attributed_to="infection",
        related="possible",
    )
    events = trial.published()
    assert grades_of(events, "Pneumonia") == [(at(9, "03:00").isoformat(), 5, 4)]
    assert of_type(events, "toxicity.graded")[0]["data"]["criteria"] == "CTCAE-5.0"


def test_a_death_naming_no_graded_toxicity_asks_which_is_grade_5():
    """Reference §9: the engine must not guess which toxicity a death is grade 5 of."""
    trial = Trial()
    trial.published()
    trial.send(
        "death",
        "death.reported",
        at(9, "03:00"),
        cause="Sudden cardiac arrest",
        attributed_to="other",
    )
    events = trial.published()
    assert of_type(events, "toxicity.graded") == []
    assert "death-term:death" in keys(events, "adjudication.requested")


def test_a_death_naming_two_graded_toxicities_asks_which_is_grade_5():
    """Reference §9: a cause naming both ALT and AST rises is ambiguous: ask, grade
    neither."""
    trial = _liver_injury()
    ast_range: dict[str, Any] = {
        "analyte": "ast",
        "unit": "U/L",
        "reference_low": 8,
        "reference_high": 40,
    }
    trial.send("ast1", "lab.resulted", at(9, "09:00"), value=900, **ast_range)
    assert grades_of(trial.published(), AST)[-1][1] == 4  # > 20 x ULN
    trial.send(
        "death",
        "death.reported",
        at(10, "03:00"),
        cause="Alanine aminotransferase increased and aspartate aminotransferase increased",
        attributed_to="product",
        related="probable",
    )
    events = trial.published()
    assert grades_of(events, ALT) == []
    assert grades_of(events, AST) == []
    assert "death-term:death" in keys(events, "adjudication.requested")


def test_a_death_the_investigator_calls_probably_related_is_not_ruled_out_as_unrelated():
    """Reference §7 rule 1: any grade 5 event at least possibly related is a DLT. The
    death report states "probable" (attributed to the product) although the pneumonia
    was first reported as not related; the engine must count the death, or ask (§0),
    never rule it out on the earlier report alone."""
    trial = Trial()
    trial.ae("a1", at(6), grade=4, relatedness="not_related", seriousness=("life_threatening",))
    trial.published()
    trial.send(
        "death",
        "death.reported",
        at(9, "03:00"),
        cause="Pneumonia",
        attributed_to="product",
        related="probable",
    )
    events = trial.published()
    assert [r for r in dlt_rules(events, "dlt.ruled_out") if r[0] == "grade_5"] == []


# ---------------------------------------------------------------- episode adjudication


def _crs_grade_2() -> Trial:
    """ASTCT 2019 (reference §1): fever 38.6 C at D+1 06:00 is grade 1; nasal cannula
    2 L/min (low flow) from 10:00 with fever is grade 2. Episode 1."""
    trial = Trial()
    trial.send("v1", "vitals.recorded", at(1, "06:00"), temperature_c=38.6)
    trial.send("o1", "oxygen.changed", at(1, "10:00"), device="nasal_cannula", flow_l_min=2)
    trial.send("v2", "vitals.recorded", at(1, "14:00"), temperature_c=38.4)
    assert [e["data"]["grade"] for e in of_type(trial.published(), "crs.graded")] == [1, 2]
    return trial


def revisions(events: list[dict[str, Any]], term: str) -> list[tuple[str, int, int, str]]:
    return [
        (e["effective_at"], e["data"]["from_grade"], e["data"]["to_grade"], e["data"]["because"])
        for e in of_type(events, "grade.revised")
        if e["data"]["term"] == term
    ]


def test_a_rejected_crs_episode_is_revised_to_grade_0_by_adjudication():
    """Reference §0.3: the committee rejects episode 1 (hypoxia and fever from
    pneumonia): it stops counting; each published grade becomes 0."""
    trial = _crs_grade_2()
    trial.adjudicate(
        "adj", at(1, "16:00"), "crs_episode", "1", decision="reject", reason="pneumonia"
    )
    events = trial.published()
    assert revisions(events, "CRS") == [
        (at(1, "06:00").isoformat(), 1, 0, "adjudication"),
        (at(1, "10:00").isoformat(), 2, 0, "adjudication"),
    ]
    assert all(e["caused_by"] == ["adj"] for e in of_type(events, "grade.revised"))


def test_a_crs_episode_regraded_to_1_revises_its_grade_2_moment():
    """Reference §0.3: re-graded to 1 (oxygen was for a procedure), the grade 2 from 10:00
    becomes grade 1."""
    trial = _crs_grade_2()
    trial.adjudicate(
        "adj", at(1, "16:00"), "crs_episode", "1", decision="regrade", grade=1, reason="procedure"
    )
    assert revisions(trial.published(), "CRS") == [
        (at(1, "10:00").isoformat(), 2, 1, "adjudication")
    ]


def test_a_crs_episode_regraded_above_its_derived_maximum_is_raised():
    """Reference §0.3: re-graded to 3 (a vasopressor was given but not charted), the
    episode's worst moment (10:00) is grade 3, and §7 rule 2 now watches it."""
    trial = _crs_grade_2()
    trial.adjudicate(
        "adj", at(1, "16:00"), "crs_episode", "1", decision="regrade", grade=3, reason="uncharted"
    )
    events = trial.published()
    assert revisions(events, "CRS") == [(at(1, "10:00").isoformat(), 2, 3, "adjudication")]
    assert dlt_rules(events, "dlt.candidate") == [
        ("crs_grade_3_not_improving", "CRS", at(1, "10:00").isoformat())
    ]


def test_a_confirmed_crs_episode_changes_nothing():
    """Reference §0.3: confirmation makes the provisional grades stand."""
    trial = _crs_grade_2()
    trial.adjudicate("adj", at(1, "16:00"), "crs_episode", "1", decision="confirm")
    events = trial.published()
    assert of_type(events, "grade.revised") == []
    assert of_type(events, "crs.graded") == []


def test_a_rejected_icans_episode_is_revised_to_grade_0_by_adjudication():
    """Reference §0.3 (sedation is another cause): ICE 5 and awakening to voice (ASTCT
    grade 2, §2) rejected as sedation becomes grade 0."""
    trial = Trial()
    trial.send(
        "n1", "neuro.assessed", at(6, "09:00"), ice_score=5, consciousness="awakens_to_voice"
    )
    trial.published()
    trial.adjudicate(
        "adj", at(6, "12:00"), "icans_episode", "1", decision="reject", reason="sedation"
    )
    assert revisions(trial.published(), "ICANS") == [
        (at(6, "09:00").isoformat(), 2, 0, "adjudication")
    ]


def test_an_episode_decision_with_a_non_numeric_target_is_asked_about_not_applied():
    """Reference §9: "abc" names no episode; the engine asks and keeps the grades."""
    trial = _crs_grade_2()
    trial.adjudicate("adj", at(1, "16:00"), "crs_episode", "abc", decision="reject", reason="x")
    events = trial.published()
    assert of_type(events, "grade.revised") == []
    assert keys(events, "adjudication.requested") == ["episode-target:adj"]


# ---------------------------------------------------------------- grade discrepancy


def test_a_discrepant_crs_report_is_asked_about_only_once_it_is_resolved():
    """Reference §0.3, §9: the investigator reports CRS grade 3; the data give ASTCT grade
    2. While the AE is open nothing is asked; once resolved, the engine asks which is
    right instead of choosing."""
    trial = _crs_grade_2()
    trial.ae("a1", at(1, "12:00"), term="CRS", grading_scale="ASTCT-2019", onset_at=at(1, "06:00"))
    assert of_type(trial.published(), "adjudication.requested") == []
    trial.ae(
        "a2",
        at(3, "09:00"),
        term="CRS",
        grading_scale="ASTCT-2019",
        onset_at=at(1, "06:00"),
        resolved_at=at(2, "14:00"),
    )
    (question,) = of_type(trial.published(), "adjudication.requested")
    assert question["data"]["key"] == "ae-grade:AE-1:3:2"
    assert question["data"]["target"] == {"kind": "event", "id": "a2"}


def test_a_resolved_crs_report_agreeing_with_the_data_asks_nothing():
    """Reference §1: investigator and engine both grade the episode 2: nothing to ask."""
    trial = _crs_grade_2()
    trial.ae(
        "a1",
        at(3, "09:00"),
        term="Cytokine release syndrome",
        grading_scale="ASTCT-2019",
        grade=2,
        onset_at=at(1, "06:00"),
        resolved_at=at(2, "14:00"),
    )
    assert of_type(trial.published(), "adjudication.requested") == []


# ---------------------------------------------------------------- SAE reminders


def _serious_pneumonia(
    trial: Trial, *, seriousness: tuple[str, ...] = ("hospitalization",), expected: bool = True
) -> None:
    """A serious AE (onset D+5 08:00) the site became aware of at D+5 10:00."""
    trial.ae(
        "a1",
        at(5),
        received_at=at(5, "10:00"),
        grade=3,
        seriousness=seriousness,
        expected=expected,
    )


AWARE = at(5, "10:00")
DEADLINE = AWARE + SITE_TO_SPONSOR  # D+6 10:00


def reminders(events: list[dict[str, Any]]) -> list[tuple[str, str, float, bool]]:
    return [
        (
            e["effective_at"],
            e["data"]["obligation"],
            e["data"]["hours_before"],
            e["data"]["overdue"],
        )
        for e in of_type(events, "sae.reminder_due")
    ]


def test_sae_reminders_fall_due_12_h_and_2_h_before_the_deadline_and_at_it():
    """Reference §10: the site must report within 24 h of awareness (deadline D+6 10:00);
    the protocol's reminders come 12 h and 2 h before it, and at it (overdue). A tick
    before the first reminder changes nothing."""
    trial = Trial()
    _serious_pneumonia(trial)
    trial.published()
    first, second = (DEADLINE - timedelta(hours=h) for h in REMINDERS_BEFORE)
    assert trial.tick(first - timedelta(minutes=1)) is False
    assert trial.published() == []
    seen = []
    for when in (first, second, DEADLINE):
        trial.tick(when)
        seen.extend(reminders(trial.published()))
    assert seen == [
        (first.isoformat(), "site_to_sponsor_24h", 12.0, False),
        (second.isoformat(), "site_to_sponsor_24h", 2.0, False),
        (DEADLINE.isoformat(), "site_to_sponsor_24h", 0.0, True),
    ]


def test_a_catch_up_tick_past_the_deadline_gives_only_the_overdue_reminder():
    """Module rule (``_derive_sae``): reminders discovered late are superseded by the
    latest one due for the clock, so a tick after the deadline says "overdue" once,
    not three stale reminders."""
    trial = Trial()
    _serious_pneumonia(trial)
    trial.published()
    trial.tick(DEADLINE + timedelta(hours=3))
    events = trial.published()
    assert reminders(events) == [(DEADLINE.isoformat(), "site_to_sponsor_24h", 0.0, True)]
    (reminder,) = of_type(events, "sae.reminder_due")
    assert reminder["data"]["ae_id"] == "AE-1"
    assert reminder["data"]["deadline_at"] == DEADLINE.isoformat()
    assert reminder["caused_by"] == ["a1"]


def test_a_tick_between_the_2_h_reminder_and_the_deadline_gives_only_the_2_h_reminder():
    """Module rule: the 12 h reminder skipped by the tick is superseded by the 2 h one;
    the deadline itself has not passed, so nothing is overdue yet."""
    trial = Trial()
    _serious_pneumonia(trial)
    trial.published()
    trial.tick(DEADLINE - timedelta(hours=1))
    assert reminders(trial.published()) == [
        ((DEADLINE - timedelta(hours=2)).isoformat(), "site_to_sponsor_24h", 2.0, False)
    ]


def test_each_clock_has_its_own_reminders():
    """Reference §10: a life-threatening, possibly related, unexpected SAE is also a SUSAR
    due to the regulator within 7 days. A day after the 24 h deadline only the site
    clock is overdue; the 7-day clock's first reminder is days away."""
    trial = Trial()
    _serious_pneumonia(trial, seriousness=("life_threatening",), expected=False)
    clocks = {e["data"]["obligation"]: e for e in of_type(trial.published(), "sae.clock_started")}
    susar_deadline = AWARE + timedelta(days=DEFAULT.reporting.susar_fatal_or_life_threatening_days)
    assert clocks["susar_7d"]["data"]["deadline_at"] == susar_deadline.isoformat()
    trial.tick(DEADLINE + timedelta(days=1))
    assert reminders(trial.published()) == [
        (DEADLINE.isoformat(), "site_to_sponsor_24h", 0.0, True)
    ]


# ---------------------------------------------------------------- planned admissions


def _in_planned_stay(trial: Trial) -> None:
    """Reference §3: a protocol-mandated admission from D-1 is not an SAE by itself
    [parameter]; pneumonia serious only by hospitalisation during it (aware D+3 10:00)."""
    trial.send("adm", "encounter.changed", at(-1), kind="admission", planned=True)
    trial.ae("a1", at(3), received_at=at(3, "10:00"), grade=2, seriousness=("hospitalization",))


def test_an_ae_serious_only_by_a_planned_stay_asks_and_starts_no_clock():
    """Reference §3 [parameter] and §9: the engine asks whether the stay was caused or
    prolonged by the AE instead of starting a clock."""
    trial = Trial()
    trial.published()
    _in_planned_stay(trial)
    events = trial.published()
    assert of_type(events, "sae.clock_started") == []
    (question,) = of_type(events, "adjudication.requested")
    assert question["data"]["key"] == "planned-admission:AE-1"
    assert question["data"]["target"] == {"kind": "event", "id": "a1"}


def test_a_confirmed_planned_stay_question_starts_the_clock_from_the_original_awareness():
    """Reference §10: clocks start at awareness; the committee's later answer (the stay
    was prolonged by the AE) makes it an SAE known since D+3 10:00, due 24 h after."""
    trial = Trial()
    _in_planned_stay(trial)
    trial.published()
    trial.adjudicate("adj", at(3, "12:00"), "event", "a1", decision="confirm")
    (clock,) = of_type(trial.published(), "sae.clock_started")
    assert clock["effective_at"] == at(3, "10:00").isoformat()
    assert clock["data"]["deadline_at"] == (at(3, "10:00") + SITE_TO_SPONSOR).isoformat()


def test_a_planned_stay_confirmed_after_the_deadline_is_overdue_at_once():
    """Reference §10 with the module's catch-up rule: confirmed on D+5, the clock from
    D+3 10:00 ran out on D+4 10:00, so the only reminder is the overdue one."""
    trial = Trial()
    _in_planned_stay(trial)
    trial.published()
    trial.adjudicate("adj", at(5), "event", "a1", decision="confirm")
    deadline = at(3, "10:00") + SITE_TO_SPONSOR
    assert reminders(trial.published()) == [
        (deadline.isoformat(), "site_to_sponsor_24h", 0.0, True)
    ]


def test_a_rejected_planned_stay_question_starts_no_clock_and_asks_nothing_more():
    """Reference §3: the committee found the protocol-mandated stay was not caused or
    prolonged by the AE: not an SAE, so no clock and no reminder when the would-be
    deadline passes."""
    trial = Trial()
    _in_planned_stay(trial)
    trial.published()
    trial.adjudicate(
        "adj", at(3, "12:00"), "event", "a1", decision="reject", reason="planned stay only"
    )
    trial.tick(at(4, "11:00"))
    events = trial.published()
    assert of_type(events, "sae.clock_started") == []
    assert of_type(events, "sae.reminder_due") == []
    assert of_type(events, "adjudication.requested") == []
