"""ICAHT grading: EHA/EBMT consensus (Rejeski et al., Blood 2023;142:865-877).

Each test is a short ANC course whose expected grade follows from
/work/shared/clinical/reference.md §4 (and §0.5 for day numbering) and vignettes.md
16-18; operational definitions (lowest value per day, interpolation of short gaps,
joining across non-stable recoveries) follow Liang et al.'s automated grading code,
as reference §4 directs. Infusion at D0 08:00 (+08:00); ``day(n)`` is D+n 07:00.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone

import pytest
from pydantic import ValidationError

from domain.contract import LabResulted
from domain.icaht import ICAHTDerivation, ICAHTParameters, derive_icaht
from domain.timeline import TimelineEntry

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
ABOVE = 1.0  # x 10^9/L, well above every early threshold


def day(n: int, hhmm: str = "07:00") -> datetime:
    hours, minutes = (int(part) for part in hhmm.split(":"))
    return datetime.combine(D0.date() + timedelta(days=n), time(hours, minutes), tzinfo=TZ)


class ANCCourse:
    """One participant's lab results, recorded in arrival order."""

    def __init__(self, infusion_at: datetime | None = D0) -> None:
        self.infusion_at = infusion_at
        self.entries: list[TimelineEntry] = []

    def lab(self, at: datetime, analyte: str, value: float, unit: str) -> str:
        seq = len(self.entries) + 1
        event_id = f"lab{seq:03d}"
        data = LabResulted(analyte=analyte, value=value, unit=unit)
        self.entries.append(TimelineEntry(event_id, "lab.resulted", at, data, seq))
        return event_id

    def anc(self, n: int, value: float, unit: str = "10*9/L", hhmm: str = "07:00") -> str:
        return self.lab(day(n, hhmm), "anc", value, unit)

    def daily(self, first: int, last: int, value: float) -> list[str]:
        """One ANC result a day, D+first to D+last inclusive."""
        return [self.anc(n, value) for n in range(first, last + 1)]

    def derive(
        self,
        *,
        day_zero_is_infusion_day: bool = True,
        as_of: datetime | None = None,
        params: ICAHTParameters | None = None,
    ) -> ICAHTDerivation:
        if as_of is None:
            as_of = max((e.at for e in self.entries), default=D0)
        return derive_icaht(
            self.entries,
            params or ICAHTParameters(),
            infusion_at=self.infusion_at,
            day_zero_is_infusion_day=day_zero_is_infusion_day,
            as_of=as_of,
        )


def early_grade(course: ANCCourse, **kwargs: object) -> int:
    early = course.derive(**kwargs).early  # type: ignore[arg-type]
    assert early is not None
    return early.grade


def run_of(length: int, value: float = 0.3, *, start: int = 2) -> ANCCourse:
    """A single run of ``length`` days at ``value`` from D+start, with daily results
    above the thresholds before it and a stable recovery (5 days) after it."""
    course = ANCCourse()
    course.daily(0, start - 1, ABOVE)
    course.daily(start, start + length - 1, value)
    course.daily(start + length, start + length + 4, ABOVE)
    return course


# ---------------------------------------------------------------- vignettes 16-18


def test_vignette_16_nine_days_at_or_below_0_5_with_stable_recovery_is_grade_2():
    """Reference §4: ANC <= 0.5 for 7-13 days -> early ICAHT grade 2; vignette 16."""
    course = ANCCourse()
    course.daily(0, 1, ABOVE)
    below = [0.45, 0.3, 0.2, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]  # D+2..D+10
    ids = [course.anc(2 + i, value) for i, value in enumerate(below)]
    for n, value in zip(range(11, 16), [0.7, 0.9, 1.1, 1.4, 1.6], strict=True):
        course.anc(n, value)
    early = course.derive().early
    assert early is not None
    assert (early.phase, early.grade) == ("early", 2)
    assert (early.days_anc_le_0_5, early.days_anc_le_0_1) == (9, 0)
    assert early.nadir_anc_10e9_l == 0.15
    assert early.at == day(8)  # the 7th day at or below 0.5 (D+2..D+8)
    assert early.caused_by == tuple(ids[:7])


def test_vignette_17_two_day_non_stable_recovery_joins_runs_into_16_days_grade_3():
    """Reference §4: runs separated by < 3 days above 0.5 are joined, the days between
    counting: 5 + 2 + 9 = 16 days >= 14 -> grade 3; vignette 17."""
    course = ANCCourse()
    course.anc(0, 0.9)
    course.daily(1, 5, 0.4)
    recovery = [course.anc(6, 0.62), course.anc(7, 0.70)]
    course.daily(8, 16, 0.3)
    course.daily(17, 21, 0.8)
    derivation = course.derive()
    early = derivation.early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5) == (3, 16)
    assert not set(recovery) & set(early.caused_by)
    assert [(c.at, c.grade, c.previous_grade) for c in derivation.changes] == [
        (day(1), 1, 0),
        (day(8), 2, 1),  # D+8 rejoins the first run: D+1..D+8 = 8 days
        (day(14), 3, 2),  # D+1..D+14 = 14 days
    ]


def test_vignette_18_seven_or_more_days_at_or_below_0_1_outranks_10_days_below_0_5():
    """Reference §4: the more severe row decides; <= 0.1 for 7-13 days -> grade 3 over
    <= 0.5 for 10 days -> grade 2; vignette 18."""
    course = ANCCourse()
    course.daily(0, 1, ABOVE)
    course.anc(2, 0.3)
    course.daily(3, 10, 0.05)
    course.anc(11, 0.3)
    course.daily(12, 16, 0.8)
    early = course.derive().early
    assert early is not None
    assert early.grade == 3
    assert (early.days_anc_le_0_5, early.days_anc_le_0_1) == (10, 8)
    assert early.nadir_anc_10e9_l == 0.05


# ---------------------------------------------------------------- duration boundaries


@pytest.mark.parametrize(
    ("days", "grade"),
    [(1, 1), (6, 1), (7, 2), (13, 2), (14, 3)],
)
def test_days_at_or_below_0_5_grade_at_each_boundary(days: int, grade: int):
    """Reference §4, row <= 0.5: 1-6 days G1, 7-13 G2, >= 14 G3."""
    course = run_of(days, 0.3)
    early = course.derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5) == (grade, days)


def test_exactly_0_5_counts_as_at_or_below_and_0_51_does_not():
    """Reference §4: the threshold is ANC <= 0.5 x 10^9/L."""
    assert early_grade(run_of(7, 0.5)) == 2
    assert early_grade(run_of(7, 0.51)) == 0


def test_six_days_at_or_below_0_1_adds_nothing_to_the_0_5_row():
    """Reference §4: <= 0.1 grades only from 7 days; 6 days <= 0.5 -> grade 1."""
    early = run_of(6, 0.05).derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_1) == (1, 6)


def test_seven_days_at_or_below_0_1_is_grade_3():
    """Reference §4: <= 0.1 for 7-13 days -> grade 3 (the <= 0.5 row alone gives 2)."""
    early = run_of(7, 0.1).derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_1) == (3, 7)


def test_thirteen_days_at_or_below_0_1_is_grade_3():
    """Reference §4: <= 0.1 for 7-13 days -> grade 3 (lower side of 13/14)."""
    assert early_grade(run_of(13, 0.05)) == 3


def test_fourteen_days_at_or_below_0_1_is_grade_4():
    """Reference §4: <= 0.1 for >= 14 days -> grade 4 (the <= 0.5 row alone gives 3)."""
    early = run_of(14, 0.05).derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_1) == (4, 14)


def test_0_11_is_above_the_profound_threshold():
    """Reference §4: the second row is ANC <= 0.1; 0.11 only counts as <= 0.5."""
    early = run_of(14, 0.11).derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_1) == (3, 0)


# ---------------------------------------------------------------- run joining


def test_two_days_above_0_5_join_the_runs_and_count():
    """Reference §4: < 3 consecutive days above the threshold is a non-stable recovery:
    4 + 2 + 4 = 10 days -> grade 2."""
    course = ANCCourse()
    course.anc(0, ABOVE)
    course.daily(1, 4, 0.3)
    course.daily(5, 6, 0.8)
    course.daily(7, 10, 0.3)
    course.daily(11, 15, ABOVE)
    early = course.derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5) == (2, 10)


def test_three_days_above_0_5_is_a_stable_recovery_and_runs_stay_apart():
    """Reference §4: 3 consecutive days above is a stable recovery; the longest run
    (4 days) decides -> grade 1."""
    course = ANCCourse()
    course.anc(0, ABOVE)
    course.daily(1, 4, 0.3)
    course.daily(5, 7, 0.8)
    course.daily(8, 11, 0.3)
    course.daily(12, 16, ABOVE)
    early = course.derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5) == (1, 4)


def test_runs_at_or_below_0_1_are_joined_across_a_non_stable_recovery_too():
    """Reference §4: joining applies to each row; <= 0.1 on D+1..5 and D+8..12 with 0.3
    on D+6..7 -> 12 days <= 0.1 -> grade 3 (the <= 0.5 row, 12 days, gives 2)."""
    course = ANCCourse()
    course.anc(0, ABOVE)
    course.daily(1, 5, 0.05)
    course.daily(6, 7, 0.3)
    course.daily(8, 12, 0.05)
    course.daily(13, 17, ABOVE)
    early = course.derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5, early.days_anc_le_0_1) == (3, 12, 12)


def test_recovery_stable_days_is_a_parameter():
    """Reference §4: with a 4-day stability requirement, a 3-day recovery joins:
    4 + 3 + 4 = 11 days -> grade 2."""
    course = ANCCourse()
    course.anc(0, ABOVE)
    course.daily(1, 4, 0.3)
    course.daily(5, 7, 0.8)
    course.daily(8, 11, 0.3)
    course.daily(12, 16, ABOVE)
    assert early_grade(course, params=ICAHTParameters(recovery_stable_days=4)) == 2


# ---------------------------------------------------------------- never recovers


def test_run_starting_on_day_3_still_below_on_day_30_never_recovers_grade_4():
    """Reference §4 G4: a <= 0.5 run that starts by day 3 and is still below on day 30."""
    course = ANCCourse()
    course.daily(0, 2, ABOVE)
    course.daily(3, 30, 0.3)
    early = course.derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5) == (4, 28)
    assert early.at == day(30)


def test_run_starting_on_day_4_still_below_on_day_30_is_grade_3():
    """Reference §4: the run must start by day 3; from day 4 it is 27 days -> grade 3."""
    course = ANCCourse()
    course.daily(0, 3, ABOVE)
    course.daily(4, 30, 0.3)
    early = course.derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5) == (3, 27)


def test_never_recovers_is_met_only_when_day_30_is_reached_below():
    """Reference §4 and §0.4: at D+20 the run (D+2..D+20, 19 days) is grade 3; grade 4 is
    met by the D+30 result, after grades 1, 2 and 3 on D+2, D+8 and D+15."""
    course = ANCCourse()
    course.daily(0, 1, ABOVE)
    ids = course.daily(2, 30, 0.3)
    assert early_grade(course, as_of=day(20)) == 3
    derivation = course.derive()
    assert [(c.at, c.grade) for c in derivation.changes] == [
        (day(2), 1),
        (day(8), 2),
        (day(15), 3),
        (day(30), 4),
    ]
    assert derivation.grade_at("early", day(29)) == 3
    assert derivation.early is not None
    assert derivation.early.caused_by == tuple(ids)


def test_run_recovering_on_day_30_is_not_never_recovers():
    """Reference §4: still below on day 30 is required; D+2..D+29 = 28 days -> grade 3."""
    course = ANCCourse()
    course.daily(0, 1, ABOVE)
    course.daily(2, 29, 0.3)
    course.anc(30, 0.8)
    assert early_grade(course) == 3


# ---------------------------------------------------------------- per-day values, units


def test_lowest_value_of_the_day_counts():
    """Reference §4: take the lowest value per day: 0.8 in the morning and 0.45 in the
    evening on D+1..D+7 -> 7 days <= 0.5 -> grade 2, met by the D+7 evening result."""
    course = ANCCourse()
    course.anc(0, ABOVE)
    for n in range(1, 8):
        course.anc(n, 0.8, hhmm="07:00")
        course.anc(n, 0.45, hhmm="19:00")
    course.daily(8, 12, ABOVE)
    early = course.derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5) == (2, 7)
    assert early.at == day(7, "19:00")


def test_study_days_are_calendar_days_so_a_late_evening_result_counts_for_its_day():
    """Reference §0.5: D0 is the infusion's calendar day (from 00:00), not 24 h blocks:
    a 23:30 result and a 00:30 result fall on two days."""
    course = ANCCourse()
    course.anc(0, ABOVE, hhmm="07:00")
    course.anc(1, 0.3, hhmm="23:30")
    course.anc(2, 0.3, hhmm="00:30")
    course.daily(3, 7, ABOVE)
    early = course.derive().early
    assert early is not None
    assert early.days_anc_le_0_5 == 2


def test_per_microlitre_results_are_converted_1000_per_ul_to_1_0():
    """Reference §3/§4 units: 1.0 x 10^9/L = 1000/uL; 450/uL on 7 days -> grade 2."""
    course = ANCCourse()
    course.anc(0, 1200, unit="/uL")
    for n in range(1, 8):
        course.anc(n, 450, unit="/uL")
    for n in range(8, 13):
        course.anc(n, 1100, unit="/uL")
    early = course.derive().early
    assert early is not None
    assert (early.grade, early.nadir_anc_10e9_l) == (2, 0.45)


@pytest.mark.parametrize(("value_per_ul", "days"), [(500, 7), (501, 0), (100, 7), (101, 7)])
def test_per_microlitre_thresholds_are_500_and_100(value_per_ul: float, days: int):
    """Reference §4: <= 0.5 x 10^9/L is <= 500/uL and <= 0.1 is <= 100/uL."""
    course = ANCCourse()
    course.anc(0, 1200, unit="/uL")
    for n in range(1, 8):
        course.anc(n, value_per_ul, unit="/uL")
    course.daily(8, 12, ABOVE)
    early = course.derive().early
    assert early is not None
    assert early.days_anc_le_0_5 == days
    assert early.days_anc_le_0_1 == (7 if value_per_ul <= 100 else 0)


def test_mixed_units_on_one_day_compare_after_conversion():
    """Reference §4: lowest per day after conversion: 600/uL and 0.4 x 10^9/L -> 0.4."""
    course = ANCCourse()
    course.anc(3, 600, unit="/uL", hhmm="07:00")
    course.anc(3, 0.4, hhmm="15:00")
    early = course.derive().early
    assert early is not None
    assert (early.nadir_anc_10e9_l, early.days_anc_le_0_5) == (0.4, 1)


# ---------------------------------------------------------------- missing days


def test_days_between_two_results_are_interpolated():
    """Liang et al. (reference §4): unmeasured days between results up to 7 days apart
    are linearly interpolated: 0.3 on D+2 and D+9 -> D+2..D+9 = 8 days -> grade 2,
    known when the D+9 result arrives."""
    course = ANCCourse()
    course.daily(0, 1, ABOVE)
    first = course.anc(2, 0.3)
    last = course.anc(9, 0.3)
    course.daily(10, 14, ABOVE)
    derivation = course.derive()
    early = derivation.early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5) == (2, 8)
    assert early.at == day(9)
    assert early.caused_by == (first, last)


def test_interpolation_can_cross_the_threshold_between_results():
    """Liang et al.: 0.2 on D+2, 1.0 on D+6 -> D+3 0.4 (below), D+4 0.6 (above) -> 2 days."""
    course = ANCCourse()
    course.daily(0, 1, ABOVE)
    course.anc(2, 0.2)
    course.daily(6, 10, ABOVE)
    early = course.derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5) == (1, 2)


def test_a_gap_longer_than_7_days_is_not_filled():
    """Liang et al.: gaps over 7 days stay unknown; 0.3 on D+2 and D+11 (8 days between)
    are two 1-day runs, 8 days apart, not joined -> grade 1."""
    course = ANCCourse()
    course.daily(0, 1, ABOVE)
    course.anc(2, 0.3)
    course.anc(11, 0.3)
    early = course.derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5) == (1, 1)


def test_nothing_is_extrapolated_after_the_last_result():
    """A single 0.3 on D+2 and nothing else by D+25 is one day, not 24."""
    course = ANCCourse()
    course.anc(2, 0.3)
    early = course.derive(as_of=day(25)).early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5) == (1, 1)


# ---------------------------------------------------------------- day numbering


def test_day_one_convention_moves_d30_into_the_late_phase():
    """Reference §0.5: under Day 1 numbering D+30 is Day 31, outside early ICAHT:
    <= 0.5 on D+24..D+30 is 7 days (grade 2) under Day 0 but 6 (grade 1) under Day 1."""
    course = ANCCourse()
    course.daily(20, 23, ABOVE)
    course.daily(24, 30, 0.3)
    day_zero = course.derive(day_zero_is_infusion_day=True)
    day_one = course.derive(day_zero_is_infusion_day=False)
    assert day_zero.early is not None and day_one.early is not None
    assert (day_zero.early.grade, day_zero.early.days_anc_le_0_5) == (2, 7)
    assert (day_one.early.grade, day_one.early.days_anc_le_0_5) == (1, 6)
    assert day_zero.late is None
    assert day_one.late is not None
    assert day_one.late.grade == 0  # one late result only


def test_day_one_convention_changes_which_run_starts_by_day_3():
    """Reference §0.5/§4: a run from D+3 to D+30 starts on Day 3 (Day 0 numbering,
    grade 4) but on Day 4 (Day 1 numbering: D+3..D+29 = Days 4..30, 27 days, grade 3)."""
    course = ANCCourse()
    course.daily(0, 2, ABOVE)
    course.daily(3, 30, 0.3)
    assert early_grade(course, day_zero_is_infusion_day=True) == 4
    assert early_grade(course, day_zero_is_infusion_day=False) == 3


def test_results_before_the_infusion_day_do_not_count():
    """Reference §4: early ICAHT starts on the infusion day; post-lymphodepletion
    neutropenia on D-2 and D-1 is not counted."""
    course = ANCCourse()
    course.daily(-2, -1, 0.2)
    course.daily(0, 5, ABOVE)
    early = course.derive().early
    assert early is not None
    assert (early.grade, early.days_anc_le_0_5) == (0, 0)


# ---------------------------------------------------------------- late ICAHT


@pytest.mark.parametrize(
    ("value", "grade"),
    [
        (1.5, 1),
        (1.51, 0),
        (1.0, 2),
        (1.01, 1),
        (0.5, 3),
        (0.51, 2),
        (0.1, 4),
        (0.11, 3),
    ],
)
def test_late_nadir_thresholds_on_both_sides(value: float, grade: int):
    """Reference §4, late ICAHT: nadir <= 1.5 / 1.0 / 0.5 / 0.1 -> G1/2/3/4."""
    course = ANCCourse()
    course.anc(5, ABOVE)
    course.anc(35, value)
    course.anc(45, value)
    late = course.derive().late
    assert late is not None
    assert (late.phase, late.grade, late.nadir_anc_10e9_l) == ("late", grade, value)


def test_late_grade_needs_two_results_at_or_below_its_threshold():
    """Reference §4: >= 2 measurements at or below the threshold: 0.05 once and 1.2
    once -> only <= 1.5 is met twice -> grade 1, met by the second result."""
    course = ANCCourse()
    first = course.anc(40, 0.05)
    second = course.anc(50, 1.2)
    late = course.derive().late
    assert late is not None
    assert (late.grade, late.nadir_anc_10e9_l) == (1, 0.05)
    assert late.at == day(50)
    assert late.caused_by == (first, second)


def test_a_single_late_result_grades_nothing():
    """Reference §4: one result at 0.05 after day +30 is not >= 2 measurements."""
    course = ANCCourse()
    course.anc(40, 0.05)
    late = course.derive().late
    assert late is not None
    assert (late.grade, late.days_anc_le_0_1) == (0, 1)


def test_two_late_results_on_one_day_count_as_one():
    """Reference §4: lowest value per day, so two results on D+40 are one measurement."""
    course = ANCCourse()
    course.anc(40, 0.05, hhmm="07:00")
    course.anc(40, 0.08, hhmm="15:00")
    late = course.derive().late
    assert late is not None
    assert late.grade == 0


def test_late_phase_ignores_early_results():
    """Reference §4: late ICAHT is after day +30; D+30 0.05 is early, D+31 0.05 late."""
    course = ANCCourse()
    course.anc(30, 0.05)
    course.anc(31, 0.05)
    derivation = course.derive()
    assert derivation.late is not None and derivation.early is not None
    assert derivation.late.grade == 0
    assert derivation.early.days_anc_le_0_1 == 1


# ---------------------------------------------------------------- no data, as_of


def test_no_anc_results_no_grade():
    """Reference §4: ICAHT is graded from ANC; without it there is no grade."""
    course = ANCCourse()
    course.lab(day(3), "platelets", 20, "10*9/L")
    derivation = course.derive()
    assert (derivation.early, derivation.late, derivation.changes) == (None, None, ())
    assert ANCCourse().derive() == derivation


def test_no_infusion_no_grade():
    """Reference §0.5: days count from the infusion; before it there is no ICAHT."""
    course = ANCCourse(infusion_at=None)
    course.anc(3, 0.1)
    assert course.derive() == ICAHTDerivation(None, None, ())


def test_anc_always_above_0_5_is_early_grade_0_without_changes():
    """Reference §4: no day <= 0.5 -> early ICAHT grade 0."""
    course = ANCCourse()
    course.daily(0, 10, 0.9)
    derivation = course.derive()
    assert derivation.early is not None
    assert (derivation.early.grade, derivation.early.nadir_anc_10e9_l) == (0, 0.9)
    assert derivation.changes == ()


def test_results_after_as_of_are_not_used():
    """Reference §0.4: the grade at a clinical time uses what occurred by then."""
    course = ANCCourse()
    course.daily(1, 10, 0.3)
    assert early_grade(course, as_of=day(6, "23:59")) == 1
    assert early_grade(course) == 2


def test_parameters_are_frozen_and_strict():
    """Style §3: the protocol is data; an unknown parameter name is rejected."""
    params = ICAHTParameters()
    assert (params.early_window_days, params.recovery_stable_days) == (30, 3)
    assert params.late_min_measurements == 2
    with pytest.raises(ValidationError):
        ICAHTParameters(recovery_days=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        params.early_window_days = 28  # type: ignore[misc]
