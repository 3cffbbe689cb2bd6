"""The safety metrics (issue 6, the catalogue): a small trial whose counts follow
from the clinical criteria, read through the API process's metrics collector.

Five participants (reference §1–2 for the grades):
- G79-101 (SLE, DL1), infused: fever 38.9 C with hypoxia on 2 L/min nasal cannula is
  CRS grade 2 (ASTCT 2019: low-flow oxygen); no ICANS.
- G79-102 (SSC, DL1), infused: ICE score 5 with no other finding is ICANS grade 2
  (ASTCT 2019: ICE 3–6); no CRS.
- G79-103 (AAV, DL2): enrolled, not infused.
- G79-104 (SLE, DL2), infused, then reported dead of sepsis (not related).
- G79-105 (IIM, DL2), infused, then withdrawn.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from infra.metrics import GaugeCollector
from services.api import ReadModels
from services.offline import in_memory_application, process_lines

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
TRIAL = "NCT07049081"


def at(days: float, hours: float = 0) -> str:
    return (D0 + timedelta(days=days, hours=hours)).isoformat()


def event(n: int, participant: str, kind: str, when: str, **data: Any) -> bytes:
    return json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": f"sm-{participant}-{n:02d}",
            "type": kind,
            "trial_id": TRIAL,
            "site_id": "CN-001",
            "participant_id": participant,
            "occurred_at": when,
            "data": data,
        }
    ).encode()


def infused(participant: str, disease: str, dose: str) -> list[bytes]:
    return [
        event(1, participant, "participant.enrolled", at(-10), disease=disease, dose_level=dose),
        event(2, participant, "eligibility.confirmed", at(-9), confirmed_by="pi"),
        event(3, participant, "lymphodepletion.administered", at(-5), agent="fludarabine",
              dose_mg_m2=25),
        event(4, participant, "infusion.administered", at(0), dose_level=dose,
              cells_per_kg=1.0e6),
    ]  # fmt: skip


def stream() -> list[bytes]:
    return [
        *infused("G79-101", "SLE", "DL1"),
        event(5, "G79-101", "vitals.recorded", at(1, 2), temperature_c=38.9),
        event(6, "G79-101", "oxygen.changed", at(1, 3), device="nasal_cannula", flow_l_min=2),
        event(7, "G79-101", "vitals.recorded", at(1, 3.5), temperature_c=38.7, spo2_pct=94),
        *infused("G79-102", "SSC", "DL1"),
        event(5, "G79-102", "neuro.assessed", at(3), ice_score=5, consciousness="awake"),
        event(1, "G79-103", "participant.enrolled", at(-2), disease="AAV", dose_level="DL2"),
        *infused("G79-104", "SLE", "DL2"),
        event(5, "G79-104", "death.reported", at(5), cause="Sepsis", attributed_to="infection",
              related="not_related"),
        *infused("G79-105", "IIM", "DL2"),
        event(5, "G79-105", "participant.withdrawn", at(6), reason="consent withdrawn"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    app = in_memory_application()
    process_lines(stream(), io.StringIO(), app=app, now=datetime(2026, 6, 1, tzinfo=UTC))
    views = ReadModels(app)
    registry = CollectorRegistry()
    registry.register(GaugeCollector(lambda: views.gauges()))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def series(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted((labels | {"trial": TRIAL}).items())))]


@pytest.mark.parametrize(
    ("participant_status", "dose_level", "disease"),
    [
        ("infused", "DL1", "SLE"),
        ("infused", "DL1", "SSC"),
        ("enrolled", "DL2", "AAV"),
        ("died", "DL2", "SLE"),
        ("withdrawn", "DL2", "IIM"),
    ],
)
def test_participants_are_counted_by_status_dose_level_and_disease(
    metrics: dict[Any, float], participant_status: str, dose_level: str, disease: str
) -> None:
    assert series(
        metrics, "toxwatch_participants",
        status=participant_status, dose_level=dose_level, disease=disease,
    ) == 1  # fmt: skip


def test_crs_and_icans_are_counted_by_each_infused_participants_highest_grade(
    metrics: dict[Any, float],
) -> None:
    crs = "toxwatch_crs_max_grade_participants"
    icans = "toxwatch_icans_max_grade_participants"
    assert series(metrics, crs, dose_level="DL1", disease="SLE", grade="2") == 1
    assert series(metrics, crs, dose_level="DL1", disease="SSC", grade="0") == 1
    assert series(metrics, icans, dose_level="DL1", disease="SSC", grade="2") == 1
    assert series(metrics, icans, dose_level="DL1", disease="SLE", grade="0") == 1
    # The participant never infused is in no grade distribution.
    assert not [k for k in metrics if k[0] in (crs, icans) and ("disease", "AAV") in k[1]]


def test_the_death_is_an_open_critical_alert_and_the_grades_open_high_ones(
    metrics: dict[Any, float],
) -> None:
    # alert_rules: death.reported critical; CRS grade 2 and any ICANS high.
    assert series(metrics, "toxwatch_alerts_open", severity="critical") == 1
    assert series(metrics, "toxwatch_alerts_open", severity="high") == 2


def test_no_label_is_a_participant_id(metrics: dict[Any, float]) -> None:
    values = {value for _, labels in metrics for _, value in labels}
    assert not {v for v in values if v.startswith("G79-")}


def test_the_crs_distribution_agrees_with_the_dsmb_packet_on_a_simulated_cohort() -> None:
    # Two folds of the same log (the metrics' and the packet's) must count each
    # infused participant at the same highest standing CRS grade (revisions applied).
    from projections.dsmb import dsmb_data
    from services.simulator import CohortSpec, simulate_cohort

    app = in_memory_application()
    cohort = simulate_cohort(CohortSpec(participants=9, follow_up_days=40, dlt_heavy_dose="DL3"))
    process_lines(
        [m.value for m in cohort], io.StringIO(), app=app, now=datetime(2026, 6, 1, tzinfo=UTC)
    )
    gauges = ReadModels(app).gauges()
    from_metrics: dict[str, list[int]] = {}
    for labels, value in gauges["toxwatch_crs_max_grade_participants"].items():
        found = dict(labels)
        from_metrics.setdefault(found["dose_level"], [0] * 6)[int(found["grade"])] += int(value)
    notifications = app.recorder.select_notifications(
        start=0, limit=10**7, inclusive_of_start=False
    )
    report = dsmb_data(
        ((n.id, app.mapper.to_domain_event(n)) for n in notifications),
        trial_id=TRIAL, as_of=None, planned_enrolment=42, dose_levels=["DL1", "DL2", "DL3"],
    )  # fmt: skip
    assert from_metrics == {row.dose_level: list(row.by_max_grade) for row in report.crs_summary}
    assert sum(map(sum, from_metrics.values())) == 9
