"""The CPU figures of ``toxwatch bench`` (issue 9: where a target is not met, show
what bounds it): how many of the machine's CPUs a run kept busy, the full path's CPU
time per message next to the bare loop's, and the ratio the machine would allow with
every CPU busy. Worked by hand: a bare loop keeping 1 CPU busy at 10,000 messages/s
spends 100 µs of CPU per message; a full path keeping 1.5 CPUs busy at 2,000/s spends
750 µs, 7.5 times as much; on 4 CPUs all busy it would reach 4 / 750 µs = 5,333/s,
0.53 of the bare loop (4 / 1 / 7.5)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from services.bench import BenchResult
from services.bench_harness import busy_cpus, cpu_seconds


def test_the_cpu_time_per_message_and_the_ceiling_follow_from_rates_and_busy_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    result = BenchResult("sqlite", 10_000, 10_000.0, 2_000.0, [10_000.0], [2_000.0], [1.0], [1.5])
    assert result.cpu_per_message_ratio() == pytest.approx(7.5)
    assert result.ceiling() == pytest.approx(4 / 7.5)


def test_the_medians_of_several_runs_are_compared() -> None:
    result = BenchResult(
        "postgres", 1, 10_000.0, 2_000.0,
        [9_000.0, 10_000.0, 11_000.0], [1_000.0, 2_000.0, 4_000.0],
        [0.9, 1.0, 1.1], [1.0, 1.0, 1.0],
    )  # fmt: skip
    # CPU per message of each run: 100 µs bare (all three); 1,000, 500 and 250 µs.
    assert result.cpu_per_message_ratio() == pytest.approx(5.0)


def test_an_unknown_reading_gives_no_figure_rather_than_a_wrong_one() -> None:
    result = BenchResult("sqlite", 1, 10_000.0, 2_000.0, [10_000.0], [2_000.0], [None], [1.5])
    assert result.cpu_per_message_ratio() is None
    assert result.ceiling() is None
    assert busy_cpus(None, (1.0, 2.0)) is None
    assert busy_cpus((5.0, 10.0), (5.0, 10.0)) is None  # no time passed


def test_busy_cpus_from_two_readings_of_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    # 300 of 400 ticks summed over 2 CPUs were busy: 1.5 CPUs on average.
    assert busy_cpus((1_000.0, 5_000.0), (1_300.0, 5_400.0)) == pytest.approx(1.5)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux /proc/stat only")
def test_a_spinning_process_shows_as_a_busy_cpu() -> None:
    before = cpu_seconds()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        pass
    busy = busy_cpus(before, cpu_seconds())
    assert busy is not None
    # This process kept one CPU busy; others may have kept more busy, none fewer
    # than it could have (a little is lost to the clock ticks' granularity).
    assert 0.5 <= busy <= (os.cpu_count() or 1) + 0.01
