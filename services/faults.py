"""Fault injection: the whole pipeline under faults, compared with the no-fault result.

``toxwatch faults run --runs N --kinds worker,relay,...`` streams a simulated cohort
through an embedded broker into the worker, the trial monitor, the alerts process,
the relay and the dispatcher (each a ``toxwatch`` subprocess), injects one kind of
fault several times per run at random points, lets the pipeline finish, and compares
what it recorded and published with the no-fault result:

- each participant's record (the clinical event ids, in order) and derived events
  (ids and content) with ``services.offline.process_lines`` on the same stream;
- the trial monitor's findings (latest per key, ``revises`` dropped, withdrawn ones
  removed: the live monitor may publish corrections the offline one does not) with
  the offline ones;
- the alert events with a replay of the run's own log by a fresh alerts process (alerts
  depend on how participants interleave in the log, which differs per run);
- the safety topic with the store (every derived event published once), the webhook
  and Kafka alert endpoints with the alert log (every wanted alert delivered; a resend
  after a kill carries the same idempotency key and is counted apart, as ``resent``).

Kinds (``FAULT_KINDS``): SIGKILL of each process; the embedded broker killed and
restarted mid-stream (in-memory storage: what it held is gone with it; the harness,
as a producer with an outbox, reports what the broker had acknowledged and lost
before the store applied it, ``broker_lost``, and sends it again); PostgreSQL
connections terminated (``pg_terminate_backend`` on the run's own connections, found by
their ``application_name``; the server is never stopped); the SQLite store full (the
processes' file-size limit lowered with ``prlimit``) or read-only (``chattr +i`` on
its folder and files, since root ignores permission bits). A process that exits is
restarted, as a supervisor would (``restart: unless-stopped``); one that stays up
without making progress is a failed run.

The report (one row per run and a table per kind) is printed and written as JSON to
``--report`` or ``TOXWATCH_FAULTS_REPORT``. The command exits 1 when any run lost,
duplicated or mismatched anything, or stalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from infra.settings import Settings

if TYPE_CHECKING:
    from infra.broker import EmbeddedBroker
    from services.simulator import SimulatedMessage

FAULT_KINDS: dict[str, str] = {
    "none": "no fault (the pipeline's own result against the reference)",
    "worker": "SIGKILL the ingest worker at random points, restart it",
    "relay": "SIGKILL the relay at random points, restart it",
    "monitor": "SIGKILL the trial monitor at random points, restart it",
    "alerts": "SIGKILL the alerts process at random points, restart it",
    "dispatcher": "SIGKILL the dispatcher at random points, restart it",
    "broker": "SIGKILL the embedded broker mid-ingest, restart it on the same port, resend",
    "postgres": "terminate the pipeline's PostgreSQL connections in bursts at random points",
    "sqlite-full": "SQLite store full for a few seconds (file-size limit of the processes)",
    "sqlite-readonly": "SQLite store read-only for a few seconds (chattr +i)",
}
#: Kinds that need one store; the others alternate PostgreSQL and SQLite by run.
STORE_OF_KIND = {"postgres": "postgres", "sqlite-full": "sqlite", "sqlite-readonly": "sqlite"}
SERVICES = ("worker", "monitor", "alerts", "relay", "dispatcher")
KILLED_SERVICE = {k: k for k in ("worker", "relay", "monitor", "alerts", "dispatcher")}
PARTITIONS = 4
WEBHOOK_SECRET = "toxwatch-faults-secret"
REPORT_ENV = "TOXWATCH_FAULTS_REPORT"
REPLACEMENT_NOTE = "the worker recorded the inbound topic's replacement"
_SERVICE_PREFIXES = ("TOXWATCH_", "KAFKA_BOOTSTRAP_SERVERS", "PGAPPNAME")


# ---------------------------------------------------------------- results


@dataclass
class RunResult:
    """One run of one fault kind: what went in, what came out, what differed."""

    kind: str
    run: int
    store: str
    seed: int
    events_in: int = 0
    derived_out: int = 0
    faults: int = 0
    restarts: int = 0
    lost: int = 0
    duplicated: int = 0
    mismatches: int = 0
    resent: int = 0
    #: Sends the broker acknowledged and lost (its restart) before the store applied
    #: them: reported by the producer from its outbox and sent again, not lost.
    broker_lost: int = 0
    stalled: int = 0
    seconds: float = 0.0
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.skipped is not None or (
            self.lost == 0 and self.duplicated == 0 and self.mismatches == 0 and self.stalled == 0
        )

    def count(self, what: str, n: int, note: str) -> None:
        if n:
            setattr(self, what, getattr(self, what) + n)
            self.notes.append(f"{what} {n}: {note}")


def summary_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per kind: runs and the totals of its runs."""
    rows = []
    for kind in dict.fromkeys(r.kind for r in results):
        mine = [r for r in results if r.kind == kind and r.skipped is None]
        rows.append(
            {
                "kind": kind,
                "runs": len(mine),
                "skipped": sum(r.skipped is not None for r in results if r.kind == kind),
                "stores": ",".join(sorted({r.store for r in mine})),
                **{
                    name: sum(getattr(r, name) for r in mine)
                    for name in (
                        "faults",
                        "events_in",
                        "derived_out",
                        "lost",
                        "duplicated",
                        "mismatches",
                        "resent",
                        "broker_lost",
                        "restarts",
                        "stalled",
                    )
                },
                "ok": all(r.ok for r in results if r.kind == kind),
            }
        )
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = (
        "kind",
        "runs",
        "stores",
        "faults",
        "events_in",
        "derived_out",
        "lost",
        "duplicated",
        "mismatches",
        "resent",
        "broker_lost",
        "restarts",
        "stalled",
        "ok",
    )
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


# ---------------------------------------------------------------- reference


@dataclass
class Reference:
    """The no-fault result of a stream: ``process_lines`` on it, in one partition."""

    messages: list[SimulatedMessage]
    participants: set[tuple[str, str]]
    records: dict[str, list[str]]
    derived: dict[str, list[dict[str, Any]]]
    findings: dict[str, Any]

    @classmethod
    def of(cls, messages: list[SimulatedMessage]) -> Reference:
        import io

        from services.offline import in_memory_application, process_lines

        app = in_memory_application()
        out = io.StringIO()
        process_lines((m.value for m in messages), out, app=app)
        events = [json.loads(line) for line in out.getvalue().splitlines()]
        participants = participants_of(m.value for m in messages)
        try:
            records = recorded_event_ids(app, participants)
        finally:
            app.close()
        return cls(
            messages,
            participants,
            records,
            per_participant(participant_level(events)),
            trial_findings(events),
        )


def participants_of(values: Iterable[bytes]) -> set[tuple[str, str]]:
    found = set()
    for value in values:
        try:
            document = json.loads(value)
        except ValueError:
            continue
        if isinstance(document, dict) and document.get("participant_id", "-") != "-":
            found.add((document["trial_id"], document["participant_id"]))
    return found


def recorded_event_ids(app: Any, participants: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """The clinical event ids each participant's record holds, in recording order."""
    from eventsourcing.application import AggregateNotFoundError

    records = {}
    for trial_id, participant_id in sorted(participants):
        try:
            entries = app.get_participant(trial_id, participant_id).entries
        except AggregateNotFoundError:
            entries = []
        records[f"{trial_id}/{participant_id}"] = [entry.event_id for entry in entries]
    return records


def participant_level(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["participant_id"] != "-" and not e["type"].startswith("alert.")]


def comparable(event: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in event.items() if name != "recorded_at"}


def per_participant(events: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        key = f"{event['trial_id']}/{event['participant_id']}"
        grouped.setdefault(key, []).append(comparable(event))
    return grouped


def trial_findings(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The trial monitor's events by key, the latest of each, without ``revises``,
    less those withdrawn (as ``tests/integration/test_trial_monitor_pipeline``)."""
    state: dict[str, Any] = {}
    for event in events:
        if event["type"].startswith("alert."):
            continue
        data = dict(event["data"])
        key = data.get("key", "")
        if event["participant_id"] != "-" and not str(key).startswith("trial-deviation:"):
            continue
        data.pop("revises", None)
        state[key] = [event["type"], event["effective_at"], data]
    return {key: value for key, value in state.items() if not value[2].get("withdrawn")}


def compare_sequences(
    result: RunResult, what: str, actual: Mapping[str, list[Any]], expected: Mapping[str, list[Any]]
) -> None:
    """Per key: ids missing (lost), ids extra (duplicated), a different order or content
    (mismatches). Items are ids, or events (compared by ``event_id`` and content)."""
    lost = duplicated = mismatched = 0
    for key in sorted(set(actual) | set(expected)):
        got, want = actual.get(key, []), expected.get(key, [])
        got_ids = Counter(_identity(x) for x in got)
        want_ids = Counter(_identity(x) for x in want)
        missing = sum((want_ids - got_ids).values())
        extra = sum((got_ids - want_ids).values())
        lost += missing
        duplicated += extra
        if not missing and not extra and got != want:
            mismatched += 1
    result.count("lost", lost, f"{what} missing")
    result.count("duplicated", duplicated, f"{what} extra or repeated")
    result.count("mismatches", mismatched, f"{what}: participants whose order or content differ")


def _identity(item: Any) -> str:
    return str(item["event_id"]) if isinstance(item, dict) else str(item)


# ---------------------------------------------------------------- processes


def toxwatch_executable() -> str:
    beside = Path(sys.executable).parent / "toxwatch"
    found = str(beside) if beside.exists() else shutil.which("toxwatch")
    if found is None:
        raise RuntimeError("no `toxwatch` executable (is the project installed?)")
    return found


@dataclass
class Process:
    command: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Supervisor:
    """Runs the pipeline's ``toxwatch`` subprocesses and restarts any that exits."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, app_name: str) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.app_name = app_name
        self.processes: dict[str, Process] = {}
        self.generations: Counter[str] = Counter()
        self.restarts = 0
        self.crashes: list[str] = []

    def start(self, command: str) -> Process:
        base = {k: v for k, v in os.environ.items() if not k.startswith(_SERVICE_PREFIXES)}
        env = base | {"PYTHONUNBUFFERED": "1", "PGAPPNAME": f"{self.app_name}-{command}"}
        env |= self.env
        generation = self.generations[command]
        self.generations[command] += 1
        log_path = self.log_dir / f"{command}-{generation}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [toxwatch_executable(), command],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(command, popen, log_path)
        self.processes[command] = process
        return process

    def kill(self, command: str) -> None:
        """SIGKILL a service and start it again at once."""
        process = self.processes[command]
        process.signal(signal.SIGKILL)
        process.popen.wait(10)
        self.start(command)

    def check(self) -> None:
        """Restart what exited (as ``restart: unless-stopped`` would)."""
        for command, process in list(self.processes.items()):
            code = process.popen.poll()
            if code is not None:
                self.crashes.append(f"{command} exited {code}: {process.tail(3)!r}")
                self.restarts += 1
                self.start(command)

    @contextlib.contextmanager
    def paused(self, *commands: str) -> Iterator[None]:
        """SIGSTOP services for the length of the block and SIGCONT them after it,
        whatever happens in it (a service is never left stopped). A stopped process is
        alive to ``check`` (``poll`` reports exits, not stops): it is neither counted
        as exited nor started a second time."""
        stopped = [self.processes[command] for command in commands]
        for process in stopped:
            process.signal(signal.SIGSTOP)
        try:
            yield
        finally:
            for process in stopped:
                process.signal(signal.SIGCONT)

    def restart_all(self) -> None:
        """SIGKILL every service and start it again (what an operator does to a stuck
        pipeline)."""
        for command in list(self.processes):
            self.kill(command)

    def pids(self) -> list[int]:
        return [p.popen.pid for p in self.processes.values() if p.alive()]

    def stop_all(self, timeout: float = 10.0) -> None:
        for process in self.processes.values():
            process.signal(signal.SIGTERM)
            process.signal(signal.SIGCONT)  # a stopped process acts on it once continued
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.signal(signal.SIGKILL)
                process.popen.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.command}\n{p.tail()}" for p in self.processes.values())


# ---------------------------------------------------------------- Kafka


#: One send of an outbox: a message and its partition (None: its key's).
Send = tuple["SimulatedMessage", int | None]


def outbox_of(messages: Iterable[SimulatedMessage], partitions: int = PARTITIONS) -> list[Send]:
    """The sends of ``messages``, in order: each keyed by participant to its key's
    partition, a clock tick to every partition (contract §2)."""
    return [
        (message, partition)
        for message in messages
        for partition in (range(partitions) if _is_tick(message) else (None,))
    ]


def send_outbox(
    servers: str, topic: str, outbox: Sequence[Send], *, attempts: int = 5
) -> tuple[list[tuple[int, int]], int]:
    """Send each entry with the idempotent producer; what it reports undelivered is
    sent again, in order.

    Returns the (partition, offset) the broker acknowledged for each entry and how many
    sends the producer reported failed (each of those was then delivered, or this
    raises)."""
    from kafka.errors import KafkaError

    from infra.kafka import reliable_producer

    pending = list(range(len(outbox)))
    acked: list[tuple[int, int] | None] = [None] * len(outbox)
    reported = 0
    for attempt in range(1, attempts + 1):
        producer = reliable_producer(servers, max_block_ms=30_000)
        try:
            futures = []
            for index in pending:
                message, partition = outbox[index]
                future = producer.send(
                    topic, key=message.key, value=message.value, partition=partition
                )
                futures.append((index, future))
            producer.flush(timeout=60)
            failed: list[int] = []
            for index, future in futures:
                try:
                    metadata = future.get(timeout=30)
                except KafkaError:
                    failed.append(index)
                    continue
                acked[index] = (metadata.partition, metadata.offset)
        finally:
            producer.close(timeout=10)
        reported += len(failed)
        if not failed:
            return [placement for placement in acked if placement is not None], reported
        pending = failed
        time.sleep(min(2.0, 0.2 * attempt))
    raise RuntimeError(f"{len(pending)} sends undelivered after {attempts} attempts")


def ends_of(placements: Iterable[tuple[int, int]]) -> dict[int, int]:
    """The next offset of each partition written to."""
    ends: dict[int, int] = {}
    for partition, offset in placements:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def produce(
    servers: str,
    topic: str,
    messages: Sequence[SimulatedMessage],
    *,
    attempts: int = 5,
) -> tuple[dict[int, int], int]:
    """Send ``messages`` (``outbox_of``) with ``send_outbox``: the next offset of each
    partition, and how many sends the producer reported failed."""
    placements, reported = send_outbox(servers, topic, outbox_of(messages), attempts=attempts)
    return ends_of(placements), reported


def _is_tick(message: SimulatedMessage) -> bool:
    """A trial-level ``clock.ticked``: written to every partition (contract §2)."""
    try:
        document = json.loads(message.value)
    except ValueError:
        return False
    return (
        isinstance(document, dict)
        and document.get("type") == "clock.ticked"
        and document.get("participant_id") == "-"
    )


@dataclass(frozen=True)
class Published:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def event_id(self) -> str | None:
        """The id of the event (or alert) it carries, as JSON."""
        document = json.loads(self.value or b"{}")
        return document.get("event_id") if isinstance(document, dict) else None


def read_topic(servers: str, topic: str, timeout: float = 30.0) -> list[Published]:
    """Every message of ``topic`` up to the end of each partition (the fetch high
    watermark: tansu's ListOffsets answer can be short of the end)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Published] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for tp, batch in consumer.poll(timeout_ms=200).items():
                records.extend(
                    Published(
                        tp.partition,
                        m.offset,
                        m.key,
                        m.value,
                        tuple((k, bytes(v)) for k, v in m.headers or ()),
                    )
                    for m in batch
                )
            ends = [consumer.highwater(tp) for tp in tps]
            if all(
                h is not None and consumer.position(tp) >= h
                for tp, h in zip(tps, ends, strict=True)
            ):
                break
        return records
    finally:
        consumer.close()


def committed_offsets(servers: str, group: str, topic: str) -> dict[int, int]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


# ---------------------------------------------------------------- stores


def postgres_reachable(settings: Settings) -> str | None:
    """None if the configured PostgreSQL answers, else why not."""
    import psycopg

    try:
        psycopg.connect(**_pg_params(settings), connect_timeout=3).close()
    except psycopg.Error as error:
        return f"PostgreSQL unreachable: {error}".strip()
    return None


def _pg_params(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.postgres_host,
        "port": settings.postgres_port,
        "dbname": settings.postgres_dbname,
        "user": settings.postgres_user,
        "password": settings.postgres_password,
    }


@contextlib.contextmanager
def postgres_schema(settings: Settings) -> Iterator[str]:
    """A schema of the run's own, dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"tw_faults_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**_pg_params(settings), autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(**_pg_params(settings), autocommit=True) as connection:
            connection.execute("SET lock_timeout = '20s'")
            connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def terminate_connections(settings: Settings, app_name_prefix: str) -> int:
    """``pg_terminate_backend`` on every connection whose ``application_name`` starts
    with the prefix (the run's own services); how many were terminated."""
    import psycopg

    with psycopg.connect(**_pg_params(settings), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
            (app_name_prefix.replace("_", r"\_") + "-%",),
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def chattr(paths: Iterable[Path], flag: str) -> None:
    """Set or clear a file attribute (``+i``: immutable, even for root)."""
    for path in paths:
        if not path.exists():
            continue
        try:
            subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            if path.exists():  # not a file that went away meanwhile
                raise


def sqlite_files(path: Path) -> list[Path]:
    return [path.parent, *(Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm", "-journal"))]


def chattr_available(folder: Path) -> str | None:
    probe = folder / "chattr-probe"
    probe.write_bytes(b"")
    try:
        chattr([probe], "+i")
        chattr([probe], "-i")
    except (OSError, subprocess.CalledProcessError) as error:
        return f"chattr +i unavailable here ({error})"
    finally:
        probe.unlink(missing_ok=True)
    return None


def limit_file_size(pids: Iterable[int], limit: int | None) -> None:
    """The largest file the processes may write (None: unlimited). Python ignores
    SIGXFSZ, so a write past it fails with EFBIG, which SQLite reports as a disk I/O
    error (a full disk, ENOSPC, is its "database or disk is full": the same
    ``OperationalError`` to the application)."""
    value = resource.RLIM_INFINITY if limit is None else limit
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (value, value))


# ---------------------------------------------------------------- one run


@dataclass
class Options:
    participants: int = 6
    follow_up_days: int = 21
    seed: int = 79
    faults_per_run: int = 3
    workdir: Path = Path(".")
    keep: bool = False
    timeout: float = 300.0
    stall_seconds: float = 30.0
    verbose: bool = False


class Run:
    """One pipeline run with one kind of fault."""

    def __init__(
        self,
        kind: str,
        index: int,
        store: str,
        broker: EmbeddedBroker,
        reference: Reference,
        options: Options,
        settings: Settings,
    ) -> None:
        self.kind = kind
        self.store = store
        self.broker = broker
        self.reference = reference
        self.options = options
        self.base_settings = settings
        self.rng = random.Random(f"{options.seed}/{kind}/{index}")
        self.result = RunResult(kind, index, store, options.seed)
        self.namespace = f"f{uuid.uuid4().hex[:10]}"
        self.dir = options.workdir / f"{kind}-{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.topics = {
            name: f"{self.namespace}.{name}"
            for name in ("clinical", "clinical.rejected", "safety", "alerts")
        }
        self.group = f"{self.namespace}-ingest"
        self.app_name = f"toxwatch_faults_{self.namespace}"
        self.ends: dict[int, int] = {}
        #: What the broker held on the safety and the Kafka alerts topic ("safety",
        #: "alerts") when it was restarted: published before the restart, gone with it.
        self.gone: dict[str, list[Published]] = {"safety": [], "alerts": []}

    # -------------------------------------------------------------- set up

    @property
    def servers(self) -> str:
        return self.broker.bootstrap_servers

    def settings_env(self, schema: str | None) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.servers,
            "TOXWATCH_CLINICAL_TOPIC": self.topics["clinical"],
            "TOXWATCH_REJECTED_TOPIC": self.topics["clinical.rejected"],
            "TOXWATCH_SAFETY_TOPIC": self.topics["safety"],
            "TOXWATCH_ALERTS_TOPIC": self.topics["alerts"],
            "TOXWATCH_CONSUMER_GROUP": self.group,
            "TOXWATCH_PARTITIONS": str(PARTITIONS),
            "TOXWATCH_STORE": self.store,
            "TOXWATCH_DATA_DIR": str(self.dir / "data"),
            "TOXWATCH_ALERT_ENDPOINTS_FILE": str(self.dir / "endpoints.toml"),
            "TOXWATCH_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TOXWATCH_DISPATCH_MAX_BACKOFF_SECONDS": "2",
            "TOXWATCH_METRICS_PORT": "0",
        }
        if schema is not None:
            s = self.base_settings
            env |= {
                "TOXWATCH_POSTGRES_HOST": s.postgres_host,
                "TOXWATCH_POSTGRES_PORT": str(s.postgres_port),
                "TOXWATCH_POSTGRES_DBNAME": s.postgres_dbname,
                "TOXWATCH_POSTGRES_USER": s.postgres_user,
                "TOXWATCH_POSTGRES_PASSWORD": s.postgres_password,
                "TOXWATCH_POSTGRES_SCHEMA": schema,
            }
        return env

    def endpoints(self, webhook_url: str) -> Any:
        from services.dispatcher import Endpoint

        (self.dir / "endpoints.toml").write_text(
            f'[[endpoints]]\nid = "integrations"\nkind = "kafka"\n'
            f'topic = "{self.topics["alerts"]}"\n'
            f'\n[[endpoints]]\nid = "safety-desk"\nkind = "webhook"\nurl = "{webhook_url}"\n'
        )
        return (
            Endpoint(id="integrations", kind="kafka", topic=self.topics["alerts"]),
            Endpoint(id="safety-desk", kind="webhook", url=webhook_url),
        )

    def execute(self) -> RunResult:
        started = time.monotonic()
        try:
            with contextlib.ExitStack() as stack:
                schema = None
                if self.store == "postgres":
                    schema = stack.enter_context(postgres_schema(self.base_settings))
                self._execute(stack, schema)
        finally:
            self.result.seconds = round(time.monotonic() - started, 1)
            if not self.options.keep and self.result.ok:
                shutil.rmtree(self.dir, ignore_errors=True)
        return self.result

    def _execute(self, stack: contextlib.ExitStack, schema: str | None) -> None:
        from infra.broker import ensure_topics
        from infra.receivers import WebhookReceiver
        from services.bootstrap import build_application

        ensure_topics(self.servers, self.topics.values(), PARTITIONS)
        receiver = stack.enter_context(WebhookReceiver(WEBHOOK_SECRET.encode()))
        endpoints = self.endpoints(receiver.url)
        env = self.settings_env(schema)
        settings = Settings(**{k[len("TOXWATCH_") :].lower(): v for k, v in env.items()
                               if k.startswith("TOXWATCH_")})  # fmt: skip
        app = build_application(settings)
        stack.callback(app.close)
        supervisor = Supervisor(env, self.dir / "logs", self.app_name)
        stack.callback(supervisor.stop_all)
        if self.kind == "sqlite-readonly":
            stack.callback(chattr, sqlite_files(settings.sqlite_path), "-i")
        if self.kind == "sqlite-full":
            stack.callback(lambda: limit_file_size(supervisor.pids(), None))
        for command in SERVICES:
            supervisor.start(command)
        self.result.events_in = len(self.reference.messages)
        inject = self.injector(app, supervisor, settings)
        if self.kind == "broker":
            self.stream_through_broker_restart(app, supervisor)
        else:
            self.ends, reported = produce(
                self.servers, self.topics["clinical"], self.reference.messages
            )
            self.result.count("resent", reported, "clinical sends the producer reported failed")
            target = KILLED_SERVICE.get(self.kind)
            marker = None
            for fraction in sorted(self.rng.uniform(0.1, 0.9) for _ in range(self.faults())):
                if not self.wait(
                    lambda f=fraction: self.applied(app) >= f * self.total(), app, supervisor
                ):
                    break
                if target is not None:
                    # Each kill lands on a process at work, not on one still starting.
                    self.wait(
                        lambda m=marker: self.progress(app, target) != m,
                        app,
                        supervisor,
                        timeout=15,
                    )
                time.sleep(self.rng.uniform(0, 0.3))
                inject()
                if target is not None:
                    marker = self.progress(app, target)
        for attempt in (1, 2):
            if self.drain(app, supervisor, endpoints, receiver, restarted=attempt > 1):
                break
            self.result.stalled += 1
            topic = self.topics["clinical"]
            with contextlib.suppress(Exception):
                self.result.notes.append(
                    f"at the stall the store had applied {self.tracked(app)} of {self.ends}; "
                    f"Kafka offsets committed: {committed_offsets(self.servers, self.group, topic)}"
                )
            self.result.notes.append(
                f"stalled (no progress for {self.options.stall_seconds:g} s); "
                "every service restarted:\n" + supervisor.logs()
            )
            if attempt == 1:
                supervisor.restart_all()
        supervisor.stop_all()
        self.result.restarts = supervisor.restarts
        for crash in supervisor.crashes:
            self.result.notes.append(f"restarted after it exited: {crash}"[:300])
        self.check(app, endpoints, receiver)

    def faults(self) -> int:
        return 0 if self.kind == "none" else self.options.faults_per_run

    def total(self) -> int:
        return sum(self.ends.values())

    # -------------------------------------------------------------- faults

    def injector(self, app: Any, supervisor: Supervisor, settings: Settings) -> Callable[[], None]:
        kind = self.kind
        result = self.result

        def kill() -> None:
            supervisor.kill(KILLED_SERVICE[kind])
            result.faults += 1

        def connections() -> None:
            # A burst: each connection the pool opens again is terminated too, so
            # every kind of statement (reads as well as commits) meets a dead one.
            terminated = 0
            until = time.monotonic() + self.rng.uniform(1.0, 2.0)
            while time.monotonic() < until:
                terminated += terminate_connections(self.base_settings, self.app_name)
                time.sleep(self.rng.uniform(0.05, 0.15))
            result.faults += 1
            result.notes.append(f"terminated {terminated} connections")

        def full() -> None:
            path = settings.sqlite_path
            size = max((p.stat().st_size for p in sqlite_files(path)[1:] if p.exists()), default=0)
            limit_file_size(supervisor.pids(), size)
            time.sleep(self.rng.uniform(1.0, 3.0))
            limit_file_size(supervisor.pids(), None)
            result.faults += 1

        def read_only() -> None:
            files = sqlite_files(settings.sqlite_path)
            chattr(files, "+i")
            try:
                time.sleep(self.rng.uniform(1.0, 3.0))
            finally:
                chattr(files, "-i")
            result.faults += 1

        def nothing() -> None:
            return None

        if kind in KILLED_SERVICE:
            return kill
        return {
            "postgres": connections,
            "sqlite-full": full,
            "sqlite-readonly": read_only,
        }.get(kind, nothing)

    def stream_through_broker_restart(self, app: Any, supervisor: Supervisor) -> None:
        """Produce a first part and kill the broker at a random point of its ingest (the
        worker may still be consuming it; the relay and the dispatcher publishing; all
        three stopped around the restart: ``restart_broker``); start it again on the same
        port (in memory: empty) and create the topics as ``toxwatch broker`` does. The
        worker finds the inbound topic replaced and records it; once it has, the
        positions of the old topic no longer move, and the harness, as a producer with
        an outbox, reports the sends the broker had acknowledged at or past them (the
        broker lost them before the store applied them: ``broker_lost``) and sends them
        again before the rest."""
        messages = self.reference.messages
        topic = self.topics["clinical"]
        split = int(len(messages) * self.rng.uniform(0.3, 0.6))
        outbox = outbox_of(messages[:split])
        acked, reported = send_outbox(self.servers, topic, outbox)
        self.result.count("resent", reported, "clinical sends the producer reported failed")
        self.ends = ends_of(acked)
        fraction = self.rng.uniform(0.3, 1.0)
        # The worker may take a while to start on a busy machine.
        self.wait(lambda: self.applied(app) > 0, app, supervisor, stall=120)
        self.wait(lambda: self.applied(app) >= fraction * self.total(), app, supervisor)
        time.sleep(self.rng.uniform(0, 0.3))
        before = app.ingest_source(topic)
        incarnation = before.incarnation if before is not None else 0
        # The worker is stopped too, so that the broker dies where the worker had got
        # to: in the pause it would otherwise apply the rest of the first part, and the
        # broker would lose nothing the store had not applied (``broker_lost`` 0).
        with supervisor.paused("worker", "relay", "dispatcher"):
            self.restart_broker(app)
        self.result.faults += 1
        stored = self.old_positions(app, supervisor, incarnation)
        lost = [
            (message, partition)
            for (message, _), (partition, offset) in zip(outbox, acked, strict=True)
            if offset >= stored.get(partition, 0)
        ]
        self.result.broker_lost = len(lost)
        self.result.notes.append(
            f"the broker lost {len(lost)} of the {len(outbox)} sends it had acknowledged "
            f"(ends {self.ends}) before the store applied them (positions {stored}): "
            "sent again before the rest"
        )
        placements, reported = send_outbox(
            self.servers, topic, [*lost, *outbox_of(messages[split:])]
        )
        self.result.count("resent", reported, "clinical sends the producer reported failed")
        self.ends = ends_of(placements)

    def restart_broker(self, app: Any) -> None:
        """Kill the broker and start it again (empty), the services that use it stopped
        around it (``Supervisor.paused``). Which derived events and alerts went with it cannot be
        told from the relay's and the dispatcher's positions: they record one only once
        a whole batch is acknowledged, and a batch in flight at the kill may have part
        of its sends acknowledged by the old broker (gone with it) and the rest sent
        again to the new one, the position recorded later still. So, once the broker
        has answered what they had already sent (a second), the harness reads what it
        holds on the safety and the Kafka alerts topics: that, and only that, is gone
        (``check_published``, ``check_delivered``); what they send after it goes to the
        new broker."""
        time.sleep(1.0)
        self.gone = {
            name: read_topic(self.servers, self.topics[name]) for name in ("safety", "alerts")
        }
        self.result.notes.append(
            f"the store had applied {self.tracked(app)} of {self.ends} when the broker was killed"
        )
        process = self.broker.process
        assert process is not None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        self.broker.process = None
        self.broker.start()
        from infra.broker import ensure_topics

        ensure_topics(self.servers, self.topics.values(), PARTITIONS)

    def old_positions(self, app: Any, supervisor: Supervisor, incarnation: int) -> dict[int, int]:
        """The positions the store applied of the topic the broker lost: final once the
        worker has bound the new topic (recorded the replacement, or bound it first if
        it had applied nothing), then checked not to move."""
        from infra.kafka import TopicIds

        topic = self.topics["clinical"]
        topic_ids = TopicIds(self.servers)
        try:
            identity = topic_ids(topic)
        finally:
            topic_ids.close()

        def bound() -> bool:
            source = app.ingest_source(topic)
            return (
                source is not None and identity is not None and source.topic_id == identity.topic_id
            )

        if not self.wait(bound, app, supervisor, timeout=120, stall=120):
            self.result.notes.append("the worker did not bind the new topic after the restart")
        source = app.ingest_source(topic)
        if source is not None and source.incarnation > incarnation:
            self.result.notes.append(f"{REPLACEMENT_NOTE} (incarnation {source.incarnation})")
        last: dict[int, int] | None = None

        def still() -> bool:
            nonlocal last
            now = app.ingest_positions(topic, range(PARTITIONS), incarnation=incarnation)
            settled, last = now == last, now
            if not settled:
                time.sleep(1.0)
            return settled

        self.wait(still, app, supervisor, timeout=60)
        return app.ingest_positions(topic, range(PARTITIONS), incarnation=incarnation)

    # -------------------------------------------------------------- waiting

    def wait(
        self,
        predicate: Callable[[], bool],
        app: Any,
        supervisor: Supervisor,
        *,
        timeout: float | None = None,
        stall: float | None = None,
    ) -> bool:
        """Poll ``predicate``, restarting exited services; False after ``timeout`` or
        once the pipeline has made no progress for ``stall`` (``stall_seconds``)."""
        deadline = time.monotonic() + (timeout or self.options.timeout)
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            supervisor.check()
            try:
                if predicate():
                    return True
                state = self.state(app)
            except Exception as error:  # the store or the broker is what is failing
                if self.options.verbose:
                    print(f"  waiting: {type(error).__name__}: {error}", file=sys.stderr)
                state = None
            if state != last:
                last, since = state, time.monotonic()
            elif time.monotonic() - since > (stall or self.options.stall_seconds):
                return False
            time.sleep(0.1)
        return False

    def state(self, app: Any) -> tuple[Any, ...]:
        """What changes while the pipeline makes progress: the positions (not the log's
        end: a dispatcher retrying a failed delivery records each failure)."""
        names = (
            "relay",
            "trial-monitor",
            "alerts",
            "dispatch:integrations",
            "dispatch:safety-desk",
        )
        committed: tuple[Any, ...] = ()
        if self.kind == "broker":
            topic = self.topics["clinical"]
            committed = tuple(sorted(committed_offsets(self.servers, self.group, topic).items()))
        return (
            tuple(self.tracked(app).values()),
            tuple(app.tracked(name) for name in names),
            committed,
        )

    def progress(self, app: Any, service: str) -> Any:
        """How far one service has got."""
        if service == "worker":
            return self.applied(app)
        if service == "dispatcher":
            return (app.tracked("dispatch:integrations"), app.tracked("dispatch:safety-desk"))
        return app.tracked({"monitor": "trial-monitor"}.get(service, service))

    def tracked(self, app: Any) -> dict[int, int]:
        """The store's positions in the inbound topic's current incarnation."""
        return app.ingest_positions(self.topics["clinical"], self.ends)

    def applied(self, app: Any) -> int:
        return sum(self.tracked(app).values())

    def ingested(self, app: Any, *, or_committed: bool = False) -> bool:
        """Whether the worker is through the stream: the store applied every message
        (of the topic's current incarnation, after a broker restart). With
        ``or_committed``, also once the group has committed the ends without the store
        applying them all (nothing more will come: what is missing is lost)."""
        if self.tracked(app) == self.ends:
            return True
        if not or_committed:
            return False
        committed = committed_offsets(self.servers, self.group, self.topics["clinical"])
        return all(committed.get(p, 0) >= end for p, end in self.ends.items())

    def caught_up(self, app: Any, endpoints: Sequence[Any]) -> bool:
        from services.alerts import ALERTS_TRACKING
        from services.alerts import INPUT_TOPICS as ALERT_INPUTS
        from services.application import REJECTION_TOPIC, SAFETY_EVENT_TOPICS
        from services.dispatcher import ALERT_TOPICS
        from services.monitor import INPUT_TOPICS as MONITOR_INPUTS
        from services.monitor import MONITOR_TRACKING
        from services.relay import RELAY_NAME

        followers = [
            (MONITOR_TRACKING, MONITOR_INPUTS),
            (ALERTS_TRACKING, ALERT_INPUTS),
            (RELAY_NAME, (*SAFETY_EVENT_TOPICS, REJECTION_TOPIC)),
            *((f"dispatch:{e.id}", ALERT_TOPICS) for e in endpoints),
        ]
        for name, topics in followers:
            after = app.tracked(name) or 0
            if app.recorder.select_notifications(
                start=after, limit=1, topics=topics, inclusive_of_start=False
            ):
                return False
        return True

    def drain(
        self,
        app: Any,
        supervisor: Supervisor,
        endpoints: Sequence[Any],
        receiver: Any,
        *,
        restarted: bool = False,
    ) -> bool:
        if not self.wait(lambda: self.ingested(app, or_committed=restarted), app, supervisor):
            return False
        # The followers write to the log the others follow: caught up twice in a row.
        settled = 0

        def steady() -> bool:
            nonlocal settled
            settled = settled + 1 if self.caught_up(app, endpoints) else 0
            if settled < 2:
                time.sleep(0.5)
            return settled >= 2

        if not self.wait(steady, app, supervisor):
            return False
        # The relay flushes before it records its position: this is only the read
        # catching up (what never arrives is counted lost by ``check_published``).
        wanted = {e["event_id"] for _, e in self.stored_safety(app)} - self.gone_ids("safety")
        topic = self.topics["safety"]
        self.wait(
            lambda: wanted <= {r.event_id for r in read_topic(self.servers, topic, 10)},
            app,
            supervisor,
            timeout=20,
        )
        return True

    def gone_ids(self, name: str) -> set[str | None]:
        """The ids of what went with the broker's restart from the topic ``name``."""
        return {record.event_id for record in self.gone[name]}

    # -------------------------------------------------------------- checks

    def stored_safety(self, app: Any) -> list[tuple[int, dict[str, Any]]]:
        """Every derived event in the store (participants', trial monitor's, alerts'),
        with its log position."""
        from domain.participant import SafetyEventRecorded

        events = []
        after = 0
        while notifications := app.safety_notifications(after, 2000):
            for notification in notifications:
                event = app.mapper.to_domain_event(notification)
                if isinstance(event, SafetyEventRecorded):
                    events.append((notification.id, event.to_contract().to_wire()))
            after = notifications[-1].id
        return events

    def check(self, app: Any, endpoints: Sequence[Any], receiver: Any) -> None:
        from services.application import REJECTION_TOPIC

        result = self.result
        reference = self.reference
        stored = self.stored_safety(app)
        events = [event for _, event in stored]
        result.derived_out = len(events)
        ids = Counter(e["event_id"] for e in events)
        result.count("duplicated", sum(n - 1 for n in ids.values()), "derived events stored twice")
        # Each participant's clinical record and derived events.
        compare_sequences(
            result,
            "clinical events in participants' records",
            recorded_event_ids(app, reference.participants),
            reference.records,
        )
        compare_sequences(
            result,
            "participants' derived events",
            per_participant(participant_level(events)),
            reference.derived,
        )
        rejected = [
            n
            for n in app.safety_notifications(0, 1_000_000, with_rejections=True)
            if n.topic == REJECTION_TOPIC
        ]
        for notification in rejected:
            error = app.mapper.to_domain_event(notification).error
            result.notes.append(f"rejected: {error}"[:300])
        result.count("lost", len(rejected), "valid clinical messages rejected")
        # The trial monitor's findings.
        findings = trial_findings(events)
        differing = {
            key
            for key in set(findings) | set(reference.findings)
            if findings.get(key) != reference.findings.get(key)
        }
        result.count(
            "mismatches", len(differing), f"trial findings differ: {sorted(differing)[:5]}"
        )
        self.check_alerts(app, stored)
        self.check_published(stored)
        self.check_delivered(stored, endpoints, receiver)

    def check_alerts(self, app: Any, stored: list[tuple[int, dict[str, Any]]]) -> None:
        """The alert events against a replay of this run's log by a fresh alerts
        process (architecture decision 8: a replay gives the same alerts)."""
        replayed = replay_alerts(app)
        actual = [comparable(e) for _, e in stored if e["type"].startswith("alert.")]
        compare_sequences(self.result, "alert events", {"alerts": actual}, {"alerts": replayed})

    def check_published(self, stored: list[tuple[int, dict[str, Any]]]) -> None:
        """Every stored derived event on the safety topic once, as stored, unless the
        broker held it when it was restarted (``restart_broker``: gone with it; the
        relay may have sent it again if the broker's answer went with it too). What
        the old broker held is checked like the rest, and once on its own."""
        from services.relay import POSITION_HEADER

        by_id = {e["event_id"]: (position, e) for position, e in stored}
        current = read_topic(self.servers, self.topics["safety"])
        differing = 0
        for record in [*self.gone["safety"], *current]:
            event = json.loads(record.value or b"{}")
            position, original = by_id.get(event.get("event_id"), (None, None))
            header = record.header(POSITION_HEADER)
            if event != original or header != str(position).encode():
                differing += 1
        self.result.count(
            "mismatches", differing, "published events differing from the store (or unknown)"
        )
        published = Counter(record.event_id for record in current)
        gone = Counter(record.event_id for record in self.gone["safety"])
        if gone:
            again = sum(1 for e in gone if published[e])
            self.result.notes.append(
                f"{len(gone)} derived events published before the broker restart went with "
                f"it ({again} of them published again after it)"
            )
        unpublished = sorted(
            position
            for position, e in stored
            if not published[e["event_id"]] and not gone[e["event_id"]]
        )
        self.result.count(
            "lost",
            len(unpublished),
            f"derived events never published on the safety topic (log positions "
            f"{unpublished[:10]}; {len(gone)} went with the broker's restart)",
        )
        self.result.count(
            "duplicated",
            sum(n - 1 for counts in (published, gone) for n in counts.values() if n > 1),
            "derived events published more than once",
        )

    def check_delivered(
        self, stored: list[tuple[int, dict[str, Any]]], endpoints: Sequence[Any], receiver: Any
    ) -> None:
        from domain.contract import SafetyEvent

        kafka_endpoint, webhook_endpoint = endpoints
        alerts = [
            (p, SafetyEvent.model_validate(e), e)
            for p, e in stored
            if e["type"].startswith("alert.")
        ]
        # Webhook: every wanted alert event accepted, under its own idempotency key.
        wanted = {a.event_id: wire for _, a, wire in alerts if webhook_endpoint.wants(a)}
        keys = Counter(d.idempotency_key for d in receiver.deliveries)
        self.result.count(
            "lost", len(set(wanted) - set(keys)), "alerts never delivered to the webhook"
        )
        self.result.count(
            "duplicated", len(set(keys) - set(wanted)), "webhook deliveries of no stored alert"
        )
        self.result.count("resent", sum(n - 1 for n in keys.values()), "webhook resends (same key)")
        invalid = sum(1 for d in receiver.requests if not d.valid)
        self.result.count("mismatches", invalid, "webhook requests with a bad signature")
        differing = sum(
            1
            for d in receiver.deliveries
            if d.idempotency_key in wanted and d.body != wanted[d.idempotency_key]
        )
        self.result.count("mismatches", differing, "webhook bodies differing from the stored alert")
        # Kafka alerts topic: every wanted alert but those the broker held when it was
        # restarted (``restart_broker``: gone with it).
        gone = self.gone_ids("alerts")
        if gone:
            self.result.notes.append(
                f"{len(gone)} alerts delivered to the Kafka topic before the broker restart "
                "went with it"
            )
        wanted_kafka = {a.event_id for _, a, _ in alerts if kafka_endpoint.wants(a)} - gone
        on_topic = Counter(r.event_id for r in read_topic(self.servers, self.topics["alerts"]))
        self.result.count(
            "lost", len(wanted_kafka - set(on_topic)), "alerts never delivered to the Kafka topic"
        )
        self.result.count(
            "resent", sum(n - 1 for n in on_topic.values()), "Kafka alert resends (same event id)"
        )


def replay_alerts(app: Any) -> list[dict[str, Any]]:
    """The alert events a fresh alerts process decides from the log ``app`` holds: its
    input events copied, in order, into an in-memory store."""
    from eventsourcing.persistence import StoredEvent

    from domain.participant import SafetyEventRecorded
    from services.alerts import INPUT_TOPICS, AlertDesk
    from services.offline import in_memory_application

    replica = in_memory_application(app.protocol, app.limits)
    try:
        after = 0
        while notifications := app.recorder.select_notifications(
            start=after, limit=2000, topics=INPUT_TOPICS, inclusive_of_start=False
        ):
            replica.recorder.insert_events(
                [
                    StoredEvent(n.originator_id, n.originator_version, n.topic, n.state)
                    for n in notifications
                ]
            )
            after = notifications[-1].id
        AlertDesk(replica).run_until_idle()
        events = []
        after = 0
        while notifications := replica.safety_notifications(after, 2000):
            for notification in notifications:
                event = replica.mapper.to_domain_event(notification)
                if isinstance(event, SafetyEventRecorded) and event.to_contract().type.startswith(
                    "alert."
                ):
                    events.append(comparable(event.to_contract().to_wire()))
            after = notifications[-1].id
        return events
    finally:
        replica.close()


# ---------------------------------------------------------------- the command


def store_for(kind: str, index: int, store: str) -> str:
    if kind in STORE_OF_KIND:
        return STORE_OF_KIND[kind]
    if store in ("postgres", "sqlite"):
        return store
    return "postgres" if index % 2 == 0 else "sqlite"


def run_faults(kinds: Sequence[str], runs: int, store: str, options: Options) -> list[RunResult]:
    """Every run of every kind; the broker of the run kind ``broker`` is its own."""
    from infra.broker import EmbeddedBroker
    from services.simulator import CohortSpec, simulate_cohort

    settings = Settings()
    reference = Reference.of(
        simulate_cohort(
            CohortSpec(
                seed=options.seed,
                participants=options.participants,
                follow_up_days=options.follow_up_days,
                malformed=False,
            )
        )
    )
    unreachable = postgres_reachable(settings)
    no_chattr = chattr_available(options.workdir)
    results = []
    shared = EmbeddedBroker(log_path=options.workdir / "broker.log")
    try:
        shared.start()
        for kind in kinds:
            for index in range(runs):
                chosen = store_for(kind, index, store)
                skip = unreachable if chosen == "postgres" else None
                if kind == "sqlite-readonly":
                    skip = skip or no_chattr
                if skip:
                    results.append(RunResult(kind, index, chosen, options.seed, skipped=skip))
                    continue
                broker = shared
                if kind == "broker":
                    broker = EmbeddedBroker(log_path=options.workdir / f"broker-{index}.log")
                    broker.start()
                try:
                    result = Run(
                        kind, index, chosen, broker, reference, options, settings
                    ).execute()
                finally:
                    if broker is not shared:
                        broker.stop()
                results.append(result)
                status = "ok" if result.ok else "FAILED"
                print(
                    f"{kind:<16} run {index} {chosen:<8} {result.seconds:6.1f} s  faults "
                    f"{result.faults}  lost {result.lost}  duplicated {result.duplicated}  "
                    f"mismatches {result.mismatches}  resent {result.resent}  {status}",
                    flush=True,
                )
                if options.verbose or not result.ok:
                    for note in result.notes:
                        print(f"    {note}", flush=True)
    finally:
        shared.stop()
    return results


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


faults_app = typer.Typer(no_args_is_help=True, help="Fault injection against the pipeline.")


@faults_app.callback()
def faults() -> None:
    """Fault injection against the running pipeline (``toxwatch faults run``)."""


@faults_app.command("run")
def run(
    runs: Annotated[int, typer.Option(help="Runs per fault kind.")] = 3,
    kinds: Annotated[
        list[str] | None,
        typer.Option(help=f"Fault kinds (repeat or comma-separate): {', '.join(FAULT_KINDS)}."),
    ] = None,
    store: Annotated[str, typer.Option(help="postgres, sqlite or mixed (by run).")] = "mixed",
    participants: Annotated[int, typer.Option(help="Simulated participants.")] = 6,
    follow_up_days: Annotated[int, typer.Option(help="Simulated follow-up.")] = 21,
    faults_per_run: Annotated[int, typer.Option(help="Faults injected per run.")] = 3,
    seed: Annotated[int, typer.Option(help="Cohort and fault-point seed.")] = 79,
    report: Annotated[
        Path | None, typer.Option(help=f"Write the report as JSON (default: ${REPORT_ENV}).")
    ] = None,
    workdir: Annotated[Path | None, typer.Option(help="Folder for logs and stores.")] = None,
    keep: Annotated[
        bool, typer.Option(help="Keep every run's folder (failed ones are kept).")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Longest wait for one step of a run (s).")] = 300.0,
    stall_seconds: Annotated[
        float, typer.Option(help="A run without progress this long is stalled (s).")
    ] = 30.0,
    verbose: bool = False,
) -> None:
    """Inject faults into the running pipeline and compare with the no-fault result."""
    chosen = [
        k.strip() for item in (kinds or list(FAULT_KINDS)) for k in item.split(",") if k.strip()
    ]
    unknown = [k for k in chosen if k not in FAULT_KINDS]
    if unknown:
        typer.echo(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}", err=True)
        raise typer.Exit(2)
    if store not in ("postgres", "sqlite", "mixed"):
        typer.echo("--store is postgres, sqlite or mixed", err=True)
        raise typer.Exit(2)
    folder = workdir or Path(tempfile.mkdtemp(prefix="toxwatch-faults-"))
    folder.mkdir(parents=True, exist_ok=True)
    options = Options(
        participants=participants,
        follow_up_days=follow_up_days,
        seed=seed,
        faults_per_run=faults_per_run,
        workdir=folder,
        keep=keep,
        timeout=timeout,
        stall_seconds=stall_seconds,
        verbose=verbose,
    )
    started = time.monotonic()
    # SIGTERM (a CI timeout) unwinds like Ctrl-C: services, brokers, schemas cleaned up.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    results = run_faults(chosen, runs, store, options)
    rows = summary_rows(results)
    typer.echo("\n" + format_table(rows))
    elapsed = time.monotonic() - started
    typer.echo(f"\n{len(results)} runs in {elapsed:.0f} s; logs and failed runs in {folder}")
    document = {
        "command": (
            f"toxwatch faults run --runs {runs} --kinds {','.join(chosen)} --store {store} "
            f"--participants {participants} --follow-up-days {follow_up_days} "
            f"--faults-per-run {faults_per_run} --seed {seed}"
        ),
        "seconds": round(elapsed, 1),
        "cohort": {"participants": participants, "follow_up_days": follow_up_days, "seed": seed},
        "kinds": rows,
        "runs": [asdict(r) | {"ok": r.ok} for r in results],
    }
    target = report or (Path(os.environ[REPORT_ENV]) if os.environ.get(REPORT_ENV) else None)
    if target is not None:
        target.write_text(json.dumps(document, indent=2, default=str))
    if not all(r.ok for r in results):
        raise typer.Exit(1)
    if not keep and all(r.ok for r in results) and workdir is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    faults_app()
