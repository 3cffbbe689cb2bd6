"""The README's first command: the demo runs end to end and stops by itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_demo_streams_a_cohort_shows_crs_grades_and_stops_cleanly(tmp_path):
    env = os.environ | {"TOXWATCH_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "demo",
            "--duration",
            "60",
            "--stream-seconds",
            "15",
            "--participants",
            "9",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "embedded tansu" in output
    assert "CRS grade 1" in output
    assert "resolved" in output
    assert "rejected not_json" in output
    assert "cohort streamed" in output
    assert "child process exited" not in output
    assert list(tmp_path.glob("demo/*/toxwatch.sqlite3"))
