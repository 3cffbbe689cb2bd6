"""Protocol parameters the rules need (reference §0–1; every value a [parameter]).

The full versioned protocol file comes with the rules-engine issue; this module
holds the parameters CRS grading and day numbering use, with the reference's
template values as defaults. A participant records the parameter set in force when
its record is opened, so a replay grades with the same values.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain.icaht import ICAHTParameters
from domain.icans import ICANSParameters
from domain.screens import FNParameters, IECHSParameters
from domain.timeline import study_day

__all__ = ["CRSParameters", "ProtocolParameters", "study_day"]

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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Relatedness = Literal["not_related", "unlikely", "possible", "probable", "definite"]


class DLTParameters(_Section):
    """Dose-limiting toxicity template (reference §7); every value a [parameter]."""

    window_days: int = Field(default=28, ge=1, description="window: infusion through this day")
    relatedness_required: Relatedness = Field(
        default="possible", description="at least this related to count as a DLT"
    )
    lymphodepletion_attribution_counts: bool = True
    crs_grade3_max_hours: float = Field(default=72.0, gt=0)
    icans_grade3_max_hours: float = Field(default=72.0, gt=0)
    nonhematologic_grade3_max_days: float = Field(default=7.0, gt=0)
    hematologic_grade4_persisting_beyond_day: int = 28
    improvement_measured_as: Literal["first_to_sustained", "longest_run"] = Field(
        default="first_to_sustained",
        description="from the first time grade 3 was met to the start of a sustained return "
        "to <= grade 2, or the longest continuous run at grade >= 3",
    )
    special_grade3_counts: bool = Field(
        default=True,
        description="[parameter] rule 6: grade >= 3 IEC-HS, LICATS or autoimmune flare is a "
        "DLT at once (false: these follow the non-haematologic rules)",
    )
    excluded_terms: tuple[str, ...] = (
        "Fever",
        "Lymphocyte count decreased",
        "White blood cell decreased",
        "B-cell aplasia",
        "Hypogammaglobulinemia",
    )


class PreInfusionParameters(_Section):
    """Pre-infusion gates (reference §7, EBMT/EHA autoimmune recommendations [V])."""

    afebrile_hours_before_infusion: float = Field(default=48.0, ge=0)
    require_confirmed_eligibility: bool = True


class ReportingClocks(_Section):
    """Reporting obligations (reference §10), in hours from awareness."""

    site_to_sponsor_hours: float = 24.0
    susar_fatal_or_life_threatening_days: float = 7.0
    susar_other_days: float = 15.0
    reminder_hours_before: tuple[float, ...] = (12.0, 2.0)
    protocol_mandated_admission_is_sae: bool = False


class BOINDesign(_Section):
    """BOIN (Liu & Yuan 2015; reference §8)."""

    design: Literal["BOIN"] = "BOIN"
    target: float = Field(default=0.30, gt=0, lt=1)
    phi1_ratio: float = Field(default=0.6, gt=0, lt=1)
    phi2_ratio: float = Field(default=1.4, gt=1)
    elimination_cutoff: float = Field(default=0.95, gt=0, lt=1)
    cohort_size: int = Field(default=3, ge=1)
    max_per_dose: int = Field(default=12, ge=1)


class ThreePlusThreeDesign(_Section):
    design: Literal["3+3"] = "3+3"


class BayesianStoppingRule(_Section):
    """Stop if P(p > p0 | y, n) > cutoff under Beta(a, b) (Thall, Simon & Estey 1995)."""

    kind: Literal["bayesian_beta_binomial"] = "bayesian_beta_binomial"
    rule_id: str
    scope: Literal["trial", "dose_level"] = "trial"
    p0: float = Field(gt=0, lt=1)
    cutoff: float = Field(gt=0, lt=1)
    prior_a: float = Field(default=1.0, gt=0)
    prior_b: float = Field(default=1.0, gt=0)
    min_evaluable: int = Field(default=3, ge=1)
    max_n: int = Field(default=42, ge=1, description="monitoring up to this many evaluable")


class PocockStoppingRule(_Section):
    """Pocock-type continuous monitoring (Ivanova, Qaqish & Schell 2005)."""

    kind: Literal["pocock"] = "pocock"
    rule_id: str
    scope: Literal["trial", "dose_level"] = "trial"
    theta0: float = Field(gt=0, lt=1)
    alpha: float = Field(gt=0, lt=1)
    max_n: int = Field(ge=1)


class FixedPauseRules(_Section):
    """Fixed pause rules (reference §8), each a [parameter]."""

    related_grade5_pauses: bool = True
    grade4_crs_or_icans_pauses: bool = True
    dlts_exceeding_mtd: tuple[int, int] = Field(
        default=(2, 6), description="(y, n): y DLTs among the first n evaluable at a dose"
    )
    suspend_when_pending_fraction_over: float = Field(default=0.5, ge=0, le=1)


AlertSeverity = Literal["critical", "high", "medium", "info"]
AlertChannel = Literal["kafka", "webhook", "email", "live_feed"]


class AlertRoute(_Section):
    """Where alerts of one severity go, who must acknowledge them and when they
    escalate (architecture decision 8; used by the alerts projection)."""

    severity: AlertSeverity
    channels: tuple[AlertChannel, ...]
    notify: tuple[str, ...] = Field(description="roles notified, e.g. safety_monitor")
    acknowledge_within_minutes: float | None = Field(
        default=None, gt=0, description="unacknowledged after this long: escalate"
    )
    escalate_to: tuple[str, ...] = ()


class AlertRouting(_Section):
    """[parameter] alert routing (template values; the protocol's safety plan decides)."""

    routes: tuple[AlertRoute, ...] = (
        AlertRoute(
            severity="critical",
            channels=("kafka", "webhook", "email", "live_feed"),
            notify=("safety_monitor", "medical_monitor"),
            acknowledge_within_minutes=15.0,
            escalate_to=("principal_investigator", "src_chair"),
        ),
        AlertRoute(
            severity="high",
            channels=("kafka", "webhook", "live_feed"),
            notify=("safety_monitor",),
            acknowledge_within_minutes=60.0,
            escalate_to=("medical_monitor",),
        ),
        AlertRoute(severity="medium", channels=("kafka", "live_feed"), notify=("safety_monitor",)),
        AlertRoute(severity="info", channels=("kafka",), notify=()),
    )

    @model_validator(mode="after")
    def check_one_route_per_severity(self) -> AlertRouting:
        severities = [route.severity for route in self.routes]
        if len(set(severities)) != len(severities):
            raise ValueError("alert routing: more than one route for a severity")
        return self


AlertValue = str | int | float | bool | None
_SEVERITY_RANK: dict[str, int] = {"info": 0, "medium": 1, "high": 2, "critical": 3}


def severity_rank(severity: str) -> int:
    return _SEVERITY_RANK[severity]


class AlertRule(_Section):
    """One alert rule (architecture decision 8): which events raise it, on what
    condition, how severe, and which clinical situation it belongs to.

    ``on`` names contract types, derived (§3) or clinical (§2). ``when`` and
    ``unless`` compare fields of the event (envelope or ``data``) with a value or a
    list of values. ``situation`` and ``title`` are ``str.format`` templates over the
    same fields; events of one category and situation share one alert, whose
    severity only rises. A ``resolves`` rule ends its situation's alert instead (the
    title is the reason)."""

    category: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    on: tuple[str, ...] = Field(min_length=1)
    when: dict[str, AlertValue | list[AlertValue]] = {}
    unless: dict[str, AlertValue | list[AlertValue]] = {}
    min_grade: int | None = Field(default=None, ge=0, le=5)
    severity: AlertSeverity | None = None
    severity_by_grade: dict[int, AlertSeverity] = Field(
        default={}, description="lowest grade -> severity; the highest threshold met applies"
    )
    situation: str
    title: str
    resolves: bool = Field(
        default=False,
        description="the event ends the situation: its open alert stops escalating",
    )

    @model_validator(mode="after")
    def check_one_severity(self) -> AlertRule:
        given = (self.severity is not None) + bool(self.severity_by_grade)
        if self.resolves and given:
            raise ValueError(f"alert rule {self.category}: a resolving rule has no severity")
        if not self.resolves and given != 1:
            raise ValueError(f"alert rule {self.category}: give severity or severity_by_grade")
        return self


def _rule(category: str, on: str, situation: str, title: str, **rest: object) -> AlertRule:
    return AlertRule.model_validate(
        {"category": category, "on": (on,), "situation": situation, "title": title, **rest}
    )


class AlertRules(_Section):
    """[parameter] what raises an alert (template values; the safety plan decides).

    Data-quality alerts are built in: an observation for a participant whose
    enrolment is not on record, and a burst of rejected messages."""

    rules: tuple[AlertRule, ...] = (
        _rule(
            "crs",
            "crs.graded",
            "{participant_id}:crs:{episode}",
            "CRS grade {grade} (episode {episode})",
            min_grade=2,
            severity_by_grade={2: "high", 3: "critical"},
        ),
        _rule(
            "crs",
            "grade.revised",
            "{participant_id}:crs:{episode}",
            "CRS revised to grade {to_grade} (episode {episode})",
            when={"term": "CRS"},
            min_grade=2,
            severity_by_grade={2: "high", 3: "critical"},
        ),
        _rule(
            "crs",
            "crs.resolved",
            "{participant_id}:crs:{episode}",
            "CRS episode {episode} resolved (max grade {max_grade})",
            resolves=True,
        ),
        _rule(
            "icans",
            "icans.graded",
            "{participant_id}:icans:{episode}",
            "ICANS grade {grade} (episode {episode})",
            min_grade=1,
            severity_by_grade={1: "high", 3: "critical"},
        ),
        _rule(
            "icans",
            "grade.revised",
            "{participant_id}:icans:{episode}",
            "ICANS revised to grade {to_grade} (episode {episode})",
            when={"term": "ICANS"},
            min_grade=1,
            severity_by_grade={1: "high", 3: "critical"},
        ),
        _rule(
            "icans",
            "icans.resolved",
            "{participant_id}:icans:{episode}",
            "ICANS episode {episode} resolved (max grade {max_grade})",
            resolves=True,
        ),
        _rule(
            "dlt",
            "dlt.candidate",
            "{participant_id}:dlt:{candidate_id}",
            "DLT candidate: {rule}",
            severity="high",
        ),
        _rule(
            "dlt",
            "dlt.confirmed",
            "{participant_id}:dlt:{candidate_id}",
            "DLT confirmed: {rule}",
            severity="critical",
        ),
        _rule(
            "dlt",
            "dlt.ruled_out",
            "{participant_id}:dlt:{candidate_id}",
            "DLT ruled out: {reason}",
            resolves=True,
        ),
        _rule(
            "stopping_rule",
            "stopping_rule.triggered",
            "{rule_id}:{scope}",
            "Stopping boundary crossed: {rule_id} ({y}/{n})",
            unless={"withdrawn": True},
            severity="critical",
        ),
        _rule(
            "stopping_rule",
            "stopping_rule.triggered",
            "{rule_id}:{scope}",
            "Stopping finding withdrawn (later outcomes): {rule_id}",
            when={"withdrawn": True},
            resolves=True,
        ),
        _rule(
            "stopping_rule",
            "enrollment.paused",
            "enrollment",
            "Enrolment paused: {reason}",
            severity="critical",
        ),
        _rule(
            "stopping_rule",
            "enrollment.resumed",
            "enrollment",
            "Enrolment resumed by {by}: {reason}",
            resolves=True,
        ),
        _rule(
            "dose_decision",
            "dose.decision",
            "{dose_level}:{decision}",
            "Dose level {dose_level}: {decision}",
            when={"decision": "eliminate"},
            unless={"withdrawn": True},
            severity="high",
        ),
        _rule(
            "dose_decision",
            "dose.decision",
            "{dose_level}:{decision}",
            "Decision withdrawn (later outcomes): {dose_level} {decision}",
            when={"decision": "eliminate", "withdrawn": True},
            resolves=True,
        ),
        _rule(
            "iechs",
            "iechs.screen_positive",
            "{participant_id}:iechs:{key}",
            "IEC-HS screen positive",
            severity="high",
        ),
        _rule(
            "sae_deadline",
            "sae.clock_started",
            "{participant_id}:sae:{ae_id}:{obligation}",
            "SAE {ae_id}: {obligation} due {deadline_at}",
            severity="medium",
        ),
        _rule(
            "sae_deadline",
            "sae.reminder_due",
            "{participant_id}:sae:{ae_id}:{obligation}",
            "SAE {ae_id}: {obligation} due {deadline_at}",
            when={"overdue": False},
            severity="high",
        ),
        _rule(
            "sae_deadline",
            "sae.reminder_due",
            "{participant_id}:sae:{ae_id}:{obligation}",
            "SAE {ae_id}: {obligation} OVERDUE since {deadline_at}",
            when={"overdue": True},
            severity="critical",
        ),
        _rule(
            "protocol_deviation",
            "protocol.deviation",
            "{participant_id}:{key}",
            "Protocol deviation: {rule}",
            unless={"rule": ["duplicate_infusion"]},
            severity="high",
        ),
        _rule(
            "data_quality",
            "protocol.deviation",
            "{participant_id}:{key}",
            "Duplicate infusion recorded",
            when={"rule": "duplicate_infusion"},
            severity="medium",
        ),
        _rule(
            "death",
            "death.reported",
            "{participant_id}:death",
            "Death reported: {cause}",
            severity="critical",
        ),
    )
    unknown_participant_severity: AlertSeverity = "medium"
    unknown_participant_grace_hours: float = Field(
        default=24.0, gt=0, description="records may precede their enrolment by this long"
    )
    rejected_burst_count: int = Field(default=10, ge=1)
    rejected_burst_window_minutes: float = Field(default=15.0, gt=0)
    rejected_burst_severity: AlertSeverity = "medium"
    #: A participant's record parked because an accepted event could not be applied:
    #: nothing is derived for them until a person releases it.
    parked_participant_severity: AlertSeverity = "critical"


class DoseLevel(_Section):
    id: str
    cells_per_kg: float = Field(gt=0)
    label: str | None = None


class ProtocolParameters(BaseModel):
    """A protocol version: every [parameter] of the reference, recorded as a whole
    with each participant record so that a replay uses the rules in force."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol_id: str = "LUCAR-G79"
    version: str = "0"
    trial_id: str = "NCT07049081"
    day_zero_is_infusion_day: bool = Field(
        default=True,
        description="[parameter] reference §0.5: Day 0 (oncology convention) or Day 1.",
    )
    ctcae_version: Literal["5.0", "6.0"] = Field(
        default="5.0", description="[parameter] reference §0.2: CTCAE v5.0 is the default."
    )
    dose_levels: tuple[DoseLevel, ...] = (
        DoseLevel(id="DL1", cells_per_kg=1.0e6),
        DoseLevel(id="DL2", cells_per_kg=2.0e6),
        DoseLevel(id="DL3", cells_per_kg=3.0e6),
    )
    crs: CRSParameters = CRSParameters()
    icans: ICANSParameters = ICANSParameters()
    icaht: ICAHTParameters = ICAHTParameters()
    febrile_neutropenia: FNParameters = FNParameters()
    iechs: IECHSParameters = IECHSParameters()
    dlt: DLTParameters = DLTParameters()
    pre_infusion: PreInfusionParameters = PreInfusionParameters()
    reporting: ReportingClocks = ReportingClocks()
    escalation: BOINDesign | ThreePlusThreeDesign = Field(
        default=BOINDesign(), discriminator="design"
    )
    stopping_rules: tuple[
        Annotated[BayesianStoppingRule | PocockStoppingRule, Field(discriminator="kind")], ...
    ] = ()
    pause_rules: FixedPauseRules = FixedPauseRules()
    alert_routing: AlertRouting = AlertRouting()
    alert_rules: AlertRules = AlertRules()
