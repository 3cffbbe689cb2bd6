"""Event store configuration: SQLite (embedded) or PostgreSQL (production).

The recorders here extend eventsourcing's process recorders so that one batch can
carry the tracking positions of several Kafka partitions: the new domain events and
every partition's position are written in one transaction (architecture decision 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing.postgres import PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteProcessRecorder
from psycopg import Cursor
from psycopg.rows import DictRow

from infra.settings import Settings

TRACKINGS = "trackings"


class SQLiteBatchRecorder(SQLiteProcessRecorder):
    """SQLite process recorder accepting ``trackings=[Tracking, ...]``."""

    def _insert_events(
        self, c: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        returning = super()._insert_events(c, stored_events, **kwargs)
        for tracking in kwargs.get(TRACKINGS, ()):
            self._insert_tracking(c, tracking)
        return returning


class PostgresBatchRecorder(PostgresProcessRecorder):
    """PostgreSQL process recorder accepting ``trackings=[Tracking, ...]``."""

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        for tracking in kwargs.get(TRACKINGS, ()):
            self._insert_tracking(curs, tracking=tracking)
        super()._insert_events(curs, stored_events, **kwargs)


def partition_tracking_name(topic: str, partition: int) -> str:
    return f"{topic}#{partition}"


def kafka_tracking(topic: str, partition: int, offset: int) -> Tracking:
    """Tracking of a consumed Kafka message: the next offset to read."""
    return Tracking(partition_tracking_name(topic, partition), offset + 1)


def eventsourcing_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment for the configured store."""
    common = {
        "AGGREGATE_CACHE_MAXSIZE": str(settings.aggregate_cache_size),
        "ORIGINATOR_ID_TYPE": "uuid",
    }
    if settings.store == "postgres":
        return common | {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "APPLICATION_RECORDER_TOPIC": "infra.store:PostgresBatchRecorder",
            "POSTGRES_DBNAME": settings.postgres_dbname,
            "POSTGRES_HOST": settings.postgres_host,
            "POSTGRES_PORT": str(settings.postgres_port),
            "POSTGRES_USER": settings.postgres_user,
            "POSTGRES_PASSWORD": settings.postgres_password,
            "POSTGRES_SCHEMA": settings.postgres_schema,
            "POSTGRES_POOL_SIZE": "4",
            "POSTGRES_MAX_OVERFLOW": "4",
        }
    path = settings.sqlite_path
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    return common | {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "APPLICATION_RECORDER_TOPIC": "infra.store:SQLiteBatchRecorder",
        "SQLITE_DBNAME": str(path),
        "SQLITE_LOCK_TIMEOUT": "30",
    }
