"""``toxwatch bench all``: every issue-9 target in one run, one table, one JSON file.

Runs, in this order, each as its own command would (fresh broker, topics and
stores): ingest on SQLite and PostgreSQL, alert latency at 1,000 events/s and at 80 %
of the sustained maximum of the alert bench's own load, measured first (SQLite, as
the alert bench's store), replay (``services.bench_replay``), scaling (PostgreSQL, 8
partitions, 1 then 3 workers) and the worker's memory. A part that fails is recorded
with its error and the rest go on.

Each target: measured, baseline (of the same run), ratio, what is required and
whether it is met, and the scale it was measured at next to the issue's (a target
met at a smaller scale is reported as such: ``at_issue_scale``). Sizes come from a
preset, each overridable: ``quick``, a smoke run (minutes); ``moderate``, the
default (10 to 20 minutes on two shared CPUs); ``issue``, the issue's sizes (hours
at today's rates: 2,000 participants, 1,000,000 stored events to replay, memory from
100,000 to 1,000,000 messages).
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.bench_harness import Programme, git_commit, machine, now_stamp

ISSUE_PARTICIPANTS = 2000
ISSUE_REPLAY_EVENTS = 1_000_000
ISSUE_MEMORY = (100_000, 1_000_000)
ISSUE_LATENCY_RATE = 1000


@dataclass
class SuiteOptions:
    runs: int
    ingest: Programme
    stores: list[str]
    alert_rate: int
    alert_seconds: float
    probes_per_s: float
    alert_fraction: float
    alert_background: int
    #: Messages of the alert bench's load that measure its sustained maximum.
    alert_saturation: int
    replay_participants: int
    replay_events: int
    memory_events: int
    memory_checkpoints: list[int] | None
    memory_days: int
    memory_store: str
    scaling: Programme
    scaling_runs: int
    workers: int
    skip: list[str] = field(default_factory=list)


PRESETS: dict[str, SuiteOptions] = {
    "quick": SuiteOptions(
        runs=1,
        ingest=Programme(participants=3, follow_up_days=1),
        stores=["sqlite", "postgres"],
        alert_rate=50,
        alert_seconds=3,
        probes_per_s=2,
        alert_fraction=0.8,
        alert_background=20,
        alert_saturation=1_000,
        replay_participants=1,
        replay_events=5_000,
        memory_events=2000,
        memory_checkpoints=[1000, 2000],
        memory_days=1,
        memory_store="sqlite",
        scaling=Programme(participants=3, follow_up_days=1, trial_prefix="SCALE"),
        scaling_runs=1,
        workers=3,
    ),
    "moderate": SuiteOptions(
        runs=3,
        ingest=Programme(participants=200, follow_up_days=1),
        stores=["sqlite", "postgres"],
        alert_rate=ISSUE_LATENCY_RATE,
        alert_seconds=20,
        probes_per_s=2,
        alert_fraction=0.8,
        alert_background=200,
        alert_saturation=20_000,
        replay_participants=42,
        replay_events=200_000,
        memory_events=100_000,
        memory_checkpoints=None,
        memory_days=90,
        memory_store="sqlite",
        scaling=Programme(participants=60, follow_up_days=1, trial_prefix="SCALE"),
        scaling_runs=1,
        workers=3,
    ),
    "issue": SuiteOptions(
        runs=3,
        ingest=Programme(participants=ISSUE_PARTICIPANTS, follow_up_days=1),
        stores=["sqlite", "postgres"],
        alert_rate=ISSUE_LATENCY_RATE,
        alert_seconds=60,
        probes_per_s=2,
        alert_fraction=0.8,
        alert_background=200,
        alert_saturation=60_000,
        replay_participants=42,
        replay_events=ISSUE_REPLAY_EVENTS,
        memory_events=ISSUE_MEMORY[1],
        memory_checkpoints=None,
        memory_days=90,
        memory_store="sqlite",
        scaling=Programme(participants=300, follow_up_days=1, trial_prefix="SCALE"),
        scaling_runs=3,
        workers=3,
    ),
}
PARTS = ("ingest", "alerts", "replay", "scaling", "memory")


@dataclass
class Target:
    """One line of the table."""

    id: str
    target: str
    unit: str
    required: str
    measured: float | None = None
    baseline: float | None = None
    ratio: float | None = None
    met: bool | None = None
    scale: str = ""
    at_issue_scale: bool | None = None
    note: str = ""
    error: str | None = None


@dataclass
class SuiteResult:
    commit: str
    started_at: str
    options: dict[str, Any]
    machine_before: dict[str, Any]
    machine_after: dict[str, Any] = field(default_factory=dict)
    finished_at: str = ""
    targets: list[Target] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _unmeasured(target: Target, error: str) -> Target:
    return replace(target, error=error, met=False)


def _ingest_targets(report: Any, options: SuiteOptions) -> list[Target]:
    mix = report.mix
    scale = (
        f"{mix.participants:,} participants, {mix.follow_up_days} d follow-up, "
        f"{mix.messages_produced:,} messages ({mix.clinical_events:,} clinical, "
        f"{mix.clock_ticks:,} ticks × {mix.partitions} partitions), median of {report.runs}"
    )
    targets = []
    for r in report.results:
        targets.append(
            Target(
                id=f"ingest.{r.store}",
                target=f"ingest events/s, {r.store}: full path vs bare consume+decode",
                unit="ev/s",
                required="ratio ≥ 0.50",
                measured=r.full_path_events_per_s,
                baseline=r.baseline_events_per_s,
                ratio=r.ratio,
                met=r.ratio >= 0.5,
                scale=scale,
                at_issue_scale=mix.participants >= ISSUE_PARTICIPANTS,
                note="; ".join(n for n in (_faust_note(report), _cpu_note(r)) if n),
            )
        )
    return targets


def _cpu_note(result: Any) -> str:
    """The full path's CPU work per message next to the bare loop's, and the ratio it
    would reach with every CPU of the machine busy (``BenchResult.ceiling``)."""
    ratio, ceiling = result.cpu_per_message_ratio(), result.ceiling()
    if ratio is None or ceiling is None:
        return ""
    return (
        f"CPU time per message (whole machine): full path {ratio:.1f} × the bare loop's, "
        f"so at most ratio {ceiling:.2f} with all {os.cpu_count()} CPUs busy"
    )


def _faust_note(report: Any) -> str:
    if report.faust_ratio is None:
        return ""
    return (
        f"faust's consumer alone (no application): {report.faust_events_per_s:,.0f} ev/s, "
        f"ratio {report.faust_ratio:.2f}"
    )


def _latency_target(
    result: Any, ident: str, title: str, limit_ms: float, at_issue_scale: bool
) -> Target:
    complete = result.delivered == result.probes and result.probes > 0
    loaded = result.achieved_rate_per_s >= 0.9 * result.rate_per_s
    notes = []
    if not complete:
        notes.append(f"only {result.delivered}/{result.probes} alerts delivered")
    if not loaded:
        notes.append(f"load reached {result.achieved_rate_per_s:,.0f}/s only")
    p99 = result.alert_p99_ms
    return Target(
        id=ident,
        target=title,
        unit="ms",
        required=f"p99 < {limit_ms:,.0f} ms",
        measured=p99,
        baseline=result.baseline_p99_ms,
        ratio=p99 / result.baseline_p99_ms if result.baseline_p99_ms else None,
        met=bool(complete and loaded and not math.isnan(p99) and p99 < limit_ms),
        scale=(
            f"{result.rate_per_s:,} ev/s background, {result.probes} probes, "
            f"median of {result.runs}; baseline: bare Kafka p99"
        ),
        at_issue_scale=at_issue_scale,
        note="; ".join(notes),
    )


def _replay_target(result: Any) -> Target:
    return Target(
        id="replay",
        target="replay: rebuild projections vs read+decode",
        unit="ev/s",
        required="ratio ≥ 0.50",
        measured=result.rebuild_events_per_s,
        baseline=result.baseline_events_per_s,
        ratio=result.ratio,
        met=result.ratio >= 0.5,
        scale=f"{result.stored_events:,} stored events ({result.store})",
        at_issue_scale=result.stored_events >= ISSUE_REPLAY_EVENTS,
    )


def _memory_target(result: Any) -> Target:
    first, last = result.first, result.last
    return Target(
        id="memory",
        target="worker RSS: last checkpoint vs first",
        unit="MiB",
        required="ratio ≤ 1.20",
        measured=last.rss_bytes / 2**20,
        baseline=first.rss_bytes / 2**20,
        ratio=result.ratio,
        met=result.ratio <= 1.2,
        scale=(
            f"{first.applied:,} → {last.applied:,} messages applied ({result.store}, "
            f"{result.participants:,} participants, {result.days} d follow-up); "
            f"{result.bytes_per_event:,.0f} B/message"
        ),
        at_issue_scale=first.applied <= ISSUE_MEMORY[0] * 1.05 and last.applied >= ISSUE_MEMORY[1],
    )


def _scaling_target(result: Any) -> Target:
    return Target(
        id="scaling",
        target=f"{result.workers} workers vs 1 on 8 partitions ({result.store})",
        unit="ev/s",
        required="ratio ≥ 2.0",
        measured=result.many_workers_events_per_s,
        baseline=result.one_worker_events_per_s,
        ratio=result.ratio,
        met=result.ratio >= 2.0,
        scale=f"{result.messages:,} messages, {result.cpu_count} CPUs on this machine",
        at_issue_scale=True,
        note="; ".join(
            part
            for part in (
                f"from the group settled: ratio {result.settled_ratio:.2f}"
                if result.settled_ratio is not None
                else "",
                f"CPUs busy: {result.one_worker_busy_cpus:.2f} with 1 worker, "
                f"{result.many_workers_busy_cpus:.2f} with {result.workers}"
                if result.one_worker_busy_cpus is not None
                and result.many_workers_busy_cpus is not None
                else "",
            )
            if part
        ),
    )


PENDING = {
    "ingest": [
        Target("ingest.sqlite", "ingest events/s, sqlite", "ev/s", "ratio ≥ 0.50"),
        Target("ingest.postgres", "ingest events/s, postgres", "ev/s", "ratio ≥ 0.50"),
    ],
    "alerts": [
        Target("latency.1000", "alert latency at 1,000 ev/s", "ms", "p99 < 500 ms"),
        Target("latency.80pct", "alert latency at 80 % of max", "ms", "p99 < 2,000 ms"),
    ],
    "replay": [Target("replay", "replay vs read+decode", "ev/s", "ratio ≥ 0.50")],
    "scaling": [Target("scaling", "3 workers vs 1", "ev/s", "ratio ≥ 2.0")],
    "memory": [Target("memory", "worker RSS last vs first", "MiB", "ratio ≤ 1.20")],
}


def run_suite(options: SuiteOptions, out: Path | None, console: Console | None = None) -> Path:
    console = console or Console(width=160)
    commit = git_commit()
    result = SuiteResult(
        commit=commit,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        options=asdict(options),
        machine_before=machine(),
    )
    path = out or Path("bench-results") / f"{now_stamp()}-{commit}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {}

    def part(name: str, action: Callable[[], list[Target]]) -> None:
        if name in options.skip:
            return
        console.rule(f"bench {name}")
        started = time.perf_counter()
        try:
            result.targets.extend(action())
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            console.print(f"[red]{name} failed: {message}[/red]")
            result.details[f"{name}_error"] = traceback.format_exc()
            result.targets.extend(
                _unmeasured(t, message)
                for t in PENDING[name]
                if t.id not in {x.id for x in result.targets}
            )
        result.details.setdefault("elapsed_s", {})[name] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")

    part("ingest", lambda: _ingest(options, state, result, console))
    part("alerts", lambda: _alerts(options, state, result, console))
    part("replay", lambda: _replay(options, result))
    part("scaling", lambda: _scaling(options, result, console))
    part("memory", lambda: _memory(options, result, console))
    result.machine_after = machine()
    result.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    path.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    console.print(suite_table(result))
    console.print(f"written to {path}")
    return path


def _ingest(
    options: SuiteOptions, state: dict[str, Any], result: SuiteResult, console: Console
) -> list[Target]:
    from services.bench import run_ingest_bench

    report = run_ingest_bench(
        programme=options.ingest, stores=options.stores, runs=options.runs, out=None
    )
    state["sustained_max"] = report.sustained_max("sqlite")
    result.details["ingest"] = report.to_json()
    return _ingest_targets(report, options)


def _alerts(
    options: SuiteOptions, state: dict[str, Any], result: SuiteResult, console: Console
) -> list[Target]:
    """At 1,000 ev/s, and at 80 % of the sustained maximum of the alert bench's own load
    (vital signs), which it measures first: the ingest programme's maximum, reached on
    a mix of mostly clock ticks, is kept beside it for comparison."""
    from services.bench_alerts import run_alert_bench

    bench = run_alert_bench(
        rates=[options.alert_rate],
        seconds=options.alert_seconds,
        probes_per_s=options.probes_per_s,
        runs=options.runs,
        background_participants=options.alert_background,
        fractions=[options.alert_fraction],
        saturation_messages=options.alert_saturation,
        out=None,
        console=console,
    )
    result.details["alerts"] = bench.to_json() | {
        "fraction": options.alert_fraction,
        "ingest_sustained_max_events_per_s": state.get("sustained_max"),
    }
    at_rate, at_fraction = bench.results
    percent = round(options.alert_fraction * 100)
    maximum = bench.maximum_per_s or 0.0
    fractional = _latency_target(
        at_fraction,
        "latency.80pct",
        f"alert p99 at {percent} % of max ({at_fraction.rate_per_s:,} ev/s)",
        2000,
        at_issue_scale=True,
    )
    fractional.scale += (
        f"; max: {maximum:,.0f} ev/s of the same load ({options.alert_saturation:,} vital "
        f"signs, median of {len(bench.maximum_runs)})"
    )
    return [
        _latency_target(
            at_rate,
            "latency.1000",
            f"alert p99 at {options.alert_rate:,} ev/s",
            500,
            at_issue_scale=options.alert_rate >= ISSUE_LATENCY_RATE,
        ),
        fractional,
    ]


def _replay(options: SuiteOptions, result: SuiteResult) -> list[Target]:
    from services.bench_replay import run_replay_bench

    replayed = run_replay_bench(
        participants=options.replay_participants,
        events=options.replay_events,
        runs=options.runs,
        full=False,
        out=None,
    )
    result.details["replay"] = asdict(replayed) | {
        "participants": options.replay_participants,
    }
    return [_replay_target(replayed)]


def _scaling(options: SuiteOptions, result: SuiteResult, console: Console) -> list[Target]:
    from services.bench_scaling import run_scaling_bench

    scaled, mix = run_scaling_bench(
        programme=options.scaling,
        workers=options.workers,
        runs=options.scaling_runs,
        console=console,
    )
    result.details["scaling"] = {"result": scaled.to_json(), "mix": asdict(mix)}
    return [_scaling_target(scaled)]


def _memory(options: SuiteOptions, result: SuiteResult, console: Console) -> list[Target]:
    from services.bench_memory import run_memory_bench

    memory = run_memory_bench(
        events=options.memory_events,
        checkpoints=options.memory_checkpoints,
        days=options.memory_days,
        store=options.memory_store,
        console=console,
    )
    result.details["memory"] = memory.to_json()
    return [_memory_target(memory)]


def _figure(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:,.1f} {unit}"


def suite_table(result: SuiteResult) -> Table:
    before, after = result.machine_before, result.machine_after
    table = Table(
        title=(
            f"toxwatch bench all: commit {result.commit}, {before['cpu_count']} CPUs, "
            f"load {'/'.join(map(str, before['load_average']))} before, "
            f"{'/'.join(map(str, after.get('load_average', [])))} after"
        ),
        caption="measured and baseline come from the same run; scale: what was measured",
    )
    for column, justify in (
        ("target", "left"),
        ("measured", "right"),
        ("baseline", "right"),
        ("ratio", "right"),
        ("required", "left"),
        ("met", "center"),
        ("scale", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for t in result.targets:
        met = "-" if t.met is None else "yes" if t.met else "no"
        scale = t.scale + ("" if t.at_issue_scale in (None, True) else "; BELOW THE ISSUE'S SCALE")
        if t.note:
            scale += f"; {t.note}"
        if t.error:
            scale = f"error: {t.error}"
        table.add_row(
            escape(t.target),
            _figure(t.measured, t.unit),
            _figure(t.baseline, t.unit),
            "-" if t.ratio is None else f"{t.ratio:.2f}",
            t.required,
            met,
            escape(scale),
        )
    return table


def load_result(path: Path) -> SuiteResult:
    """A result written by :func:`run_suite`."""
    data = json.loads(path.read_text())
    targets = [Target(**t) for t in data.pop("targets")]
    return SuiteResult(**data, targets=targets)


def comparison_table(old: SuiteResult, new: SuiteResult) -> Table:
    """Target by target: the measured figure and the ratio of each result."""
    table = Table(title=f"toxwatch bench: commit {old.commit} → {new.commit}")
    for column in ("target", "measured", "ratio", "required", "met"):
        table.add_column(column, justify="left" if column == "target" else "right")
    before = {t.id: t for t in old.targets}
    for t in new.targets:
        was = before.get(t.id, Target(t.id, t.target, t.unit, t.required))

        def met(x: Target) -> str:
            return "-" if x.met is None else "yes" if x.met else "no"

        table.add_row(
            escape(t.target),
            f"{_figure(was.measured, t.unit)} → {_figure(t.measured, t.unit)}",
            f"{'-' if was.ratio is None else f'{was.ratio:.2f}'} → "
            f"{'-' if t.ratio is None else f'{t.ratio:.2f}'}",
            t.required,
            f"{met(was)} → {met(t)}",
        )
    return table
