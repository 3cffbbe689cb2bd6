"""Cellular kinetics and disease activity per participant and dose level (issue 6,
item 5; reference §11 and §12).

:class:`KineticsView` folds the clinical records (infusion, ``pk.resulted``,
``disease.assessed``, ``lab.resulted`` CD19 B cells, corrections and voids) and
answers, from the pure functions of ``domain.pk`` and ``domain.disease_scores``: each
participant's non-compartmental analysis per analyte and change from baseline per
instrument and visit, and per dose level the summaries the optimal-dose view needs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from domain.contract import DATA_MODELS, TRIAL_LEVEL_PARTICIPANT, DiseaseAssessed
from domain.disease_scores import VisitChange, changes_from_baseline
from domain.participant import Participant
from domain.pk import NCAResult, nca, samples_from

_TYPES = frozenset(
    {
        "participant.enrolled",
        "infusion.administered",
        "pk.resulted",
        "disease.assessed",
        "lab.resulted",
        "record.corrected",
        "record.voided",
    }
)


@dataclass
class _Record:
    kind: str
    at: datetime
    data: dict[str, Any]


@dataclass
class ParticipantKinetics:
    trial_id: str
    participant_id: str
    dose_level: str | None = None
    disease: str | None = None
    infused_at: datetime | None = None
    records: dict[str, _Record] = field(default_factory=dict)  # by event_id

    def pk(self) -> dict[str, NCAResult]:
        """NCA per analyte (reference §11); empty before infusion."""
        if self.infused_at is None:
            return {}
        by_analyte: dict[str, list[tuple[datetime, float | None, bool]]] = {}
        for record in self._of("pk.resulted"):
            data = record.data
            blq = bool(data.get("below_lloq")) or data["value"] == 0
            by_analyte.setdefault(data["analyte"], []).append(
                (record.at, None if blq else float(data["value"]), blq)
            )
        results = {}
        for analyte, observations in sorted(by_analyte.items()):
            unique = {at: (at, v, b) for at, v, b in sorted(observations, key=lambda o: o[0])}
            results[analyte] = nca(samples_from(unique.values(), self.infused_at))
        return results

    def disease_changes(self) -> list[VisitChange]:
        """Change from baseline by visit (reference §12); empty before infusion."""
        if self.infused_at is None:
            return []
        assessments = [
            (r.at, DiseaseAssessed.model_validate(r.data)) for r in self._of("disease.assessed")
        ]
        try:
            return changes_from_baseline(assessments, self.infused_at)
        except ValueError:
            return []  # an out-of-range score: shown in the record, not summarised

    def b_cells(self) -> list[tuple[datetime, float, str]]:
        """CD19 B-cell counts (time, value, unit), for B-cell depletion."""
        return [
            (r.at, float(r.data["value"]), r.data["unit"])
            for r in self._of("lab.resulted")
            if r.data.get("analyte") == "cd19_b_cells"
        ]

    def _of(self, kind: str) -> list[_Record]:
        return sorted((r for r in self.records.values() if r.kind == kind), key=lambda r: r.at)


@dataclass
class KineticsView:
    participants: dict[tuple[str, str], ParticipantKinetics] = field(default_factory=dict)
    _types: dict[str, tuple[tuple[str, str], str]] = field(default_factory=dict)

    def route(self, cls: type) -> Callable[[Any, int], None] | None:
        """The fold of a stored-event class (``projections.fold``): the recorded
        clinical events."""
        return self._recorded if issubclass(cls, Participant.ClinicalEventRecorded) else None

    def _recorded(self, event: Any, position: int) -> None:
        self.apply_clinical(event.event)

    def apply_clinical(self, wire: Mapping[str, Any]) -> None:
        """Fold one recorded clinical event (contract §1–2, wire form)."""
        kind = wire["type"]
        if kind not in _TYPES or wire["participant_id"] == TRIAL_LEVEL_PARTICIPANT:
            return
        key = (wire["trial_id"], wire["participant_id"])
        subject = self.participants.get(key)
        if subject is None:
            subject = self.participants[key] = ParticipantKinetics(*key)
        data = dict(wire["data"])
        at = datetime.fromisoformat(wire["occurred_at"])
        if kind == "participant.enrolled":
            subject.disease = data["disease"]
            subject.dose_level = subject.dose_level or data.get("dose_level")
        elif kind == "infusion.administered":
            subject.dose_level = data.get("dose_level") or subject.dose_level
            subject.infused_at = subject.infused_at or at
        elif kind == "record.corrected":
            target = subject.records.get(data["corrects_event_id"])
            if target is not None:
                model = DATA_MODELS[target.kind].model_validate(data["data"], strict=False)
                target.data = model.model_dump(mode="json", exclude_none=True)
        elif kind == "record.voided":
            subject.records.pop(data["voids_event_id"], None)
        else:
            subject.records[wire["event_id"]] = _Record(kind, at, data)

    def dose_level_summary(self, trial_id: str) -> list[dict[str, Any]]:
        """Per dose level: Cmax and AUC0-28 medians per analyte, disease response at
        weeks 12 and 24 (share improved, share meeting the instrument's rule)."""
        levels: dict[str, list[ParticipantKinetics]] = {}
        for (trial, _), subject in sorted(self.participants.items()):
            if trial == trial_id and subject.infused_at is not None and subject.dose_level:
                levels.setdefault(subject.dose_level, []).append(subject)
        summary = []
        for dose_level, subjects in sorted(levels.items()):
            pk: dict[str, dict[str, Any]] = {}
            for subject in subjects:
                for analyte, result in subject.pk().items():
                    entry = pk.setdefault(analyte, {"cmax": [], "auc_0_28": []})
                    if result.cmax is not None:
                        entry["cmax"].append(result.cmax)
                    if result.auc_0_28 is not None and result.auc_complete:
                        entry["auc_0_28"].append(result.auc_0_28)
            response: dict[int, dict[str, Any]] = {}
            for week in (12, 24):
                changes = [c for s in subjects for c in s.disease_changes() if c.week == week]
                met = [c.rule_met for c in changes if c.rule_met is not None]
                response[week] = {
                    "assessed": len(changes),
                    "improved": sum(c.improved for c in changes),
                    "rule_met": sum(met),
                    "rule_assessed": len(met),
                }
            summary.append(
                {
                    "dose_level": dose_level,
                    "infused": len(subjects),
                    "pk": {
                        analyte: {
                            "n": len(values["cmax"]),
                            "median_cmax": _median(values["cmax"]),
                            "median_auc_0_28": _median(values["auc_0_28"]),
                            "n_auc_complete": len(values["auc_0_28"]),
                        }
                        for analyte, values in sorted(pk.items())
                    },
                    "disease_response": response,
                }
            )
        return summary


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
