"""Dose-finding designs and continuous stopping rules (reference §8), exact.

Pure functions of (y DLTs among n evaluable) and the protocol's parameters; the beta
and binomial distributions come from scipy, and no decision uses simulation.

- **BOIN** (Liu & Yuan, JRSS-C 2015; CRAN ``BOIN`` ``get.boundary`` /
  ``select.mtd``): escalate when y/n <= lambda_e, de-escalate when y/n >= lambda_d,
  otherwise stay; eliminate the dose (and higher ones) when n >= 3 and
  P(p > target | y, n) > cutoff under a Beta(1, 1) prior; the de-escalation boundary
  is capped at the elimination boundary. The MTD is the dose whose isotonic
  (weighted pool-adjacent-violators) estimate of (y + 0.05) / (n + 0.1) is closest to
  the target among the tried, non-eliminated doses; ties are broken as the package
  does (it adds ``index * 1e-10`` to the estimates): the higher dose when below the
  target, the lower when above.
- **3+3**: 0/3 escalate; 1/3 expand to 6 (stay); >= 2 DLTs among up to 6 (as soon
  as the second occurs) the dose exceeds the MTD (eliminate; de-escalate); <= 1/6
  escalate. MTD = the highest dose with
  <= 1/6 below the lowest dose that exceeded it.
- **Bayesian beta-binomial monitoring** (Thall, Simon & Estey 1995 style): stop when
  P(p > p0 | y, n) > cutoff, posterior Beta(a + y, b + n - y); strict ">" in double
  precision.
- **Pocock-type monitoring** (Ivanova, Qaqish & Schell, Biometrics 2005): stop as soon
  as y >= b_n, b_n the smallest b with P(Bin(n, theta0) >= b) <= c, the same c at
  every n; c is the largest value whose overall probability of stopping under theta0
  over n = 1..N is <= alpha, computed exactly (dynamic programming over the
  distribution of y among the paths not yet stopped).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from scipy.stats import beta, binom

Decision = Literal["escalate", "stay", "de_escalate", "eliminate"]

#: The package's pseudo-counts of the isotonic estimate (``select.mtd``).
_PSEUDO_Y = 0.05
_PSEUDO_N = 0.1
#: The package's tie-breaking increment per dose index.
_TIE_STEP = 1e-10


# ---------------------------------------------------------------- BOIN


@dataclass(frozen=True)
class BOINRow:
    n: int
    escalate_if_y_le: int | None
    deescalate_if_y_ge: int | None
    eliminate_if_y_ge: int | None


@dataclass(frozen=True)
class BOINTable:
    target: float
    phi1: float
    phi2: float
    lambda_e: float
    lambda_d: float
    rows: tuple[BOINRow, ...]


def boin_lambdas(target: float, phi1: float, phi2: float) -> tuple[float, float]:
    """(lambda_e, lambda_d) of reference §8."""
    lambda_e = math.log((1 - phi1) / (1 - target)) / math.log(
        target * (1 - phi1) / (phi1 * (1 - target))
    )
    lambda_d = math.log((1 - target) / (1 - phi2)) / math.log(
        phi2 * (1 - target) / (target * (1 - phi2))
    )
    return lambda_e, lambda_d


def exceed_probability(y: int, n: int, threshold: float, a: float = 1.0, b: float = 1.0) -> float:
    """P(p > threshold | y of n) under a Beta(a, b) prior: Beta(a + y, b + n - y) tail."""
    return float(beta.sf(threshold, a + y, b + n - y))


def boin_eliminates(y: int, n: int, target: float, cutoff: float) -> bool:
    return n >= 3 and exceed_probability(y, n, target) > cutoff


def boin_decision(
    y: int, n: int, *, target: float, phi1: float, phi2: float, cutoff: float
) -> Decision:
    """The BOIN decision after y DLTs among n evaluable at the current dose."""
    if n < 1:
        raise ValueError("a BOIN decision needs at least one evaluable participant")
    if boin_eliminates(y, n, target, cutoff):
        return "eliminate"
    lambda_e, lambda_d = boin_lambdas(target, phi1, phi2)
    if y / n <= lambda_e:
        return "escalate"
    if y / n >= lambda_d:
        return "de_escalate"
    return "stay"


def boin_table(*, target: float, phi1: float, phi2: float, cutoff: float, max_n: int) -> BOINTable:
    """The decision boundaries for n = 1..max_n, from :func:`boin_decision` itself."""
    lambda_e, lambda_d = boin_lambdas(target, phi1, phi2)
    rows = []
    for n in range(1, max_n + 1):
        decisions = [
            boin_decision(y, n, target=target, phi1=phi1, phi2=phi2, cutoff=cutoff)
            for y in range(n + 1)
        ]
        escalate = [y for y, d in enumerate(decisions) if d == "escalate"]
        eliminate = [y for y, d in enumerate(decisions) if d == "eliminate"]
        deescalate = [y for y, d in enumerate(decisions) if d in ("de_escalate", "eliminate")]
        rows.append(
            BOINRow(
                n,
                max(escalate) if escalate else None,
                min(deescalate) if deescalate else None,
                min(eliminate) if eliminate else None,
            )
        )
    return BOINTable(target, phi1, phi2, lambda_e, lambda_d, tuple(rows))


def pava(values: Sequence[float], weights: Sequence[float]) -> list[float]:
    """Weighted isotonic (non-decreasing) regression: pool adjacent violators."""
    blocks: list[list[float]] = []  # [mean, weight, size]
    for value, weight in zip(values, weights, strict=True):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            right = blocks.pop()
            left = blocks[-1]
            total = left[1] + right[1]
            left[0] = (left[0] * left[1] + right[0] * right[1]) / total
            left[1] = total
            left[2] += right[2]
    fitted: list[float] = []
    for mean, _, size in blocks:
        fitted.extend([mean] * int(size))
    return fitted


@dataclass(frozen=True)
class MTDEstimate:
    """``dose_index`` (0-based) of the selected MTD, None if no dose can be selected;
    ``estimates`` the isotonic DLT-rate estimate per dose (None: untried or eliminated)."""

    dose_index: int | None
    estimates: tuple[float | None, ...]
    reason: str


def boin_select_mtd(
    n: Sequence[int], y: Sequence[int], *, target: float, cutoff: float = 0.95
) -> MTDEstimate:
    """MTD selection of the BOIN package (``select.mtd``), reference §8."""
    if len(n) != len(y):
        raise ValueError("n and y need one entry per dose")
    eliminated_from = next(
        (d for d in range(len(n)) if boin_eliminates(y[d], n[d], target, cutoff)), len(n)
    )
    if eliminated_from == 0:
        return MTDEstimate(None, (None,) * len(n), "the lowest dose is eliminated")
    admissible = [d for d in range(eliminated_from) if n[d] > 0]
    if not admissible:
        return MTDEstimate(None, (None,) * len(n), "no dose has been tried")
    rates = [(y[d] + _PSEUDO_Y) / (n[d] + _PSEUDO_N) for d in admissible]
    variances = [
        (y[d] + _PSEUDO_Y) * (n[d] - y[d] + _PSEUDO_Y) / ((n[d] + _PSEUDO_N) ** 2 * (n[d] + 1.1))
        for d in admissible
    ]
    fitted = pava(rates, [1 / v for v in variances])
    broken = [value + (i + 1) * _TIE_STEP for i, value in enumerate(fitted)]
    distances = [abs(value - target) for value in broken]
    chosen = admissible[distances.index(min(distances))]
    estimates: list[float | None] = [None] * len(n)
    for d, value in zip(admissible, fitted, strict=True):
        estimates[d] = value
    return MTDEstimate(chosen, tuple(estimates), "isotonic estimate closest to the target")


# ---------------------------------------------------------------- 3+3


def three_plus_three_decision(y: int, n: int) -> Decision | None:
    """The 3+3 decision for a completed cohort of 3 or 6 (None: cohort incomplete);
    2 DLTs exceed the MTD whenever they occur (no later outcome can undo them)."""
    if y < 0 or y > n or n > 6:
        return None
    if y >= 2:
        return "eliminate"
    if n not in (3, 6):
        return None
    if n == 3 and y == 1:
        return "stay"
    return "escalate"


def three_plus_three_mtd(n: Sequence[int], y: Sequence[int]) -> int | None:
    """The highest dose with <= 1 DLT among 6, below the lowest dose with >= 2 DLTs."""
    exceeded = next((d for d in range(len(n)) if y[d] >= 2), len(n))
    candidates = [d for d in range(exceeded) if n[d] >= 6 and y[d] <= 1]
    return max(candidates) if candidates else None


# ---------------------------------------------------------------- Bayesian monitoring


@dataclass(frozen=True)
class BoundaryRow:
    """Stop at n when y >= ``stop_if_y_ge`` (None: cannot stop at this n); the
    statistic at the boundary (posterior or tail probability)."""

    n: int
    stop_if_y_ge: int | None
    statistic_at_boundary: float | None


def bayesian_boundary(n: int, *, p0: float, cutoff: float, a: float, b: float) -> int | None:
    """The smallest y with P(p > p0 | y, n) > cutoff (None: no y of n stops)."""
    return next((y for y in range(n + 1) if exceed_probability(y, n, p0, a, b) > cutoff), None)


def bayesian_table(
    *, p0: float, cutoff: float, a: float, b: float, min_n: int, max_n: int
) -> tuple[BoundaryRow, ...]:
    rows = []
    for n in range(1, max_n + 1):
        stop = bayesian_boundary(n, p0=p0, cutoff=cutoff, a=a, b=b) if n >= min_n else None
        statistic = exceed_probability(stop, n, p0, a, b) if stop is not None else None
        rows.append(BoundaryRow(n, stop, statistic))
    return tuple(rows)


# ---------------------------------------------------------------- Pocock-type monitoring


def binomial_tail(b: int, n: int, theta: float) -> float:
    """P(Bin(n, theta) >= b)."""
    return _tails(theta, n)[n - 1][b - 1] if 1 <= b <= n else float(b <= 0)


@lru_cache(maxsize=64)
def _tails(theta0: float, max_n: int) -> tuple[tuple[float, ...], ...]:
    """P(Bin(n, theta0) >= b) for b = 1..n, per n = 1..max_n (decreasing in b)."""
    return tuple(
        tuple(float(t) for t in binom.sf(range(n), n, theta0)) for n in range(1, max_n + 1)
    )


def pocock_boundaries(theta0: float, c: float, max_n: int) -> tuple[int | None, ...]:
    """b_n for n = 1..max_n: the smallest b with P(Bin(n, theta0) >= b) <= c (None
    when b would exceed n: no stop possible at that n)."""
    bounds: list[int | None] = []
    for tails in _tails(theta0, max_n):
        first = next((i for i, tail in enumerate(tails) if tail <= c), None)
        bounds.append(first + 1 if first is not None else None)
    return tuple(bounds)


def stopping_probability(bounds: Sequence[int | None], theta: float) -> float:
    """P(y_n >= b_n for some n) when each participant has a DLT with probability theta."""
    alive = [1.0]  # alive[y]: P(y DLTs so far and not stopped)
    stopped = 0.0
    for bound in bounds:
        step = [0.0] * (len(alive) + 1)
        for y, mass in enumerate(alive):
            step[y] += mass * (1 - theta)
            step[y + 1] += mass * theta
        if bound is not None:
            stopped += sum(step[bound:])
            step = step[:bound]
        alive = step
    return stopped


@dataclass(frozen=True)
class PocockDesign:
    theta0: float
    alpha: float
    max_n: int
    c: float
    boundaries: tuple[int | None, ...]
    stopping_probability: float

    def rows(self) -> tuple[BoundaryRow, ...]:
        return tuple(
            BoundaryRow(n, b, binomial_tail(b, n, self.theta0) if b is not None else None)
            for n, b in enumerate(self.boundaries, start=1)
        )


@lru_cache(maxsize=64)
def pocock_design(theta0: float, alpha: float, max_n: int) -> PocockDesign:
    """The largest c whose overall stopping probability under theta0 is <= alpha.

    The boundaries change only where c crosses a tail probability P(Bin(n, theta0) >=
    b), and the stopping probability does not decrease with c, so c is found by
    bisection over those values."""
    candidates = sorted({t for tails in _tails(theta0, max_n) for t in tails if t < 1.0})

    def exceeds(c: float) -> bool:
        return stopping_probability(pocock_boundaries(theta0, c, max_n), theta0) > alpha

    best = bisect.bisect_left(candidates, True, key=exceeds) - 1
    if best < 0:
        bounds: tuple[int | None, ...] = (None,) * max_n
        return PocockDesign(theta0, alpha, max_n, 0.0, bounds, 0.0)
    c = candidates[best]
    bounds = pocock_boundaries(theta0, c, max_n)
    return PocockDesign(theta0, alpha, max_n, c, bounds, stopping_probability(bounds, theta0))
