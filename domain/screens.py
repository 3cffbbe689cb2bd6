"""Screens over lab results and temperatures: febrile neutropenia (CTCAE, reference §3)
and IEC-HS (Hines et al., Transplant Cell Ther 2023; reference §5).

Both are pure functions over a participant's clinical timeline (clinical time,
reference §0.4); each finding carries the observations that made it true.

**Febrile neutropenia** (CTCAE v5.0 and v6.0, grade 3): ANC < 1.0 x 10^9/L with a
single temperature > 38.3 C, or a temperature >= 38.0 C sustained > 1 h. Operational
definitions:

- *Sustained*: two readings >= 38.0 C more than 1 h apart with no reading < 38.0 C
  between them (a fever spell starts at its first reading >= 38.0 C).
- *Pairing*: a temperature pairs with the ANC in force, the last ANC result at or
  before it, no older than ``anc_max_age_hours`` [parameter, 24 h]. An ANC result
  also pairs with the temperature in force (reference §0.6) when that reading is no
  older than ``temperature_max_age_hours`` [parameter, 4 h], so an ANC drawn in the
  fever work-up counts.
- Temperatures before ``infusion_at`` are not screened; ANC results before it can be
  the ANC in force.
- *One episode* per neutropenic fever: further qualifying fevers belong to it until it
  resolves, at the first ANC >= 1.0 x 10^9/L, or at the first reading < 38.0 C that
  starts ``afebrile_hours_to_resolve`` [parameter, 24 h] without a reading >= 38.0 C.
  Grade 4 (life-threatening consequences) is a clinical judgement, never derived.

**IEC-HS screen** (the engine cannot diagnose IEC-HS): positive when, in the window of
a CRS episode (from its onset to the next episode's onset, or to
``window_days_after_crs_resolution`` after resolution when set), the ferritin in force
is > 2 x ULN (``reference_high`` of that result) or > 2 x baseline, *and* rising (above
the ferritin result before it, else above the baseline), plus any of: fibrinogen
< 1.5 g/L, ALT or AST > 5 x ULN, or new or worsening cytopenia. Results count from the
episode's onset and are carried forward until the next result of their analyte.
*New or worsening cytopenia* [parameter]: the CTCAE grade (protocol version) of an ANC
or platelet result in the window is at least ``cytopenia_grade_increase`` above the
best (lowest) grade of that analyte since the last result before the episode's onset,
so a second fall after a recovery (biphasic cytopenia) counts. One screen per CRS
episode, at the first instant all conditions hold; ``criteria_met`` names them all.
"""

from __future__ import annotations

import copy
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.contract import LabResulted, VitalsRecorded
from domain.ctcae import Baseline, Criteria, CTCAEVersion, grade_lab
from domain.timeline import TimelineEntry, chronological
from domain.units import convert

FN_TERM: Final = "Febrile neutropenia"
FN_ANC_BELOW_10E9_L: Final = 1.0
FN_SINGLE_ABOVE_C: Final = 38.3
FEVER_C: Final = 38.0
FN_SUSTAINED_OVER: Final = timedelta(hours=1)
ANC_UNIT: Final = "10*9/L"

FNBasis = Literal["single_above_38_3", "sustained_38_0_over_1h"]


class FNParameters(BaseModel):
    """Febrile neutropenia screening parameters (the CTCAE thresholds are fixed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    anc_max_age_hours: float = Field(
        default=24.0,
        gt=0,
        description="[parameter] a temperature pairs with the last ANC at or before it "
        "only if that ANC is at most this old.",
    )
    temperature_max_age_hours: float = Field(
        default=4.0,
        ge=0,
        description="[parameter] an ANC result pairs with the temperature in force only if "
        "that reading is at most this old (reference §0.6 carry-forward).",
    )
    afebrile_hours_to_resolve: float = Field(
        default=24.0,
        gt=0,
        description="[parameter] an episode resolves after this long without a reading "
        ">= 38.0 C (or at the first ANC >= 1.0 x 10^9/L).",
    )


@dataclass(frozen=True)
class FNEpisode:
    """CTCAE febrile neutropenia met at ``at`` (contract ``toxicity.graded``)."""

    at: datetime
    anc_10e9_l: float
    temperature_c: float
    basis: FNBasis
    criteria: Criteria
    resolved_at: datetime | None
    caused_by: tuple[str, ...]
    term: str = FN_TERM
    grade: int = 3


@dataclass(frozen=True)
class _Reading:
    at: datetime
    value: float
    event_id: str


#: What the febrile neutropenia sweep reads.
FN_INPUT_TYPES: Final = ("lab.resulted", "vitals.recorded")


class FNSweep:
    """The febrile neutropenia screen's state over results and vitals in clinical
    order (:func:`febrile_neutropenia`; resumable, ``domain.timeline.Resumable``)."""

    def __init__(
        self, params: FNParameters, criteria: Criteria, infusion_at: datetime | None
    ) -> None:
        self.params = params
        self.criteria = criteria
        self.infusion_at = infusion_at
        self.anc: _Reading | None = None
        self.temperature: _Reading | None = None
        self.spell_start: _Reading | None = None
        self.afebrile_since: _Reading | None = None
        self.open: FNEpisode | None = None
        self.episodes: list[FNEpisode] = []

    def observe(self, entry: TimelineEntry) -> None:
        # Only results and vitals change the sweep; an episode that resolves between
        # two of them resolves at the same instant (the afebrile time) whenever it is
        # checked.
        self.resolve_if_afebrile_long_enough(entry.at)
        data = entry.data
        if isinstance(data, LabResulted) and data.analyte == "anc":
            value = convert("anc", data.value, data.unit, ANC_UNIT)
            self.observe_anc(_Reading(entry.at, value, entry.event_id))
        elif (
            isinstance(data, VitalsRecorded)
            and data.temperature_c is not None
            and (self.infusion_at is None or entry.at >= self.infusion_at)
        ):
            self.observe_temperature(_Reading(entry.at, data.temperature_c, entry.event_id))

    def copy(self) -> FNSweep:
        other = copy.copy(self)
        other.episodes = list(self.episodes)
        return other

    def episodes_as_of(self, as_of: datetime | None) -> tuple[FNEpisode, ...]:
        """The episodes, oldest first, once clinical time has reached ``as_of``
        (finishes this state: call it on a copy)."""
        if as_of is not None:
            self.resolve_if_afebrile_long_enough(as_of)
        return self.finish()

    def resolve_if_afebrile_long_enough(self, at: datetime) -> None:
        since = self.afebrile_since
        hours = timedelta(hours=self.params.afebrile_hours_to_resolve)
        if self.open is not None and since is not None and at - since.at >= hours:
            self._close(since.at)

    def observe_anc(self, reading: _Reading) -> None:
        self.anc = reading
        if self.open is not None:
            if reading.value >= FN_ANC_BELOW_10E9_L:
                self._close(reading.at)
            return
        temperature = self.temperature
        max_age = timedelta(hours=self.params.temperature_max_age_hours)
        if temperature is not None and reading.at - temperature.at <= max_age:
            self._check(reading.at)

    def observe_temperature(self, reading: _Reading) -> None:
        self.temperature = reading
        if reading.value < FEVER_C:
            self.spell_start = None
            if self.open is not None and self.afebrile_since is None:
                self.afebrile_since = reading
            return
        self.afebrile_since = None
        if self.spell_start is None:
            self.spell_start = reading
        if self.open is None:
            self._check(reading.at)

    def _check(self, at: datetime) -> None:
        anc, temperature, start = self.anc, self.temperature, self.spell_start
        if anc is None or temperature is None or anc.value >= FN_ANC_BELOW_10E9_L:
            return
        if at - anc.at > timedelta(hours=self.params.anc_max_age_hours):
            return
        if temperature.value > FN_SINGLE_ABOVE_C:
            basis: FNBasis = "single_above_38_3"
            fever_ids: tuple[str, ...] = (temperature.event_id,)
        elif start is not None and temperature.at - start.at > FN_SUSTAINED_OVER:
            basis = "sustained_38_0_over_1h"
            fever_ids = (start.event_id, temperature.event_id)
        else:
            return
        self.open = FNEpisode(
            at=at,
            anc_10e9_l=anc.value,
            temperature_c=temperature.value,
            basis=basis,
            criteria=self.criteria,
            resolved_at=None,
            caused_by=(anc.event_id, *fever_ids),
        )

    def _close(self, at: datetime | None) -> None:
        if self.open is not None:
            self.episodes.append(_with_resolution(self.open, at))
        self.open = None
        self.afebrile_since = None

    def finish(self) -> tuple[FNEpisode, ...]:
        self._close(None)
        return tuple(self.episodes)


def _with_resolution(episode: FNEpisode, at: datetime | None) -> FNEpisode:
    return FNEpisode(
        at=episode.at,
        anc_10e9_l=episode.anc_10e9_l,
        temperature_c=episode.temperature_c,
        basis=episode.basis,
        criteria=episode.criteria,
        resolved_at=at,
        caused_by=episode.caused_by,
    )


def febrile_neutropenia(
    timeline: Sequence[TimelineEntry],
    *,
    infusion_at: datetime | None,
    version: CTCAEVersion,
    params: FNParameters | None = None,
    as_of: datetime | None = None,
) -> tuple[FNEpisode, ...]:
    """Febrile neutropenia episodes (CTCAE grade 3, reference §3), oldest first.

    ``as_of`` (default: the last observation) is how far clinical time has advanced;
    it decides whether an afebrile period has lasted long enough to resolve an episode.
    """
    sweep = fn_sweep(params or FNParameters(), version, infusion_at)
    for entry in chronological(timeline, FN_INPUT_TYPES):
        sweep.observe(entry)
    last = as_of if as_of is not None else max((e.at for e in timeline), default=None)
    return sweep.episodes_as_of(last)


def fn_sweep(params: FNParameters, version: CTCAEVersion, infusion_at: datetime | None) -> FNSweep:
    """A new febrile neutropenia sweep (before any entry)."""
    return FNSweep(params, "CTCAE-6.0" if version == "6.0" else "CTCAE-5.0", infusion_at)


# ---------------------------------------------------------------- IEC-HS

CytopeniaAnalyte = Literal["anc", "platelets", "hemoglobin"]
IECHSCriterion = Literal[
    "ferritin_above_uln_multiple",
    "ferritin_above_baseline_multiple",
    "ferritin_rising",
    "fibrinogen_low",
    "alt_above_uln_multiple",
    "ast_above_uln_multiple",
    "cytopenia_anc",
    "cytopenia_platelets",
    "cytopenia_hemoglobin",
]
_CYTOPENIA_CRITERION: Final[dict[CytopeniaAnalyte, IECHSCriterion]] = {
    "anc": "cytopenia_anc",
    "platelets": "cytopenia_platelets",
    "hemoglobin": "cytopenia_hemoglobin",
}
_IECHS_ANALYTES: Final = frozenset(
    {"ferritin", "fibrinogen", "alt", "ast", "anc", "platelets", "hemoglobin"}
)


class IECHSParameters(BaseModel):
    """IEC-HS screen parameters (reference §5, Hines et al. 2023; screen, not grading)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ferritin_uln_multiple: float = Field(default=2.0, gt=0, description="ferritin > this x ULN")
    ferritin_baseline_multiple: float = Field(
        default=2.0, gt=0, description="or ferritin > this x baseline"
    )
    fibrinogen_below_g_l: float = Field(default=1.5, gt=0, description="fibrinogen < this")
    transaminase_uln_multiple: float = Field(
        default=5.0, gt=0, description="ALT or AST > this x ULN"
    )
    cytopenia_analytes: tuple[CytopeniaAnalyte, ...] = Field(
        default=("anc", "platelets"),
        description="[parameter] analytes whose new or worsening CTCAE grade counts as cytopenia.",
    )
    cytopenia_grade_increase: int = Field(
        default=1,
        ge=1,
        description="[parameter] a cytopenia is new or worsening when its CTCAE grade is at "
        "least this much above the best grade since the last result before CRS onset.",
    )
    window_days_after_crs_resolution: float | None = Field(
        default=None,
        gt=0,
        description="[parameter] how long after a CRS episode resolves the screen runs "
        "(None: until the next episode's onset; reference §5 sets no limit).",
    )


@dataclass(frozen=True)
class IECHSScreen:
    """IEC-HS screen positive at ``at`` (contract ``iechs.screen_positive``)."""

    at: datetime
    crs_episode: int
    criteria_met: tuple[IECHSCriterion, ...]
    ferritin_ng_ml: float
    caused_by: tuple[str, ...]


@dataclass(frozen=True)
class _Result:
    at: datetime
    lab: LabResulted
    event_id: str


class _Labs:
    """Each analyte's results in clinical order, for 'in force at t' look-ups."""

    def __init__(self, timeline: Sequence[TimelineEntry]) -> None:
        self.by_analyte: dict[str, list[_Result]] = {}
        for entry in chronological(timeline, ("lab.resulted",)):
            data = entry.data
            if isinstance(data, LabResulted) and data.analyte in _IECHS_ANALYTES:
                result = _Result(entry.at, data, entry.event_id)
                self.by_analyte.setdefault(data.analyte, []).append(result)

    def up_to(self, analyte: str, at: datetime) -> list[_Result]:
        results = self.by_analyte.get(analyte, [])
        return results[: bisect_right([r.at for r in results], at)]

    def in_force(self, analyte: str, since: datetime, at: datetime) -> _Result | None:
        results = self.up_to(analyte, at)
        if results and results[-1].at >= since:
            return results[-1]
        return None

    def instants(self, start: datetime, end: datetime | None) -> list[datetime]:
        return sorted(
            {
                r.at
                for results in self.by_analyte.values()
                for r in results
                if r.at >= start and (end is None or r.at < end)
            }
        )


class _IECHSCheck:
    def __init__(
        self,
        labs: _Labs,
        baseline: Baseline | None,
        params: IECHSParameters,
        version: CTCAEVersion,
    ) -> None:
        self.labs = labs
        self.baseline = baseline
        self.params = params
        self.version = version

    def at(self, onset: datetime, at: datetime) -> tuple[list[IECHSCriterion], list[str]] | None:
        """The criteria met and their evidence at ``at``, or None when not positive."""
        ferritin = self._ferritin(onset, at)
        if ferritin is None:
            return None
        criteria, evidence = ferritin
        secondary = [
            self._fibrinogen(onset, at),
            self._transaminase("alt", onset, at),
            self._transaminase("ast", onset, at),
            *(self._cytopenia(analyte, onset, at) for analyte in self.params.cytopenia_analytes),
        ]
        met = [finding for finding in secondary if finding is not None]
        if not met:
            return None
        for criterion, ids in met:
            criteria.append(criterion)
            evidence.extend(ids)
        return criteria, evidence

    def _ferritin(
        self, onset: datetime, at: datetime
    ) -> tuple[list[IECHSCriterion], list[str]] | None:
        results = self.labs.up_to("ferritin", at)
        if not results or results[-1].at < onset:
            return None
        current = results[-1]
        value = current.lab.value
        criteria: list[IECHSCriterion] = []
        evidence = [current.event_id]
        high = current.lab.reference_high
        if high is not None and value > self.params.ferritin_uln_multiple * high:
            criteria.append("ferritin_above_uln_multiple")
        base = self._baseline_ng_ml()
        if base is not None and value > self.params.ferritin_baseline_multiple * base:
            criteria.append("ferritin_above_baseline_multiple")
            if self.baseline is not None and self.baseline.event_id is not None:
                evidence.append(self.baseline.event_id)
        if not criteria:
            return None
        previous_id: str | None
        if len(results) >= 2:
            previous, previous_id = results[-2].lab.value, results[-2].event_id
        elif base is not None and self.baseline is not None:
            previous, previous_id = base, self.baseline.event_id
        else:
            return None
        if value <= previous:
            return None
        criteria.append("ferritin_rising")
        if previous_id is not None:
            evidence.append(previous_id)
        return criteria, evidence

    def _baseline_ng_ml(self) -> float | None:
        if self.baseline is None:
            return None
        return convert("ferritin", self.baseline.value, self.baseline.unit, "ng/mL")

    def _fibrinogen(
        self, onset: datetime, at: datetime
    ) -> tuple[IECHSCriterion, tuple[str, ...]] | None:
        result = self.labs.in_force("fibrinogen", onset, at)
        if result is None:
            return None
        value_g_l = convert("fibrinogen", result.lab.value, result.lab.unit, "g/L")
        if value_g_l < self.params.fibrinogen_below_g_l:
            return "fibrinogen_low", (result.event_id,)
        return None

    def _transaminase(
        self, analyte: Literal["alt", "ast"], onset: datetime, at: datetime
    ) -> tuple[IECHSCriterion, tuple[str, ...]] | None:
        result = self.labs.in_force(analyte, onset, at)
        if result is None or result.lab.reference_high is None:
            return None
        if result.lab.value > self.params.transaminase_uln_multiple * result.lab.reference_high:
            criterion: IECHSCriterion = (
                "alt_above_uln_multiple" if analyte == "alt" else "ast_above_uln_multiple"
            )
            return criterion, (result.event_id,)
        return None

    def _cytopenia(
        self, analyte: CytopeniaAnalyte, onset: datetime, at: datetime
    ) -> tuple[IECHSCriterion, tuple[str, ...]] | None:
        results = self.labs.up_to(analyte, at)
        if not results or results[-1].at < onset:
            return None
        before = [r for r in results if r.at < onset]
        earlier = before[-1:] + [r for r in results[:-1] if r.at >= onset]
        current = results[-1]
        grade = self._grade(current)
        if grade is None:
            return None
        graded = [(g, r) for r in earlier if (g := self._grade(r)) is not None]
        if not graded:
            return None
        best_grade, best = min(graded, key=lambda pair: pair[0])
        if grade - best_grade >= self.params.cytopenia_grade_increase:
            return _CYTOPENIA_CRITERION[analyte], (best.event_id, current.event_id)
        return None

    def _grade(self, result: _Result) -> int | None:
        lab = result.lab
        graded = grade_lab(
            lab.analyte,
            lab.value,
            lab.unit,
            reference_low=lab.reference_low,
            reference_high=lab.reference_high,
            version=self.version,
        )
        return None if graded is None else graded.grade


def _windows(
    crs_episodes: Sequence[tuple[datetime, datetime | None]], params: IECHSParameters
) -> list[tuple[int, datetime, datetime | None]]:
    ordered = sorted(crs_episodes, key=lambda episode: episode[0])
    windows: list[tuple[int, datetime, datetime | None]] = []
    for number, (onset, resolved_at) in enumerate(ordered, start=1):
        end = ordered[number][0] if number < len(ordered) else None
        after = params.window_days_after_crs_resolution
        if after is not None and resolved_at is not None:
            limit = resolved_at + timedelta(days=after)
            end = limit if end is None else min(end, limit)
        windows.append((number, onset, end))
    return windows


def iechs_screen(
    timeline: Sequence[TimelineEntry],
    *,
    crs_episodes: Sequence[tuple[datetime, datetime | None]],
    baseline_ferritin: Baseline | None,
    params: IECHSParameters,
    version: CTCAEVersion,
) -> tuple[IECHSScreen, ...]:
    """IEC-HS screens, at most one per CRS episode (reference §5).

    ``crs_episodes`` are (onset, resolved_at or None) of the participant's CRS
    episodes; ``baseline_ferritin`` is the last ferritin before lymphodepletion
    (``domain.ctcae.lab_baselines``); ``version`` is the CTCAE version cytopenias are
    graded with.
    """
    labs = _Labs(timeline)
    check = _IECHSCheck(labs, baseline_ferritin, params, version)
    screens: list[IECHSScreen] = []
    for number, onset, end in _windows(crs_episodes, params):
        for instant in labs.instants(onset, end):
            found = check.at(onset, instant)
            if found is None:
                continue
            criteria, evidence = found
            ferritin = labs.up_to("ferritin", instant)[-1].lab.value
            screens.append(
                IECHSScreen(
                    at=instant,
                    crs_episode=number,
                    criteria_met=tuple(criteria),
                    ferritin_ng_ml=ferritin,
                    caused_by=tuple(dict.fromkeys(evidence)),
                )
            )
            break
    return tuple(screens)
