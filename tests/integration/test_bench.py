"""``toxwatch bench all --quick`` (issue 9): every target lands in the JSON with what
was measured, the same run's baseline, the ratio and whether it is met; ``toxwatch
bench show`` compares two results.

The sizes are a smoke run's; no figure is compared with a target here (performance
is never asserted in tests, the machine is shared): only that each was measured.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import toxwatch_executable

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]

TARGETS = {
    "ingest.sqlite",
    "ingest.postgres",
    "latency.1000",
    "latency.80pct",
    "replay",
    "scaling",
    "memory",
}


def _measured(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _toxwatch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``toxwatch args`` with no ToxWatch setting of the caller's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOXWATCH_")}
    return subprocess.run(
        [toxwatch_executable(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_bench_all_quick_writes_every_target_with_its_baseline_and_verdict(
    postgres_schemas: Callable[[], str], tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    completed = _toxwatch("bench", "all", "--quick", "--out", str(out))
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]

    report = json.loads(out.read_text())
    targets = {t["id"]: t for t in report["targets"]}
    assert set(targets) == TARGETS, completed.stdout[-4000:]
    for ident, target in targets.items():
        assert target["error"] is None, (ident, target["error"], report["details"])
        for figure in ("measured", "baseline", "ratio"):
            assert _measured(target[figure]), (ident, figure, target)
        assert isinstance(target["met"], bool), (ident, target)
        assert target["required"] and target["scale"], (ident, target)
    assert report["machine_before"]["cpu_count"] >= 1
    assert len(report["machine_before"]["load_average"]) == 3
    assert report["commit"]
    assert {"ingest", "alerts", "replay", "scaling", "memory"} <= set(report["details"])
    # How many of the machine's CPUs each pass kept busy (what bounds a ratio).
    for result in report["details"]["ingest"]["results"]:
        busy = result["baseline_busy_cpus"] + result["full_path_busy_cpus"]
        assert busy and all(_measured(b) for b in busy), result
        assert _measured(result["cpu_per_message_ratio"]), result
    scaling = report["details"]["scaling"]["result"]
    assert _measured(scaling["one_worker_busy_cpus"]), scaling
    assert _measured(scaling["many_workers_busy_cpus"]), scaling
    # The 80 % point is 80 % of the maximum of the alert bench's own load, measured.
    alerts = report["details"]["alerts"]
    assert _measured(alerts["sustained_max_events_per_s"]), alerts
    assert alerts["results"][1]["rate_per_s"] == max(
        1, round(0.8 * alerts["sustained_max_events_per_s"])
    ), alerts
    assert "measured" in completed.stdout and "baseline" in completed.stdout

    shown = _toxwatch("bench", "show", str(out), str(out), timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "→" in shown.stdout and "ratio" in shown.stdout


def test_bench_large_measures_the_worker_peak_with_and_without_the_byte_bound(
    tmp_path: Path,
) -> None:
    """``toxwatch bench large``: a flood of over-size messages, applied by the worker
    with transactions bounded by bytes and one per batch; both peaks measured."""
    out = tmp_path / "large.json"
    completed = _toxwatch(
        "bench", "large", "--messages", "40", "--message-kib", "300", "--out", str(out)
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]

    result = json.loads(out.read_text())
    assert (result["messages"], result["message_bytes"]) == (40, 300 * 1024)
    assert result["max_transaction_bytes"] == 16 * 1024 * 1024
    for figure in ("bounded_peak_rss", "unbounded_peak_rss"):
        assert len(result[figure]) == 1 and _measured(result[figure][0]), result
    assert _measured(result["ratio"]), result
    assert "peak RSS" in completed.stdout
