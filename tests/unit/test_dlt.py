"""DLT evaluation: the template of reference §7 (every value a [parameter]).

Each test is a short course whose expected verdict follows from
/work/shared/clinical/reference.md §0.5 and §7 and vignettes.md 19-22 (window through
Day 28, 72 h for grade 3 CRS/ICANS, 7 days for grade 3 non-haematologic toxicity).
Infusion at D0 08:00 (+08:00); ``day(n, "hh:mm")`` is D+n; Day 0 numbering unless
stated. Decisions where the template is silent are those of ``domain/dlt.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone

from domain.dlt import (
    Category,
    Death,
    DLTEvaluation,
    GradeStep,
    Overturn,
    TermCourse,
    end_of_study_day,
    evaluate_dlt,
)
from domain.protocol import DLTParameters, Relatedness
from domain.timeline import study_day

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
DEFAULT = DLTParameters()
ALT = "Alanine aminotransferase increased"
ANC = "Neutrophil count decreased"


def day(n: int, hhmm: str = "08:00") -> datetime:
    hours, minutes = (int(part) for part in hhmm.split(":"))
    return datetime.combine(D0.date() + timedelta(days=n), time(hours, minutes), tzinfo=TZ)


def course(
    term: str,
    category: Category,
    *steps: tuple[datetime, int],
    relatedness: Relatedness | None = None,
    attributed_to: str | None = None,
) -> TermCourse:
    """A grade timeline; step i is caused by event ``<term>-<i>``."""
    slug = term.split()[0].lower()
    return TermCourse(
        term,
        category,
        tuple(GradeStep(at, grade, (f"{slug}-{i}",)) for i, (at, grade) in enumerate(steps)),
        relatedness,
        attributed_to,
    )


def crs(*steps: tuple[datetime, int], attributed_to: str | None = None) -> TermCourse:
    return course("CRS", "crs", *steps, attributed_to=attributed_to)


def icans(*steps: tuple[datetime, int]) -> TermCourse:
    return course("ICANS", "icans", *steps)


def alt(*steps: tuple[datetime, int], relatedness: Relatedness | None = "possible") -> TermCourse:
    return course(ALT, "nonhematologic", *steps, relatedness=relatedness)


def evaluate(
    *courses: TermCourse,
    as_of: datetime,
    params: DLTParameters = DEFAULT,
    day_zero_is_infusion_day: bool = True,
    infusion_at: datetime | None = D0,
    withdrawn_at: datetime | None = None,
    deaths: tuple[Death, ...] = (),
    overturns: tuple[Overturn, ...] = (),
) -> DLTEvaluation:
    return evaluate_dlt(
        courses,
        params=params,
        infusion_at=infusion_at,
        day_zero_is_infusion_day=day_zero_is_infusion_day,
        withdrawn_at=withdrawn_at,
        deaths=deaths,
        overturns=overturns,
        as_of=as_of,
    )


def grade3_crs_until(end: datetime) -> TermCourse:
    """Vignettes 21-22: CRS grade 2 from D+2 20:00, grade 3 (norepinephrine) from
    D+3 10:00, back to grade 2 at ``end``, resolved (grade 0) on D+9."""
    return crs((day(2, "20:00"), 2), (day(3, "10:00"), 3), (end, 2), (day(9, "08:00"), 0))


# ---------------------------------------------------------------- window (§0.5, §7)


def test_window_runs_from_infusion_to_midnight_after_day_28_under_day_0():
    """§7: infusion through day 28 inclusive; §0.5 Day 0 = the infusion day."""
    window = evaluate(as_of=day(1)).window
    assert window is not None
    assert window.starts_at == D0
    assert window.ends_at == day(29, "00:00")
    assert window.day_zero_is_infusion_day is True


def test_window_under_day_1_numbering_ends_at_midnight_after_d_plus_27():
    """§0.5: under Day 1 numbering D+27 is Day 28, so the window ends a day earlier."""
    window = evaluate(as_of=day(1), day_zero_is_infusion_day=False).window
    assert window is not None
    assert window.ends_at == day(28, "00:00")


def test_window_end_is_the_first_instant_of_the_day_after_the_last_day_in_both_numberings():
    """§0.5: the window end is the inverse of study_day (calendar days in the infusion's
    UTC offset), whatever the offset of the timestamps compared with it."""
    for day_zero in (True, False):
        end = end_of_study_day(D0, 28, day_zero_is_infusion_day=day_zero)
        last_instant = end - timedelta(microseconds=1)
        assert study_day(last_instant, D0, day_zero_is_infusion_day=day_zero) == 28
        assert study_day(end.astimezone(UTC), D0, day_zero_is_infusion_day=day_zero) == 29


def test_no_infusion_opens_no_window():
    """§7: the window starts at infusion; without one there is nothing to evaluate."""
    evaluation = evaluate(alt((day(3), 4)), as_of=day(5), infusion_at=None)
    assert evaluation.window is None
    assert evaluation.candidates == ()
    assert evaluation.closed is None


def test_vignette_19_grade_3_alt_first_met_on_d29_is_referred_not_a_dlt():
    """Vignette 19: ALT 6 x ULN (grade 3) from D+29 07:00 is outside the window;
    §7: grade >= 3 after the window is referred to the safety review committee."""
    evaluation = evaluate(alt((day(29, "07:00"), 3)), as_of=day(40))
    assert evaluation.candidates == ()
    assert [(r.term, r.at, r.grade) for r in evaluation.referrals] == [(ALT, day(29, "07:00"), 3)]
    assert evaluation.referrals[0].evidence == ("alanine-0",)


def test_vignette_20_event_at_d28_1400_is_inside_the_window_under_day_0():
    """Vignette 20: under Day 0 numbering D+28 14:00 is Day 28, inside the window."""
    evaluation = evaluate(alt((day(28, "14:00"), 4)), as_of=day(30))
    candidate = evaluation.candidate("nonhematologic_grade_4")
    assert candidate.status == "confirmed"
    assert candidate.met_at == day(28, "14:00")
    assert evaluation.referrals == ()


def test_vignette_20_the_same_event_is_day_29_and_outside_under_day_1():
    """Vignette 20: under Day 1 numbering D+28 14:00 is Day 29: not a DLT, referred."""
    evaluation = evaluate(alt((day(28, "14:00"), 4)), as_of=day(30), day_zero_is_infusion_day=False)
    assert evaluation.candidates == ()
    assert [(r.at, r.grade) for r in evaluation.referrals] == [(day(28, "14:00"), 4)]


def test_grade_3_present_before_infusion_is_baseline_not_a_dlt():
    """§7: only events whose onset is inside the window (from infusion) count."""
    evaluation = evaluate(alt((day(-2), 3), (day(20), 1)), as_of=day(30))
    assert evaluation.candidates == ()


def test_grade_3_that_began_inside_the_window_and_continues_after_it_is_not_referred():
    """§7: the onset decides; an event met inside the window is judged by the rules."""
    evaluation = evaluate(alt((day(27), 3), (day(31), 2)), as_of=day(40))
    assert evaluation.referrals == ()
    assert evaluation.candidate("nonhematologic_grade_3_not_resolving").status == "ruled_out"


# ---------------------------------------------------------------- grade 3 CRS, 72 h


def test_vignette_21_grade_3_crs_improving_after_60_hours_is_not_a_dlt():
    """Vignette 21: grade 3 from D+3 10:00 to D+5 22:00 (60 h <= 72 h) -> not a DLT."""
    evaluation = evaluate(grade3_crs_until(day(5, "22:00")), as_of=day(7))
    candidate = evaluation.candidate("crs_grade_3_not_improving")
    assert candidate.status == "ruled_out"
    assert candidate.decided_at == day(5, "22:00")
    assert "60.0 h" in candidate.reason


def test_vignette_22_grade_3_crs_for_80_hours_is_a_dlt_decided_at_d6_1000():
    """Vignette 22: norepinephrine stopped D+6 18:00 (80 h > 72 h) -> DLT, decided at
    D+6 10:00 when 72 h elapse."""
    evaluation = evaluate(grade3_crs_until(day(6, "18:00")), as_of=day(7))
    candidate = evaluation.candidate("crs_grade_3_not_improving")
    assert candidate.status == "confirmed"
    assert candidate.met_at == day(3, "10:00")
    assert candidate.decide_by == day(6, "10:00")
    assert candidate.decided_at == day(6, "10:00")
    assert candidate.evidence == ("crs-1",)


def test_vignette_22_candidate_opens_at_first_grade_3_with_decide_by_72_hours_later():
    """Vignette 22: the candidate exists from the first grade 3; decide_by = +72 h."""
    evaluation = evaluate(crs((day(3, "10:00"), 3)), as_of=day(4))
    candidate = evaluation.candidate("crs_grade_3_not_improving")
    assert candidate.status == "pending"
    assert candidate.decide_by == day(6, "10:00")
    assert evaluation.next_wake_at == day(6, "10:00")


def test_vignette_22_is_pending_one_minute_before_and_confirmed_at_d6_1000():
    """Vignette 22: a clock tick at or after D+6 10:00 confirms it, not before."""
    still_grade_3 = crs((day(3, "10:00"), 3))
    before = evaluate(still_grade_3, as_of=day(6, "09:59"))
    assert before.candidate("crs_grade_3_not_improving").status == "pending"
    at = evaluate(still_grade_3, as_of=day(6, "10:00"))
    assert at.candidate("crs_grade_3_not_improving").status == "confirmed"
    assert at.candidate("crs_grade_3_not_improving").decided_at == day(6, "10:00")


def test_late_record_moving_the_end_of_grade_3_from_60_to_80_hours_makes_it_a_dlt():
    """§0.4 / §7: late data can move both ends; re-derived, vignette 21 becomes 22."""
    first = evaluate(grade3_crs_until(day(5, "22:00")), as_of=day(7))
    corrected = evaluate(grade3_crs_until(day(6, "18:00")), as_of=day(7))
    assert first.candidate("crs_grade_3_not_improving").status == "ruled_out"
    assert corrected.candidate("crs_grade_3_not_improving").status == "confirmed"
    assert first.candidates[0].id == corrected.candidates[0].id


def test_late_record_moving_the_onset_of_grade_3_later_rules_the_dlt_out():
    """§7: late data can move the start too: grade 3 first met D+4 02:00 -> 64 h."""
    late_onset = crs((day(4, "02:00"), 3), (day(6, "18:00"), 2))
    evaluation = evaluate(late_onset, as_of=day(7))
    assert evaluation.candidate("crs_grade_3_not_improving").status == "ruled_out"


def test_grade_3_crs_back_to_grade_2_after_71_9_hours_is_not_a_dlt():
    """§7: not improving within 72 h -> 71.9 h is within."""
    end = day(3, "10:00") + timedelta(hours=71.9)
    evaluation = evaluate(grade3_crs_until(end), as_of=day(8))
    assert evaluation.candidate("crs_grade_3_not_improving").status == "ruled_out"


def test_grade_3_crs_back_to_grade_2_after_72_1_hours_is_a_dlt():
    """§7: 72.1 h > 72 h, decided at the 72 h mark."""
    end = day(3, "10:00") + timedelta(hours=72.1)
    evaluation = evaluate(grade3_crs_until(end), as_of=day(8))
    candidate = evaluation.candidate("crs_grade_3_not_improving")
    assert candidate.status == "confirmed"
    assert candidate.decided_at == day(6, "10:00")


def test_grade_3_crs_back_to_grade_2_after_exactly_72_hours_is_within_the_limit():
    """§7: the limit is inclusive (60 h <= 72 h in vignette 21)."""
    evaluation = evaluate(grade3_crs_until(day(6, "10:00")), as_of=day(8))
    assert evaluation.candidate("crs_grade_3_not_improving").status == "ruled_out"


def test_a_return_cancelled_by_re_escalation_is_not_sustained():
    """§7: measured to the start of a *sustained* return: 24 h at grade 3, 24 h at
    grade 2, grade 3 again until D+6 20:00 -> 82 h from the first grade 3."""
    evaluation = evaluate(
        crs(
            (day(3, "10:00"), 3),
            (day(4, "10:00"), 2),
            (day(5, "10:00"), 3),
            (day(6, "20:00"), 2),
        ),
        as_of=day(8),
    )
    candidate = evaluation.candidate("crs_grade_3_not_improving")
    assert candidate.status == "confirmed"
    assert candidate.decided_at == day(6, "10:00")


def test_a_sustained_return_within_72_hours_is_ruled_out_until_a_re_escalation_reverses_it():
    """§7: a return that holds is sustained; re-escalation in the window cancels it,
    and the DLT is decided when the re-escalation happens (past the 72 h mark)."""
    returned = crs((day(3, "10:00"), 3), (day(5, "10:00"), 2))
    assert evaluate(returned, as_of=day(7)).candidates[0].status == "ruled_out"
    re_escalated = crs((day(3, "10:00"), 3), (day(5, "10:00"), 2), (day(7, "10:00"), 3))
    candidate = evaluate(re_escalated, as_of=day(7, "12:00")).candidates[0]
    assert candidate.status == "confirmed"
    assert candidate.decided_at == day(7, "10:00")


def test_re_escalation_after_the_window_does_not_cancel_a_sustained_return():
    """§7: the return holds to the window end; the later grade 3 is referred."""
    evaluation = evaluate(
        crs((day(26, "10:00"), 3), (day(27, "10:00"), 2), (day(29, "10:00"), 3)),
        as_of=day(30),
    )
    assert evaluation.candidate("crs_grade_3_not_improving").status == "ruled_out"
    assert [r.at for r in evaluation.referrals] == [day(29, "10:00")]


def test_grade_3_crs_after_a_return_to_grade_0_is_a_new_candidate():
    """Decision (template silent): an event ends at grade 0; a later grade 3 is a new
    event measured from its own onset, so two short episodes are not one long one."""
    evaluation = evaluate(
        crs((day(3), 3), (day(4), 0), (day(10), 3), (day(11), 1)),
        as_of=day(15),
    )
    assert [(c.met_at, c.status) for c in evaluation.candidates] == [
        (day(3), "ruled_out"),
        (day(10), "ruled_out"),
    ]


def test_longest_run_alternative_does_not_join_runs_across_a_return():
    """§7 [parameter: alternative = longest continuous run]: 40 h + 10 h at grade 2
    + 40 h is 90 h first-to-sustained (DLT) but a longest run of 40 h (not a DLT)."""
    course_ = crs(
        (day(3, "10:00"), 3),
        (day(5, "02:00"), 2),
        (day(5, "12:00"), 3),
        (day(7, "04:00"), 2),
    )
    first_to_sustained = evaluate(course_, as_of=day(8))
    longest = evaluate(
        course_, as_of=day(8), params=DLTParameters(improvement_measured_as="longest_run")
    )
    assert first_to_sustained.candidates[0].status == "confirmed"
    assert longest.candidates[0].status == "ruled_out"
    assert "40.0 h" in longest.candidates[0].reason


def test_longest_run_over_72_hours_is_a_dlt_decided_72_hours_into_that_run():
    """§7 alternative: a second run of 73 h; decided 72 h after that run began."""
    params = DLTParameters(improvement_measured_as="longest_run")
    evaluation = evaluate(
        crs((day(3), 3), (day(4), 2), (day(5), 3), (day(8, "09:00"), 2)),
        as_of=day(9),
        params=params,
    )
    candidate = evaluation.candidate("crs_grade_3_not_improving")
    assert candidate.status == "confirmed"
    assert candidate.decided_at == day(8)
    assert candidate.met_at == day(3)


def test_grade_4_crs_is_a_dlt_at_once():
    """§7 rule 2: grade 4 CRS (vignette 7: two non-vasopressin agents) -> DLT at once."""
    evaluation = evaluate(crs((day(3, "02:00"), 3), (day(3, "05:00"), 4)), as_of=day(3, "06:00"))
    candidate = evaluation.candidate("crs_grade_4")
    assert candidate.status == "confirmed"
    assert candidate.decided_at == candidate.decide_by == day(3, "05:00")
    assert evaluation.candidate("crs_grade_3_not_improving").status == "pending"


def test_crs_attributed_to_infection_is_not_a_dlt():
    """§0.3 / §7: CRS counts as the product's unless attributed to another cause."""
    evaluation = evaluate(crs((day(3), 4), (day(4), 1), attributed_to="infection"), as_of=day(5))
    candidate = evaluation.candidate("crs_grade_4")
    assert candidate.status == "ruled_out"
    assert "infection" in candidate.reason


# ---------------------------------------------------------------- ICANS


def test_grade_4_icans_is_a_dlt_at_once():
    """§7 rule 3: grade 4 ICANS (vignette 14: unarousable) -> DLT at once."""
    evaluation = evaluate(icans((day(7), 4), (day(8), 2)), as_of=day(9))
    assert evaluation.candidate("icans_grade_4").status == "confirmed"
    assert evaluation.candidate("icans_grade_4").decided_at == day(7)


def test_grade_3_icans_for_73_hours_is_a_dlt_and_for_71_hours_is_not():
    """§7 rule 3: grade 3 ICANS not improving to <= 2 within 72 h."""
    long_ = evaluate(icans((day(6), 3), (day(9, "09:00"), 2)), as_of=day(10))
    short = evaluate(icans((day(6), 3), (day(9, "07:00"), 2)), as_of=day(10))
    assert long_.candidate("icans_grade_3_not_improving").status == "confirmed"
    assert short.candidate("icans_grade_3_not_improving").status == "ruled_out"


def test_icans_limit_is_its_own_parameter():
    """§7: every value a [parameter]: ICANS 48 h while CRS stays 72 h."""
    params = DLTParameters(icans_grade3_max_hours=48)
    evaluation = evaluate(
        icans((day(6), 3), (day(8, "12:00"), 2)),
        crs((day(6), 3), (day(8, "12:00"), 2)),
        as_of=day(10),
        params=params,
    )
    assert evaluation.candidate("icans_grade_3_not_improving").status == "confirmed"
    assert evaluation.candidate("crs_grade_3_not_improving").status == "ruled_out"


# ---------------------------------------------------------------- grade 5


def test_related_death_in_the_window_is_a_dlt_at_once_and_closes_it_evaluable():
    """§7 rule 1: any grade 5 event at least possibly related -> DLT."""
    death = Death(day(12), "Sepsis", "possible", "death-1")
    evaluation = evaluate(as_of=day(13), deaths=(death,))
    candidate = evaluation.candidate("grade_5")
    assert (candidate.term, candidate.status, candidate.evidence) == (
        "Sepsis",
        "confirmed",
        ("death-1",),
    )
    assert evaluation.closed is not None
    assert (evaluation.closed.at, evaluation.closed.evaluable, evaluation.closed.had_dlt) == (
        day(12),
        True,
        True,
    )


def test_crs_reaching_grade_5_is_one_dlt_joined_by_the_death_report():
    """§1 grade 5 = death due to CRS; §7 rule 1. The death report adds its evidence."""
    death = Death(day(5), "CRS", None, "death-1")
    evaluation = evaluate(crs((day(3), 4), (day(5), 5)), as_of=day(6), deaths=(death,))
    fatal = [c for c in evaluation.candidates if c.rule == "grade_5"]
    assert len(fatal) == 1
    assert fatal[0].status == "confirmed"
    assert fatal[0].evidence == ("crs-1", "death-1")


def test_death_due_to_crs_without_stated_relatedness_is_attributable_to_the_product():
    """§7: CRS is the product's by definition; a death due to it is a DLT."""
    evaluation = evaluate(as_of=day(9), deaths=(Death(day(8), "CRS", None, "death-1"),))
    assert evaluation.candidate("grade_5").status == "confirmed"


def test_unrelated_death_without_dlt_closes_the_window_not_evaluable():
    """Decision from §7: a participant who leaves before day 28 without a DLT is not
    evaluable; an unrelated death is such a leaving (and is not a DLT)."""
    death = Death(day(15), "Road traffic accident", "not_related", "death-1")
    evaluation = evaluate(as_of=day(16), deaths=(death,))
    assert evaluation.candidate("grade_5").status == "ruled_out"
    assert evaluation.closed is not None
    assert (evaluation.closed.at, evaluation.closed.evaluable, evaluation.closed.had_dlt) == (
        day(15),
        False,
        False,
    )


def test_death_of_unknown_relatedness_stays_pending_with_a_question():
    """§7 / §9: relatedness unknown -> the candidate stays pending, adjudication asked."""
    evaluation = evaluate(as_of=day(16), deaths=(Death(day(15), None, None, "death-1"),))
    candidate = evaluation.candidate("grade_5")
    assert candidate.status == "pending"
    assert evaluation.closed is None
    [question] = evaluation.questions
    assert question.target == {"kind": "dlt", "id": candidate.id}
    assert question.evidence == ("death-1",)


def test_death_after_the_window_is_referred():
    """§7: grade >= 3 after the window is referred, a death included."""
    evaluation = evaluate(as_of=day(40), deaths=(Death(day(35), "Sepsis", "possible", "d-1"),))
    assert evaluation.candidates == ()
    assert [(r.term, r.grade) for r in evaluation.referrals] == [("Sepsis", 5)]


# ---------------------------------------------------------------- non-haematologic


def test_grade_4_non_hematologic_toxicity_is_a_dlt_at_once():
    """§7 rule 5: grade 4 non-haematologic toxicity -> DLT at once."""
    evaluation = evaluate(alt((day(9), 4), (day(11), 2)), as_of=day(12))
    candidate = evaluation.candidate("nonhematologic_grade_4")
    assert candidate.status == "confirmed"
    assert candidate.decided_at == day(9)


def test_grade_3_non_hematologic_resolving_in_6_days_23_hours_is_not_a_dlt():
    """§7 rule 5: grade 3 resolving to <= 2 within 7 days is not a DLT."""
    evaluation = evaluate(alt((day(5), 3), (day(12, "07:00"), 2)), as_of=day(14))
    assert evaluation.candidate("nonhematologic_grade_3_not_resolving").status == "ruled_out"


def test_grade_3_non_hematologic_lasting_7_days_and_1_hour_is_a_dlt_decided_at_7_days():
    """§7 rule 5: grade 3 not resolving to <= 2 within 7 days -> DLT."""
    evaluation = evaluate(alt((day(5), 3), (day(12, "09:00"), 2)), as_of=day(14))
    candidate = evaluation.candidate("nonhematologic_grade_3_not_resolving")
    assert candidate.status == "confirmed"
    assert candidate.decide_by == candidate.decided_at == day(12)


def test_grade_3_non_hematologic_resolving_after_exactly_7_days_is_within():
    """§7 rule 5: the 7-day limit is inclusive."""
    evaluation = evaluate(alt((day(5), 3), (day(12), 2)), as_of=day(14))
    assert evaluation.candidate("nonhematologic_grade_3_not_resolving").status == "ruled_out"


def test_grade_3_non_hematologic_still_at_grade_3_is_pending_until_day_7():
    """§7 rule 5: the candidate waits for its time condition; the wake-up is day 7."""
    evaluation = evaluate(alt((day(5), 3)), as_of=day(8))
    assert evaluation.candidate("nonhematologic_grade_3_not_resolving").status == "pending"
    assert evaluation.next_wake_at == day(12)


def test_fever_of_any_grade_is_excluded():
    """§7 exclusions: fever of any grade is not a DLT (nor referred)."""
    fever = course("Fever", "nonhematologic", (day(2), 4), (day(29, "10:00"), 3))
    evaluation = evaluate(fever, as_of=day(30))
    assert evaluation.candidates == ()
    assert evaluation.referrals == ()


def test_lymphopenia_grade_4_is_excluded():
    """§7 exclusions: lymphopenia (CTCAE Lymphocyte count decreased) is not a DLT."""
    lymphopenia = course("Lymphocyte count decreased", "hematologic", (day(1), 4))
    evaluation = evaluate(lymphopenia, as_of=day(30))
    assert evaluation.candidates == ()
    assert evaluation.closed is not None and evaluation.closed.had_dlt is False


def test_a_course_of_category_excluded_never_counts():
    """§7 exclusions (e.g. hypogammaglobulinaemia, events of the underlying disease)."""
    excluded = course("Anything the caller excluded", "excluded", (day(3), 5))
    assert evaluate(excluded, as_of=day(5)).candidates == ()


def test_excluded_terms_are_a_parameter():
    """§7: every value a [parameter]: with no exclusions, grade 4 fever is a DLT."""
    fever = course("Fever", "nonhematologic", (day(2), 4), (day(3), 0), relatedness="possible")
    evaluation = evaluate(fever, as_of=day(4), params=DLTParameters(excluded_terms=()))
    assert evaluation.candidate("nonhematologic_grade_4").status == "confirmed"


# ---------------------------------------------------------------- relatedness


def test_grade_4_unlikely_related_is_not_a_dlt():
    """§7: counts only when at least possibly related; unlikely is below."""
    evaluation = evaluate(alt((day(9), 4), relatedness="unlikely"), as_of=day(10))
    candidate = evaluation.candidate("nonhematologic_grade_4")
    assert candidate.status == "ruled_out"
    assert "unlikely" in candidate.reason


def test_grade_4_possibly_related_is_a_dlt():
    """§7: possibly related is enough."""
    evaluation = evaluate(alt((day(9), 4), relatedness="possible"), as_of=day(10))
    assert evaluation.candidate("nonhematologic_grade_4").status == "confirmed"


def test_required_relatedness_is_a_parameter():
    """§7 [parameter]: requiring 'probable', a possibly related grade 4 does not count."""
    params = DLTParameters(relatedness_required="probable")
    possible = evaluate(alt((day(9), 4), relatedness="possible"), as_of=day(10), params=params)
    definite = evaluate(alt((day(9), 4), relatedness="definite"), as_of=day(10), params=params)
    assert possible.candidates[0].status == "ruled_out"
    assert definite.candidates[0].status == "confirmed"


def test_unknown_relatedness_keeps_the_candidate_pending_with_a_question():
    """§7 / §9: unknown relatedness -> pending, adjudication requested on the candidate."""
    evaluation = evaluate(alt((day(9), 4), relatedness=None), as_of=day(30))
    candidate = evaluation.candidate("nonhematologic_grade_4")
    assert candidate.status == "pending"
    assert candidate.decided_at is None
    [question] = evaluation.questions
    assert question.target == {"kind": "dlt", "id": candidate.id}
    assert "possible" in question.question
    assert evaluation.closed is None  # the window cannot close while it is pending


def test_unknown_relatedness_needs_no_question_when_the_time_condition_rules_it_out():
    """§7: a grade 3 resolving within 7 days is no DLT whatever its relatedness."""
    evaluation = evaluate(alt((day(5), 3), (day(8), 1), relatedness=None), as_of=day(10))
    assert evaluation.candidates[0].status == "ruled_out"
    assert evaluation.questions == ()


def test_lymphodepletion_attribution_counts_when_the_parameter_is_on():
    """§7 [parameter]: lymphodepletion attribution counts (default on)."""
    ld = course(ALT, "nonhematologic", (day(1), 4), attributed_to="lymphodepletion")
    evaluation = evaluate(ld, as_of=day(2))
    assert evaluation.candidate("nonhematologic_grade_4").status == "confirmed"


def test_lymphodepletion_attribution_does_not_count_when_the_parameter_is_off():
    """§7 [parameter]: off -> an event attributed to lymphodepletion is not a DLT."""
    ld = course(ALT, "nonhematologic", (day(1), 4), attributed_to="lymphodepletion")
    crs_ld = crs((day(2), 4), attributed_to="lymphodepletion")
    params = DLTParameters(lymphodepletion_attribution_counts=False)
    evaluation = evaluate(ld, crs_ld, as_of=day(3), params=params)
    assert [c.status for c in evaluation.candidates] == ["ruled_out", "ruled_out"]


def test_event_due_to_the_underlying_disease_is_excluded():
    """§7 exclusions: events clearly due to the underlying disease are not DLTs."""
    flare = course(
        "Creatinine increased",
        "nonhematologic",
        (day(10), 4),
        relatedness="possible",
        attributed_to="underlying_disease",
    )
    assert evaluate(flare, as_of=day(11)).candidates[0].status == "ruled_out"


# ---------------------------------------------------------------- adjudication


def _candidate_id(evaluation: DLTEvaluation) -> str:
    return evaluation.candidates[0].id


def test_committee_rejection_with_a_reason_rules_a_dlt_out_and_keeps_the_reason():
    """§7: the safety review committee can overturn a DLT with a reason (§0.3: kept)."""
    course_ = alt((day(9), 4))
    target = _candidate_id(evaluate(course_, as_of=day(10)))
    reject = Overturn(target, "reject", "hepatitis E infection confirmed", day(11), "adj-1")
    evaluation = evaluate(course_, as_of=day(12), overturns=(reject,))
    candidate = evaluation.candidates[0]
    assert (candidate.status, candidate.reason) == ("ruled_out", "hepatitis E infection confirmed")
    assert candidate.decided_at == day(11)
    assert candidate.decided_by[-1] == "adj-1"


def test_committee_confirmation_settles_a_candidate_of_unknown_relatedness():
    """§7 / §9: the committee's confirm decides the pending candidate."""
    course_ = alt((day(9), 4), relatedness=None)
    target = _candidate_id(evaluate(course_, as_of=day(10)))
    confirm = Overturn(target, "confirm", "possibly related", day(11), "adj-1")
    evaluation = evaluate(course_, as_of=day(12), overturns=(confirm,))
    assert evaluation.candidates[0].status == "confirmed"
    assert evaluation.candidates[0].decided_at == day(11)
    assert evaluation.closed is not None and evaluation.closed.had_dlt


def test_the_latest_committee_decision_wins():
    """§9: decisions are replayed in clinical order; a later confirm replaces a reject."""
    course_ = alt((day(9), 4))
    target = _candidate_id(evaluate(course_, as_of=day(10)))
    overturns = (
        Overturn(target, "confirm", "", day(13), "adj-2"),
        Overturn(target, "reject", "lab error", day(11), "adj-1"),
    )
    evaluation = evaluate(course_, as_of=day(14), overturns=overturns)
    assert evaluation.candidates[0].status == "confirmed"
    assert evaluation.candidates[0].decided_at == day(9)  # the rule's time stands


def test_rejection_without_a_reason_is_not_applied_and_asks_for_one():
    """§7: an overturn must state a reason."""
    course_ = alt((day(9), 4))
    target = _candidate_id(evaluate(course_, as_of=day(10)))
    reject = Overturn(target, "reject", "  ", day(11), "adj-1")
    evaluation = evaluate(course_, as_of=day(12), overturns=(reject,))
    assert evaluation.candidates[0].status == "confirmed"
    assert [q.key for q in evaluation.questions] == ["dlt-overturn-reason:adj-1"]


def test_decision_on_a_candidate_the_data_no_longer_produce_raises_a_question():
    """§0.4: late data can move an onset (and the candidate id); the decision is kept
    out and the committee is asked which candidate it meant."""
    reject = Overturn("DLT-nonhematologic_grade_4-x-0", "reject", "why", day(11), "adj-1")
    evaluation = evaluate(alt((day(9), 4)), as_of=day(12), overturns=(reject,))
    assert evaluation.candidates[0].status == "confirmed"
    assert evaluation.questions[0].key == "dlt-overturn-target:adj-1"


def test_decision_recorded_after_as_of_is_not_yet_applied():
    """§0.4: evaluation at a clinical time sees only what had happened by then."""
    course_ = alt((day(9), 4))
    target = _candidate_id(evaluate(course_, as_of=day(10)))
    reject = Overturn(target, "reject", "lab error", day(11), "adj-1")
    evaluation = evaluate(course_, as_of=day(10), overturns=(reject,))
    assert evaluation.candidates[0].status == "confirmed"


def test_candidate_id_is_deterministic_and_in_utc():
    """Contract §3: derived ids are deterministic, so a replay yields the same ids."""
    evaluation = evaluate(grade3_crs_until(day(6, "18:00")), as_of=day(7))
    assert evaluation.candidates[0].id == "DLT-crs_grade_3_not_improving-crs-20260305T0200Z"


# ---------------------------------------------------------------- closure


def test_window_open_before_its_end_wakes_at_the_end():
    """§7: the window closes at its end; until then it is open."""
    evaluation = evaluate(alt((day(5), 2)), as_of=day(20))
    assert evaluation.closed is None
    assert evaluation.next_wake_at == day(29, "00:00")


def test_completed_window_without_dlt_closes_evaluable_at_its_end():
    """§7: a window closes evaluable when the participant completed it."""
    evaluation = evaluate(grade3_crs_until(day(5, "22:00")), as_of=day(29, "00:00"))
    assert evaluation.closed is not None
    assert (evaluation.closed.at, evaluation.closed.evaluable, evaluation.closed.had_dlt) == (
        day(29, "00:00"),
        True,
        False,
    )
    assert evaluation.next_wake_at is None


def test_confirmed_dlt_closes_the_window_early_and_later_candidates_are_still_evaluated():
    """§7: evaluable when the participant had a DLT; later events are still reported."""
    evaluation = evaluate(
        crs((day(3), 4), (day(4), 0)),
        alt((day(10), 4), (day(12), 1)),
        as_of=day(13),
    )
    assert evaluation.closed is not None
    assert (evaluation.closed.at, evaluation.closed.evaluable, evaluation.closed.had_dlt) == (
        day(3),
        True,
        True,
    )
    assert evaluation.candidate("nonhematologic_grade_4").status == "confirmed"


def test_overturning_the_only_dlt_reopens_the_window():
    """§7: the closure follows the candidates; a rejected DLT no longer closes it."""
    course_ = crs((day(3), 4), (day(4), 0))
    target = evaluate(course_, as_of=day(5)).candidate("crs_grade_4").id
    reject = Overturn(target, "reject", "septic shock, not CRS", day(6), "adj-1")
    evaluation = evaluate(course_, as_of=day(7), overturns=(reject,))
    assert evaluation.closed is None


def test_withdrawal_before_the_end_without_dlt_is_not_evaluable():
    """§7: a participant who leaves before day 28 without DLT is not evaluable."""
    evaluation = evaluate(alt((day(5), 2)), as_of=day(20), withdrawn_at=day(18, "15:00"))
    assert evaluation.closed is not None
    assert (evaluation.closed.at, evaluation.closed.evaluable, evaluation.closed.had_dlt) == (
        day(18, "15:00"),
        False,
        False,
    )


def test_withdrawal_after_a_dlt_leaves_the_participant_evaluable():
    """§7: evaluable when the participant had a DLT, even if they leave afterwards."""
    evaluation = evaluate(alt((day(5), 4)), as_of=day(20), withdrawn_at=day(18))
    assert evaluation.closed is not None
    assert evaluation.closed.evaluable and evaluation.closed.had_dlt


def test_withdrawal_with_a_pending_candidate_asks_and_waits_for_its_decision():
    """§9: a time condition cut short by withdrawal needs judgement; the closure waits."""
    evaluation = evaluate(crs((day(10), 3)), as_of=day(11), withdrawn_at=day(11))
    assert evaluation.closed is None
    assert [q.key.split(":")[0] for q in evaluation.questions] == ["dlt-follow-up-ended"]


def test_dlt_reported_after_withdrawal_but_inside_the_window_still_counts():
    """Decision (template silent): clinical data are what happened; a related grade 4
    on D+20 after a withdrawal on D+18 makes the participant evaluable with a DLT."""
    evaluation = evaluate(alt((day(20), 4)), as_of=day(21), withdrawn_at=day(18))
    assert evaluation.closed is not None
    assert (evaluation.closed.at, evaluation.closed.evaluable, evaluation.closed.had_dlt) == (
        day(20),
        True,
        True,
    )


def test_candidate_met_on_day_28_delays_the_closure_until_it_is_decided():
    """§7: onset inside the window counts even when its 72 h end after the window."""
    course_ = crs((day(28, "20:00"), 3), (day(30, "08:00"), 2))
    at_end = evaluate(course_, as_of=day(29, "00:00"))
    assert at_end.closed is None
    assert at_end.next_wake_at == day(31, "20:00")
    later = evaluate(course_, as_of=day(31))
    assert later.closed is not None
    assert (later.closed.at, later.closed.evaluable, later.closed.had_dlt) == (
        day(30, "08:00"),
        True,
        False,
    )


# ---------------------------------------------------------------- haematologic


def test_grade_4_neutropenia_persisting_beyond_day_28_is_a_dlt_when_day_29_starts():
    """§7 rule 4: grade 4 neutropenia persisting beyond day 28."""
    evaluation = evaluate(
        course(ANC, "hematologic", (day(3), 4), relatedness="possible"), as_of=day(29, "00:00")
    )
    candidate = evaluation.candidate("hematologic_grade_4_persisting")
    assert candidate.status == "confirmed"
    assert candidate.decided_at == candidate.decide_by == day(29, "00:00")


def test_grade_4_neutropenia_recovering_on_day_28_is_not_a_dlt():
    """§7 rule 4: back to grade 3 on D+28 09:00 -> it did not persist beyond day 28."""
    neutropenia = course(
        ANC, "hematologic", (day(3), 4), (day(28, "09:00"), 3), relatedness="possible"
    )
    evaluation = evaluate(neutropenia, as_of=day(29, "00:00"))
    candidate = evaluation.candidate("hematologic_grade_4_persisting")
    assert candidate.status == "ruled_out"
    assert candidate.decided_at == day(28, "09:00")
    assert evaluation.closed is not None and not evaluation.closed.had_dlt


def test_grade_4_neutropenia_is_pending_until_day_29():
    """§7 rule 4: the candidate waits for the day after day 28."""
    evaluation = evaluate(
        course(ANC, "hematologic", (day(3), 4), relatedness="possible"), as_of=day(20)
    )
    assert evaluation.candidate("hematologic_grade_4_persisting").status == "pending"
    assert evaluation.next_wake_at == day(29, "00:00")


def test_grade_4_thrombocytopenia_under_day_1_numbering_is_decided_a_day_earlier():
    """§0.5 / §7 rule 4: under Day 1 numbering D+28 is Day 29."""
    platelets = course(
        "Platelet count decreased", "hematologic", (day(5), 4), relatedness="probable"
    )
    evaluation = evaluate(platelets, as_of=day(28, "00:00"), day_zero_is_infusion_day=False)
    candidate = evaluation.candidate("hematologic_grade_4_persisting")
    assert candidate.status == "confirmed"
    assert candidate.decided_at == day(28, "00:00")


def test_grade_3_cytopenia_for_weeks_is_not_a_dlt():
    """§7: the non-haematologic 7-day rule does not apply to cytopenias."""
    evaluation = evaluate(course(ANC, "hematologic", (day(2), 3)), as_of=day(29))
    assert evaluation.candidates == ()


def test_cytopenia_of_unknown_relatedness_asks_only_once_it_persists():
    """§9: the question is raised when the answer matters: a grade 4 neutropenia that
    recovers needs none; one persisting beyond day 28 stays pending and is asked about."""
    recovering = course(ANC, "hematologic", (day(3), 4), (day(10), 2))
    persisting = course(ANC, "hematologic", (day(3), 4))
    early = evaluate(recovering, as_of=day(29, "00:00"))
    late = evaluate(persisting, as_of=day(29, "00:00"))
    assert early.questions == ()
    assert late.candidates[0].status == "pending"
    assert [q.target["id"] for q in late.questions] == [late.candidates[0].id]


# ---------------------------------------------------------------- one event, two rules


def test_grade_4_reached_directly_is_judged_by_the_grade_4_rule_only():
    """Decision (template silent): an event whose first grade >= 3 is already grade 4
    is one DLT candidate (rule 5, grade 4), not also a grade 3 persistence candidate."""
    evaluation = evaluate(alt((day(9), 4), (day(10), 3), (day(20), 1)), as_of=day(21))
    assert [c.rule for c in evaluation.candidates] == ["nonhematologic_grade_4"]


def test_grade_3_escalating_to_grade_4_is_judged_by_both_rules():
    """§7 rules 2 and 5 are independent: grade 3 for 80 h that reached grade 4 on the
    way is a grade 4 DLT at once and a grade 3 DLT at 72 h (one participant, one DLT
    for the count)."""
    evaluation = evaluate(
        crs((day(3, "10:00"), 3), (day(4), 4), (day(5), 3), (day(6, "18:00"), 2)),
        as_of=day(7),
    )
    assert [(c.rule, c.status, c.decided_at) for c in evaluation.candidates] == [
        ("crs_grade_3_not_improving", "confirmed", day(6, "10:00")),
        ("crs_grade_4", "confirmed", day(4)),
    ]
    assert evaluation.closed is not None and evaluation.closed.at == day(4)


def test_grade_4_cytopenia_first_met_after_an_earlier_named_day_is_a_dlt_at_once():
    """§7 [parameter]: persisting beyond day 14 with a 28-day window: grade 4 first
    met on day 20 is grade 4 beyond day 14 and inside the window."""
    params = DLTParameters(hematologic_grade4_persisting_beyond_day=14)
    neutropenia = course(ANC, "hematologic", (day(20), 4), relatedness="possible")
    candidate = evaluate(neutropenia, as_of=day(21), params=params).candidates[0]
    assert (candidate.status, candidate.decided_at) == ("confirmed", day(20))
