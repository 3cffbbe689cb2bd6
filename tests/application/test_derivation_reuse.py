"""A participant reuses earlier derivations (``Participant.reuse_earlier_derivations``):
it resumes the rules' sweeps (CTCAE, febrile neutropenia) where they stopped while
only later entries arrived, and keeps its last DLT evaluation while nothing the
evaluation is made of has changed and clinical time has not reached the
evaluation's next wake. Reuse must publish exactly what deriving everything afresh
after every event publishes.

The cohorts are the simulator's: late and out-of-order records, corrections and
voids, fevers with neutropenia, and every participant of one dose level given a DLT
(candidates raised, pending, then confirmed or ruled out as time passes; windows
opening and closing; committee decisions), applied with reuse and without."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from domain.participant import Participant
from services.offline import in_memory_application, process_lines
from services.simulator import CohortSpec, simulate_cohort
from tests.application.test_protocol_activation import day, message

NOW = datetime.fromisoformat("2026-06-01T00:00:00+00:00")


def derived(spec: CohortSpec) -> list[dict[str, object]]:
    out = io.StringIO()
    process_lines([m.value for m in simulate_cohort(spec)], out, now=NOW)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    for event in events:
        event.pop("recorded_at")
    return events


@pytest.mark.parametrize(
    "spec",
    [
        CohortSpec(seed=7, participants=12, follow_up_days=45, dlt_heavy_dose="DL2"),
        CohortSpec(seed=79, participants=12, follow_up_days=45, dlt_heavy_dose="DL3"),
    ],
    ids=["seed7-DL2", "seed79-DL3"],
)
def test_reusing_earlier_derivations_publishes_what_deriving_afresh_does(
    spec: CohortSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    reused = derived(spec)
    monkeypatch.setattr(Participant, "reuse_earlier_derivations", False)
    afresh = derived(spec)

    types = Counter(str(event["type"]) for event in afresh)
    # The cohorts exercise the time-driven DLT decisions the reuse must not miss.
    assert types["dlt.window_opened"] >= 8
    assert types["dlt.candidate"] >= 4
    assert types["dlt.confirmed"] + types["dlt.ruled_out"] >= 4
    assert types["dlt.window_closed"] >= 4
    terms = Counter(str(e["data"].get("term")) for e in afresh if e["type"] == "toxicity.graded")
    assert terms["Febrile neutropenia"] >= 1
    assert terms["Fever"] >= 4
    assert types["grade.revised"] >= 1, "late records revise earlier grades"
    assert reused == afresh


def test_a_correction_of_an_earlier_temperature_re_derives_the_fever_it_graded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CTCAE Fever (reference §3): 39.5 C is grade 2 (> 39.0-40.0 C), 38.2 C grade 1.
    The 39.5 C reading is corrected to 38.2 C after a later normal reading arrived,
    and another normal reading follows: the sweep that graded the temperatures
    before the correction must not be resumed for it (the corrected reading is in
    its past, and the last reading it swept is unchanged)."""
    messages = [
        message(1, "participant.enrolled", day(-20, 8), disease="SLE", dose_level="DL1"),
        message(2, "lymphodepletion.administered", day(-5, 8), agent="fludarabine", dose_mg_m2=25),
        message(3, "infusion.administered", day(0, 8), dose_level="DL1", cells_per_kg=1e6),
        message(4, "vitals.recorded", day(1, 8), temperature_c=39.5),
        message(5, "vitals.recorded", day(1, 12), temperature_c=37.0),
        message(
            6,
            "record.corrected",
            day(1, 13),
            corrects_event_id="e4",
            data={"temperature_c": 38.2},
            reason="transcription",
        ),
        message(7, "vitals.recorded", day(1, 16), temperature_c=37.1),
    ]

    def fever(events: list[dict[str, Any]]) -> list[tuple[str, object, object]]:
        return [
            (
                str(e["type"]),
                e["data"].get("from_grade"),
                e["data"].get("to_grade", e["data"].get("grade")),
            )
            for e in events
            if e["data"].get("term") == "Fever"
        ]

    def run() -> list[dict[str, Any]]:
        app = in_memory_application()
        # One message per batch: each arrives after the one before was derived.
        derived = [app.apply_batch([m], now=NOW).derived for m in messages]
        return [event.model_dump(mode="json") for batch in derived for event in batch]

    reused = run()
    assert fever(reused) == [
        ("toxicity.graded", None, 2),
        ("toxicity.graded", None, 0),
        ("grade.revised", 2, 1),
        ("toxicity.graded", None, 1),
    ]
    monkeypatch.setattr(Participant, "reuse_earlier_derivations", False)
    assert fever(run()) == fever(reused)
