"""``toxwatch fuzz run``: the hostile-input fuzzing of ``tests/fuzz`` for as long as
asked (issue 8). The generators and invariants are ``services.fuzzing``'s; hypothesis
(a development dependency, in ``requirements.lock``) is imported only when it runs."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from services.fuzzing import FloodResult, Stats

fuzz_app = typer.Typer(no_args_is_help=True, help="Hostile-input fuzzing of the ingest path.")


@fuzz_app.callback()
def fuzz() -> None:
    """Hostile-input fuzzing of the ingest path (issue 8)."""


@fuzz_app.command("run")
def run(
    messages: Annotated[
        int, typer.Option("--messages", min=1, help="Hostile messages to generate (at least).")
    ] = 10_000,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Random seed; without one, the derandomized CI plans."),
    ] = None,
    flood: Annotated[
        int,
        typer.Option("--flood", min=0, help="Messages of the one-participant flood (0: none)."),
    ] = 2_000,
) -> None:
    """Fuzz apply_batch with hostile messages and print what became of them.

    Hostile messages are interleaved with a valid control cohort and applied in
    batches, every invariant checked; exit 1 on a crash or a violated invariant (the
    plan that violated it is printed, shrunk)."""
    from services import fuzzing

    console = Console()
    stats = fuzzing.Stats()
    failure: AssertionError | None = None
    flooded: FloodResult | None = None
    try:
        fuzzing.fuzz(stats, messages, seed)
        if flood:
            with tempfile.TemporaryDirectory(prefix="toxwatch-fuzz-") as folder:
                app = fuzzing.sqlite_file_application(str(Path(folder) / "flood.sqlite3"))
                try:
                    flooded = fuzzing.flood(app, stats, flood)
                finally:
                    app.close()
    except AssertionError as error:
        failure = error
    console.print(summary(stats, flooded, seed))
    if failure is not None:
        console.print(f"[red]FAILED[/red] {type(failure).__name__}: {failure}", markup=True)
        raise typer.Exit(1)
    if stats.crashes or stats.violations:
        raise typer.Exit(1)


def summary(stats: Stats, flooded: FloodResult | None, seed: int | None) -> Table:
    """What the run sent and what became of it."""
    table = Table(title=f"toxwatch fuzz run (seed {'derandomized' if seed is None else seed})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows: list[tuple[str, object]] = [
        ("plans", stats.plans),
        ("batches", stats.batches),
        ("messages (with the control cohort)", stats.messages),
        ("hostile messages generated", stats.hostile),
        ("accepted", stats.accepted),
        ("rejected", stats.rejected),
        *((f"  rejected {code}", n) for code, n in sorted(stats.rejected_by_code.items())),
        ("duplicates", stats.duplicates),
        ("already applied (redelivered)", stats.already_applied),
        (
            "control event ids replayed for another participant, applied",
            stats.cross_participant_replays_applied,
        ),
        ("crashes", stats.crashes),
        ("invariant violations", stats.violations),
        ("max RSS (MiB)", f"{stats.max_rss_bytes / 2**20:.0f}"),
        ("seconds", f"{stats.seconds:.1f}"),
    ]
    if flooded is not None:
        rows += [
            ("flood messages (one participant)", flooded.messages),
            ("flood RSS growth, second half (MiB)", f"{flooded.growth / 2**20:.1f}"),
            ("flood seconds", f"{flooded.seconds:.1f}"),
        ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table
