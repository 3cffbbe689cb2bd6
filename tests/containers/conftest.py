"""Kafka and PostgreSQL in containers for the end-to-end tests of this folder.

The tests are those of ``tests/integration`` (imported, not copied); the fixtures here
replace, for this folder only, the session broker (the embedded tansu) with Apache
Kafka in KRaft mode with topic auto-creation off, as in ``docker-compose.yml``, and
point the PostgreSQL fixtures at a PostgreSQL container. The ToxWatch processes still
run as local ``toxwatch`` subprocesses (``tests.conftest.Services``). Without a
reachable Docker engine every test here skips, naming the engine and the error.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import DEFAULT_TOPICS, Kafka

#: testcontainers' KafkaContainer drives Confluent's image of Apache Kafka; 7.9.0 is
#: Apache Kafka 3.9.0, the version of docker-compose.yml's apache/kafka image.
KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"
#: The PostgreSQL of docker-compose.yml.
POSTGRES_IMAGE = "postgres:16.4-bookworm"
KAFKA_START_TIMEOUT_S = 120


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "containers: needs a Docker engine (Kafka and PostgreSQL in containers)"
    )


def docker_engine_problem() -> str | None:
    """Why no Docker engine can be used, or None when one answers."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        import docker
    except ImportError as error:  # testcontainers brings the docker SDK
        return f"the docker SDK is not installed ({error})"
    try:
        client = docker.from_env(timeout=5)
    except Exception as error:
        return f"no Docker engine reachable at {where}: {error}"
    try:
        client.ping()
    except Exception as error:
        return f"no Docker engine reachable at {where}: {error}"
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skips every test that needs a container when no Docker engine answers."""
    problem = docker_engine_problem()
    if problem is not None:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def broker(docker_engine: None) -> Iterator[Kafka]:
    """Apache Kafka (KRaft, no topic auto-creation) in a container, with the
    contract's topics; tests make their own with ``fresh_topics``."""
    from testcontainers.community.kafka import KafkaContainer

    container = (
        KafkaContainer(KAFKA_IMAGE)
        .with_kraft()
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    container.start(timeout=KAFKA_START_TIMEOUT_S)
    try:
        kafka = Kafka(container.get_bootstrap_server())
        kafka.create_topics(DEFAULT_TOPICS)
        yield kafka
    finally:
        container.stop()


@pytest.fixture(scope="session")
def postgres_container(docker_engine: None) -> Iterator[dict[str, str]]:
    """PostgreSQL in a container: the ``TOXWATCH_POSTGRES_*`` settings that reach it."""
    from testcontainers.community.postgres import PostgresContainer

    password = secrets.token_hex(16)
    with PostgresContainer(
        POSTGRES_IMAGE, username="postgres", password=password, dbname="test", driver=None
    ) as container:
        yield {
            "TOXWATCH_POSTGRES_HOST": container.get_container_host_ip(),
            "TOXWATCH_POSTGRES_PORT": str(container.get_exposed_port(5432)),
            "TOXWATCH_POSTGRES_DBNAME": "test",
            "TOXWATCH_POSTGRES_USER": "postgres",
            "TOXWATCH_POSTGRES_PASSWORD": password,
        }


@pytest.fixture
def postgres_env(
    postgres_container: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """This test reads the container's PostgreSQL settings (``tests.conftest`` takes
    them from the environment); restored after the test."""
    for name, value in postgres_container.items():
        monkeypatch.setenv(name, value)
    return postgres_container


@pytest.fixture
def postgres_schemas(
    postgres_env: dict[str, str], postgres_schemas: Callable[[], str]
) -> Callable[[], str]:
    """``tests.conftest.postgres_schemas`` on the PostgreSQL container."""
    return postgres_schemas
