"""A participant reuses its last DLT evaluation while nothing the evaluation is made
of has changed and clinical time has not reached the evaluation's next wake
(``Participant.reuse_dlt_evaluations``). Reuse must publish exactly what evaluating
again after every event publishes.

The cohorts are the simulator's with every participant of one dose level given a
DLT (candidates raised, pending, then confirmed or ruled out as time passes; windows
opening and closing; committee decisions), applied with reuse and without."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import datetime

import pytest

from domain.participant import Participant
from services.offline import process_lines
from services.simulator import CohortSpec, simulate_cohort

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
def test_reusing_dlt_evaluations_publishes_what_evaluating_every_time_does(
    spec: CohortSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    reused = derived(spec)
    monkeypatch.setattr(Participant, "reuse_dlt_evaluations", False)
    evaluated_every_time = derived(spec)

    types = Counter(str(event["type"]) for event in evaluated_every_time)
    # The cohorts exercise the time-driven DLT decisions the reuse must not miss.
    assert types["dlt.window_opened"] >= 8
    assert types["dlt.candidate"] >= 4
    assert types["dlt.confirmed"] + types["dlt.ruled_out"] >= 4
    assert types["dlt.window_closed"] >= 4
    assert reused == evaluated_every_time
