"""Non-compartmental analysis (NCA) of CAR-T cellular kinetics, reference §11.

One analyte per call (``pk.resulted``: ``transgene_copies_per_ug_gdna`` or
``car_t_cells_per_ul``); concentrations keep the analyte's unit and AUC is in
day x that unit. Time is exact time since infusion in days (seconds / 86400), not the
study day of §0.5, so "day 28" is 28 x 24 h after infusion whatever the day numbering.

Choices, §11 unless marked:

- A sample is quantifiable when it is not flagged below the LLOQ and its value is
  above 0; a reported 0 counts as BLQ (PKNCA convention). A BLQ sample's value is
  ignored (sites may report 0 or the LLOQ).
- Pre-dose samples (day <= 0): BLQ = 0, and the profile starts at (0, 0) whether or
  not day 0 was sampled (no CAR-T cells before infusion; choice). A quantifiable
  pre-dose sample does not enter the NCA; ``predose_quantifiable`` reports it.
- Post-dose BLQ: before the first quantifiable sample -> 0; between quantifiable
  samples -> dropped; the first after the last quantifiable -> 0, later ones dropped.
  With no quantifiable sample at all, every BLQ precedes it -> all 0 (AUC 0).
- Cmax/Tmax: the observed peak over all post-dose samples and its first time.
  Clast/Tlast: the last quantifiable sample; persistence = Tlast.
- AUC 0-28: linear trapezoid over the BLQ-handled profile from day 0; if day 28 lies
  between two profile points its value is interpolated linearly. It is complete when
  some post-dose sample (BLQ ones included) was taken at or after day 28: after the
  profile's trailing 0 the dropped BLQs add no area. Otherwise it is the partial area
  up to the last profile point and ``auc_complete`` is False. No post-dose sample at
  all -> AUC None.
- Two samples at the same time are an error (ValueError), as is a quantifiable
  sample without a finite value >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise

SECONDS_PER_DAY = 86_400.0
AUC_END_DAY = 28.0

Point = tuple[float, float]


@dataclass(frozen=True)
class PKSample:
    """One ``pk.resulted`` observation, timed in days since infusion (§11)."""

    days_since_infusion: float
    value: float | None
    below_lloq: bool

    def __post_init__(self) -> None:
        if not math.isfinite(self.days_since_infusion):
            raise ValueError("a PK sample needs a finite time")
        if self.below_lloq:
            return
        if self.value is None or not math.isfinite(self.value) or self.value < 0:
            raise ValueError("a PK sample not below the LLOQ needs a finite value >= 0")

    @property
    def quantified(self) -> float | None:
        """The value if the sample is quantifiable (not BLQ and above 0), else None."""
        if self.below_lloq or self.value is None or self.value <= 0:
            return None
        return self.value


@dataclass(frozen=True)
class NCAResult:
    """NCA of one analyte (§11). ``profile`` is the BLQ-handled (day, value) series the
    AUC integrates, starting at (0, 0); None fields mean "no quantifiable sample"
    (or, for the AUC, no post-dose sample)."""

    cmax: float | None
    tmax_day: float | None
    clast: float | None
    tlast_day: float | None
    auc_0_28: float | None
    auc_complete: bool
    n_quantifiable: int
    persistence_days: float | None
    predose_quantifiable: bool
    profile: tuple[Point, ...]
    auc_end_day: float = AUC_END_DAY


def samples_from(
    observations: Iterable[tuple[datetime, float | None, bool]], infused_at: datetime
) -> list[PKSample]:
    """(occurred_at, value, below_lloq) as PK samples in exact days since infusion."""
    _check_aware(infused_at)
    samples = []
    for occurred_at, value, below_lloq in observations:
        _check_aware(occurred_at)
        days = (occurred_at - infused_at).total_seconds() / SECONDS_PER_DAY
        samples.append(PKSample(days, value, below_lloq))
    return sorted(samples, key=lambda sample: sample.days_since_infusion)


def nca(samples: Iterable[PKSample], *, auc_end_day: float = AUC_END_DAY) -> NCAResult:
    """Cmax, Tmax, Clast, Tlast, AUC 0-28 and persistence of one analyte (§11)."""
    if not (math.isfinite(auc_end_day) and auc_end_day > 0):
        raise ValueError("the AUC must end after day 0")
    ordered = sorted(samples, key=lambda sample: sample.days_since_infusion)
    _check_unique_times(ordered)
    postdose = [sample for sample in ordered if sample.days_since_infusion > 0]
    quantified = [
        (sample.days_since_infusion, value)
        for sample in postdose
        if (value := sample.quantified) is not None
    ]
    profile = ((0.0, 0.0), *blq_handled(postdose))
    peak = _first_peak(quantified)
    last = quantified[-1] if quantified else None
    tlast_day = last[0] if last else None
    return NCAResult(
        cmax=peak[1] if peak else None,
        tmax_day=peak[0] if peak else None,
        clast=last[1] if last else None,
        tlast_day=tlast_day,
        auc_0_28=auc_linear(profile, auc_end_day) if postdose else None,
        auc_complete=bool(postdose) and postdose[-1].days_since_infusion >= auc_end_day,
        n_quantifiable=len(quantified),
        persistence_days=tlast_day,
        predose_quantifiable=any(
            sample.quantified is not None for sample in ordered if sample.days_since_infusion <= 0
        ),
        profile=profile,
        auc_end_day=auc_end_day,
    )


def blq_handled(postdose: Sequence[PKSample]) -> tuple[Point, ...]:
    """Post-dose samples (sorted by time) after the BLQ rules of §11."""
    flags = [sample.quantified is not None for sample in postdose]
    if not any(flags):
        return tuple((sample.days_since_infusion, 0.0) for sample in postdose)
    first = flags.index(True)
    last = len(flags) - 1 - flags[::-1].index(True)
    points: list[Point] = []
    for index, sample in enumerate(postdose):
        value = sample.quantified
        if value is not None:
            points.append((sample.days_since_infusion, value))
        elif index < first or index == last + 1:
            points.append((sample.days_since_infusion, 0.0))
    return tuple(points)


def auc_linear(profile: Sequence[Point], end_day: float) -> float:
    """Linear-trapezoid area of ``profile`` from its start to ``end_day`` (or to its
    last point if earlier), interpolating the value at ``end_day`` (§11)."""
    area = 0.0
    for (t0, c0), (t1, c1) in pairwise(profile):
        if t0 >= end_day:
            break
        if t1 > end_day:
            c1 = c0 + (c1 - c0) * (end_day - t0) / (t1 - t0)
            t1 = end_day
        area += (c0 + c1) / 2 * (t1 - t0)
    return area


def _first_peak(points: Sequence[Point]) -> Point | None:
    peak: Point | None = None
    for point in points:
        if peak is None or point[1] > peak[1]:
            peak = point
    return peak


def _check_unique_times(ordered: Sequence[PKSample]) -> None:
    for before, after in pairwise(ordered):
        if before.days_since_infusion == after.days_since_infusion:
            raise ValueError(f"two PK samples at day {after.days_since_infusion}")


def _check_aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("PK times need a UTC offset")
