"""Cellular kinetics NCA, reference §11 (/work/shared/clinical/reference.md).

Each test is one profile (day, transgene copies/ug gDNA) whose expected Cmax, Tmax,
Clast, Tlast and AUC 0-28 follow from §11; every AUC is summed by hand in a comment
(linear trapezoid: (c0 + c1) / 2 x (t1 - t0)). Choices where §11 is silent are those
documented in ``domain/pk.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from domain.pk import NCAResult, PKSample, nca, samples_from

TZ = timezone(timedelta(hours=8))
INFUSED_AT = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)


def q(day: float, value: float) -> PKSample:
    return PKSample(day, value, below_lloq=False)


def blq(day: float) -> PKSample:
    return PKSample(day, None, below_lloq=True)


#: §11 worked example, up to day 21 (the tests vary what follows).
#: Trapezoids: 0-1 (0+50)/2x1 = 25; 1-4 (50+2000)/2x3 = 3,075; 4-7 (2000+15000)/2x3
#: = 25,500; 7-10 (15000+30000)/2x3 = 67,500; 10-14 (30000+12000)/2x4 = 84,000;
#: 14-21 (12000+3000)/2x7 = 52,500. Sum 0-14 = 180,100; sum 0-21 = 232,600.
THROUGH_DAY_21 = [
    blq(0),
    q(1, 50),
    q(4, 2000),
    q(7, 15000),
    q(10, 30000),
    q(14, 12000),
    q(21, 3000),
]
AUC_0_14 = 180_100.0
AUC_0_21 = 232_600.0


def test_worked_example_of_reference_11() -> None:
    # §11: Cmax 30,000, Tmax day 10, Tlast day 28, Clast 800, AUC 0-28 = 245,900.
    # 21-28 (3000+800)/2x7 = 13,300; 232,600 + 13,300 = 245,900.
    result = nca([*THROUGH_DAY_21, q(28, 800), blq(56), blq(84)])

    assert result == NCAResult(
        cmax=30_000,
        tmax_day=10,
        clast=800,
        tlast_day=28,
        auc_0_28=245_900,
        auc_complete=True,
        n_quantifiable=7,
        persistence_days=28,
        predose_quantifiable=False,
        # Day 56 is the first BLQ after the last quantifiable (-> 0); day 84 dropped.
        profile=(
            (0, 0),
            (1, 50),
            (4, 2000),
            (7, 15000),
            (10, 30000),
            (14, 12000),
            (21, 3000),
            (28, 800),
            (56, 0),
        ),
    )


def test_blq_before_first_quantifiable_counts_as_zero() -> None:
    # §11: before the first quantifiable -> 0. Day 1 BLQ: 0-1 (0+0)/2x1 = 0;
    # 1-4 (0+2000)/2x3 = 3,000 instead of 25 + 3,075: 245,900 - 3,100 + 3,000 = 245,800.
    # Dropping it instead would give 0-4 (0+2000)/2x4 = 4,000 -> 246,800.
    samples = [blq(0), blq(1), *THROUGH_DAY_21[2:], q(28, 800)]

    result = nca(samples)

    assert result.auc_0_28 == 245_800
    assert (1, 0) in result.profile
    assert result.n_quantifiable == 6


def test_blq_between_quantifiables_is_dropped() -> None:
    # §11: between quantifiable -> drop. Day 10 BLQ: 7-14 (15000+12000)/2x7 = 94,500;
    # 25 + 3,075 + 25,500 + 94,500 + 52,500 + 13,300 = 188,900.
    # Treated as 0 it would be 7-10 (15000+0)/2x3 = 22,500 + 10-14 (0+12000)/2x4
    # = 24,000: 28,600 + 46,500 + 52,500 + 13,300 = 140,900.
    samples = [*THROUGH_DAY_21[:4], blq(10), *THROUGH_DAY_21[5:], q(28, 800)]

    result = nca(samples)

    assert result.auc_0_28 == 188_900
    assert result.auc_0_28 != 140_900
    assert all(day != 10 for day, _ in result.profile)
    assert (result.cmax, result.tmax_day) == (15_000, 7)


def test_first_blq_after_last_quantifiable_counts_as_zero_and_shortens_auc() -> None:
    # §11: the first BLQ after the last quantifiable -> 0. Day 21 BLQ -> 0:
    # 14-21 (12000+0)/2x7 = 42,000; 180,100 + 42,000 = 222,100. Day 28 BLQ is a later
    # one, dropped; it adds no area after the 0 but shows day 28 was observed.
    samples = [*THROUGH_DAY_21[:6], blq(21), blq(28)]

    result = nca(samples)

    assert result.auc_0_28 == 222_100
    assert result.auc_complete
    assert result.profile[-1] == (21, 0)
    assert (result.clast, result.tlast_day, result.persistence_days) == (12_000, 14, 14)


def test_blqs_after_the_first_trailing_blq_are_dropped() -> None:
    # §11: later BLQs dropped. Day 35 BLQ -> 0, days 42 and 56 dropped. Day 28 is
    # interpolated between (21, 3000) and (35, 0): 3000 x (35-28)/(35-21) = 1,500;
    # 21-28 (3000+1500)/2x7 = 15,750; 232,600 + 15,750 = 248,350.
    samples = [*THROUGH_DAY_21, blq(35), blq(42), blq(56)]

    result = nca(samples)

    assert result.profile[-2:] == ((21, 3000), (35, 0))
    assert result.auc_0_28 == 248_350
    assert result.auc_complete
    assert result.tlast_day == 21


def test_day_28_not_sampled_is_interpolated() -> None:
    # §11: interpolate day 28. (21, 3000), (35, 400): C28 = 3000 + (400-3000) x 7/14
    # = 1,700; 21-28 (3000+1700)/2x7 = 16,450; 232,600 + 16,450 = 249,050.
    result = nca([*THROUGH_DAY_21, q(35, 400)])

    assert result.auc_0_28 == pytest.approx(249_050)
    assert result.auc_complete
    assert (result.clast, result.tlast_day) == (400, 35)


def test_profile_ending_at_day_21_gives_a_partial_auc() -> None:
    # No sample at or after day 28: the AUC is 0-21 only, 232,600, flagged partial.
    result = nca(THROUGH_DAY_21)

    assert result.auc_0_28 == AUC_0_21
    assert not result.auc_complete


def test_tie_in_cmax_takes_the_first_time() -> None:
    # §11: Tmax is the first time of the observed peak.
    result = nca([blq(0), q(4, 2000), q(7, 30000), q(10, 30000), q(14, 12000)])

    assert (result.cmax, result.tmax_day) == (30_000, 7)


def test_no_quantifiable_sample_gives_no_peak_and_zero_auc() -> None:
    # Every BLQ precedes a (non-existent) first quantifiable -> 0: AUC 0 over days 0-28.
    result = nca([blq(day) for day in (0, 1, 4, 7, 10, 14, 21, 28)])

    assert (result.cmax, result.tmax_day, result.clast, result.tlast_day) == (None,) * 4
    assert result.persistence_days is None
    assert result.n_quantifiable == 0
    assert (result.auc_0_28, result.auc_complete) == (0, True)


def test_no_post_dose_sample_gives_no_auc() -> None:
    result = nca([blq(0)])

    assert (result.auc_0_28, result.auc_complete, result.cmax) == (None, False, None)


def test_profile_starts_at_zero_when_day_0_was_not_sampled() -> None:
    # Pre-dose = 0 (§11): 0-1 (0+50)/2x1 = 25, as in the worked example.
    with_day_0 = nca([*THROUGH_DAY_21, q(28, 800)])
    without_day_0 = nca([*THROUGH_DAY_21[1:], q(28, 800)])

    assert without_day_0.auc_0_28 == with_day_0.auc_0_28 == 245_900


def test_quantifiable_predose_sample_is_reported_not_analysed() -> None:
    result = nca([q(-1, 900), *THROUGH_DAY_21[1:], q(28, 800)])

    assert result.predose_quantifiable
    assert (result.auc_0_28, result.n_quantifiable) == (245_900, 7)


def test_reported_zero_counts_as_blq() -> None:
    # A zero between quantifiables is dropped like a BLQ: same as the day 10 BLQ case.
    samples = [*THROUGH_DAY_21[:4], q(10, 0), *THROUGH_DAY_21[5:], q(28, 800)]

    assert nca(samples).auc_0_28 == 188_900


def test_blq_value_is_ignored() -> None:
    # A BLQ sample may carry the LLOQ (e.g. 5 copies/ug); it still counts as 0.
    flagged = [PKSample(0, 5, below_lloq=True), *THROUGH_DAY_21[1:], q(28, 800)]

    assert nca(flagged).auc_0_28 == 245_900


def test_two_samples_at_the_same_time_are_rejected() -> None:
    with pytest.raises(ValueError, match="two PK samples"):
        nca([q(7, 15000), q(7, 14000)])


def test_quantifiable_sample_needs_a_value() -> None:
    with pytest.raises(ValueError):
        PKSample(7, None, below_lloq=False)


def test_samples_from_timestamps_are_exact_days_since_infusion() -> None:
    # 2026-03-03 20:00 +08:00 is 36 h after infusion = 1.5 days; 2026-03-02 00:00 UTC is
    # the infusion instant (08:00 +08:00) = day 0.
    samples = samples_from(
        [
            (datetime(2026, 3, 3, 20, 0, tzinfo=TZ), 50.0, False),
            (datetime(2026, 3, 2, 0, 0, tzinfo=UTC), None, True),
        ],
        INFUSED_AT,
    )

    assert samples == [PKSample(0.0, None, True), PKSample(1.5, 50.0, False)]


def test_samples_from_needs_aware_timestamps() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        samples_from([(datetime(2026, 3, 3, 20, 0), 50.0, False)], INFUSED_AT)
