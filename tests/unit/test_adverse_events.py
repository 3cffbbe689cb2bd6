"""Investigator-reported adverse events and committee decisions on episodes
(``domain.adverse_events``; reference §0.3, §3, §6, §7, §9).

Each test is a short series of ``adverse_event.reported`` versions or
``adjudication.recorded`` decisions whose expected result follows from
/work/shared/clinical/reference.md (the section is cited in each docstring) and, where
the reference is silent, from the readings documented in ``domain/adverse_events.py``.
Infusion at D0 08:00 (+08:00); ``day(n, "hh:mm")`` is D+n.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from typing import Any, Literal

from domain.adverse_events import (
    EpisodeDecision,
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
from domain.contract import AdjudicationRecorded, AdverseEventReported
from domain.timeline import TimelineEntry

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)


def day(n: int, hhmm: str = "08:00") -> datetime:
    hours, minutes = (int(part) for part in hhmm.split(":"))
    return datetime.combine(D0.date() + timedelta(days=n), time(hours, minutes), tzinfo=TZ)


class Record:
    """One participant's AE reports and adjudications, in arrival order."""

    def __init__(self) -> None:
        self.entries: list[TimelineEntry] = []

    def _add(self, type_: str, at: datetime, data: Any) -> str:
        seq = len(self.entries) + 1
        event_id = f"ev{seq:03d}"
        self.entries.append(TimelineEntry(event_id, type_, at, data, seq))
        return event_id

    def ae(
        self,
        at: datetime,
        grade: int,
        *,
        ae_id: str = "AE-1",
        term: str = "Pneumonia",
        grading_scale: str = "CTCAE-5.0",
        serious: bool = False,
        **extra: Any,
    ) -> str:
        data = AdverseEventReported.model_validate(
            {
                "ae_id": ae_id,
                "term": term,
                "grading_scale": grading_scale,
                "grade": grade,
                "serious": serious,
                "seriousness": ["hospitalization"] if serious else [],
                "relatedness": "possible",
                **extra,
            }
        )
        return self._add("adverse_event.reported", at, data)

    def adjudication(
        self, at: datetime, kind: str, target_id: str, decision: str, **extra: Any
    ) -> str:
        data = AdjudicationRecorded.model_validate(
            {"target": {"kind": kind, "id": target_id}, "decision": decision, **extra}
        )
        return self._add("adjudication.recorded", at, data)

    def aes(self) -> list[ReportedAE]:
        return reported_aes(self.entries)

    def the_ae(self) -> ReportedAE:
        (ae,) = self.aes()
        return ae


def grades(steps) -> list[tuple[datetime, int]]:
    return [(s.at, s.grade) for s in steps]


# ---------------------------------------------------------------- versions of one AE


def test_reports_with_one_ae_id_are_versions_of_one_ae_in_arrival_order():
    """Contract §2: a later report with the same ``ae_id`` updates it; another ``ae_id``
    is another AE (listed in order of first report)."""
    record = Record()
    first = record.ae(day(5), 2, ae_id="AE-1")
    other = record.ae(day(6), 1, ae_id="AE-2", term="Rash")
    update = record.ae(day(7), 3, ae_id="AE-1")
    ae1, ae2 = record.aes()
    assert (ae1.ae_id, ae1.event_ids) == ("AE-1", (first, update))
    assert (ae2.ae_id, ae2.event_ids) == ("AE-2", (other,))
    assert ae1.latest.grade == 3


def test_an_update_worsening_grade_2_to_3_later_is_a_step_at_its_time():
    """Reference §0.4: grades use clinical time. Grade 2 pneumonia on D+5 reported as
    grade 3 on D+7 was grade 2 from D+5 and grade 3 from D+7, not grade 3 all along."""
    record = Record()
    first = record.ae(day(5), 2)
    worse = record.ae(day(7), 3)
    course = record.the_ae().course()
    assert grades(course) == [(day(5), 2), (day(7), 3)]
    assert [s.caused_by for s in course] == [(first,), (worse,)]
    assert record.the_ae().worst_grade == 3


def test_an_update_with_the_same_grade_adds_no_step():
    """A follow-up report that only restates the grade is no change of grade."""
    record = Record()
    record.ae(day(5), 2)
    record.ae(day(6), 2)
    assert grades(record.the_ae().course()) == [(day(5), 2)]


def test_a_resolved_ae_returns_to_grade_0_at_its_resolution_time():
    """Reference §0.6: a grade holds until a charted stop; ``resolved_at`` is that stop,
    in clinical time (not the time the resolution was reported)."""
    record = Record()
    record.ae(day(5), 2)
    record.ae(day(7), 3)
    closing = record.ae(day(10), 3, resolved_at=day(9, "06:00"))
    course = record.the_ae().course()
    assert grades(course) == [(day(5), 2), (day(7), 3), (day(9, "06:00"), 0)]
    assert course[-1].caused_by == (closing,)


def test_an_onset_restated_in_a_later_version_moves_the_first_step():
    """Reference §0.4: a later, more precise onset re-dates the AE. Reported on D+5
    without an onset, then stated to have begun on D+4: grade 2 from D+4."""
    record = Record()
    record.ae(day(5), 2)
    record.ae(day(6), 2, onset_at=day(4, "20:00"))
    ae = record.the_ae()
    assert ae.onset_at == day(4, "20:00")
    assert grades(ae.course()) == [(day(4, "20:00"), 2)]


def test_a_version_dated_at_the_onset_states_the_grade_from_the_onset():
    """Module reading: a version whose clinical time is the onset itself describes the AE
    at onset, so there is no moment at the first version's grade."""
    record = Record()
    record.ae(day(5), 2)
    restated = record.ae(day(5), 3)
    course = record.the_ae().course()
    assert grades(course) == [(day(5), 3)]
    assert course[0].caused_by == (restated,)


def test_seriousness_does_not_change_the_grade_course():
    """Reference §3 (ICH E2A): severity (grade) and seriousness are separate axes. A
    serious grade 1 stays grade 1; a non-serious grade 4 is still grade 4."""
    record = Record()
    record.ae(day(5), 1, ae_id="AE-1", serious=True)
    record.ae(day(6), 4, ae_id="AE-2", term="Colitis", serious=False)
    serious_g1, nonserious_g4 = record.aes()
    assert grades(serious_g1.course()) == [(day(5), 1)]
    assert grades(nonserious_g4.course()) == [(day(6), 4)]


def test_two_aes_of_one_term_combine_as_the_worst_grade_at_each_moment():
    """Reference §3: a term has one grade at a time, the worst of its concurrent events.
    AE-1 grade 2 D+5 to D+10 and AE-2 grade 3 D+7 to D+8: 2, 3, back to 2, then 0."""
    record = Record()
    record.ae(day(5), 2, ae_id="AE-1", resolved_at=day(10))
    record.ae(day(7), 3, ae_id="AE-2", resolved_at=day(8))
    combined = term_course(record.aes())
    assert grades(combined) == [(day(5), 2), (day(7), 3), (day(8), 2), (day(10), 0)]


# ---------------------------------------------------------------- terms


def test_licats_scale_iechs_names_and_flares_are_special_terms():
    """Reference §7 rule 6: IEC-HS, LICATS or autoimmune flare. §6: LICATS is reported
    with scale LICATS-2025 under the organ's name, so the scale alone makes it LICATS."""
    assert is_special_term("Nephritis", "LICATS-2025")
    assert is_special_term("LICATS")
    assert is_special_term("Local immune effector cell-associated toxicity syndrome")
    for name in ("IEC-HS", "IECHS", "Immune effector cell-associated HLH-like syndrome"):
        assert is_special_term(name, "CTCAE-5.0"), name
    assert is_special_term("Lupus flare")
    assert is_special_term("Myositis flare-up")


def test_ordinary_terms_and_crs_are_not_special_terms():
    """Reference §7: rule 6 is for IEC-HS, LICATS and flares; CRS has rules 2 and an
    infection is a non-haematologic toxicity (rule 5)."""
    assert not is_special_term("Pneumonia", "CTCAE-5.0")
    assert not is_special_term("Cytokine release syndrome", "ASTCT-2019")
    assert not is_special_term("Nephritis", "CTCAE-5.0")


def test_acronyms_and_spelled_out_names_are_the_same_term():
    """Reference §0.1: CRS and ICANS are ASTCT terms; an investigator's "Cytokine release
    syndrome" is the same toxicity, whatever the case or punctuation."""
    assert same_term("CRS", "Cytokine release syndrome")
    assert same_term("ICANS", "Immune effector cell-associated neurotoxicity syndrome")
    assert same_term("IEC-HS", "iechs")
    assert not same_term("CRS", "ICANS")
    assert not same_term("Pneumonia", "Pneumonitis")


# ---------------------------------------------------------------- grade discrepancy

CRS_STEPS = [(day(1, "06:00"), 1), (day(1, "10:00"), 2), (day(3, "06:00"), 0)]


def test_an_unresolved_report_raises_no_discrepancy_yet():
    """Reference §9: a question needs a settled disagreement. While the AE is ongoing its
    worst grade may still change, so grade 3 against a derived 2 asks nothing yet."""
    record = Record()
    record.ae(day(1, "12:00"), 3, term="CRS", grading_scale="ASTCT-2019", onset_at=day(1, "06:00"))
    assert grade_discrepancy(record.the_ae(), "CRS", CRS_STEPS) is None


def test_a_resolved_report_agreeing_with_the_derived_grade_raises_nothing():
    """Reference §1: the engine derived ASTCT grade 2 (fever with low-flow oxygen); the
    investigator reports worst grade 2, resolved: nothing to adjudicate."""
    record = Record()
    record.ae(
        day(3, "09:00"),
        2,
        term="Cytokine release syndrome",
        grading_scale="ASTCT-2019",
        onset_at=day(1, "06:00"),
        resolved_at=day(3, "06:00"),
    )
    assert grade_discrepancy(record.the_ae(), "CRS", CRS_STEPS) is None


def test_a_resolved_report_with_another_worst_grade_asks_which_is_right():
    """Reference §0.3, §9: the engine does not choose between the investigator's grade 3
    and the derived grade 2; it asks, with the report as target and evidence."""
    record = Record()
    first = record.ae(
        day(1, "12:00"), 3, term="CRS", grading_scale="ASTCT-2019", onset_at=day(1, "06:00")
    )
    last = record.ae(
        day(3, "09:00"),
        3,
        term="CRS",
        grading_scale="ASTCT-2019",
        onset_at=day(1, "06:00"),
        resolved_at=day(3, "06:00"),
    )
    question = grade_discrepancy(record.the_ae(), "CRS", CRS_STEPS)
    assert question is not None
    assert question.key == "ae-grade:AE-1:3:2"
    assert question.target == {"kind": "event", "id": last}
    assert question.evidence == (first, last)


def test_derived_grades_after_the_ae_resolved_are_not_compared():
    """Module reading: the comparison covers the AE's time only. A grade 3 derived two days
    after the reported CRS resolved is another episode, not this AE's grade."""
    steps = [*CRS_STEPS, (day(5, "06:00"), 3)]
    record = Record()
    record.ae(
        day(3, "09:00"),
        2,
        term="CRS",
        grading_scale="ASTCT-2019",
        onset_at=day(1, "06:00"),
        resolved_at=day(3, "06:00"),
    )
    assert grade_discrepancy(record.the_ae(), "CRS", steps) is None


# ---------------------------------------------------------------- committee decisions


def test_the_latest_decision_on_an_episode_wins_and_kinds_are_kept_apart():
    """Reference §9: decisions are events replayed in order; a later decision on CRS
    episode 1 supersedes an earlier one, and an ICANS decision is not a CRS decision."""
    record = Record()
    record.adjudication(day(2), "crs_episode", "1", "confirm")
    reject = record.adjudication(day(3), "crs_episode", "1", "reject", reason="sepsis")
    record.adjudication(day(3), "icans_episode", "1", "reject", reason="sedation")
    decisions, questions = episode_decisions(record.entries, "crs_episode")
    assert questions == ()
    assert set(decisions) == {1}
    assert (decisions[1].decision, decisions[1].event_id, decisions[1].reason) == (
        "reject",
        reject,
        "sepsis",
    )


def test_a_decision_whose_target_is_not_an_episode_number_is_not_applied_but_asked():
    """Reference §9: the engine must not guess which episode "abc" (or 0) means."""
    record = Record()
    abc = record.adjudication(day(2), "crs_episode", "abc", "reject", reason="infection")
    zero = record.adjudication(day(2), "crs_episode", "0", "reject", reason="infection")
    decisions, questions = episode_decisions(record.entries, "crs_episode")
    assert decisions == {}
    assert [q.key for q in questions] == [f"episode-target:{abc}", f"episode-target:{zero}"]


def _decision(
    decision: Literal["confirm", "reject", "regrade"], grade: int | None = None
) -> EpisodeDecision:
    return EpisodeDecision(1, decision, grade, "reason", "adj-1", day(4))


POINTS = [
    (day(1, "06:00"), 1, 1),
    (day(1, "10:00"), 1, 2),
    (day(2, "10:00"), 1, 1),
    (day(3, "06:00"), 1, 0),
    (day(6, "06:00"), 2, 1),
]


def _adjusted(decisions: dict[int, EpisodeDecision]) -> list[tuple[int, int]]:
    return [(a.episode, a.grade) for a in adjudicate_episodes(POINTS, decisions)]


def test_a_rejected_episode_is_grade_0_throughout_and_other_episodes_stand():
    """Reference §0.3: a rejected episode stops counting; episode 2 is not decided."""
    assert _adjusted({1: _decision("reject")}) == [(1, 0), (1, 0), (1, 0), (1, 0), (2, 1)]


def test_a_regrade_down_caps_the_episode_at_the_committees_grade():
    """Reference §0.3: re-graded to 1, the episode's grade 2 moment becomes grade 1."""
    assert _adjusted({1: _decision("regrade", 1)}) == [(1, 1), (1, 1), (1, 1), (1, 0), (2, 1)]


def test_a_regrade_above_the_derived_worst_raises_its_first_worst_moment_only():
    """Reference §0.3: re-graded to 3 while the data gave at most 2, the episode reaches
    grade 3 when it first reached its worst; the later improvement to 1 stands."""
    assert _adjusted({1: _decision("regrade", 3)}) == [(1, 1), (1, 3), (1, 1), (1, 0), (2, 1)]


def test_a_confirmed_episode_keeps_its_derived_grades():
    """Reference §0.3: confirmation makes the provisional grades stand."""
    assert _adjusted({1: _decision("confirm")}) == [(e, g) for _, e, g in POINTS]


def test_event_decisions_and_attributions_take_the_latest_on_each_event():
    """Reference §9: decisions on a clinical event (target kind ``event``) replay in order;
    decisions on episodes or DLTs are not event decisions."""
    record = Record()
    report = record.ae(day(5), 3)
    record.adjudication(day(6), "event", report, "confirm", attributed_to="product")
    record.adjudication(day(7), "event", report, "reject", reason="not caused by it")
    record.adjudication(day(7), "event", report, "confirm", attributed_to="infection")
    record.adjudication(day(7), "dlt", "DLT-x", "reject", reason="disease", attributed_to="other")
    assert event_decisions(record.entries) == {report: "confirm"}
    assert event_attributions(record.entries) == {report: "infection"}
