"""Shared fixtures: the embedded broker, PostgreSQL schemas, the event store
configuration, and the ToxWatch services run as subprocesses.

Broker-backed tests run each service (``toxwatch worker``, ``toxwatch relay``) in its
own process, never in the pytest event loop. The broker is started once per session;
each test gets its own topics and consumer group (``fresh_topics``), so tests stay
independent of each other and of the order they run in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TOPIC_PARTITIONS = 4
DEFAULT_TOPICS = (
    "toxwatch.clinical.v1",
    "toxwatch.clinical.v1.rejected",
    "toxwatch.safety.v1",
    "toxwatch.alerts.v1",
)
#: Environment variables that configure a service; never inherited from the caller.
_SERVICE_PREFIXES = ("TOXWATCH_", "KAFKA_BOOTSTRAP_SERVERS")


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python loads its protocol schemas with importlib.resources' legacy API.
    for api in ("read_text", "open_text"):
        config.addinivalue_line("filterwarnings", f"ignore:{api} is deprecated:DeprecationWarning")


# ---------------------------------------------------------------- Kafka


@dataclass(frozen=True)
class Topics:
    """The four contract topics and the ingest consumer group of one test."""

    clinical: str
    rejected: str
    safety: str
    alerts: str
    group: str

    @classmethod
    def unique(cls) -> Topics:
        namespace = f"t{uuid.uuid4().hex[:10]}"
        clinical, rejected, safety, alerts = (f"{namespace}.{name}" for name in DEFAULT_TOPICS)
        return cls(clinical, rejected, safety, alerts, group=f"{namespace}-ingest")

    @property
    def names(self) -> tuple[str, str, str, str]:
        return (self.clinical, self.rejected, self.safety, self.alerts)

    def env(self) -> dict[str, str]:
        return {
            "TOXWATCH_CLINICAL_TOPIC": self.clinical,
            "TOXWATCH_REJECTED_TOPIC": self.rejected,
            "TOXWATCH_SAFETY_TOPIC": self.safety,
            "TOXWATCH_ALERTS_TOPIC": self.alerts,
            "TOXWATCH_CONSUMER_GROUP": self.group,
            "TOXWATCH_PARTITIONS": str(TOPIC_PARTITIONS),
        }


@dataclass(frozen=True)
class Record:
    """One message read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> bytes | None:
        values = [value for key, value in self.headers if key == name]
        if len(values) > 1:
            raise AssertionError(f"header {name!r} appears {len(values)} times on {self}")
        return values[0] if values else None

    def json(self) -> Any:
        assert self.value is not None, f"no value at {self.topic}:{self.partition}:{self.offset}"
        return json.loads(self.value)


def is_clock_tick(value: bytes | None) -> bool:
    """Whether a clinical message is a trial-level ``clock.ticked``, which the scheduler
    writes to every partition (contract §2)."""
    try:
        document = json.loads(value or b"")
    except ValueError:
        return False
    return (
        isinstance(document, dict)
        and document.get("type") == "clock.ticked"
        and document.get("participant_id") == "-"
    )


class TopicReader:
    """Reads one topic from its beginning, keeping what it has read.

    The end of each partition is the high watermark of the fetch responses, not the
    ListOffsets answer: the embedded broker (tansu, memory engine) answers ListOffsets
    ``latest`` with the base offset of the last record batch plus one, which is short
    of the end whenever that batch holds more than one record.
    """

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic
        self.records: list[Record] = []
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
        )
        partitions = sorted(self._consumer.partitions_for_topic(topic) or ())
        if not partitions:
            self._consumer.close()
            raise AssertionError(f"topic {topic} does not exist")
        self._partitions = [TopicPartition(topic, p) for p in partitions]
        self._consumer.assign(self._partitions)
        self._consumer.seek_to_beginning(*self._partitions)

    def _at_end(self) -> bool:
        for tp in self._partitions:
            highwater = self._consumer.highwater(tp)
            if highwater is None or self._consumer.position(tp) < highwater:
                return False
        return True

    def read_to_end(self, timeout: float = 30.0) -> list[Record]:
        """Read up to the current end of every partition; every record read so far,
        partition by partition, in offset order."""
        deadline = time.monotonic() + timeout
        while True:
            for tp, batch in self._consumer.poll(timeout_ms=200).items():
                self.records.extend(
                    Record(
                        self.topic,
                        tp.partition,
                        message.offset,
                        message.key,
                        message.value,
                        tuple((name, bytes(value)) for name, value in message.headers or ()),
                    )
                    for message in batch
                )
            if self._at_end():
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {self.topic} to its end in {timeout:g} s")
        self.records.sort(key=lambda r: (r.partition, r.offset))
        return list(self.records)

    def count(self) -> int:
        return len(self.read_to_end())

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Kafka:
    """The session's embedded broker and kafka-python helpers around it."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers

    def create_topics(self, names: Iterable[str], partitions: int = TOPIC_PARTITIONS) -> None:
        from infra.broker import ensure_topics

        names = list(names)
        ensure_topics(self.bootstrap_servers, names, partitions)
        deadline = time.monotonic() + 15
        while any(self.partitions(name) != partitions for name in names):
            if time.monotonic() > deadline:
                raise AssertionError(f"topics {names} not created with {partitions} partitions")
            time.sleep(0.1)

    def fresh_topics(self) -> Topics:
        topics = Topics.unique()
        self.create_topics(topics.names)
        return topics

    def partitions(self, topic: str) -> int:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False)
        try:
            return len(consumer.partitions_for_topic(topic) or ())
        finally:
            consumer.close()

    def reader(self, topic: str) -> TopicReader:
        """A reader of ``topic`` from its beginning (close it after use)."""
        return TopicReader(self.bootstrap_servers, topic)

    def read(self, topic: str, timeout: float = 30.0) -> list[Record]:
        """Every message of a topic, partition by partition, in offset order."""
        with self.reader(topic) as reader:
            return reader.read_to_end(timeout)

    def size(self, topic: str) -> int:
        """How many messages a topic holds."""
        return len(self.read(topic))

    def producer(self) -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=2 * 1024 * 1024,
        )

    def produce_clinical(
        self, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]
    ) -> list[list[tuple[int, int]]]:
        """Send ``(key, value)`` pairs in order, each keyed message to the partition of
        its key, a clock tick to every partition (contract §2).

        Returns, for each pair, the ``(partition, offset)`` of each copy written.
        """
        producer = self.producer()
        try:
            partitions = sorted(producer.partitions_for(topic))
            futures = []
            for key, value in messages:
                targets = partitions if is_clock_tick(value) else [None]
                futures.append(
                    [
                        producer.send(topic, key=key, value=value, partition=partition)
                        for partition in targets
                    ]
                )
            producer.flush(timeout=60)
            return [
                [
                    (metadata.partition, metadata.offset)
                    for metadata in (future.get(timeout=30) for future in copies)
                ]
                for copies in futures
            ]
        finally:
            producer.close()


def next_offsets(placements: Iterable[Iterable[tuple[int, int]]]) -> dict[int, int]:
    """The offset after the last message written to each partition."""
    ends: dict[int, int] = {}
    for copies in placements:
        for partition, offset in copies:
            ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kafka]:
    """The embedded broker (tansu, in memory) for the session, with the contract's
    topics created with four partitions. Tests make their own topics with
    ``fresh_topics`` to stay independent."""
    from infra.broker import EmbeddedBroker

    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    embedded = EmbeddedBroker(log_path=log_path).start()
    try:
        kafka = Kafka(embedded.bootstrap_servers)
        kafka.create_topics(DEFAULT_TOPICS)
        yield kafka
    finally:
        embedded.stop()


@pytest.fixture
def fresh_topics(broker: Kafka) -> Topics:
    """This test's own four topics (four partitions each) and consumer group."""
    return broker.fresh_topics()


# ---------------------------------------------------------------- PostgreSQL


def _postgres_params() -> dict[str, Any]:
    return {
        "host": os.environ.get("TOXWATCH_POSTGRES_HOST", "127.0.0.1"),
        "port": int(os.environ.get("TOXWATCH_POSTGRES_PORT", "5432")),
        "dbname": os.environ.get("TOXWATCH_POSTGRES_DBNAME", "test"),
        "user": os.environ.get("TOXWATCH_POSTGRES_USER", "postgres"),
        "password": os.environ.get("TOXWATCH_POSTGRES_PASSWORD", ""),
    }


@pytest.fixture
def postgres_schemas() -> Iterator[Callable[[], str]]:
    """Makes schemas of their own in the test database, all dropped afterwards (with
    the services that use them stopped first). Skips when PostgreSQL is unreachable."""
    import psycopg
    from psycopg import sql

    params = _postgres_params()
    try:
        connection = psycopg.connect(**params, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.skip(
            f"PostgreSQL unreachable at {params['host']}:{params['port']} "
            f"(database {params['dbname']}, user {params['user']}): {error}"
        )
    made: list[str] = []

    def make() -> str:
        name = f"tw_{uuid.uuid4().hex[:12]}"
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        made.append(name)
        return name

    with connection:
        try:
            yield make
        finally:
            _stop_all_services()
            connection.execute("SET lock_timeout = '20s'")
            for name in made:
                connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def postgres_schema(postgres_schemas: Callable[[], str]) -> str:
    """A schema of its own in the test database (see ``postgres_schemas``)."""
    return postgres_schemas()


# ---------------------------------------------------------------- event store


@dataclass(frozen=True)
class Store:
    """Where the services of a test keep their events: SQLite or PostgreSQL."""

    kind: str
    env: dict[str, str]
    settings_kwargs: dict[str, Any]

    @classmethod
    def sqlite(cls, data_dir: Path) -> Store:
        return cls._of({"store": "sqlite", "data_dir": data_dir})

    @classmethod
    def postgres(cls, schema: str, data_dir: Path) -> Store:
        params = _postgres_params()
        return cls._of(
            {
                "store": "postgres",
                "postgres_host": params["host"],
                "postgres_port": params["port"],
                "postgres_dbname": params["dbname"],
                "postgres_user": params["user"],
                "postgres_password": params["password"],
                "postgres_schema": schema,
                "data_dir": data_dir,
            }
        )

    @classmethod
    def _of(cls, kwargs: dict[str, Any]) -> Store:
        env = {f"TOXWATCH_{name.upper()}": str(value) for name, value in kwargs.items()}
        return cls(kwargs["store"], env, kwargs)

    def settings(self) -> Any:
        from infra.settings import Settings

        return Settings(**self.settings_kwargs)

    def open(self) -> Any:
        """The ``SafetyMonitoring`` application over this store (close it after use)."""
        from services.bootstrap import build_application

        return build_application(self.settings())

    def initialise(self) -> None:
        """Create the store's tables before any service starts on it.

        The worker and the relay started together on a fresh store race to create the
        tables and one of them can crash; ``test_kafka_pipeline`` has a test of its own
        for that, so the other tests do not depend on it.
        """
        self.open().close()


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The event store configuration; parametrise indirectly with ``"sqlite"``
    (the default) or ``"postgres"``."""
    kind = getattr(request, "param", "sqlite")
    if kind == "postgres":
        return Store.postgres(request.getfixturevalue("postgres_schema"), tmp_path / "data")
    if kind == "sqlite":
        return Store.sqlite(tmp_path / "data")
    raise ValueError(f"unknown store {kind!r}")


# ---------------------------------------------------------------- services


def toxwatch_executable() -> str:
    beside = Path(sys.executable).parent / "toxwatch"
    found = str(beside) if beside.exists() else shutil.which("toxwatch")
    if found is None:
        raise RuntimeError("no `toxwatch` executable (is the project installed in the venv?)")
    return found


@dataclass
class Service:
    """A ``toxwatch`` subprocess, in a session (process group) of its own."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to this service's process group and, for SIGKILL, reap it."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.process.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if not self.alive():
            return
        self.kill(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


_LIVE_SERVICES: list[Service] = []


def _stop_all_services() -> None:
    while _LIVE_SERVICES:
        _LIVE_SERVICES.pop().stop()


class Services:
    """Starts ``toxwatch <command>`` subprocesses with a given environment."""

    def __init__(self, bootstrap_servers: str | None, log_dir: Path) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.log_dir = log_dir
        self.started: list[Service] = []

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """The caller's environment, less any ToxWatch or Kafka setting, plus ``env``
        (what a service, or a ``toxwatch`` command run beside them, gets)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(_SERVICE_PREFIXES)}
        full_env = base | {"PYTHONUNBUFFERED": "1", "TOXWATCH_METRICS_PORT": "0"}
        if self.bootstrap_servers:
            full_env["KAFKA_BOOTSTRAP_SERVERS"] = self.bootstrap_servers
        return full_env | dict(env)

    def start(self, command: str, env: Mapping[str, str]) -> Service:
        """Start ``toxwatch command`` with ``environment(env)``."""
        full_env = self.environment(env)
        index = sum(s.name.startswith(command) for s in self.started)
        name = f"{command}-{index}"
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [toxwatch_executable(), command],
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, process, log_path)
        self.started.append(service)
        _LIVE_SERVICES.append(service)
        return service

    def logs(self) -> str:
        return "\n".join(
            f"--- {s.name} (rc={s.process.poll()})\n{s.log_tail()}" for s in self.started
        )

    def stop_all(self) -> None:
        for service in reversed(self.started):
            service.stop()
            if service in _LIVE_SERVICES:
                _LIVE_SERVICES.remove(service)


@pytest.fixture
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    """Runs ``toxwatch worker`` / ``toxwatch relay`` subprocesses; stops them after the
    test. Uses the session broker when the test has requested it."""
    bootstrap = None
    if "broker" in request.fixturenames:
        bootstrap = request.getfixturevalue("broker").bootstrap_servers
    log_dir = tmp_path / "service-logs"
    log_dir.mkdir()
    runner = Services(bootstrap, log_dir)
    yield runner
    runner.stop_all()
