"""``toxwatch bench replay``: rebuilding from the store against a same-run baseline.

The measured store holds ``--events`` stored events (default 1,000,000): simulated
cohorts with everything derived from them, replicated under new trial ids
(``services.bench_store``). It is built once, with batched inserts, and cached
(``--store PATH``; by default under the temporary folder, see
:func:`default_store_path`); a store given with ``--store`` that has no
specification file beside it is measured as it is.

Each run times, in stored events per second:

- **read+decode** (the baseline): every stored event read from the notification log
  (eventsourcing ``select_notifications``) and decoded (the application's mapper),
  nothing more;
- **rebuild read models** (the target): every read model the API serves (the
  generation ``POST /views/rebuild`` builds: alerts inbox, safety metrics, kinetics,
  participant registry, the DSMB packet's data and the audit trail) folded from
  position zero into fresh state;
- with ``full``, on the simulated base store alone (the replicated copies would be
  re-derived under the base's recording times, so it is timed where the derivations
  are the store's own): its read+decode baseline, ``toxwatch replay --no-rederive``
  (trial monitor, alerts and views rebuilt into a fresh store and compared) and
  ``toxwatch replay`` (every participant's derivations made again too).

Figures are medians over the runs; each ratio is the median of the runs' ratios to
the baseline of the same store in the same run.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from projections.views import Views
from services.api import fold_views
from services.application import SafetyMonitoring
from services.bench_harness import median_or_none
from services.bench_store import StorePaths, ensure_store, fill, open_store
from services.offline import in_memory_application
from services.replay import replay

__all__ = ["ReplayBench", "default_store_path", "fill", "read_and_decode", "run_replay_bench"]

DEFAULT_EVENTS = 1_000_000


@dataclass
class ReplayBench:
    """Medians over ``runs``; ratios to the same store's read+decode, same run."""

    store: str
    events: int
    runs: int
    baseline_events_per_s: float
    rebuild_events_per_s: float
    ratio: float
    #: ``toxwatch replay`` on the simulated base store (``full``), else None.
    replay_store_events: int | None = None
    replay_baseline_events_per_s: float | None = None
    projections_events_per_s: float | None = None
    projections_ratio: float | None = None
    full_events_per_s: float | None = None
    full_ratio: float | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def stored_events(self) -> int:
        return self.events

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_store_path(events: int, participants: int) -> Path:
    """Where the bench keeps its store when none is given."""
    folder = Path(tempfile.gettempdir()) / "toxwatch-bench"
    return folder / f"replay-{events}-p{participants}.sqlite3"


def read_and_decode(app: SafetyMonitoring) -> int:
    """The baseline: read every stored event and decode it."""
    after, count = 0, 0
    while batch := app.recorder.select_notifications(
        start=after, limit=1000, inclusive_of_start=False
    ):
        for notification in batch:
            app.mapper.to_domain_event(notification)
        count += len(batch)
        after = batch[-1].id
    return count


def rebuild_read_models(app: SafetyMonitoring) -> Views:
    """The target: every read model the API serves, folded afresh from position zero
    in one pass (``services.api.fold_views``, as ``POST /views/rebuild`` does)."""
    views = Views()
    fold_views(app, views)
    return views


def _rate(events: int, action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return events / (time.perf_counter() - started)


def run_replay_bench(
    *,
    participants: int = 42,
    runs: int = 3,
    full: bool = True,
    out: Path | None = None,
    events: int = DEFAULT_EVENTS,
    store: str | Path | None = None,
) -> ReplayBench:
    """Build (or reuse) the store, time ``runs`` runs and print the table.

    ``participants``: simulated in the base (cohorts of 42, one trial each);
    ``events``: stored events of the measured store; ``store``: its SQLite file (None
    or ``"sqlite"``: :func:`default_store_path`)."""
    console = Console()
    if store == "postgres":
        raise ValueError("the replay bench measures a SQLite store file")
    path = (
        default_store_path(events, participants) if store in (None, "sqlite") else Path(str(store))
    )
    paths: StorePaths = ensure_store(
        path, events=events, participants=participants, say=console.print
    )
    app = open_store(paths.store)
    base = open_store(paths.base) if full and paths.base.exists() else None
    stored = app.recorder.max_notification_id() or 0
    base_events = (base.recorder.max_notification_id() or 0) if base is not None else 0
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "baseline", "rebuild", "ratio", "replay_baseline", "projections",
            "projections_ratio", "full", "full_ratio",
        )
    }  # fmt: skip
    console.print(f"store {paths.store}: {stored:,} stored events")
    try:
        for run in range(1, runs + 1):
            baseline = _rate(stored, lambda: read_and_decode(app))
            rebuild = _rate(stored, lambda: rebuild_read_models(app))
            samples["baseline"].append(baseline)
            samples["rebuild"].append(rebuild)
            samples["ratio"].append(rebuild / baseline)
            line = (
                f"run {run}: read+decode {baseline:,.0f} ev/s, "
                f"rebuild read models {rebuild:,.0f} ev/s ({rebuild / baseline:.2f})"
            )
            if base is not None:
                small, projections, whole = _time_replays(base, base_events)
                samples["replay_baseline"].append(small)
                samples["projections"].append(projections)
                samples["projections_ratio"].append(projections / small)
                samples["full"].append(whole)
                samples["full_ratio"].append(whole / small)
                line += (
                    f"; base store read+decode {small:,.0f}, replay --no-rederive "
                    f"{projections:,.0f}, replay {whole:,.0f} ev/s"
                )
            console.print(line)
    finally:
        app.close()
        if base is not None:
            base.close()
    result = _result(str(paths.store), stored, runs, base_events, samples)
    console.print(_table(result))
    if out is not None:
        payload = result.to_dict() | {"participants": participants}
        out.write_text(json.dumps(payload, indent=2) + "\n")
    return result


def _time_replays(live: SafetyMonitoring, events: int) -> tuple[float, float, float]:
    """read+decode, ``toxwatch replay --no-rederive`` and ``toxwatch replay`` of ``live``."""
    baseline = _rate(events, lambda: read_and_decode(live))
    projections = _rate(
        events, lambda: replay(live, in_memory_application(live.protocol), rederive=False)
    )
    whole = _rate(events, lambda: replay(live, in_memory_application(live.protocol)))
    return baseline, projections, whole


def _result(
    store: str, stored: int, runs: int, base_events: int, samples: dict[str, list[float]]
) -> ReplayBench:
    return ReplayBench(
        store=store,
        events=stored,
        runs=runs,
        baseline_events_per_s=statistics.median(samples["baseline"]),
        rebuild_events_per_s=statistics.median(samples["rebuild"]),
        ratio=statistics.median(samples["ratio"]),
        replay_store_events=base_events or None,
        replay_baseline_events_per_s=median_or_none(samples["replay_baseline"]),
        projections_events_per_s=median_or_none(samples["projections"]),
        projections_ratio=median_or_none(samples["projections_ratio"]),
        full_events_per_s=median_or_none(samples["full"]),
        full_ratio=median_or_none(samples["full_ratio"]),
        samples=samples,
    )


def _table(result: ReplayBench) -> Table:
    table = Table(
        title=f"toxwatch bench replay: stored events/s, medians of {result.runs} runs; "
        "ratio to read+decode of the same store, same run"
    )
    for column, justify in (
        ("operation", "left"),
        ("store", "left"),
        ("stored events", "right"),
        ("events/s", "right"),
        ("ratio", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    big = f"{result.events:,}"
    table.add_row("read+decode (baseline)", "measured", big,
                  f"{result.baseline_events_per_s:,.0f}", "1.00")  # fmt: skip
    table.add_row("rebuild read models (target >= 0.5)", "measured", big,
                  f"{result.rebuild_events_per_s:,.0f}", f"{result.ratio:.2f}")  # fmt: skip
    if result.replay_store_events:
        small = f"{result.replay_store_events:,}"
        table.add_row("read+decode (baseline)", "base", small,
                      f"{result.replay_baseline_events_per_s:,.0f}", "1.00")  # fmt: skip
        table.add_row("toxwatch replay --no-rederive", "base", small,
                      f"{result.projections_events_per_s:,.0f}",
                      f"{result.projections_ratio:.3f}")  # fmt: skip
        table.add_row("toxwatch replay (full)", "base", small,
                      f"{result.full_events_per_s:,.0f}", f"{result.full_ratio:.3f}")  # fmt: skip
    return table
