"""The v1 wire contract (../shared/design/event-contract.md), as pydantic models.

These models are the single source of the schema: clinical events in (§1–2), the
derived safety event envelope out (§3) and the rejection error (§4). Validation is
strict: unknown fields are rejected, numbers must be JSON numbers, timestamps must
carry a UTC offset, values must be physiologically plausible.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeAlias, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

CLINICAL_SCHEMA = "toxwatch.clinical.v1"
SAFETY_SCHEMA: Literal["toxwatch.safety.v1"] = "toxwatch.safety.v1"
TRIAL_LEVEL_PARTICIPANT = "-"

#: Accepted clock skew for ``occurred_at`` ahead of the receiver's clock.
DEFAULT_FUTURE_SKEW = timedelta(minutes=5)

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
ParticipantRef = Annotated[str, StringConstraints(pattern=r"^([A-Za-z0-9._-]{1,64}|-)$")]
EventId = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,128}$")]
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------- data per type

Disease = Literal["SLE", "SSC", "AAV", "IIM", "TAK", "IGG4RD"]
Attribution = Literal[
    "product", "lymphodepletion", "underlying_disease", "infection", "sedation", "other"
]
Relatedness = Literal["not_related", "unlikely", "possible", "probable", "definite"]


class ParticipantEnrolled(_Strict):
    disease: Disease
    dose_level: Identifier
    age_years: Annotated[float, Field(ge=0, le=120)] | None = None
    sex: Literal["F", "M", "X"] | None = None
    weight_kg: Annotated[float, Field(gt=0, le=400)] | None = None
    eligibility: dict[str, JsonValue] | None = None


class EligibilityConfirmed(_Strict):
    confirmed_by: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    criteria: dict[str, JsonValue] | None = None


class LymphodepletionAdministered(_Strict):
    agent: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    dose_mg_m2: Positive


class InfusionAdministered(_Strict):
    dose_level: Identifier
    cells_per_kg: Positive
    product_lot: Annotated[str, StringConstraints(max_length=64)] | None = None


class VitalsRecorded(_Strict):
    temperature_c: Annotated[float, Field(ge=25, le=45)] | None = None
    temperature_route: Literal["oral", "tympanic", "axillary", "core"] | None = None
    systolic_bp_mmhg: Annotated[float, Field(ge=20, le=300)] | None = None
    diastolic_bp_mmhg: Annotated[float, Field(ge=10, le=250)] | None = None
    mean_arterial_pressure_mmhg: Annotated[float, Field(ge=10, le=250)] | None = None
    heart_rate_bpm: Annotated[float, Field(ge=0, le=300)] | None = None
    respiratory_rate_per_min: Annotated[float, Field(ge=0, le=100)] | None = None
    spo2_pct: Annotated[float, Field(ge=0, le=100)] | None = None

    @model_validator(mode="after")
    def check_has_a_measurement(self) -> VitalsRecorded:
        measured = self.model_dump(exclude={"temperature_route"}, exclude_none=True)
        if not measured:
            raise ValueError("vitals.recorded needs at least one measurement")
        if self.temperature_route is not None and self.temperature_c is None:
            raise ValueError("temperature_route given without temperature_c")
        return self


OxygenDevice = Literal[
    "room_air",
    "nasal_cannula",
    "blow_by",
    "high_flow_nasal_cannula",
    "simple_face_mask",
    "non_rebreather_mask",
    "venturi_mask",
    "cpap",
    "bipap",
    "mechanical_ventilation",
]
CANNULAS = frozenset({"nasal_cannula", "high_flow_nasal_cannula"})


class OxygenChanged(_Strict):
    device: OxygenDevice
    flow_l_min: Annotated[float, Field(ge=0, le=80)] | None = None
    fio2: Annotated[float, Field(ge=0.21, le=1.0)] | None = None
    reason: Literal["hypoxia", "airway_protection", "procedure", "other"] = "hypoxia"

    @model_validator(mode="after")
    def check_cannula_has_flow(self) -> OxygenChanged:
        if self.device in CANNULAS and self.flow_l_min is None:
            raise ValueError(f"flow_l_min is required for {self.device}")
        return self


VasopressorDrug = Literal[
    "norepinephrine", "epinephrine", "phenylephrine", "dopamine", "vasopressin", "other"
]


class VasopressorChanged(_Strict):
    drug: VasopressorDrug
    action: Literal["start", "rate_change", "stop"]
    dose: NonNegative | None = None
    dose_unit: Annotated[str, StringConstraints(max_length=32)] | None = None


class FluidBolus(_Strict):
    volume_ml: Annotated[float, Field(gt=0, le=10000)]
    indication: Literal["hypotension", "other"]


DrugClass = Literal[
    "antipyretic",
    "anti_il6",
    "il1_blocker",
    "corticosteroid",
    "sedative",
    "antiseizure",
    "growth_factor",
    "immunoglobulin",
    "antimicrobial",
    "inotrope",
    "other",
]


class MedicationAdministered(_Strict):
    drug: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    drug_class: DrugClass
    dose: NonNegative | None = None
    dose_unit: Annotated[str, StringConstraints(max_length=32)] | None = None
    route: Annotated[str, StringConstraints(max_length=32)] | None = None


class ICEItems(_Strict):
    orientation: Annotated[int, Field(ge=0, le=4)]
    naming: Annotated[int, Field(ge=0, le=3)]
    commands: Annotated[int, Field(ge=0, le=1)]
    writing: Annotated[int, Field(ge=0, le=1)]
    attention: Annotated[int, Field(ge=0, le=1)]

    @property
    def total(self) -> int:
        return self.orientation + self.naming + self.commands + self.writing + self.attention


RaisedICPSign = Literal[
    "decerebrate_posturing", "decorticate_posturing", "cn6_palsy", "papilledema", "cushings_triad"
]


class NeuroAssessed(_Strict):
    ice_score: Annotated[int, Field(ge=0, le=10)] | None = None
    ice_items: ICEItems | None = None
    ice_unable_reason: (
        Literal["unarousable", "global_aphasia", "sedated", "intubated", "other"] | None
    ) = None
    consciousness: (
        Literal["awake", "awakens_to_voice", "awakens_to_tactile", "unarousable"] | None
    ) = None
    seizure: (
        Literal[
            "none",
            "rapidly_resolving",
            "nonconvulsive_resolved_with_intervention",
            "prolonged_or_repetitive",
        ]
        | None
    ) = None
    motor_weakness: Literal["none", "deep_focal"] | None = None
    cerebral_edema: Literal["none", "focal", "diffuse"] | None = None
    raised_icp_signs: list[RaisedICPSign] | None = None
    intracranial_hemorrhage: bool | None = None
    sedated: bool | None = None

    @model_validator(mode="after")
    def check_ice_is_consistent(self) -> NeuroAssessed:
        if (
            self.ice_score is not None
            and self.ice_items is not None
            and self.ice_items.total != self.ice_score
        ):
            raise ValueError(
                f"ice_score {self.ice_score} disagrees with ice_items total {self.ice_items.total}"
            )
        return self


Analyte = Literal[
    "anc",
    "alc",
    "wbc",
    "platelets",
    "hemoglobin",
    "crp",
    "ferritin",
    "il6",
    "fibrinogen",
    "ldh",
    "alt",
    "ast",
    "bilirubin_total",
    "creatinine",
    "triglycerides",
    "igg",
    "ck",
    "troponin",
    "cd19_b_cells",
]
Unit = Literal[
    "10*9/L",
    "/uL",
    "g/dL",
    "g/L",
    "mg/dL",
    "mg/L",
    "umol/L",
    "mmol/L",
    "ng/mL",
    "pg/mL",
    "U/L",
    "ng/L",
]
_COUNT_UNITS = frozenset({"10*9/L", "/uL"})
#: Which UCUM units of the contract fit each analyte (contract §2, §4: "a unit that
#: does not fit its analyte" is rejected).
UNITS_BY_ANALYTE: dict[str, frozenset[str]] = {
    "anc": _COUNT_UNITS,
    "alc": _COUNT_UNITS,
    "wbc": _COUNT_UNITS,
    "platelets": _COUNT_UNITS,
    "cd19_b_cells": _COUNT_UNITS,
    "hemoglobin": frozenset({"g/dL", "g/L", "mmol/L"}),
    "crp": frozenset({"mg/L", "mg/dL"}),
    "ferritin": frozenset({"ng/mL"}),
    "il6": frozenset({"pg/mL", "ng/L"}),
    "fibrinogen": frozenset({"g/L", "mg/dL"}),
    "ldh": frozenset({"U/L"}),
    "alt": frozenset({"U/L"}),
    "ast": frozenset({"U/L"}),
    "ck": frozenset({"U/L"}),
    "bilirubin_total": frozenset({"umol/L", "mg/dL"}),
    "creatinine": frozenset({"umol/L", "mg/dL"}),
    "triglycerides": frozenset({"mmol/L", "mg/dL"}),
    "igg": frozenset({"g/L", "mg/dL"}),
    "troponin": frozenset({"ng/L", "ng/mL"}),
}


class LabResulted(_Strict):
    analyte: Analyte
    value: NonNegative
    unit: Unit
    reference_low: NonNegative | None = None
    reference_high: NonNegative | None = None
    loinc: Annotated[str, StringConstraints(pattern=r"^\d{1,7}-\d$")] | None = None

    @model_validator(mode="after")
    def check_unit_fits_analyte(self) -> LabResulted:
        allowed = UNITS_BY_ANALYTE[self.analyte]
        if self.unit not in allowed:
            raise PydanticCustomError(
                "wrong_unit",
                "unit {unit} does not fit analyte {analyte} (expected one of {allowed})",
                {"unit": self.unit, "analyte": self.analyte, "allowed": ", ".join(sorted(allowed))},
            )
        if (
            self.reference_low is not None
            and self.reference_high is not None
            and self.reference_low > self.reference_high
        ):
            raise ValueError("reference_low is above reference_high")
        return self


GradingScale = Literal[
    "CTCAE-5.0", "CTCAE-6.0", "ASTCT-2019", "LICATS-2025", "ICAHT-2023", "protocol"
]
Seriousness = Literal[
    "death",
    "life_threatening",
    "hospitalization",
    "disability",
    "congenital_anomaly",
    "important_medical_event",
]


class AdverseEventReported(_Strict):
    ae_id: Identifier
    term: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    grading_scale: GradingScale
    grade: Annotated[int, Field(ge=1, le=5)]
    serious: bool
    seriousness: list[Seriousness]
    relatedness: Relatedness
    relatedness_lymphodepletion: Relatedness | None = None
    expected: bool | None = None
    onset_at: AwareDatetime | None = None
    resolved_at: AwareDatetime | None = None
    outcome: Annotated[str, StringConstraints(max_length=64)] | None = None
    meddra_pt_code: Annotated[str, StringConstraints(pattern=r"^\d{8}$")] | None = None

    @model_validator(mode="after")
    def check_seriousness_matches(self) -> AdverseEventReported:
        if self.serious and not self.seriousness:
            raise ValueError("a serious adverse event needs at least one seriousness criterion")
        if not self.serious and self.seriousness:
            raise ValueError("seriousness criteria given for a non-serious adverse event")
        return self


class EncounterChanged(_Strict):
    kind: Literal["admission", "discharge", "icu_admission", "icu_discharge"]
    planned: bool


class PKResulted(_Strict):
    analyte: Literal["transgene_copies_per_ug_gdna", "car_t_cells_per_ul"]
    value: NonNegative
    below_lloq: bool | None = None
    lloq: NonNegative | None = None


class DiseaseAssessed(_Strict):
    instrument: Literal["SLEDAI-2K", "MRSS", "BVAS-V3", "MMT-8", "ITAS2010", "ITAS-A", "IGG4-RD-RI"]
    score: NonNegative
    visit: Annotated[str, StringConstraints(max_length=32)] | None = None
    components: dict[str, JsonValue] | None = None


class AdjudicationTarget(_Strict):
    kind: Literal["crs_episode", "icans_episode", "dlt", "iechs_screen", "alert", "event"]
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class AdjudicationRecorded(_Strict):
    target: AdjudicationTarget
    decision: Literal["confirm", "reject", "regrade"]
    grade: Annotated[int, Field(ge=0, le=5)] | None = None
    attributed_to: Attribution | None = None
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = None
    adjudicator: Annotated[str, StringConstraints(max_length=128)] | None = None

    @model_validator(mode="after")
    def check_reason_and_grade(self) -> AdjudicationRecorded:
        if self.decision in ("reject", "regrade") and not self.reason:
            raise ValueError(f"a {self.decision} decision needs a reason")
        if self.decision == "regrade" and self.grade is None:
            raise ValueError("a regrade decision needs a grade")
        return self


class DeathReported(_Strict):
    cause: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    attributed_to: Attribution
    related: Relatedness | None = None


class ParticipantWithdrawn(_Strict):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class RecordCorrected(_Strict):
    corrects_event_id: EventId
    data: dict[str, JsonValue]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class RecordVoided(_Strict):
    voids_event_id: EventId
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class CommitteeDecided(_Strict):
    committee: Literal["src", "dsmb"]
    decision: Literal[
        "pause_enrollment", "resume_enrollment", "open_dose_level", "close_dose_level", "stop_trial"
    ]
    dose_level: Identifier | None = None
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class ClockTicked(_Strict):
    pass


# ---------------------------------------------------------------- the envelope


class Source(_Strict):
    system: Literal["edc", "bedside", "lab", "device", "manual"]
    reference: Annotated[str, StringConstraints(max_length=128)]


class _Envelope(_Strict):
    schema_: Literal["toxwatch.clinical.v1"] = Field(alias="schema")
    event_id: EventId
    type: str
    data: BaseModel
    trial_id: Identifier
    site_id: Identifier
    participant_id: ParticipantRef
    occurred_at: AwareDatetime
    reported_at: AwareDatetime | None = None
    source: Source | None = None
    recorded_by: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    @field_validator("occurred_at")
    @classmethod
    def check_not_in_future(cls, value: datetime, info: ValidationInfo) -> datetime:
        context = info.context or {}
        now: datetime | None = context.get("now")
        if now is not None:
            skew: timedelta = context.get("future_skew", DEFAULT_FUTURE_SKEW)
            if value > now + skew:
                raise PydanticCustomError(
                    "future_occurred_at",
                    "occurred_at {value} is in the future "
                    "(receiver clock {now}, allowed skew {skew})",
                    {"value": value.isoformat(), "now": now.isoformat(), "skew": str(skew)},
                )
        return value

    @model_validator(mode="after")
    def check_participant_scope(self) -> _Envelope:
        trial_level = self.type in TRIAL_LEVEL_TYPES
        if trial_level != (self.participant_id == TRIAL_LEVEL_PARTICIPANT):
            raise PydanticCustomError(
                "participant_scope",
                "participant_id must be {expected} for type {type}",
                {
                    "expected": "'-'" if trial_level else "a participant pseudonym",
                    "type": self.type,
                },
            )
        return self

    def to_wire(self) -> dict[str, Any]:
        """The event as the contract's JSON object (field ``schema``, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _event(type_name: str, data_model: type[BaseModel]) -> type[_Envelope]:
    fields: dict[str, Any] = {
        "type": (Literal[type_name], ...),
        "data": (data_model, ...),
    }
    name = "".join(part.title() for part in type_name.replace("_", ".").split(".")) + "Event"
    model: type[_Envelope] = create_model(name, __base__=_Envelope, **fields)
    return model


DATA_MODELS: dict[str, type[_Strict]] = {
    "participant.enrolled": ParticipantEnrolled,
    "eligibility.confirmed": EligibilityConfirmed,
    "lymphodepletion.administered": LymphodepletionAdministered,
    "infusion.administered": InfusionAdministered,
    "vitals.recorded": VitalsRecorded,
    "oxygen.changed": OxygenChanged,
    "vasopressor.changed": VasopressorChanged,
    "fluid.bolus": FluidBolus,
    "medication.administered": MedicationAdministered,
    "neuro.assessed": NeuroAssessed,
    "lab.resulted": LabResulted,
    "adverse_event.reported": AdverseEventReported,
    "encounter.changed": EncounterChanged,
    "pk.resulted": PKResulted,
    "disease.assessed": DiseaseAssessed,
    "adjudication.recorded": AdjudicationRecorded,
    "death.reported": DeathReported,
    "participant.withdrawn": ParticipantWithdrawn,
    "record.corrected": RecordCorrected,
    "record.voided": RecordVoided,
    "committee.decided": CommitteeDecided,
    "clock.ticked": ClockTicked,
}
TRIAL_LEVEL_TYPES = frozenset({"committee.decided", "clock.ticked"})
EVENT_MODELS: dict[str, type[_Envelope]] = {
    name: _event(name, model) for name, model in DATA_MODELS.items()
}
ClinicalEvent: TypeAlias = _Envelope

_CLINICAL_UNION: Any = Annotated[
    Union[tuple(EVENT_MODELS.values())],  # noqa: UP007
    Field(discriminator="type"),
]
CLINICAL_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(_CLINICAL_UNION)


def parse_recorded(wire: dict[str, Any]) -> ClinicalEvent:
    """A stored clinical event (wire form, validated when it arrived) as the model
    again, by the same strict JSON rules (no receiver clock: it is not new)."""
    event: ClinicalEvent = CLINICAL_EVENT_ADAPTER.validate_json(json.dumps(wire))
    return event


def clinical_event_schema() -> dict[str, Any]:
    """JSON Schema of a clinical event (a ``oneOf`` discriminated by ``type``)."""
    return CLINICAL_EVENT_ADAPTER.json_schema(by_alias=True)


# ---------------------------------------------------------------- derived events


class SafetyEvent(_Strict):
    """Envelope of a derived safety event (contract §3)."""

    schema_: Literal["toxwatch.safety.v1"] = Field(default=SAFETY_SCHEMA, alias="schema")
    event_id: str
    type: str
    trial_id: Identifier
    participant_id: ParticipantRef
    dose_level: Identifier | None = None
    effective_at: AwareDatetime
    recorded_at: AwareDatetime
    caused_by: list[str]
    data: dict[str, JsonValue]

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, populate_by_name=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class RejectionError(_Strict):
    """The error attached to a rejected message (contract §4)."""

    code: str
    message: str
    field: str | None = None
