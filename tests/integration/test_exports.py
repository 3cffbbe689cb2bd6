"""Exports (issue 7, item 5): JSONL round-trips; SDTM-shaped CSVs have the documented
columns, ISO 8601 dates and the values the events state (corrections applied, voided
records absent); the FHIR Bundle validates against the official R4 JSON schema."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from services.application import SafetyMonitoring
from services.exports import export_fhir, export_jsonl, export_sdtm, iter_clinical
from services.offline import in_memory_application, process_lines
from services.simulator import CohortSpec, simulate_cohort

TRIAL = "NCT07049081"
NOW = datetime(2026, 9, 1, tzinfo=UTC)
SCHEMA = Path(__file__).parents[2] / "services" / "data" / "fhir" / "fhir.schema.json"
DATASETS = ("ae", "vs", "lb", "ex", "ds")
DATE_COLUMNS = {"AESTDTC", "AEENDTC", "VSDTC", "LBDTC", "EXSTDTC", "DSSTDTC"}


def clinical(
    event_id: str, kind: str, at: str, data: dict[str, Any], pid: str = "G79-001"
) -> bytes:
    return json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": event_id,
            "type": kind,
            "trial_id": TRIAL,
            "site_id": "CN-001",
            "participant_id": pid,
            "occurred_at": at,
            "data": data,
        }
    ).encode()


def sae(event_id: str, at: str, grade: int) -> bytes:
    return clinical(event_id, "adverse_event.reported", at, {
        "ae_id": "AE-7", "term": "Pneumonia", "grading_scale": "CTCAE-5.0", "grade": grade,
        "serious": True, "seriousness": ["hospitalization", "life_threatening"],
        "relatedness": "probable", "relatedness_lymphodepletion": "possible",
        "onset_at": "2026-03-10T09:00:00+08:00",
    })  # fmt: skip


STREAM = [
    clinical("e-enrol", "participant.enrolled", "2026-03-01T08:00:00+08:00",
             {"disease": "SLE", "dose_level": "DL1"}),
    clinical("e-flu", "lymphodepletion.administered", "2026-03-02T08:00:00+08:00",
             {"agent": "fludarabine", "dose_mg_m2": 25}),
    clinical("e-inf", "infusion.administered", "2026-03-05T10:00:00+08:00",
             {"dose_level": "DL1", "cells_per_kg": 1000000, "product_lot": "LOT-1"}),
    clinical("e-vs", "vitals.recorded", "2026-03-06T06:00:00+08:00",
             {"temperature_c": 37.2, "temperature_route": "oral", "heart_rate_bpm": 96}),
    clinical("e-lab", "lab.resulted", "2026-03-06T07:00:00+08:00",
             {"analyte": "crp", "value": 80, "unit": "mg/L", "reference_high": 5}),
    clinical("e-lab2", "lab.resulted", "2026-03-07T07:00:00+08:00",
             {"analyte": "anc", "value": 1.2, "unit": "10*9/L", "reference_low": 1.8,
              "reference_high": 7.5}),
    clinical("e-fix", "record.corrected", "2026-03-06T09:00:00+08:00",
             {"corrects_event_id": "e-vs", "reason": "transcription",
              "data": {"temperature_c": 38.6, "temperature_route": "oral", "heart_rate_bpm": 96}}),
    clinical("e-void", "record.voided", "2026-03-06T09:05:00+08:00",
             {"voids_event_id": "e-lab", "reason": "wrong patient"}),
    sae("e-sae-1", "2026-03-10T12:00:00+08:00", 3),
    sae("e-sae-2", "2026-03-12T12:00:00+08:00", 4),
    clinical("e-ae-rash", "adverse_event.reported", "2026-03-08T12:00:00+08:00",
             {"ae_id": "AE-8", "term": "Rash maculo-papular", "grading_scale": "CTCAE-5.0",
              "grade": 1, "serious": False, "seriousness": [], "relatedness": "not_related",
              "resolved_at": "2026-03-09T12:00:00+08:00"}),
    clinical("e-death", "death.reported", "2026-03-14T03:00:00+08:00",
             {"cause": "Pneumonia", "attributed_to": "infection", "related": "unlikely"}),
    clinical("e2-enrol", "participant.enrolled", "2026-03-02T08:00:00+08:00",
             {"disease": "SSC", "dose_level": "DL1"}, pid="G79-002"),
    clinical("e2-out", "participant.withdrawn", "2026-03-04T08:00:00+08:00",
             {"reason": "consent withdrawn"}, pid="G79-002"),
]  # fmt: skip


def applied(lines: list[bytes]) -> SafetyMonitoring:
    app = in_memory_application()
    process_lines(lines, io.StringIO(), app=app, now=NOW)
    return app


@pytest.fixture(scope="module")
def handcrafted() -> SafetyMonitoring:
    return applied(STREAM)


@pytest.fixture(scope="module")
def cohort() -> SafetyMonitoring:
    spec = CohortSpec(participants=4, follow_up_days=20)
    return applied([m.value for m in simulate_cohort(spec)])


@cache
def fhir_validator() -> Any:
    return jsonschema_rs.Draft6Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def sdtm(app: SafetyMonitoring, out: Path) -> dict[str, list[dict[str, str]]]:
    export_sdtm(app, out)
    _, define = read_csv(out / "define.csv")
    tables = {}
    for name in DATASETS:
        header, rows = read_csv(out / f"{name}.csv")
        documented = [d["variable"] for d in define if d["dataset"] == name.upper()]
        assert header == documented, name
        for row in rows:
            assert row["DOMAIN"] == name.upper()
            assert row["USUBJID"] == f"{row['STUDYID']}-{row['USUBJID'].split('-', 1)[1]}"
            for column in DATE_COLUMNS & row.keys():
                if row[column]:
                    assert datetime.fromisoformat(row[column]).utcoffset() is not None
        tables[name] = rows
    return tables


# ---------------------------------------------------------------- JSONL


def test_jsonl_holds_every_clinical_and_derived_event_in_log_order(
    handcrafted: SafetyMonitoring, tmp_path: Path
) -> None:
    counts = export_jsonl(handcrafted, tmp_path)
    clinical_lines = (tmp_path / "clinical.jsonl").read_text().splitlines()
    derived_lines = (tmp_path / "derived.jsonl").read_text().splitlines()
    wires = [json.loads(line) for line in clinical_lines]
    assert [w["event_id"] for w in wires] == [json.loads(x)["event_id"] for x in STREAM]
    assert len(wires) == counts["clinical.jsonl"] == len(list(iter_clinical(handcrafted)))
    derived = [json.loads(line) for line in derived_lines]
    assert len(derived) == counts["derived.jsonl"] == len(list(handcrafted.iter_safety_events()))
    assert derived and all(d["schema"] == "toxwatch.safety.v1" for d in derived)
    assert {"sae.clock_started"} <= {d["type"] for d in derived}


# ---------------------------------------------------------------- SDTM


def test_sae_reported_twice_is_one_ae_row_at_its_worst_grade(
    handcrafted: SafetyMonitoring, tmp_path: Path
) -> None:
    ae = {row["AESPID"]: row for row in sdtm(handcrafted, tmp_path)["ae"]}
    assert set(ae) == {"AE-7", "AE-8"}
    pneumonia = ae["AE-7"]
    assert pneumonia["AETOXGR"] == "4"
    assert pneumonia["AESER"] == "Y"
    assert (pneumonia["AESHOSP"], pneumonia["AESLIFE"], pneumonia["AESDTH"]) == ("Y", "Y", "N")
    assert pneumonia["AEREL"] == "PROBABLY RELATED"
    assert pneumonia["AESTDTC"] == "2026-03-10T09:00:00+08:00"
    assert pneumonia["USUBJID"] == f"{TRIAL}-G79-001"
    rash = ae["AE-8"]
    assert (rash["AETOXGR"], rash["AESER"], rash["AEREL"]) == ("1", "N", "NOT RELATED")
    assert rash["AEENDTC"] == "2026-03-09T12:00:00+08:00"
    assert [ae["AE-8"]["AESEQ"], ae["AE-7"]["AESEQ"]] == ["1", "2"]  # by onset


def test_corrected_vital_is_exported_as_corrected_and_voided_lab_is_absent(
    handcrafted: SafetyMonitoring, tmp_path: Path
) -> None:
    tables = sdtm(handcrafted, tmp_path)
    temp = [r for r in tables["vs"] if r["VSTESTCD"] == "TEMP"]
    assert [(r["VSORRES"], r["VSORRESU"], r["VSLOC"]) for r in temp] == [
        ("38.6", "C", "ORAL CAVITY")
    ]
    assert temp[0]["VSDTC"] == "2026-03-06T06:00:00+08:00"
    assert [r["LBSPID"] for r in tables["lb"]] == ["e-lab2"]
    anc = tables["lb"][0]
    assert (anc["LBTESTCD"], anc["LBORRES"], anc["LBORRESU"]) == ("NEUT", "1.2", "10*9/L")
    assert (anc["LBORNRLO"], anc["LBORNRHI"]) == ("1.8", "7.5")


def test_exposure_and_disposition(handcrafted: SafetyMonitoring, tmp_path: Path) -> None:
    tables = sdtm(handcrafted, tmp_path)
    ex = [(r["EXTRT"], r["EXDOSE"], r["EXDOSU"], r["EXLOT"]) for r in tables["ex"]]
    assert ex == [("FLUDARABINE", "25", "mg/m2", ""), ("CAR-T", "1000000", "cells/kg", "LOT-1")]
    ds = [(r["USUBJID"].rsplit("-", 2)[-2:], r["DSDECOD"]) for r in tables["ds"]]
    assert ds == [
        (["G79", "001"], "ENROLLED"),
        (["G79", "001"], "DEATH"),
        (["G79", "002"], "ENROLLED"),
        (["G79", "002"], "WITHDRAWAL BY SUBJECT"),
    ]


# ---------------------------------------------------------------- FHIR


def test_fhir_bundle_validates_with_seriousness_and_causality(
    handcrafted: SafetyMonitoring, tmp_path: Path
) -> None:
    counts = export_fhir(handcrafted, tmp_path)
    bundle = json.loads((tmp_path / "bundle.json").read_text())
    errors = [e.message for e in fhir_validator().iter_errors(bundle)]
    assert errors == []
    assert counts == {
        "ResearchStudy": 1,
        "Medication": 2,
        "Patient": 2,
        "ResearchSubject": 2,
        "AdverseEvent": 2,
    }
    resources = [e["resource"] for e in bundle["entry"]]
    status = {
        r["identifier"][0]["value"]: r["status"]
        for r in resources
        if r["resourceType"] == "ResearchSubject"
    }
    assert status == {"G79-001": "off-study", "G79-002": "withdrawn"}
    (serious,) = [
        r
        for r in resources
        if r["resourceType"] == "AdverseEvent" and r["event"]["text"] == "Pneumonia"
    ]
    assert serious["seriousness"]["coding"][0]["code"] == "serious"
    assert serious["severity"]["coding"][0]["code"] == "severe"
    assert serious["extension"][0]["valueInteger"] == 4
    product, regimen = serious["suspectEntity"]
    assert product["causality"][0]["assessment"]["coding"][0]["code"] == "Probably-Likely"
    assert regimen["causality"][0]["assessment"]["coding"][0]["code"] == "Possible"
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    assert product["instance"]["reference"] in full_urls
    assert serious["subject"]["reference"] in full_urls


def test_a_resource_breaking_the_schema_is_caught() -> None:
    resource = {"resourceType": "AdverseEvent", "actuality": "maybe"}
    bad = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": resource}]}
    assert not fhir_validator().is_valid(bad)


# ---------------------------------------------------------------- simulated cohort


def test_simulated_cohort_exports_are_consistent_and_valid(
    cohort: SafetyMonitoring, tmp_path: Path
) -> None:
    jsonl = export_jsonl(cohort, tmp_path / "jsonl")
    assert jsonl["clinical.jsonl"] == len(list(iter_clinical(cohort)))
    for line in (tmp_path / "jsonl" / "clinical.jsonl").read_text().splitlines():
        assert json.loads(line)["schema"] == "toxwatch.clinical.v1"
    tables = sdtm(cohort, tmp_path / "sdtm")
    assert len({r["USUBJID"] for r in tables["ds"]}) == 4
    assert len([r for r in tables["ex"] if r["EXTRT"] == "CAR-T"]) == 4
    assert tables["vs"] and tables["lb"]
    for row in tables["ae"]:
        assert row["AESER"] in {"Y", "N"} and 1 <= int(row["AETOXGR"]) <= 5
    counts = export_fhir(cohort, tmp_path / "fhir")
    bundle = json.loads((tmp_path / "fhir" / "bundle.json").read_text())
    assert [e.message for e in fhir_validator().iter_errors(bundle)] == []
    assert counts["Patient"] == counts["ResearchSubject"] == 4
    assert counts.get("AdverseEvent", 0) == len(tables["ae"])
