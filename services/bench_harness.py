"""What the ``toxwatch bench`` commands share: the simulated programme they produce,
a fresh store, ``toxwatch`` child processes, the worker's applied count, resident
memory, and the machine and commit a result was measured on.

The programme: ``ceil(participants / 42)`` trials of the simulator's cohort
(:class:`services.simulator.CohortSpec`: 42 participants enrolled every 5-10 days,
its mix of vitals, ICE, laboratory, PK, medication and investigator events, its
stories, corrections and late deliveries), a new trial opening every
``trial_every_days``, all interleaved by delivery time as the sources would send
them. ``follow_up_days`` shortens every participant's record to fit a run.

Clock ticks: the simulator ticks each trial hourly, about 0.61 ticks per clinical
event over a full 90-day follow-up. A shortened record keeps that proportion (a
tick every ``span / (0.61 × clinical events)``, at least hourly) unless
``tick_hours`` is given, so that ticks (sent to every partition, contract §2) do not
outweigh the clinical events of a short run.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import psycopg

from infra.kafka import reliable_producer
from infra.settings import Settings
from services.application import SafetyMonitoring
from services.bootstrap import build_application
from services.simulator import CohortSpec, SimulatedMessage, simulate_cohort

TRIAL_SIZE = 42
#: Clock ticks per clinical event in the simulator's 90-day record, hourly ticks
#: (10,067 ticks, 16,483 clinical events, seed 1).
TICKS_PER_CLINICAL_EVENT = 0.61
TICK_KEY = b"-"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Programme:
    participants: int = 2000
    follow_up_days: int = 90
    trial_every_days: float = 7.0
    tick_hours: float | None = None
    start: datetime = datetime(2022, 1, 3, 8, 0, tzinfo=UTC)
    trial_prefix: str = "BENCH"

    @property
    def trials(self) -> int:
        return -(-self.participants // TRIAL_SIZE)


@dataclass
class Mix:
    """What a produced stream holds."""

    participants: int
    trials: int
    follow_up_days: int
    tick_every_hours: float
    clinical_events: int
    clock_ticks: int
    messages_produced: int = 0
    partitions: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    @property
    def clinical_per_participant(self) -> float:
        return self.clinical_events / max(self.participants, 1)


def _spec(programme: Programme, index: int, tick_every: timedelta | None) -> CohortSpec:
    size = min(TRIAL_SIZE, programme.participants - index * TRIAL_SIZE)
    return CohortSpec(
        seed=index + 1,
        participants=size,
        start=programme.start + timedelta(days=index * programme.trial_every_days),
        trial_id=f"{programme.trial_prefix}-{index + 1:04d}",
        follow_up_days=programme.follow_up_days,
        malformed=False,
        tick_every=tick_every,
    )


def tick_interval(programme: Programme) -> timedelta:
    """The clock interval (module docstring), from the first trial."""
    if programme.tick_hours is not None:
        return timedelta(hours=programme.tick_hours)
    clinical = simulate_cohort(_spec(programme, 0, None))
    span = max(m.deliver_at for m in clinical) - min(m.deliver_at for m in clinical)
    every = span / (TICKS_PER_CLINICAL_EVENT * len(clinical))
    return max(timedelta(hours=1), timedelta(minutes=round(every.total_seconds() / 60)))


def programme_messages(
    programme: Programme, progress: Callable[[str], None] | None = None
) -> tuple[list[SimulatedMessage], Mix]:
    """The programme's messages in delivery order, and their mix."""
    tick_every = tick_interval(programme)
    cohorts = []
    for index in range(programme.trials):
        cohorts.append(simulate_cohort(_spec(programme, index, tick_every)))
        if progress and (index + 1) % 10 == 0:
            progress(f"simulated {index + 1}/{programme.trials} trials")
    messages = list(heapq.merge(*cohorts, key=lambda m: m.deliver_at))
    return messages, mix_of(messages, programme, tick_every)


def mix_of(messages: Sequence[SimulatedMessage], programme: Programme, tick: timedelta) -> Mix:
    by_type = Counter(json.loads(m.value)["type"] for m in messages)
    ticks = by_type.get("clock.ticked", 0)
    return Mix(
        participants=programme.participants,
        trials=programme.trials,
        follow_up_days=programme.follow_up_days,
        tick_every_hours=tick.total_seconds() / 3600,
        clinical_events=len(messages) - ticks,
        clock_ticks=ticks,
        by_type=dict(by_type.most_common()),
    )


def produce(servers: str, topic: str, messages: Sequence[SimulatedMessage]) -> int:
    """Send keyed by participant, a clock tick to every partition; the count sent."""
    producer = reliable_producer(servers, linger_ms=20, batch_size=256 * 1024)
    partitions = sorted(producer.partitions_for(topic))
    sent = 0
    for message in messages:
        if message.key == TICK_KEY:
            for partition in partitions:
                producer.send(topic, key=message.key, value=message.value, partition=partition)
                sent += 1
        else:
            producer.send(topic, key=message.key, value=message.value)
            sent += 1
    producer.flush()
    producer.close()
    return sent


def applied(app: SafetyMonitoring, topic: str, partitions: int) -> int:
    """Messages of ``topic`` the workers have applied (committed with the store's
    tracking: the next offset of each partition, from 0 on a fresh topic). The one
    place to adapt if positions are tracked differently."""
    return sum(app.ingest_positions(topic, range(partitions)).values())


def first_change(app: SafetyMonitoring, topic: str, partitions: int, timeout: float) -> int:
    """Wait for the first committed batch; the applied count then."""
    wait_for(lambda: applied(app, topic, partitions) > 0, timeout)
    return applied(app, topic, partitions)


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark stage did not finish in time")
        time.sleep(interval)
    return time.perf_counter()


@dataclass
class BenchStore:
    """A fresh store: a SQLite file in its own folder, or a new PostgreSQL schema
    (dropped on exit)."""

    kind: str
    workdir: Path
    name: str = field(default_factory=lambda: f"bench_{uuid.uuid4().hex[:8]}")

    @property
    def data_dir(self) -> Path:
        return self.workdir / self.name

    @property
    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir, store=self.kind, postgres_schema=self.name)

    @property
    def env(self) -> dict[str, str]:
        return {
            "TOXWATCH_DATA_DIR": str(self.data_dir),
            "TOXWATCH_STORE": self.kind,
            "TOXWATCH_POSTGRES_SCHEMA": self.name,
        }

    def __enter__(self) -> BenchStore:
        if self.kind == "postgres":
            with _postgres() as conn:
                conn.execute(f'CREATE SCHEMA "{self.name}"')
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "postgres":
            with _postgres() as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')

    def open(self) -> SafetyMonitoring:
        return build_application(self.settings)


def _postgres() -> psycopg.Connection[Any]:
    s = Settings()
    return psycopg.connect(
        host=s.postgres_host,
        port=s.postgres_port,
        dbname=s.postgres_dbname,
        user=s.postgres_user,
        password=s.postgres_password or None,
        autocommit=True,
    )


def pipeline_env(servers: str, topic: str, partitions: int, store: BenchStore) -> dict[str, str]:
    """The environment of ``toxwatch`` children on ``topic`` and ``store``."""
    return (
        dict(os.environ)
        | {
            "KAFKA_BOOTSTRAP_SERVERS": servers,
            "TOXWATCH_CLINICAL_TOPIC": topic,
            "TOXWATCH_SAFETY_TOPIC": f"{topic}.safety",
            "TOXWATCH_REJECTED_TOPIC": f"{topic}.rejected",
            "TOXWATCH_ALERTS_TOPIC": f"{topic}.alerts",
            "TOXWATCH_CONSUMER_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
            "TOXWATCH_PARTITIONS": str(partitions),
        }
        | store.env
    )


def topics_of(topic: str) -> list[str]:
    return [topic, f"{topic}.safety", f"{topic}.rejected", f"{topic}.alerts"]


def start(
    command: str, env: dict[str, str], log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """``toxwatch <command>`` as a child process."""
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", command],
        env=env,
        cwd=REPO,
        stdout=log or subprocess.DEVNULL,
        stderr=log or subprocess.DEVNULL,
    )


def stop(children: Sequence[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout)


@contextlib.contextmanager
def running(
    commands: Sequence[str], env: dict[str, str]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    children = [start(command, env) for command in commands]
    try:
        yield children
    finally:
        stop(children)


def check_alive(children: Sequence[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is not None:
            raise RuntimeError(f"{child.args!r} exited with {child.returncode}")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux ``/proc``)."""
    return _status_bytes(pid, "VmRSS")


def peak_rss_bytes(pid: int) -> int:
    """The largest resident set size of a process so far (Linux ``/proc``)."""
    return _status_bytes(pid, "VmHWM")


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


def median_or_none(values: Sequence[float | None]) -> float | None:
    """The median of runs' figures; None when there are none or any is unknown (a
    median of some runs only would not be the runs' median)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known and len(known) == len(values) else None


CPUReading = tuple[float, float]


def cpu_seconds() -> CPUReading | None:
    """The whole machine's CPU time so far, summed over its CPUs, from Linux's
    ``/proc/stat``: (busy, all), in clock ticks; None where it cannot be read. Busy is
    all less idle and I/O wait."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    if fields[0] != "cpu":
        return None
    ticks = [float(v) for v in fields[1:9]]  # user … steal; guest time is within user
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def busy_cpus(before: CPUReading | None, after: CPUReading | None) -> float | None:
    """How many of the machine's CPUs were busy, on average, between two
    ``cpu_seconds`` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


def machine() -> dict[str, Any]:
    load1, load5, load15 = os.getloadavg()
    return {
        "cpu_count": os.cpu_count(),
        "load_average": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
