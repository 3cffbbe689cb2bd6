"""Exports of the clinical record (issue 7, item 5): CDISC SDTM-shaped rows and an HL7
FHIR R4 Bundle, as pure functions over the clinical events' wire JSON in log order.

Conventions:

- **Effective records**: ``record.corrected`` (the latest correction's ``data``
  replaces the target's, validated by the type's contract model) and ``record.voided``
  (the target is not exported) are applied whatever order they arrived in, as in the
  DSMB report. A repeated ``event_id`` keeps the first.
- **Dates** are ISO 8601 with the UTC offset as recorded (``occurred_at`` verbatim;
  ``onset_at``/``resolved_at`` of an AE as the report gave them).
- **AE** rows are the investigator's ``adverse_event.reported`` AEs only, one per
  ``ae_id`` (domain rules of :mod:`domain.adverse_events`): the latest version states
  term, seriousness, relatedness, onset, resolution and outcome; ``AETOXGR`` is the
  worst grade over the AE's grade course. Grades the engine derives (CRS, ICANS,
  CTCAE lab terms) are in ``derived.jsonl``, not in AE.
- ``USUBJID`` is ``STUDYID-participant_id``; ``--SPID`` is the source's ``event_id``
  (for AE: the ``ae_id``); ``--SEQ`` numbers a subject's rows in the dataset's order
  (subject, then time, then log position).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from uuid import NAMESPACE_URL, uuid5

from pydantic import ValidationError

from domain.adverse_events import ReportedAE, reported_aes
from domain.contract import DATA_MODELS
from domain.timeline import TimelineEntry

TRIAL_LEVEL: Final = "-"

# ================================================================ effective records


@dataclass(frozen=True)
class Record:
    """One effective clinical record of a participant."""

    event_id: str
    kind: str
    occurred_at: str
    data: dict[str, Any]
    position: int

    @property
    def at(self) -> datetime:
        return datetime.fromisoformat(self.occurred_at)


@dataclass
class Subject:
    """The effective clinical record of one participant."""

    trial_id: str
    participant_id: str
    records: dict[str, Record] = field(default_factory=dict)
    corrections: dict[str, dict[str, Any]] = field(default_factory=dict)
    voided: set[str] = field(default_factory=set)

    @property
    def usubjid(self) -> str:
        return f"{self.trial_id}-{self.participant_id}"

    def effective(self, *kinds: str) -> list[Record]:
        """Records of these types with corrections and voids applied, in clinical order
        (ties by log position)."""
        out = [
            _corrected(record, self.corrections.get(event_id))
            for event_id, record in self.records.items()
            if event_id not in self.voided and (not kinds or record.kind in kinds)
        ]
        return sorted(out, key=lambda r: (r.at, r.position))

    def reported_aes(self) -> list[ReportedAE]:
        """Investigator AEs by ``ae_id``, versions in arrival (log) order."""
        records = sorted(self.effective("adverse_event.reported"), key=lambda r: r.position)
        entries = [
            TimelineEntry(
                r.event_id,
                r.kind,
                r.at,
                DATA_MODELS[r.kind].model_validate(r.data, strict=False),
                r.position,
            )
            for r in records
        ]
        return reported_aes(entries)


def _corrected(record: Record, replacement: dict[str, Any] | None) -> Record:
    if replacement is None:
        return record
    try:
        model = DATA_MODELS[record.kind].model_validate(replacement, strict=False)
    except ValidationError:
        return record  # inapplicable: the aggregate raised a question instead
    data = model.model_dump(mode="json", exclude_none=True)
    return Record(record.event_id, record.kind, record.occurred_at, data, record.position)


def fold_subjects(clinical: Iterable[Mapping[str, Any]]) -> list[Subject]:
    """The participants' effective records from clinical wire events in log order,
    ordered by trial then participant id."""
    subjects: dict[tuple[str, str], Subject] = {}
    for position, wire in enumerate(clinical):
        if wire["participant_id"] == TRIAL_LEVEL:
            continue
        key = (wire["trial_id"], wire["participant_id"])
        subject = subjects.setdefault(key, Subject(*key))
        kind, data = wire["type"], wire["data"]
        if kind == "record.corrected":
            subject.corrections[data["corrects_event_id"]] = dict(data["data"])
        elif kind == "record.voided":
            subject.voided.add(data["voids_event_id"])
        elif wire["event_id"] not in subject.records:
            subject.records[wire["event_id"]] = Record(
                wire["event_id"], kind, wire["occurred_at"], dict(data), position
            )
    return [subjects[key] for key in sorted(subjects)]


# ================================================================ SDTM

Row = dict[str, Any]


@dataclass(frozen=True)
class Variable:
    """A define-like variable: name, label, SAS type (``Char``/``Num``), format or
    codelist."""

    name: str
    label: str
    type: str = "Char"
    codelist: str = ""


_ISO: Final = "ISO 8601 datetime with UTC offset"
_YN: Final = "NY (Y, N)"
_COMMON: Final = (
    Variable("STUDYID", "Study Identifier"),
    Variable("DOMAIN", "Domain Abbreviation"),
    Variable("USUBJID", "Unique Subject Identifier", codelist="STUDYID-participant_id"),
)


def _seq(domain: str, label: str) -> tuple[Variable, Variable]:
    return (
        Variable(f"{domain}SEQ", "Sequence Number", "Num"),
        Variable(f"{domain}SPID", label),
    )


AEREL_TERMS: Final = {
    "not_related": "NOT RELATED",
    "unlikely": "UNLIKELY RELATED",
    "possible": "POSSIBLY RELATED",
    "probable": "PROBABLY RELATED",
    "definite": "RELATED",
}
#: Seriousness criterion of the contract -> SDTM flag variable.
SERIOUSNESS_FLAGS: Final = {
    "AESDTH": ("death", "Results in Death"),
    "AESLIFE": ("life_threatening", "Is Life Threatening"),
    "AESHOSP": ("hospitalization", "Requires or Prolongs Hospitalization"),
    "AESDISAB": ("disability", "Persist or Signif Disability/Incapacity"),
    "AESCONG": ("congenital_anomaly", "Congenital Anomaly or Birth Defect"),
    "AESMIE": ("important_medical_event", "Other Medically Important Serious Event"),
}

DATASETS: Final[dict[str, tuple[Variable, ...]]] = {
    "AE": (
        *_COMMON,
        *_seq("AE", "Sponsor-Defined Identifier (ae_id)"),
        Variable("AETERM", "Reported Term for the Adverse Event"),
        Variable("AEDECOD", "Dictionary-Derived Term", codelist="reported term (not coded)"),
        Variable("AEPTCD", "Preferred Term Code", "Num", "MedDRA PT code, when reported"),
        Variable("AETOXGR", "Standard Toxicity Grade", codelist="1-5, worst over the course"),
        Variable("AETOXGRV", "Toxicity Grade Version", codelist="grading_scale as reported"),
        Variable("AESER", "Serious Event", codelist=_YN),
        *(Variable(name, label, codelist=_YN) for name, (_, label) in SERIOUSNESS_FLAGS.items()),
        Variable("AEREL", "Causality", codelist="REL: " + ", ".join(AEREL_TERMS.values())),
        Variable("AESTDTC", "Start Date/Time of Adverse Event", codelist=_ISO),
        Variable("AEENDTC", "End Date/Time of Adverse Event", codelist=_ISO),
        Variable("AEOUT", "Outcome of Adverse Event", codelist="OUT (as reported, upper case)"),
    ),
    "VS": (
        *_COMMON,
        *_seq("VS", "Sponsor-Defined Identifier (event_id)"),
        Variable("VSTESTCD", "Vital Signs Test Short Name", codelist="VSTESTCD"),
        Variable("VSTEST", "Vital Signs Test Name", codelist="VSTEST"),
        Variable("VSORRES", "Result or Finding in Original Units"),
        Variable("VSORRESU", "Original Units", codelist="VSRESU"),
        Variable("VSLOC", "Location of Vital Signs Measurement", codelist="LOC (TEMP only)"),
        Variable("VSDTC", "Date/Time of Measurements", codelist=_ISO),
    ),
    "LB": (
        *_COMMON,
        *_seq("LB", "Sponsor-Defined Identifier (event_id)"),
        Variable("LBTESTCD", "Lab Test or Examination Short Name", codelist="LBTESTCD"),
        Variable("LBTEST", "Lab Test or Examination Name", codelist="LBTEST"),
        Variable("LBLOINC", "LOINC Code", codelist="LOINC, when reported"),
        Variable("LBORRES", "Result or Finding in Original Units"),
        Variable("LBORRESU", "Original Units", codelist="UCUM"),
        Variable("LBORNRLO", "Reference Range Lower Limit in Orig Unit"),
        Variable("LBORNRHI", "Reference Range Upper Limit in Orig Unit"),
        Variable("LBDTC", "Date/Time of Specimen Collection", codelist=_ISO),
    ),
    "EX": (
        *_COMMON,
        *_seq("EX", "Sponsor-Defined Identifier (event_id)"),
        Variable("EXTRT", "Name of Treatment"),
        Variable("EXCAT", "Category of Treatment", codelist="CAR-T INFUSION, LYMPHODEPLETION"),
        Variable("EXDOSE", "Dose", "Num"),
        Variable("EXDOSU", "Dose Units", codelist="cells/kg, mg/m2"),
        Variable("EXLOT", "Lot Number"),
        Variable("EXGRPID", "Group ID (dose level)"),
        Variable("EXSTDTC", "Start Date/Time of Treatment", codelist=_ISO),
    ),
    "DS": (
        *_COMMON,
        *_seq("DS", "Sponsor-Defined Identifier (event_id)"),
        Variable("DSTERM", "Reported Term for the Disposition Event"),
        Variable(
            "DSDECOD",
            "Standardized Disposition Term",
            codelist="ENROLLED, DEATH, WITHDRAWAL BY SUBJECT",
        ),
        Variable(
            "DSCAT",
            "Category for Disposition Event",
            codelist="PROTOCOL MILESTONE, DISPOSITION EVENT",
        ),
        Variable("DSSTDTC", "Start Date/Time of Disposition Event", codelist=_ISO),
    ),
}


def columns(dataset: str) -> list[str]:
    return [v.name for v in DATASETS[dataset]]


def define_rows() -> list[Row]:
    """The define-like variable list: every column of every dataset emitted."""
    return [
        {
            "dataset": dataset,
            "variable": v.name,
            "label": v.label,
            "type": v.type,
            "codelist_or_format": v.codelist,
        }
        for dataset, variables in DATASETS.items()
        for v in variables
    ]


def _yn(flag: bool) -> str:
    return "Y" if flag else "N"


def _number(value: float | int) -> str:
    """A number as written in the source: no exponent, no trailing ``.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _rows(dataset: str, subjects: Iterable[Subject], build: Any) -> list[Row]:
    """Rows of ``dataset``: ``build(subject)`` yields each subject's rows without the
    common and sequence variables, which are filled in here."""
    out = []
    for subject in subjects:
        for seq, row in enumerate(build(subject), start=1):
            full = {
                "STUDYID": subject.trial_id,
                "DOMAIN": dataset,
                "USUBJID": subject.usubjid,
                f"{dataset}SEQ": seq,
                **row,
            }
            out.append({name: full.get(name, "") for name in columns(dataset)})
    return out


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def ae_rows(subjects: Iterable[Subject]) -> list[Row]:
    def build(subject: Subject) -> Iterable[Row]:
        aes = sorted(subject.reported_aes(), key=lambda ae: (ae.onset_at, ae.versions[0].order))
        for ae in aes:
            latest = ae.latest
            row = {
                "AESPID": ae.ae_id,
                "AETERM": latest.term,
                "AEDECOD": latest.term,
                "AEPTCD": latest.meddra_pt_code or "",
                "AETOXGR": ae.worst_grade,
                "AETOXGRV": latest.grading_scale,
                "AESER": _yn(latest.serious),
                "AEREL": AEREL_TERMS[latest.relatedness],
                "AESTDTC": _iso(ae.onset_at),
                "AEENDTC": _iso(latest.resolved_at),
                "AEOUT": (latest.outcome or "").upper(),
            }
            for name, (criterion, _) in SERIOUSNESS_FLAGS.items():
                row[name] = _yn(criterion in latest.seriousness)
            yield row

    return _rows("AE", subjects, build)


#: Vital-sign field -> (VSTESTCD, VSTEST, VSORRESU).
VITALS: Final = {
    "temperature_c": ("TEMP", "Temperature", "C"),
    "systolic_bp_mmhg": ("SYSBP", "Systolic Blood Pressure", "mmHg"),
    "diastolic_bp_mmhg": ("DIABP", "Diastolic Blood Pressure", "mmHg"),
    "mean_arterial_pressure_mmhg": ("MAP", "Mean Arterial Pressure", "mmHg"),
    "heart_rate_bpm": ("HR", "Heart Rate", "beats/min"),
    "respiratory_rate_per_min": ("RESP", "Respiratory Rate", "breaths/min"),
    "spo2_pct": ("OXYSAT", "Oxygen Saturation", "%"),
}
_TEMPERATURE_LOC: Final = {
    "oral": "ORAL CAVITY",
    "tympanic": "TYMPANIC MEMBRANE",
    "axillary": "AXILLA",
    "core": "CORE",
}


def vs_rows(subjects: Iterable[Subject]) -> list[Row]:
    def build(subject: Subject) -> Iterable[Row]:
        for record in subject.effective("vitals.recorded"):
            for name, (testcd, test, unit) in VITALS.items():
                if record.data.get(name) is None:
                    continue
                route = record.data.get("temperature_route") if testcd == "TEMP" else None
                yield {
                    "VSSPID": record.event_id,
                    "VSTESTCD": testcd,
                    "VSTEST": test,
                    "VSORRES": _number(record.data[name]),
                    "VSORRESU": unit,
                    "VSLOC": _TEMPERATURE_LOC.get(route or "", ""),
                    "VSDTC": record.occurred_at,
                }

    return _rows("VS", subjects, build)


#: Analyte of the contract -> (LBTESTCD, LBTEST).
ANALYTES: Final = {
    "anc": ("NEUT", "Neutrophils"),
    "alc": ("LYM", "Lymphocytes"),
    "wbc": ("WBC", "Leukocytes"),
    "platelets": ("PLAT", "Platelets"),
    "hemoglobin": ("HGB", "Hemoglobin"),
    "crp": ("CRP", "C Reactive Protein"),
    "ferritin": ("FERRITIN", "Ferritin"),
    "il6": ("IL6", "Interleukin 6"),
    "fibrinogen": ("FIBRINO", "Fibrinogen"),
    "ldh": ("LDH", "Lactate Dehydrogenase"),
    "alt": ("ALT", "Alanine Aminotransferase"),
    "ast": ("AST", "Aspartate Aminotransferase"),
    "bilirubin_total": ("BILI", "Bilirubin"),
    "creatinine": ("CREAT", "Creatinine"),
    "triglycerides": ("TRIG", "Triglycerides"),
    "igg": ("IGG", "Immunoglobulin G"),
    "ck": ("CK", "Creatine Kinase"),
    "troponin": ("TROPONIN", "Troponin"),
    "cd19_b_cells": ("CD19", "CD19 B Cells"),
}


def lb_rows(subjects: Iterable[Subject]) -> list[Row]:
    def build(subject: Subject) -> Iterable[Row]:
        for record in subject.effective("lab.resulted"):
            data = record.data
            testcd, test = ANALYTES.get(data["analyte"], (data["analyte"].upper()[:8], ""))
            yield {
                "LBSPID": record.event_id,
                "LBTESTCD": testcd,
                "LBTEST": test,
                "LBLOINC": data.get("loinc", ""),
                "LBORRES": _number(data["value"]),
                "LBORRESU": data["unit"],
                "LBORNRLO": _optional_number(data.get("reference_low")),
                "LBORNRHI": _optional_number(data.get("reference_high")),
                "LBDTC": record.occurred_at,
            }

    return _rows("LB", subjects, build)


def _optional_number(value: float | int | None) -> str:
    return "" if value is None else _number(value)


CAR_T_TREATMENT: Final = "CAR-T"


def ex_rows(subjects: Iterable[Subject]) -> list[Row]:
    def build(subject: Subject) -> Iterable[Row]:
        kinds = ("infusion.administered", "lymphodepletion.administered")
        for record in subject.effective(*kinds):
            data = record.data
            if record.kind == "infusion.administered":
                row = {
                    "EXTRT": CAR_T_TREATMENT,
                    "EXCAT": "CAR-T INFUSION",
                    "EXDOSE": _number(data["cells_per_kg"]),
                    "EXDOSU": "cells/kg",
                    "EXLOT": data.get("product_lot", ""),
                    "EXGRPID": data["dose_level"],
                }
            else:
                row = {
                    "EXTRT": data["agent"].upper(),
                    "EXCAT": "LYMPHODEPLETION",
                    "EXDOSE": _number(data["dose_mg_m2"]),
                    "EXDOSU": "mg/m2",
                }
            yield {"EXSPID": record.event_id, **row, "EXSTDTC": record.occurred_at}

    return _rows("EX", subjects, build)


def ds_rows(subjects: Iterable[Subject]) -> list[Row]:
    """Enrolment (a protocol milestone), death and withdrawal (disposition events).
    ``participant.withdrawn`` does not say who withdrew: it maps to WITHDRAWAL BY
    SUBJECT, its reason in DSTERM."""

    def build(subject: Subject) -> Iterable[Row]:
        kinds = ("participant.enrolled", "death.reported", "participant.withdrawn")
        for record in subject.effective(*kinds):
            data = record.data
            if record.kind == "participant.enrolled":
                term, decod, cat = "ENROLLED", "ENROLLED", "PROTOCOL MILESTONE"
            elif record.kind == "death.reported":
                term, decod, cat = data["cause"], "DEATH", "DISPOSITION EVENT"
            else:
                term, decod, cat = data["reason"], "WITHDRAWAL BY SUBJECT", "DISPOSITION EVENT"
            yield {
                "DSSPID": record.event_id,
                "DSTERM": term,
                "DSDECOD": decod,
                "DSCAT": cat,
                "DSSTDTC": record.occurred_at,
            }

    return _rows("DS", subjects, build)


def sdtm_datasets(subjects: list[Subject]) -> dict[str, list[Row]]:
    """Every SDTM dataset's rows, by domain."""
    return {
        "AE": ae_rows(subjects),
        "VS": vs_rows(subjects),
        "LB": lb_rows(subjects),
        "EX": ex_rows(subjects),
        "DS": ds_rows(subjects),
    }


# ================================================================ FHIR R4

FHIR_SERIOUSNESS: Final = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
FHIR_SEVERITY: Final = "http://terminology.hl7.org/CodeSystem/adverse-event-severity"
FHIR_OUTCOME: Final = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
FHIR_CAUSALITY: Final = "http://terminology.hl7.org/CodeSystem/adverse-event-causality-assess"
MEDDRA: Final = "http://terminology.hl7.org/CodeSystem/mdr"
NCT_SYSTEM: Final = "https://clinicaltrials.gov"
PARTICIPANT_SYSTEM: Final = "urn:toxwatch:participant"
#: Extensions carrying the toxicity grade and its scale (R4 severity has 3 levels only).
GRADE_EXTENSION: Final = "urn:toxwatch:fhir:extension:toxicity-grade"
SCALE_EXTENSION: Final = "urn:toxwatch:fhir:extension:grading-scale"
#: Relatedness -> WHO-UMC causality term (R4 adverse-event-causality-assess); "not
#: related" has no WHO-UMC term and is given as text only.
CAUSALITY: Final = {
    "definite": ("Certain", "Certain"),
    "probable": ("Probably-Likely", "Probably/Likely"),
    "possible": ("Possible", "Possible"),
    "unlikely": ("Unlikely", "Unlikely"),
}
_OUTCOMES: Final = {
    "resolved": "resolved",
    "recovered": "resolved",
    "recovering": "recovering",
    "resolving": "recovering",
    "ongoing": "ongoing",
    "not_recovered": "ongoing",
    "resolved_with_sequelae": "resolvedWithSequelae",
    "fatal": "fatal",
    "unknown": "unknown",
}


def _uuid(*parts: str) -> str:
    return str(uuid5(NAMESPACE_URL, "toxwatch:fhir:" + "/".join(parts)))


def _ref(resource_id: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{resource_id}"}


def severity(grade: int) -> str:
    """R4 severity from a toxicity grade: 1 mild, 2 moderate, 3 or more severe."""
    return "mild" if grade <= 1 else "moderate" if grade == 2 else "severe"


def _outcome(ae: ReportedAE) -> str:
    latest = ae.latest
    stated = re.sub(r"[^a-z]+", "_", (latest.outcome or "").lower()).strip("_")
    if stated in _OUTCOMES:
        return _OUTCOMES[stated]
    if ae.worst_grade == 5 or "death" in latest.seriousness:
        return "fatal"
    return "resolved" if latest.resolved_at is not None else "ongoing"


def _causality(relatedness: str) -> dict[str, Any]:
    assessment: dict[str, Any] = {"text": relatedness.replace("_", " ")}
    if relatedness in CAUSALITY:
        code, display = CAUSALITY[relatedness]
        assessment["coding"] = [{"system": FHIR_CAUSALITY, "code": code, "display": display}]
    return {"assessment": assessment, "productRelatedness": relatedness}


def _research_status(subject: Subject) -> str:
    kinds = {r.kind for r in subject.effective()}
    if "participant.withdrawn" in kinds:
        return "withdrawn"
    if "death.reported" in kinds:
        return "off-study"
    if "infusion.administered" in kinds:
        return "follow-up"
    return "on-study"


def fhir_bundle(subjects: list[Subject]) -> dict[str, Any]:
    """A ``collection`` Bundle: per trial a ResearchStudy and the CAR-T product (a
    Medication) and, when given, the lymphodepletion regimen; per participant a
    Patient (pseudonymous identifier only) and a ResearchSubject; per investigator AE
    an AdverseEvent. References are the entries' ``urn:uuid`` full URLs (ids are
    deterministic: uuid5 of the trial, participant and ae_id)."""
    resources: list[dict[str, Any]] = []
    studies: dict[str, tuple[str, str, str]] = {}
    for subject in subjects:
        trial = subject.trial_id
        if trial not in studies:
            studies[trial] = (_uuid(trial), _uuid(trial, "car-t"), _uuid(trial, "ld"))
            resources.extend(_trial_resources(trial, *studies[trial]))
        study_id, product_id, ld_id = studies[trial]
        patient_id = _uuid(trial, subject.participant_id)
        resources.append(_patient(subject, patient_id))
        resources.append(_research_subject(subject, study_id, patient_id))
        for ae in subject.reported_aes():
            resources.append(_adverse_event(subject, ae, patient_id, study_id, product_id, ld_id))
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }


def _trial_resources(trial: str, study_id: str, product_id: str, ld_id: str) -> list[Any]:
    study = {
        "resourceType": "ResearchStudy",
        "id": study_id,
        "identifier": [{"system": NCT_SYSTEM, "value": trial}],
        "status": "active",
    }
    product = {
        "resourceType": "Medication",
        "id": product_id,
        "code": {"text": f"{CAR_T_TREATMENT} investigational product ({trial})"},
    }
    regimen = {
        "resourceType": "Medication",
        "id": ld_id,
        "code": {"text": f"Lymphodepletion regimen ({trial})"},
    }
    return [study, product, regimen]


def _patient(subject: Subject, patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "identifier": [
            {"system": f"{PARTICIPANT_SYSTEM}:{subject.trial_id}", "value": subject.participant_id}
        ],
    }


def _research_subject(subject: Subject, study_id: str, patient_id: str) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ResearchSubject",
        "id": _uuid(subject.trial_id, subject.participant_id, "research-subject"),
        "identifier": [
            {"system": f"{PARTICIPANT_SYSTEM}:{subject.trial_id}", "value": subject.participant_id}
        ],
        "status": _research_status(subject),
        "study": _ref(study_id),
        "individual": _ref(patient_id),
    }
    enrolled = subject.effective("participant.enrolled")
    infused = subject.effective("infusion.administered")
    if enrolled:
        resource["period"] = {"start": enrolled[0].occurred_at}
    arm = (
        infused[0].data["dose_level"]
        if infused
        else (enrolled[0].data["dose_level"] if enrolled else None)
    )
    if arm is not None:
        resource["assignedArm"] = arm
    return resource


def _adverse_event(
    subject: Subject, ae: ReportedAE, patient_id: str, study_id: str, product_id: str, ld_id: str
) -> dict[str, Any]:
    latest = ae.latest
    grade = ae.worst_grade
    event: dict[str, Any] = {"text": latest.term}
    if latest.meddra_pt_code:
        event["coding"] = [{"system": MEDDRA, "code": latest.meddra_pt_code}]
    serious = "serious" if latest.serious else "non-serious"
    suspects = [{"instance": _ref(product_id), "causality": [_causality(latest.relatedness)]}]
    if latest.relatedness_lymphodepletion is not None:
        suspects.append(
            {
                "instance": _ref(ld_id),
                "causality": [_causality(latest.relatedness_lymphodepletion)],
            }
        )
    return {
        "resourceType": "AdverseEvent",
        "id": _uuid(subject.trial_id, subject.participant_id, "ae", ae.ae_id),
        "extension": [
            {"url": GRADE_EXTENSION, "valueInteger": grade},
            {"url": SCALE_EXTENSION, "valueString": latest.grading_scale},
        ],
        "identifier": {"system": f"urn:toxwatch:ae:{subject.trial_id}", "value": ae.ae_id},
        "actuality": "actual",
        "event": event,
        "subject": _ref(patient_id),
        "date": ae.onset_at.isoformat(),
        "recordedDate": ae.versions[0].at.isoformat(),
        "seriousness": {
            "coding": [
                {
                    "system": FHIR_SERIOUSNESS,
                    "code": serious,
                    "display": "Serious" if latest.serious else "Non-serious",
                }
            ],
            "text": ", ".join(latest.seriousness) or serious,
        },
        "severity": {"coding": [{"system": FHIR_SEVERITY, "code": severity(grade)}]},
        "outcome": {"coding": [{"system": FHIR_OUTCOME, "code": _outcome(ae)}]},
        "suspectEntity": suspects,
        "study": [_ref(study_id)],
    }
