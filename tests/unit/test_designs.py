"""Dose-finding designs and stopping rules (reference §8), each checked against a source
or against a second, plainly written computation in this module.

Sources: the BOIN decision table ``shared/clinical/data/boin-phi0.30.csv`` (CRAN ``BOIN``
``get.boundary``), copied below as a literal; the CRAN ``BOIN`` ``select.mtd`` example;
Liu & Yuan, JRSS-C 2015; Ivanova, Qaqish & Schell, Biometrics 2005; Thall, Simon &
Estey 1995. The independent computations use exact rational arithmetic
(``fractions``) with the protocol's decimals read as decimals (``Fraction("0.3")``):

- P(Beta(a, b) > x) for integer a, b is P(Bin(a + b - 1, x) <= a - 1), a finite sum
  of ``math.comb`` terms;
- for a non-integer a and an integer b, 1 - I_x(a, b) with
  I_x(a, b) = x**a * sum_{j<b} (a)_j / j! * (1 - x)**j (repeated integration by
  parts), a finite sum of positive terms, in floats;
- binomial tails as sums of ``math.comb`` terms, and the Pocock-type stopping
  probability both by a forward recursion over the DLT count and, for small N, by
  enumerating all 2**N DLT/no-DLT sequences.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from fractions import Fraction
from functools import cache

import pytest

from domain.designs import (
    bayesian_table,
    boin_decision,
    boin_lambdas,
    boin_select_mtd,
    boin_table,
    pava,
    pocock_boundaries,
    pocock_design,
    three_plus_three_decision,
    three_plus_three_mtd,
)
from domain.protocol import BOINDesign

# ------------------------------------------------------------- independent helpers


def _exceed_exact(y: int, n: int, p0: Fraction, a: int = 1, b: int = 1) -> Fraction:
    """P(p > p0 | y of n), prior Beta(a, b), integer a and b: the posterior is
    Beta(a + y, b + n - y) and P(Beta(s, t) > x) = P(Bin(s + t - 1, x) <= s - 1)."""
    s, t = a + y, b + n - y
    m = s + t - 1
    return sum(
        (Fraction(math.comb(m, k)) * p0**k * (1 - p0) ** (m - k) for k in range(s)),
        Fraction(0),
    )


def _exceed_integer_b(y: int, n: int, p0: float, a: float, b: int) -> float:
    """P(p > p0 | y of n), prior Beta(a, b) with integer b:
    1 - p0**s * sum_{j<t} (s)_j / j! * (1 - p0)**j, s = a + y, t = b + n - y."""
    s, t = a + y, b + n - y
    coefficient, total = 1.0, 0.0
    for j in range(t):
        total += coefficient * (1 - p0) ** j
        coefficient *= (s + j) / (j + 1)
    return 1 - p0**s * total


@cache
def _binomial_tails_exact(theta: Fraction, max_n: int) -> dict[tuple[int, int], Fraction]:
    """{(n, b): P(Bin(n, theta) >= b)} for 1 <= b <= n <= max_n (cached; not mutated)."""
    tails = {}
    for n in range(1, max_n + 1):
        tail = Fraction(0)
        for b in range(n, 0, -1):
            tail += math.comb(n, b) * theta**b * (1 - theta) ** (n - b)
            tails[n, b] = tail
    return tails


def _pocock_boundaries_exact(theta: Fraction, c: Fraction, max_n: int) -> tuple[int | None, ...]:
    """b_n = the smallest b with P(Bin(n, theta) >= b) <= c, None if there is none."""
    tails = _binomial_tails_exact(theta, max_n)
    return tuple(
        next((b for b in range(1, n + 1) if tails[n, b] <= c), None) for n in range(1, max_n + 1)
    )


def _stopping_probability_recursion(bounds: tuple[int | None, ...], theta: Fraction) -> Fraction:
    """Carry P(y DLTs so far, not yet stopped) forward one participant at a time."""
    alive = {0: Fraction(1)}
    stopped = Fraction(0)
    for bound in bounds:
        after: dict[int, Fraction] = defaultdict(Fraction)
        for y, mass in alive.items():
            after[y] += mass * (1 - theta)
            after[y + 1] += mass * theta
        alive = {}
        for y, mass in after.items():
            if bound is not None and y >= bound:
                stopped += mass
            else:
                alive[y] = mass
    return stopped


def _stopping_probability_enumerated(bounds: tuple[int | None, ...], theta: Fraction) -> Fraction:
    """Sum the probability of every DLT/no-DLT sequence of length N that crosses a
    boundary somewhere."""
    n_max = len(bounds)
    total = Fraction(0)
    for outcomes in itertools.product((0, 1), repeat=n_max):
        running = list(itertools.accumulate(outcomes))
        if any(b is not None and y >= b for y, b in zip(running, bounds, strict=True)):
            k = running[-1]
            total += theta**k * (1 - theta) ** (n_max - k)
    return total


def _matching_candidate(theta: Fraction, max_n: int, c: float) -> Fraction:
    """The exact tail probability that the design's float c stands for."""
    matches = [
        t
        for t in set(_binomial_tails_exact(theta, max_n).values())
        if abs(float(t) - c) <= 1e-12 * c
    ]
    assert len(matches) == 1, matches
    return matches[0]


# ------------------------------------------------------------- BOIN table

# shared/clinical/data/boin-phi0.30.csv (CRAN BOIN get.boundary, target 0.30, phi1 0.18,
# phi2 0.42, cutoff.eli 0.95): n, escalate if y <=, de-escalate if y >=, eliminate if y >=.
BOIN_PHI_030 = (
    (1, 0, 1, None),
    (2, 0, 1, None),
    (3, 0, 2, 3),
    (4, 0, 2, 3),
    (5, 1, 2, 4),
    (6, 1, 3, 4),
    (7, 1, 3, 5),
    (8, 1, 3, 5),
    (9, 2, 4, 5),
    (10, 2, 4, 6),
    (11, 2, 4, 6),
    (12, 2, 5, 7),
    (13, 3, 5, 7),
    (14, 3, 6, 8),
    (15, 3, 6, 8),
    (16, 3, 6, 8),
    (17, 4, 7, 9),
    (18, 4, 7, 9),
)
BOIN_030 = {"target": 0.3, "phi1": 0.18, "phi2": 0.42, "cutoff": 0.95}


def test_boin_lambdas_for_target_0_30_are_those_of_the_published_table():
    """CSV header: lambda_e = 0.236491, lambda_d = 0.358519 (reference §8: 0.2365, 0.3585)."""
    lambda_e, lambda_d = boin_lambdas(0.3, 0.18, 0.42)
    assert round(lambda_e, 6) == 0.236491
    assert round(lambda_d, 6) == 0.358519
    assert (round(lambda_e, 4), round(lambda_d, 4)) == (0.2365, 0.3585)


def test_boin_table_for_target_0_30_equals_the_published_csv_for_n_1_to_18():
    """Reference §8: the decision table for n = 1..18 is data/boin-phi0.30.csv."""
    table = boin_table(**BOIN_030, max_n=18)
    rows = [
        (r.n, r.escalate_if_y_le, r.deescalate_if_y_ge, r.eliminate_if_y_ge) for r in table.rows
    ]
    assert rows == list(BOIN_PHI_030)
    assert (round(table.lambda_e, 6), round(table.lambda_d, 6)) == (0.236491, 0.358519)


def test_boin_table_from_the_protocol_defaults_equals_the_published_csv():
    """Reference §8: phi1 = 0.6 phi, phi2 = 1.4 phi, cutoff 0.95 are BOINDesign's defaults,
    combined as domain/trial.py combines them (target * ratio)."""
    design = BOINDesign()
    table = boin_table(
        target=design.target,
        phi1=design.target * design.phi1_ratio,
        phi2=design.target * design.phi2_ratio,
        cutoff=design.elimination_cutoff,
        max_n=18,
    )
    rows = [
        (r.n, r.escalate_if_y_le, r.deescalate_if_y_ge, r.eliminate_if_y_ge) for r in table.rows
    ]
    assert rows == list(BOIN_PHI_030)


@pytest.mark.parametrize(("n", "eliminate_if_y_ge"), [(r[0], r[3]) for r in BOIN_PHI_030 if r[3]])
def test_boin_elimination_cell_is_where_the_exact_posterior_tail_first_exceeds_0_95(
    n, eliminate_if_y_ge
):
    """Reference §8 / Liu & Yuan 2015: eliminate when n >= 3 and P(p > 0.3 | y, n) > 0.95,
    Beta(1, 1) prior. Exact: above 0.95 at the CSV's cell, at most 0.95 one DLT below."""
    y = eliminate_if_y_ge
    assert _exceed_exact(y, n, Fraction("0.3")) > Fraction("0.95")
    assert _exceed_exact(y - 1, n, Fraction("0.3")) <= Fraction("0.95")
    assert boin_decision(y, n, **BOIN_030) == "eliminate"
    assert boin_decision(y - 1, n, **BOIN_030) != "eliminate"


@pytest.mark.parametrize("n", [1, 2])
def test_boin_never_eliminates_before_three_evaluable(n):
    """Reference §8: elimination needs n >= 3, although P(p > 0.3 | 2 of 2) = 1 - 0.3**3
    = 0.973 > 0.95; n DLTs of n is a de-escalation (y/n = 1 >= lambda_d)."""
    assert _exceed_exact(2, 2, Fraction("0.3")) == 1 - Fraction("0.3") ** 3
    assert boin_decision(n, n, **BOIN_030) == "de_escalate"


@pytest.mark.parametrize(
    ("n", "y", "exceed", "decision"),
    [
        # 1 - P(Bin(15, 0.3) <= 7) below by 1.25e-5: a 4-decimal rounding would eliminate.
        (14, 7, 0.949987459946224, "de_escalate"),
        (14, 8, 0.984757474230229, "eliminate"),
        # The closest cell above 0.95 for n <= 18.
        (9, 5, 0.9526510126, "eliminate"),
        (9, 4, 0.8497316674, "de_escalate"),
    ],
)
def test_boin_elimination_precision_cells_use_the_strict_inequality(n, y, exceed, decision):
    """Reference §8 (strict '>' near the threshold): P(p > 0.3 | 7 of 14) = 0.9499875 is
    not > 0.95, so n = 14 eliminates from y = 8 (CSV); 5 of 9 gives 0.95265 > 0.95."""
    assert float(_exceed_exact(y, n, Fraction("0.3"))) == pytest.approx(exceed, abs=1e-12)
    assert boin_decision(y, n, **BOIN_030) == decision


@pytest.mark.parametrize(
    ("n", "y", "decision"),
    [
        (6, 1, "escalate"),  # 1/6 = 0.167 <= lambda_e
        (6, 2, "stay"),  # 0.333 in (lambda_e, lambda_d)
        (6, 3, "de_escalate"),  # 0.5 >= lambda_d
        (6, 4, "eliminate"),  # P(p > 0.3 | 4 of 6) = 0.9712 > 0.95
        (17, 4, "escalate"),  # 4/17 = 0.23529 <= 0.236491, the closest cell below
        (17, 5, "stay"),  # 5/17 = 0.294
        (14, 5, "stay"),  # 5/14 = 0.35714 < 0.358519, the closest cell below
        (14, 6, "de_escalate"),  # 6/14 = 0.429
        (1, 0, "escalate"),
        (1, 1, "de_escalate"),
        (3, 3, "eliminate"),
    ],
)
def test_boin_decision_on_both_sides_of_lambda_e_and_lambda_d(n, y, decision):
    """Reference §8: escalate if y/n <= lambda_e (0.236491), de-escalate if y/n >=
    lambda_d (0.358519), else stay; elimination first (CSV, Liu & Yuan 2015)."""
    assert boin_decision(y, n, **BOIN_030) == decision


def test_boin_decision_needs_an_evaluable_participant():
    with pytest.raises(ValueError):
        boin_decision(0, 0, **BOIN_030)


def _package_boundaries(
    target: str, phi1: float, phi2: float, cutoff: str, max_n: int
) -> list[tuple[int, int, int, int | None]]:
    """get.boundary of CRAN BOIN: floor(lambda_e n), ceiling(lambda_d n) capped at the
    elimination boundary, elimination by the exact posterior tail (n >= 3)."""
    t = float(target)
    lambda_e = math.log((1 - phi1) / (1 - t)) / math.log(t * (1 - phi1) / (phi1 * (1 - t)))
    lambda_d = math.log((1 - t) / (1 - phi2)) / math.log(phi2 * (1 - t) / (t * (1 - phi2)))
    rows = []
    for n in range(1, max_n + 1):
        eliminate = None
        if n >= 3:
            eliminate = next(
                (
                    y
                    for y in range(1, n + 1)
                    if _exceed_exact(y, n, Fraction(target)) > Fraction(cutoff)
                ),
                None,
            )
        deescalate = math.ceil(lambda_d * n)
        if eliminate is not None and deescalate > eliminate:
            deescalate = eliminate
        rows.append((n, math.floor(lambda_e * n), deescalate, eliminate))
    return rows


@pytest.mark.parametrize(
    ("target", "phi1", "phi2", "cutoff", "max_n"),
    [
        ("0.3", 0.18, 0.42, "0.95", 30),
        ("0.25", 0.15, 0.35, "0.95", 30),
        ("0.5", 0.3, 0.7, "0.8", 40),
    ],
)
def test_boin_table_equals_the_package_rule_computed_independently(
    target, phi1, phi2, cutoff, max_n
):
    """CRAN BOIN get.boundary (b.e = floor(lambda1 n), b.d = ceiling(lambda2 n),
    b.d <- elim where b.d > elim), with exact elimination cells."""
    table = boin_table(
        target=float(target), phi1=phi1, phi2=phi2, cutoff=float(cutoff), max_n=max_n
    )
    rows = [
        (r.n, r.escalate_if_y_le, r.deescalate_if_y_ge, r.eliminate_if_y_ge) for r in table.rows
    ]
    assert rows == _package_boundaries(target, phi1, phi2, cutoff, max_n)


def test_boin_deescalation_boundary_is_capped_at_the_elimination_boundary():
    """Reference §8 / get.boundary: target 0.5 (phi 0.3/0.7), cutoff 0.8, n = 20:
    ceiling(0.6029 * 20) = 13 but P(p > 0.5 | 12 of 20) = 0.8083 > 0.8, so the table
    de-escalates (and eliminates) from 12 DLTs, and 12 of 20 eliminates."""
    kwargs = {"target": 0.5, "phi1": 0.3, "phi2": 0.7, "cutoff": 0.8}
    _, lambda_d = boin_lambdas(0.5, 0.3, 0.7)
    assert math.ceil(lambda_d * 20) == 13
    assert _exceed_exact(12, 20, Fraction(1, 2)) > Fraction("0.8")
    assert _exceed_exact(11, 20, Fraction(1, 2)) <= Fraction("0.8")
    row = boin_table(**kwargs, max_n=20).rows[19]
    assert (row.deescalate_if_y_ge, row.eliminate_if_y_ge) == (12, 12)
    assert boin_decision(12, 20, **kwargs) == "eliminate"
    assert boin_decision(11, 20, **kwargs) == "stay"


# ------------------------------------------------------------- BOIN MTD selection


def _phat(y: int, n: int) -> float:
    """select.mtd's estimate (y + 0.05) / (n + 0.1)."""
    return (y + 0.05) / (n + 0.1)


def _weight(y: int, n: int) -> float:
    """select.mtd's PAVA weight: 1 / variance of Beta(y + 0.05, n - y + 0.05)."""
    s, t = y + 0.05, n - y + 0.05
    return (s + t) ** 2 * (s + t + 1) / (s * t)


def test_boin_package_example_selects_dose_3():
    """CRAN BOIN select.mtd example (reference §8): phi 0.3, n = (3,3,15,9,0),
    y = (0,0,4,4,0) -> MTD dose 3. Estimates are already monotone; 4.05/15.1 = 0.268
    is the closest to 0.3; the untried dose 5 has no estimate."""
    result = boin_select_mtd([3, 3, 15, 9, 0], [0, 0, 4, 4, 0], target=0.3)
    assert result.dose_index == 2
    assert result.estimates[4] is None
    assert result.estimates[:4] == pytest.approx(
        [_phat(0, 3), _phat(0, 3), _phat(4, 15), _phat(4, 9)], abs=1e-15
    )


def test_pava_pools_a_violating_pair_by_weight():
    """Hand-worked: (0.1, 0.4, 0.2, 0.3) with weights (1, 1, 3, 1): 0.4 > 0.2 pool to
    (0.4 + 3 * 0.2) / 4 = 0.25; (0.1, 0.25, 0.25, 0.3) is monotone."""
    assert pava([0.1, 0.4, 0.2, 0.3], [1, 1, 3, 1]) == pytest.approx([0.1, 0.25, 0.25, 0.3])


def test_pava_pools_backwards_across_blocks():
    """Hand-worked: (0.5, 0.25, 0.125), equal weights: pool the first two (0.375), which
    still exceeds 0.125: pool all three to 0.875 / 3."""
    assert pava([0.5, 0.25, 0.125], [1, 1, 1]) == pytest.approx([0.875 / 3] * 3)


def test_pava_leaves_a_non_decreasing_sequence_unchanged():
    assert pava([0.1, 0.1, 0.2, 0.4], [5, 1, 2, 3]) == [0.1, 0.1, 0.2, 0.4]


def test_boin_mtd_pools_non_monotone_estimates_and_a_tie_below_target_takes_the_higher_dose():
    """select.mtd: 1/3 then 1/6 is not monotone (0.339 > 0.172); PAVA pools them to
    (w1 p1 + w2 p2) / (w1 + w2) = 0.2169 < 0.3 for both; tie below the target -> the
    higher dose (reference §8)."""
    pooled = (_weight(1, 3) * _phat(1, 3) + _weight(1, 6) * _phat(1, 6)) / (
        _weight(1, 3) + _weight(1, 6)
    )
    assert pooled == pytest.approx(0.2169, abs=1e-4)
    result = boin_select_mtd([3, 6], [1, 1], target=0.3)
    assert result.estimates == pytest.approx((pooled, pooled), abs=1e-12)
    assert result.dose_index == 1


def test_boin_mtd_pooled_block_above_target_takes_the_lower_dose():
    """select.mtd: 4/9 (0.445) then 2/6 (0.336) pool to 0.3974 > 0.3; tie above the
    target -> the lower dose, although the raw 2/6 would have been the closest."""
    pooled = (_weight(4, 9) * _phat(4, 9) + _weight(2, 6) * _phat(2, 6)) / (
        _weight(4, 9) + _weight(2, 6)
    )
    assert pooled == pytest.approx(0.3974, abs=1e-4)
    result = boin_select_mtd([9, 6], [4, 2], target=0.3)
    assert result.estimates == pytest.approx((pooled, pooled), abs=1e-12)
    assert result.dose_index == 0


def test_boin_mtd_equal_estimates_below_target_take_the_highest_dose():
    """Reference §8 tie rule: 0/3 at three doses, all 0.05/3.1 < 0.3 -> the highest."""
    assert boin_select_mtd([3, 3, 3], [0, 0, 0], target=0.3).dose_index == 2


def test_boin_mtd_equal_estimates_above_target_take_the_lowest_dose():
    """Reference §8 tie rule: 3/6 at two doses, both 3.05/6.1 = 0.5 > 0.3 (not
    eliminated: P(p > 0.3 | 3 of 6) = 0.8740) -> the lower."""
    assert _exceed_exact(3, 6, Fraction("0.3")) <= Fraction("0.95")
    assert boin_select_mtd([6, 6], [3, 3], target=0.3).dose_index == 0


def test_boin_mtd_none_when_the_lowest_dose_is_eliminated():
    """Reference §8: eliminating the lowest dose stops the trial; 3/3 at dose 1:
    P(p > 0.3) = 1 - 0.3**4 = 0.9919 > 0.95."""
    result = boin_select_mtd([3, 3], [3, 0], target=0.3)
    assert result.dose_index is None
    assert result.estimates == (None, None)


def test_boin_mtd_excludes_an_eliminated_dose_and_every_higher_dose():
    """select.mtd: 4/6 at dose 2 (P = 0.9712 > 0.95) eliminates doses 2 and 3, even
    though dose 3 had 0/3."""
    result = boin_select_mtd([6, 6, 3], [1, 4, 0], target=0.3)
    assert result.dose_index == 0
    assert result.estimates[1:] == (None, None)


def test_boin_mtd_ignores_untried_doses():
    """select.mtd: only doses with n > 0 enter PAVA; 1/6 and 2/6 stay unpooled
    (0.172, 0.336), 0.336 is the closer to 0.3."""
    result = boin_select_mtd([6, 0, 6], [1, 0, 2], target=0.3)
    assert result.dose_index == 2
    assert result.estimates[1] is None
    assert (result.estimates[0], result.estimates[2]) == pytest.approx(
        (_phat(1, 6), _phat(2, 6)), abs=1e-15
    )


def test_boin_mtd_none_when_no_dose_was_tried():
    assert boin_select_mtd([0, 0], [0, 0], target=0.3).dose_index is None


def test_boin_mtd_does_not_eliminate_a_dose_with_fewer_than_three():
    """select.mtd: elimination needs n >= 3; 2/2 stays admissible."""
    assert boin_select_mtd([2], [2], target=0.3).dose_index == 0


def test_boin_mtd_needs_one_count_per_dose():
    with pytest.raises(ValueError):
        boin_select_mtd([3, 3], [0], target=0.3)


# ------------------------------------------------------------- 3+3


@pytest.mark.parametrize(
    ("n", "y", "decision"),
    [
        (3, 0, "escalate"),  # 0/3 escalate
        (3, 1, "stay"),  # 1/3 expand to 6
        (3, 2, "eliminate"),  # >= 2/3 MTD exceeded
        (3, 3, "eliminate"),
        (6, 0, "escalate"),  # <= 1/6
        (6, 1, "escalate"),
        (6, 2, "eliminate"),  # >= 2/6 MTD exceeded
        (6, 4, "eliminate"),
    ],
)
def test_three_plus_three_decision_after_a_complete_cohort(n, y, decision):
    """Reference §8: 0/3 escalate; 1/3 expand to 6; >= 2/3 or >= 2/6 -> MTD exceeded."""
    assert three_plus_three_decision(y, n) == decision


@pytest.mark.parametrize(("n", "y"), [(1, 0), (2, 1), (4, 1), (5, 1), (7, 1), (3, 4)])
def test_three_plus_three_has_no_decision_for_an_incomplete_cohort(n, y):
    assert three_plus_three_decision(y, n) is None


@pytest.mark.parametrize(("n", "y"), [(2, 2), (4, 2), (5, 2), (5, 3)])
def test_three_plus_three_second_dlt_exceeds_the_mtd_before_the_cohort_completes(n, y):
    """Reference §8: >= 2 DLTs among the dose's (up to 6) participants exceed the MTD;
    once the second DLT has occurred no further outcome can undo it, so the decision
    does not wait for the cohort to complete."""
    assert three_plus_three_decision(y, n) == "eliminate"


@pytest.mark.parametrize(
    ("n", "y", "mtd"),
    [
        ((3, 6, 6), (0, 1, 2), 1),  # dose 3 exceeded; dose 2 has 1/6
        ((6, 3), (1, 2), 0),  # dose 2 exceeded at 2/3; dose 1 has 1/6
        ((3, 3), (0, 2), None),  # dose 1 only 0/3: never confirmed on 6
        ((6, 6), (2, 0), None),  # the lowest dose exceeded; a higher 0/6 does not count
        ((6, 6, 3), (1, 3, 0), 0),  # doses above the exceeded one are ignored
        ((6, 3, 6), (0, 2, 1), 0),  # 2/3 already exceeds: the 1/6 above it is ignored
        ((3, 6, 3), (0, 1, 0), 1),  # dose 3 not yet confirmed
        ((6, 6, 6), (0, 1, 1), 2),  # nothing exceeded: the highest dose with <= 1/6
    ],
)
def test_three_plus_three_mtd_is_the_highest_dose_with_at_most_1_of_6_below_the_exceeded(n, y, mtd):
    """Reference §8: MTD = the highest dose with <= 1/6 below the lowest dose with
    >= 2 DLTs."""
    assert three_plus_three_mtd(n, y) == mtd


# ------------------------------------------------------------- Bayesian monitoring

BAYESIAN_INTEGER_PRIORS = [
    # p0, cutoff, a, b, min_n, max_n
    ("0.2", "0.9", 1, 1, 3, 30),
    ("0.3", "0.95", 1, 4, 3, 30),  # n = 11, y = 7: 1.25e-5 below the cutoff
    ("0.25", "0.99", 1, 1, 3, 30),  # n = 8, y = 5: 5.49e-6 above
    ("0.2", "0.975", 1, 4, 3, 42),  # n = 41, y = 14: 5.97e-6 above
    ("0.3", "0.99", 1, 1, 3, 43),  # n = 43, y = 20: 6.40e-6 above
]


@pytest.mark.parametrize(("p0", "cutoff", "a", "b", "min_n", "max_n"), BAYESIAN_INTEGER_PRIORS)
def test_bayesian_table_equals_the_exact_posterior_computation(p0, cutoff, a, b, min_n, max_n):
    """Reference §8 (Thall, Simon & Estey 1995 style): stop at n >= min_n when
    P(p > p0 | y, n) > cutoff, posterior Beta(a + y, b + n - y). Each row: the smallest
    y whose exact tail exceeds the cutoff; the statistic at the boundary is that tail."""
    table = bayesian_table(p0=float(p0), cutoff=float(cutoff), a=a, b=b, min_n=min_n, max_n=max_n)
    assert [row.n for row in table] == list(range(1, max_n + 1))
    for row in table:
        expected = None
        if row.n >= min_n:
            expected = next(
                (
                    y
                    for y in range(row.n + 1)
                    if _exceed_exact(y, row.n, Fraction(p0), a, b) > Fraction(cutoff)
                ),
                None,
            )
        assert row.stop_if_y_ge == expected, row
        if expected is None:
            assert row.statistic_at_boundary is None
        else:
            exact = float(_exceed_exact(expected, row.n, Fraction(p0), a, b))
            assert row.statistic_at_boundary == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize(
    ("p0", "cutoff", "a", "b", "n", "y", "stops"),
    [
        ("0.25", "0.99", 1, 1, 8, 5, True),  # P = 64881/65536 = 0.9900054931640625
        ("0.2", "0.975", 1, 4, 41, 14, True),  # P - c = +5.97e-6
        ("0.2", "0.975", 1, 1, 44, 14, True),  # the same posterior Beta(15, 31)
        ("0.3", "0.99", 1, 1, 43, 20, True),  # P - c = +6.40e-6
        ("0.3", "0.95", 1, 4, 11, 7, False),  # P - c = -1.25e-5 (BOIN's 7 of 14)
        ("0.1", "0.8", 1, 1, 47, 6, False),  # P - c = -1.31e-5
    ],
)
def test_bayesian_cells_near_the_cutoff_stop_only_strictly_above_it(p0, cutoff, a, b, n, y, stops):
    """Reference §8: "strict '>' in double precision; some cells sit within 1e-5 of c".
    These cells were found by an exact search over p0 in 0.05..0.5, the usual cutoffs
    and priors Beta(1, b), n <= 50; the exact sign decides, and the table agrees."""
    exact = _exceed_exact(y, n, Fraction(p0), a, b)
    assert abs(exact - Fraction(cutoff)) < Fraction("2e-5")
    assert (exact > Fraction(cutoff)) is stops
    row = bayesian_table(p0=float(p0), cutoff=float(cutoff), a=a, b=b, min_n=3, max_n=n)[-1]
    assert row.stop_if_y_ge == (y if stops else y + 1)


@pytest.mark.parametrize("delta", [1e-6, -1e-6])
@pytest.mark.parametrize(("p0", "a", "b", "n", "y"), [("0.2", 1, 1, 20, 8), ("0.3", 2, 3, 25, 12)])
def test_bayesian_cutoff_set_within_1e_6_of_a_cell_decides_that_cell_by_the_exact_sign(
    p0, a, b, n, y, delta
):
    """A cutoff placed deliberately at P(n, y) - 1e-6 makes y the boundary at n; at
    P(n, y) + 1e-6 the boundary moves to y + 1 (the neighbouring tails are far away)."""
    cell = _exceed_exact(y, n, Fraction(p0), a, b)
    cutoff = float(cell) - delta
    assert _exceed_exact(y - 1, n, Fraction(p0), a, b) < cell - Fraction("1e-3")
    assert _exceed_exact(y + 1, n, Fraction(p0), a, b) > cell + Fraction("1e-5")
    row = bayesian_table(p0=float(p0), cutoff=cutoff, a=a, b=b, min_n=3, max_n=n)[-1]
    assert row.stop_if_y_ge == (y if delta > 0 else y + 1)


def test_bayesian_cell_exactly_at_the_cutoff_does_not_stop():
    """Strict '>' (reference §8). P(p > 1/4 | 5 of 8, Beta(1, 1)) = P(Bin(9, 1/4) <= 5)
    = 64881/65536, exactly a double, and scipy returns it exactly; a cutoff equal to it
    does not stop at 5 DLTs, one ulp below it does."""
    exact = _exceed_exact(5, 8, Fraction(1, 4))
    assert exact == Fraction(64881, 65536)
    at = float(exact)
    below = math.nextafter(at, 0.0)

    def boundary(cutoff: float) -> int | None:
        return bayesian_table(p0=0.25, cutoff=cutoff, a=1, b=1, min_n=3, max_n=8)[-1].stop_if_y_ge

    assert boundary(at) == 6
    assert boundary(below) == 5


def test_bayesian_decimal_cell_exactly_at_the_cutoff_does_not_stop():
    """p0 = 0.1, cutoff = 0.99, Beta(1, 1), 1 of 1: P(p > 1/10) = 1 - (1/10)**2 = 99/100
    exactly, so no stop under a strict '>'. In doubles the exact tail at double(0.1) is
    0.99 - 1.1e-18, above double(0.99) = 0.99 - 8.9e-18, but scipy's beta.sf rounds to
    double(0.99), so the double comparison agrees with the protocol's decimals."""
    assert _exceed_exact(1, 1, Fraction("0.1")) == Fraction("0.99")
    assert _exceed_exact(1, 1, Fraction(0.1)) > Fraction(0.99)
    table = bayesian_table(p0=0.1, cutoff=0.99, a=1, b=1, min_n=1, max_n=2)
    assert table[0].stop_if_y_ge is None
    assert table[1].stop_if_y_ge == 2


@pytest.mark.parametrize(
    ("p0", "cutoff", "a", "b", "max_n"), [(0.3, 0.9, 0.5, 1, 30), (0.2, 0.95, 0.6, 2, 30)]
)
def test_bayesian_table_with_a_non_integer_prior_equals_the_finite_sum(p0, cutoff, a, b, max_n):
    """Non-integer prior shape a (integer b, so the finite-sum form of I_x(a, b) applies;
    a prior with both shapes non-integer is not checked independently here)."""
    table = bayesian_table(p0=p0, cutoff=cutoff, a=a, b=b, min_n=3, max_n=max_n)
    for row in table:
        tails = [_exceed_integer_b(y, row.n, p0, a, b) for y in range(row.n + 1)]
        assert min(abs(t - cutoff) for t in tails) > 1e-9  # the float sum decides
        expected = next((y for y, t in enumerate(tails) if t > cutoff), None)
        assert row.stop_if_y_ge == (expected if row.n >= 3 else None), row
        if expected is not None and row.n >= 3:
            assert row.statistic_at_boundary == pytest.approx(tails[expected], rel=1e-11)


# ------------------------------------------------------------- Pocock-type monitoring

POCOCK_SETS = [
    # theta0, alpha, N, the design's overall stopping probability under theta0
    ("0.2", "0.1", 42, 0.0997853293350342),
    ("0.3", "0.05", 20, 0.0489222482284095),
    ("0.2", "0.1", 10, 0.0927720448),
    ("0.25", "0.05", 12, 0.048275530338287354),
]


@pytest.mark.parametrize(("theta0", "alpha", "max_n", "reported"), POCOCK_SETS)
def test_pocock_design_equals_the_exact_computation(theta0, alpha, max_n, reported):
    """Ivanova, Qaqish & Schell 2005 / reference §8: b_n = the smallest b with
    P(Bin(n, theta0) >= b) <= c; c the largest value whose overall stopping probability
    under theta0 is <= alpha. Exactly: c is one of the tail probabilities, its boundaries
    are the design's, the stopping probability (reported in POCOCK_SETS) is <= alpha,
    and the next larger tail probability gives a stopping probability > alpha (the
    stopping probability does not decrease in c, so no larger c qualifies)."""
    theta, a = Fraction(theta0), Fraction(alpha)
    design = pocock_design(float(theta0), float(alpha), max_n)
    c = _matching_candidate(theta, max_n, design.c)
    bounds = _pocock_boundaries_exact(theta, c, max_n)
    assert design.boundaries == bounds
    stop = _stopping_probability_recursion(bounds, theta)
    assert stop <= a
    assert design.stopping_probability == pytest.approx(float(stop), abs=1e-15)
    assert design.stopping_probability == pytest.approx(reported, abs=1e-15)
    assert design.stopping_probability <= float(alpha)
    larger = min(t for t in _binomial_tails_exact(theta, max_n).values() if t > c)
    assert (
        _stopping_probability_recursion(_pocock_boundaries_exact(theta, larger, max_n), theta) > a
    )


@pytest.mark.parametrize(("theta0", "alpha", "max_n"), [("0.2", "0.1", 10), ("0.25", "0.05", 12)])
def test_pocock_stopping_probability_by_enumerating_every_sequence(theta0, alpha, max_n):
    """Small N: every one of the 2**N DLT/no-DLT sequences; the design's overall stopping
    probability is the total probability of the sequences that cross a boundary, and a
    scan over every candidate c confirms c is the largest with probability <= alpha."""
    theta, a = Fraction(theta0), Fraction(alpha)
    design = pocock_design(float(theta0), float(alpha), max_n)
    enumerated = _stopping_probability_enumerated(design.boundaries, theta)
    assert enumerated <= a
    assert design.stopping_probability == pytest.approx(float(enumerated), abs=1e-15)
    admissible = [
        t
        for t in set(_binomial_tails_exact(theta, max_n).values())
        if _stopping_probability_recursion(_pocock_boundaries_exact(theta, t, max_n), theta) <= a
    ]
    assert float(max(admissible)) == pytest.approx(design.c, rel=1e-12)


def test_pocock_n_10_stopping_probability_is_exactly_0_0927720448():
    """theta0 = 0.2, alpha = 0.1, N = 10: boundaries (-, 2, 3, 3, 4, 4, 4, 4, 5, 5),
    c = P(Bin(8, 0.2) >= 4) = 0.0562816; the stopping probability is a multiple of
    5**-10, 0.0927720448 <= 0.1."""
    design = pocock_design(0.2, 0.1, 10)
    assert design.boundaries == (None, 2, 3, 3, 4, 4, 4, 4, 5, 5)
    assert (
        _matching_candidate(Fraction("0.2"), 10, design.c)
        == _binomial_tails_exact(Fraction("0.2"), 10)[8, 4]
    )
    assert _stopping_probability_enumerated(design.boundaries, Fraction("0.2")) == Fraction(
        "0.0927720448"
    )


@pytest.mark.parametrize(("theta0", "alpha", "max_n"), [(0.2, 0.1, 42), (0.3, 0.05, 20)])
def test_pocock_boundary_includes_the_cell_whose_tail_equals_c(theta0, alpha, max_n):
    """The cell that defines c sits exactly at the threshold: "P(Bin(n, theta0) >= b) <=
    c" is non-strict, so b is the boundary there; one ulp below c moves that boundary up
    by one and leaves every other n unchanged (no other tail lies within 1e-5 of c)."""
    design = pocock_design(theta0, alpha, max_n)
    rows = design.rows()
    at_c = [r for r in rows if r.statistic_at_boundary == design.c]
    assert len(at_c) == 1
    cell = at_c[0]
    lowered = pocock_boundaries(theta0, math.nextafter(design.c, 0.0), max_n)
    assert lowered[cell.n - 1] == cell.stop_if_y_ge + 1
    assert [b for i, b in enumerate(lowered) if i != cell.n - 1] == [
        b for i, b in enumerate(design.boundaries) if i != cell.n - 1
    ]
    tails = _binomial_tails_exact(Fraction(str(theta0)), max_n)
    near = [k for k, t in tails.items() if abs(float(t) - design.c) < 1e-5]
    assert near == [(cell.n, cell.stop_if_y_ge)]


@pytest.mark.parametrize(("theta0", "alpha", "max_n"), [(0.2, 0.1, 42), (0.3, 0.05, 20)])
def test_pocock_rows_report_the_exact_tail_at_each_boundary(theta0, alpha, max_n):
    """The statistic of each row is P(Bin(n, theta0) >= b_n) (<= c), None without a
    boundary."""
    design = pocock_design(theta0, alpha, max_n)
    tails = _binomial_tails_exact(Fraction(str(theta0)), max_n)
    for row in design.rows():
        if row.stop_if_y_ge is None:
            assert row.statistic_at_boundary is None
            assert all(tails[row.n, b] > Fraction(design.c) for b in range(1, row.n + 1))
        else:
            exact = tails[row.n, row.stop_if_y_ge]
            assert row.statistic_at_boundary == pytest.approx(float(exact), rel=1e-12)
            assert row.statistic_at_boundary <= design.c
