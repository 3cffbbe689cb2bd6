"""Disease activity change from baseline, reference §12.

Each test is one participant's ``disease.assessed`` course whose expected change,
direction and response/remission flag follow from §12 (instruments, ranges, rules;
lower is better for all but MMT-8). Visit windows are the [parameter] defaults of
``domain/disease_scores.py``: +/-7 days around week 4, +/-14 around 12, +/-28 around
24 and 52, in calendar days since infusion. Infusion at D0 08:00 (+08:00).
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from typing import get_args

import pytest

from domain.contract import DiseaseAssessed
from domain.disease_scores import INSTRUMENTS, changes_from_baseline, visit_week

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)


def day(n: int, hhmm: str = "10:00") -> datetime:
    hours, minutes = (int(part) for part in hhmm.split(":"))
    return datetime.combine(D0.date() + timedelta(days=n), time(hours, minutes), tzinfo=TZ)


def assessed(
    n: int, instrument: str, score: float, visit: str | None = None
) -> tuple[datetime, DiseaseAssessed]:
    return day(n), DiseaseAssessed(instrument=instrument, score=score, visit=visit)


def test_instruments_are_those_of_the_contract() -> None:
    contract = set(get_args(DiseaseAssessed.model_fields["instrument"].annotation))

    assert set(INSTRUMENTS) == contract


def test_lower_is_better_for_all_but_mmt_8() -> None:
    # §12: "lower is better for all but MMT-8".
    assert {code for code, spec in INSTRUMENTS.items() if not spec.lower_is_better} == {"MMT-8"}


def test_sledai_2k_from_12_to_4_at_week_12_is_low_disease_activity() -> None:
    # §12 SLE: LLDAS SLEDAI-2K <= 4. 4 - 12 = -8; -8 / 12 = -66.7 %.
    course = [assessed(-3, "SLEDAI-2K", 12), assessed(84, "SLEDAI-2K", 4)]

    [change] = changes_from_baseline(course, D0)

    assert (change.week, change.baseline_score, change.score) == (12, 12, 4)
    assert change.change == -8
    assert change.percent_change == pytest.approx(-66.7, abs=0.05)
    assert change.improved
    assert (change.rule, change.rule_met) == ("low_disease_activity", True)


def test_sledai_2k_of_5_is_not_low_disease_activity() -> None:
    course = [assessed(-3, "SLEDAI-2K", 12), assessed(84, "SLEDAI-2K", 5)]

    [change] = changes_from_baseline(course, D0)

    assert change.improved
    assert change.rule_met is False


def test_mmt_8_rising_from_120_to_140_is_improvement() -> None:
    # §12 IIM: MMT-8, higher is better; no response rule stated.
    course = [assessed(-1, "MMT-8", 120), assessed(28, "MMT-8", 140)]

    [change] = changes_from_baseline(course, D0)

    assert (change.week, change.change) == (4, 20)
    assert change.percent_change == pytest.approx(16.67, abs=0.005)
    assert change.improved
    assert (change.rule, change.rule_met) == (None, None)


def test_mrss_rising_is_worsening() -> None:
    course = [assessed(-1, "MRSS", 14), assessed(28, "MRSS", 16)]

    [change] = changes_from_baseline(course, D0)

    assert not change.improved
    assert change.rule_met is None


def test_igg4_rd_ri_halving_exactly_is_not_a_response() -> None:
    # §12 IgG4-RD: response = > 50 % decline. 6 -> 3 is exactly 50 %.
    course = [assessed(-1, "IGG4-RD-RI", 6), assessed(84, "IGG4-RD-RI", 3)]

    [change] = changes_from_baseline(course, D0)

    assert change.percent_change == -50
    assert change.improved
    assert (change.rule, change.rule_met) == ("response", False)


def test_igg4_rd_ri_falling_from_6_to_2_is_a_response() -> None:
    # 6 -> 2: -66.7 % > 50 % decline.
    course = [assessed(-1, "IGG4-RD-RI", 6), assessed(84, "IGG4-RD-RI", 2)]

    [change] = changes_from_baseline(course, D0)

    assert change.rule_met is True


def test_bvas_falling_to_0_is_remission() -> None:
    # §12 AAV: remission BVAS = 0.
    course = [
        assessed(-1, "BVAS-V3", 9),
        assessed(28, "BVAS-V3", 1),
        assessed(168, "BVAS-V3", 0),
    ]

    week_4, week_24 = changes_from_baseline(course, D0)

    assert (week_4.week, week_4.rule, week_4.rule_met) == (4, "remission", False)
    assert (week_24.week, week_24.change, week_24.percent_change) == (24, -9, -100)
    assert week_24.rule_met is True


def test_itas2010_below_2_is_inactive_disease() -> None:
    # §12 TAK: active >= 2.
    course = [
        assessed(-1, "ITAS2010", 7),
        assessed(28, "ITAS2010", 2),
        assessed(84, "ITAS2010", 1),
    ]

    week_4, week_12 = changes_from_baseline(course, D0)

    assert (week_4.rule, week_4.rule_met) == ("inactive_disease", False)
    assert week_12.rule_met is True


def test_baseline_is_the_last_assessment_before_infusion() -> None:
    # Screening 14 at D-20, 10 at D-2: baseline 10, so week 4 at 8 is -2 (-20 %).
    course = [
        assessed(-20, "SLEDAI-2K", 14),
        assessed(-2, "SLEDAI-2K", 10),
        assessed(28, "SLEDAI-2K", 8),
    ]

    [change] = changes_from_baseline(course, D0)

    assert (change.baseline_score, change.baseline_at) == (10, day(-2))
    assert (change.change, change.percent_change) == (-2, -20)


def test_assessment_at_infusion_time_is_a_baseline() -> None:
    assert visit_week(D0, D0) == 0
    assert visit_week(day(0, "08:01"), D0) is None


def test_without_baseline_there_are_no_changes() -> None:
    course = [assessed(28, "SLEDAI-2K", 8), assessed(84, "SLEDAI-2K", 4)]

    assert changes_from_baseline(course, D0) == []


def test_assessment_outside_every_window_has_no_visit() -> None:
    # Day 50 is past week 4 (21-35) and before week 12 (70-98).
    course = [assessed(-1, "MRSS", 20), assessed(50, "MRSS", 15)]

    assert visit_week(day(50), D0) is None
    assert changes_from_baseline(course, D0) == []


@pytest.mark.parametrize(
    ("n", "week"),
    [
        (20, None),
        (21, 4),
        (35, 4),
        (36, None),
        (69, None),
        (70, 12),
        (98, 12),
        (99, None),
        (139, None),
        (140, 24),
        (196, 24),
        (335, None),
        (336, 52),
        (392, 52),
        (393, None),
    ],
)
def test_visit_windows_in_calendar_days_since_infusion(n: int, week: int | None) -> None:
    # [parameter] windows: week 4 +/-7 d, 12 +/-14 d, 24 and 52 +/-28 d. Calendar days,
    # so a visit late in the evening of day 35 is still week 4.
    assert visit_week(day(n, "23:00"), D0) == week


def test_visit_label_names_the_week() -> None:
    # A labelled W12 visit delayed to day 101 (outside 70-98) is still week 12.
    assert visit_week(day(101), D0, visit="W12") == 12
    assert visit_week(day(101), D0, visit="Week 12") == 12
    assert visit_week(day(101), D0, visit="unscheduled") is None
    assert visit_week(day(28), D0, visit="W8") == 4


def test_labelled_visit_wins_over_a_closer_unlabelled_one() -> None:
    course = [
        assessed(-1, "SLEDAI-2K", 12),
        assessed(84, "SLEDAI-2K", 6),
        assessed(90, "SLEDAI-2K", 4, visit="W12"),
    ]

    [change] = changes_from_baseline(course, D0)

    assert (change.assessed_at, change.score) == (day(90), 4)


def test_unlabelled_visit_closest_to_the_nominal_day_is_used() -> None:
    # Week 12 = day 84: day 80 is closer than day 95.
    course = [
        assessed(-1, "SLEDAI-2K", 12),
        assessed(95, "SLEDAI-2K", 2),
        assessed(80, "SLEDAI-2K", 6),
    ]

    [change] = changes_from_baseline(course, D0)

    assert change.assessed_at == day(80)


def test_instruments_are_followed_separately() -> None:
    course = [
        assessed(-1, "ITAS2010", 6),
        assessed(-1, "ITAS-A", 8),
        assessed(28, "ITAS2010", 3),
        assessed(28, "ITAS-A", 4),
    ]

    changes = changes_from_baseline(course, D0)

    assert [(c.instrument, c.change) for c in changes] == [("ITAS-A", -4), ("ITAS2010", -3)]


def test_baseline_of_0_gives_no_percent_change() -> None:
    course = [assessed(-1, "IGG4-RD-RI", 0), assessed(28, "IGG4-RD-RI", 2)]

    [change] = changes_from_baseline(course, D0)

    assert (change.percent_change, change.improved, change.rule_met) == (None, False, None)


def test_score_outside_the_instrument_range_is_rejected() -> None:
    # §12 SLEDAI-2K 0-105.
    with pytest.raises(ValueError, match="outside"):
        changes_from_baseline([assessed(-1, "SLEDAI-2K", 106)], D0)
