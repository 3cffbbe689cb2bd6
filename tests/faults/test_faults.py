"""Fault injection (issue 8): the pipeline (worker, trial monitor, alerts process,
relay, dispatcher as ``toxwatch`` subprocesses on the embedded broker) under each kind
of fault ends in the state of the no-fault run: the same participants' records and
derived events, the same trial findings, the alerts a replay of its log gives, every
derived event published once and every alert delivered; nothing lost, duplicated or
different, and no process left stuck.

Each test runs ``services.faults`` (``toxwatch faults run``) in a process of its own
with a few runs of one kind (``TOXWATCH_FAULTS_RUNS``, default 1; the full form is a
command, see README.md) and reads its JSON report. README.md lists the bugs they found
and their fixes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RUNS = int(os.environ.get("TOXWATCH_FAULTS_RUNS", "1"))
ROOT = Path(__file__).resolve().parents[2]


def run_faults(tmp_path: Path, kind: str, *args: str) -> dict[str, Any]:
    """``python -m services.faults run`` for one kind; its JSON report."""
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOXWATCH_FAULTS_REPORT")}
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.faults",
            "run",
            "--kinds",
            kind,
            "--runs",
            str(RUNS),
            "--stall-seconds",
            "15",
            "--participants",
            "4",
            "--workdir",
            str(tmp_path / "work"),
            "--report",
            str(report),
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = runner.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        runner.send_signal(signal.SIGTERM)  # it stops its services and broker
        try:
            stdout, stderr = runner.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            runner.kill()
            stdout, stderr = runner.communicate()
    done = subprocess.CompletedProcess(runner.args, runner.returncode, stdout, stderr)
    print(done.stdout[-20_000:])
    assert report.exists(), f"no report (exit {done.returncode})\n{done.stderr[-5000:]}"
    document: dict[str, Any] = json.loads(report.read_text())
    return document


def assert_clean(document: dict[str, Any], kind: str) -> None:
    runs = [r for r in document["runs"] if r["kind"] == kind]
    if runs and all(r["skipped"] for r in runs):
        pytest.skip(runs[0]["skipped"])
    done = [r for r in runs if not r["skipped"]]
    assert done, f"no run of {kind}"
    assert all(r["events_in"] > 0 and r["derived_out"] > 0 for r in done)
    if kind != "none":
        assert all(r["faults"] > 0 for r in done), "every run injected its faults"
    failed = [
        {name: r[name] for name in ("run", "store", "lost", "duplicated", "mismatches",
                                    "stalled", "notes")}
        for r in done
        if not r["ok"]
    ]  # fmt: skip
    assert not failed, json.dumps(failed, indent=1)[:8000]


def test_the_pipeline_without_faults_ends_where_the_offline_run_does(tmp_path: Path) -> None:
    assert_clean(run_faults(tmp_path, "none", "--store", "sqlite"), "none")


@pytest.mark.parametrize("kind", ["worker", "relay", "monitor", "alerts", "dispatcher"])
@pytest.mark.postgres
def test_a_process_sigkilled_at_random_points_loses_and_duplicates_nothing(
    tmp_path: Path, kind: str
) -> None:
    assert_clean(run_faults(tmp_path, kind), kind)


@pytest.mark.postgres
def test_postgres_connections_terminated_mid_stream_lose_nothing(tmp_path: Path) -> None:
    assert_clean(run_faults(tmp_path, "postgres"), "postgres")


def test_a_full_sqlite_store_delays_ingest_without_losing_anything(tmp_path: Path) -> None:
    assert_clean(run_faults(tmp_path, "sqlite-full"), "sqlite-full")


def test_a_read_only_sqlite_store_delays_ingest_without_losing_anything(tmp_path: Path) -> None:
    assert_clean(run_faults(tmp_path, "sqlite-readonly"), "sqlite-readonly")


@pytest.mark.postgres
def test_a_broker_restart_mid_stream_loses_nothing_stored_or_produced_since(
    tmp_path: Path,
) -> None:
    # The worker records the recreated topic and applies it from offset 0; what the
    # broker acknowledged and lost before the store applied it is reported by the
    # producer (``broker_lost``) and sent again. Nothing else may be missing.
    from services.faults import REPLACEMENT_NOTE

    document = run_faults(tmp_path, "broker")
    assert_clean(document, "broker")
    done = [r for r in document["runs"] if r["kind"] == "broker" and not r["skipped"]]
    assert all(any(n.startswith(REPLACEMENT_NOTE) for n in r["notes"]) for r in done), done
