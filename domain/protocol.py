"""Protocol parameters the rules need (reference §0–1; every value a [parameter]).

The full versioned protocol file comes with the rules-engine issue; this module
holds the parameters CRS grading and day numbering use, with the reference's
template values as defaults. A participant records the parameter set in force when
its record is opened, so a replay grades with the same values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WaiverDrugClass = Literal["antipyretic", "anti_il6", "il1_blocker", "corticosteroid"]


class CRSParameters(BaseModel):
    """CRS grading parameters (reference §1, ASTCT 2019 where fixed by the criteria)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fever_threshold_c: float = Field(
        default=38.0, description="ASTCT 2019: fever is a temperature >= 38.0 C (criterion)."
    )
    low_flow_max_l_min: float = Field(
        default=6.0, description="ASTCT 2019: <= 6 L/min nasal cannula is low flow (criterion)."
    )
    hypotension_sbp_below_mmhg: float = Field(
        default=90.0, description="[parameter] a reading below this SBP is hypotension."
    )
    hypotension_map_below_mmhg: float = Field(
        default=65.0, description="[parameter] a reading below this MAP is hypotension."
    )
    fluid_bolus_window_hours: float = Field(
        default=6.0,
        description="[parameter] a bolus for hypotension given up to this long before a "
        "hypotensive reading counts as treating it.",
    )
    vasopressor_overlap_minutes: float = Field(
        default=0.0,
        description="[parameter] two non-vasopressin agents count as concurrent only when "
        "they run together at least this long; a switch with no overlap is one agent.",
    )
    vasopressor_switch_review_minutes: float = Field(
        default=60.0,
        description="[parameter] a concurrent period that ended within this time is "
        "referred for adjudication (cross-taper or escalation?).",
    )
    resolution_hours: float = Field(
        default=24.0,
        description="[parameter] episode resolved when afebrile, off vasopressors and off "
        "oxygen for this long; resolution time is the start of that period.",
    )
    masked_fever_lookback_hours: float = Field(
        default=72.0,
        description="[parameter] antipyretic or anti-cytokine use within this time before "
        "afebrile hypotension/hypoxia raises 'possible masked CRS'.",
    )
    waiver_drug_classes: tuple[WaiverDrugClass, ...] = Field(
        default=("antipyretic", "anti_il6", "il1_blocker", "corticosteroid"),
        description="ASTCT 2019: antipyretic or anti-cytokine therapy (tocilizumab, "
        "steroids) waives the fever requirement inside an episode.",
    )


class ProtocolParameters(BaseModel):
    """The parameter set recorded with each participant record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol_id: str = "LUCAR-G79"
    version: str = "0"
    day_zero_is_infusion_day: bool = Field(
        default=True,
        description="[parameter] reference §0.5: Day 0 (oncology convention) or Day 1.",
    )
    crs: CRSParameters = CRSParameters()


def study_day(at: datetime, infusion_at: datetime, *, day_zero_is_infusion_day: bool) -> int:
    """The protocol study day of ``at`` (reference §0.5).

    Days are calendar days in the infusion's UTC offset: the infusion's calendar day
    is Day 0 (or Day 1), the day before it Day -1 (there is no Day 0 under the Day 1
    convention, as in oncology protocols that count D-1, D1).
    """
    local = at.astimezone(infusion_at.tzinfo)
    delta = (local.date() - infusion_at.date()).days
    if day_zero_is_infusion_day or delta < 0:
        return delta
    return delta + 1
