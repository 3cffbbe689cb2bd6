"""``toxwatch bench replay``: rebuilding from the store against a same-run baseline.

A store is filled once with simulated cohorts (``--participants``, applied offline
with the worker's code, the trial monitor and the alerts process). Then, each run:

- the baseline reads every stored event and decodes it (eventsourcing
  ``select_notifications`` and the mapper), nothing more;
- *projections* rebuilds what is derived from the participants' records: the trial
  monitor and the alerts process into a fresh store, and every read model (alerts
  inbox, safety metrics, kinetics, DSMB packet data) from both (``toxwatch replay
  --no-rederive``);
- *full* also derives every participant's safety events again (``toxwatch replay``).

Figures are medians over the runs, in stored events per second; each ratio is to the
baseline of the same run.
"""

from __future__ import annotations

import io
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from infra.settings import Settings
from services.application import SafetyMonitoring
from services.bootstrap import build_application
from services.offline import in_memory_application, process_lines
from services.replay import replay
from services.simulator import CohortSpec, simulate_cohort


@dataclass
class ReplayBench:
    store: str
    stored_events: int
    baseline_events_per_s: float
    projections_events_per_s: float
    full_events_per_s: float | None

    @property
    def projections_ratio(self) -> float:
        return self.projections_events_per_s / self.baseline_events_per_s

    @property
    def full_ratio(self) -> float | None:
        if self.full_events_per_s is None:
            return None
        return self.full_events_per_s / self.baseline_events_per_s


def fill(app: SafetyMonitoring, participants: int) -> None:
    """Simulated cohorts of 42 (distinct seeds) until ``participants`` are stored."""
    seed = 1
    while participants > 0:
        size = min(42, participants)
        messages = simulate_cohort(CohortSpec(seed=seed, participants=size, malformed=False))
        process_lines([m.value for m in messages], io.StringIO(), app=app)
        participants -= size
        seed += 1


def read_and_decode(app: SafetyMonitoring) -> int:
    after, count = 0, 0
    while batch := app.recorder.select_notifications(
        start=after, limit=1000, inclusive_of_start=False
    ):
        for notification in batch:
            app.mapper.to_domain_event(notification)
        count += len(batch)
        after = batch[-1].id
    return count


def _timed(action) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run_replay_bench(
    *, participants: int, runs: int, full: bool, out: Path | None, store: str = "sqlite"
) -> ReplayBench:
    console = Console()
    with tempfile.TemporaryDirectory(prefix="toxwatch-bench-replay-") as folder:
        settings = Settings(data_dir=Path(folder), store="sqlite")
        app = build_application(settings)
        console.print(f"filling a SQLite store with {participants} participants ...")
        fill(app, participants)
        stored = app.recorder.max_notification_id() or 0
        baselines, projections, fulls = [], [], []
        for run in range(1, runs + 1):
            base = _timed(lambda: read_and_decode(app))
            rebuilt = _timed(
                lambda: replay(app, in_memory_application(app.protocol), rederive=False)
            )
            baselines.append(stored / base)
            projections.append(stored / rebuilt)
            line = (
                f"run {run}: read+decode {stored / base:,.0f} ev/s, "
                f"projections {stored / rebuilt:,.0f} ev/s"
            )
            if full:
                whole = _timed(lambda: replay(app, in_memory_application(app.protocol)))
                fulls.append(stored / whole)
                line += f", full {stored / whole:,.0f} ev/s"
            console.print(line)
        app.close()
    result = ReplayBench(
        store=store,
        stored_events=stored,
        baseline_events_per_s=statistics.median(baselines),
        projections_events_per_s=statistics.median(projections),
        full_events_per_s=statistics.median(fulls) if fulls else None,
    )
    table = Table(title="toxwatch bench replay: stored events/s (medians), ratio to read+decode")
    for column in (
        "store",
        "stored events",
        "read+decode",
        "projections",
        "ratio",
        "full",
        "ratio",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        result.store,
        f"{stored:,}",
        f"{result.baseline_events_per_s:,.0f}",
        f"{result.projections_events_per_s:,.0f}",
        f"{result.projections_ratio:.2f}",
        f"{result.full_events_per_s:,.0f}" if result.full_events_per_s else "-",
        f"{result.full_ratio:.3f}" if result.full_ratio is not None else "-",
    )
    console.print(table)
    if out is not None:
        payload = asdict(result) | {
            "projections_ratio": result.projections_ratio,
            "full_ratio": result.full_ratio,
            "participants": participants,
            "runs": runs,
        }
        out.write_text(json.dumps(payload, indent=2) + "\n")
    return result
