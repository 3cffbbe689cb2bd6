"""``toxwatch export jsonl|sdtm|fhir --out DIR``: the record, for others (issue 7, item 5).

- :func:`export_jsonl`: ``clinical.jsonl`` (every recorded clinical event's wire JSON,
  participant- and trial-level, in log order, corrections and voids included as sent;
  clock ticks are not clinical records) and ``derived.jsonl`` (every derived safety
  event's contract wire JSON, in log order).
- :func:`export_sdtm`: CDISC SDTM-shaped ``ae.csv``, ``vs.csv``, ``lb.csv``,
  ``ex.csv``, ``ds.csv`` and the define-like variable list ``define.csv``
  (conventions: :mod:`projections.exports`).
- :func:`export_fhir`: an HL7 FHIR R4 ``bundle.json`` (``collection``) of
  ResearchStudy, Medication, Patient, ResearchSubject and AdverseEvent resources.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eventsourcing.utils import get_topic

from domain.participant import Participant
from domain.records import TrialLog
from projections.exports import (
    columns,
    define_rows,
    fhir_bundle,
    fold_subjects,
    sdtm_datasets,
)
from services.application import SafetyMonitoring

CLINICAL_TOPICS = (
    get_topic(Participant.ClinicalEventRecorded),
    get_topic(TrialLog.TrialEventRecorded),  # type: ignore[attr-defined]
)
DEFINE_COLUMNS = ("dataset", "variable", "label", "type", "codelist_or_format")


def iter_clinical(app: SafetyMonitoring, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every recorded clinical event's wire JSON, in log order."""
    after = 0
    while True:
        notifications = app.recorder.select_notifications(
            start=after, limit=batch, topics=CLINICAL_TOPICS, inclusive_of_start=False
        )
        if not notifications:
            return
        for notification in notifications:
            yield dict(app.mapper.to_domain_event(notification).event)  # type: ignore[attr-defined]
        after = notifications[-1].id


def export_jsonl(app: SafetyMonitoring, out_dir: Path) -> dict[str, int]:
    """Write ``clinical.jsonl`` and ``derived.jsonl``; the lines written per file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"clinical.jsonl": 0, "derived.jsonl": 0}
    with (out_dir / "clinical.jsonl").open("w", encoding="utf-8") as out:
        for wire in iter_clinical(app):
            out.write(_line(wire))
            counts["clinical.jsonl"] += 1
    with (out_dir / "derived.jsonl").open("w", encoding="utf-8") as out:
        for event in app.iter_safety_events():
            out.write(_line(event.to_wire()))
            counts["derived.jsonl"] += 1
    return counts


def _line(wire: dict[str, Any]) -> str:
    return json.dumps(wire, ensure_ascii=False, separators=(",", ":")) + "\n"


def export_sdtm(app: SafetyMonitoring, out_dir: Path) -> dict[str, int]:
    """Write the SDTM-shaped datasets and ``define.csv``; the rows written per file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    subjects = fold_subjects(iter_clinical(app))
    counts = {}
    for dataset, rows in sdtm_datasets(subjects).items():
        name = f"{dataset.lower()}.csv"
        _write_csv(out_dir / name, columns(dataset), rows)
        counts[name] = len(rows)
    define = define_rows()
    _write_csv(out_dir / "define.csv", DEFINE_COLUMNS, define)
    counts["define.csv"] = len(define)
    return counts


def _write_csv(path: Path, header: Any, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(header))
        writer.writeheader()
        writer.writerows(rows)


def export_fhir(app: SafetyMonitoring, out_dir: Path) -> dict[str, int]:
    """Write ``bundle.json``; the entries written, by resource type."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = fhir_bundle(fold_subjects(iter_clinical(app)))
    (out_dir / "bundle.json").write_text(
        json.dumps(bundle, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    counts: dict[str, int] = {}
    for entry in bundle["entry"]:
        kind = entry["resource"]["resourceType"]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


EXPORTS = {"jsonl": export_jsonl, "sdtm": export_sdtm, "fhir": export_fhir}
