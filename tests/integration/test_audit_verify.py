"""Tamper evidence (issue 7, item 3): after a signed checkpoint, ``verify`` names the
first stored event that was modified, deleted, inserted or moved, on SQLite and
PostgreSQL. Each test tampers with the store as an attacker with database access
would: raw SQL on the events table, behind the application's back."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from domain.protocol import ProtocolParameters
from services.audit import (
    CHAIN_TABLE,
    CHECKPOINT_TABLE,
    AuditKey,
    Checkpoint,
    Leaves,
    checkpoint,
    link,
    load_checkpoints,
    verify,
)
from services.offline import process_lines
from services.simulator import CohortSpec, simulate_cohort
from tests.conftest import Store

STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
KEY = AuditKey(b"audit-key-for-the-tests-0123456789")
ARRIVED = datetime(2025, 3, 1, tzinfo=UTC)
CHECKPOINTED = datetime(2025, 3, 2, tzinfo=UTC)
COLUMNS = ("originator_id", "originator_version", "topic", "state")


class RawEvents:
    """The stored events table, edited with plain SQL (``position`` is the
    notification id: SQLite's rowid, PostgreSQL's ``notification_id``)."""

    def __init__(self, store: Store, table: str) -> None:
        self.store = store
        settings = store.settings()
        if store.kind == "sqlite":
            self.sqlite = sqlite3.connect(settings.sqlite_path, isolation_level=None)
            self.id_column = "rowid"
            self.table = table
        else:
            self.postgres = psycopg.connect(
                host=settings.postgres_host,
                port=settings.postgres_port,
                dbname=settings.postgres_dbname,
                user=settings.postgres_user,
                password=settings.postgres_password,
                autocommit=True,
            )
            self.id_column = "notification_id"
            self.table = f'"{settings.postgres_schema}"."{table}"'

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.store.kind == "sqlite":
            return self.sqlite.execute(statement, params).fetchall()
        cursor = self.postgres.execute(statement.replace("?", "%s").encode(), params)
        return cursor.fetchall() if cursor.description else []

    def positions(self) -> list[int]:
        rows = self.execute(f"SELECT {self.id_column} FROM {self.table} ORDER BY 1")
        return [row[0] for row in rows]

    def row(self, position: int) -> tuple[Any, ...]:
        columns = ", ".join(COLUMNS)
        query = f"SELECT {columns} FROM {self.table} WHERE {self.id_column} = ?"
        return self.execute(query, (position,))[0]

    def delete(self, position: int) -> None:
        self.execute(f"DELETE FROM {self.table} WHERE {self.id_column} = ?", (position,))

    def insert(self, position: int, row: tuple[Any, ...]) -> None:
        columns = ", ".join((self.id_column, *COLUMNS))
        self.execute(
            f"INSERT INTO {self.table} ({columns}) VALUES (?, ?, ?, ?, ?)", (position, *row)
        )

    def set_state(self, position: int, state: bytes) -> None:
        query = f"UPDATE {self.table} SET state = ? WHERE {self.id_column} = ?"
        self.execute(query, (state, position))

    def audit_table(self, name: str) -> str:
        if self.store.kind == "sqlite":
            return name
        return f'"{self.store.settings().postgres_schema}"."{name}"'

    def close(self) -> None:
        if self.store.kind == "sqlite":
            self.sqlite.close()
        else:
            self.postgres.close()


@dataclass
class Audited:
    app: Any
    raw: RawEvents
    checkpoint: Checkpoint

    @property
    def middle(self) -> int:
        positions = self.raw.positions()
        return positions[len(positions) // 3]


def record_cohort(app: Any) -> None:
    messages = simulate_cohort(CohortSpec(participants=3, follow_up_days=10))
    process_lines([m.value for m in messages], io.StringIO(), app=app, now=ARRIVED)


@pytest.fixture
def audited(store: Store) -> Iterator[Audited]:
    """A small simulated cohort in the store, checkpointed."""
    app = store.open()
    record_cohort(app)
    raw = RawEvents(store, app.recorder.events_table_name)
    try:
        yield Audited(app, raw, checkpoint(app, KEY, now=CHECKPOINTED))
    finally:
        raw.close()
        app.close()


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_an_untouched_store_verifies(audited: Audited) -> None:
    result = verify(audited.app, KEY)

    assert result.ok, result.problem
    assert result.first_bad_position is None
    assert result.events_checked == audited.checkpoint.count == len(audited.raw.positions())
    assert (result.checkpoints, result.unanchored) == (1, 0)


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_a_modified_event_state_is_named_at_its_position(audited: Audited) -> None:
    position = audited.middle
    state = bytes(audited.raw.row(position)[3])
    audited.raw.set_state(position, state.replace(b"NCT", b"NCX"))

    result = verify(audited.app, KEY)

    assert not result.ok
    assert result.first_bad_position == position
    assert "modified" in (result.problem or "")


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_a_deleted_event_is_named_at_its_position(audited: Audited) -> None:
    position = audited.middle
    audited.raw.delete(position)

    result = verify(audited.app, KEY)

    assert not result.ok
    assert result.first_bad_position == position
    assert "deleted" in (result.problem or "")


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_an_event_forged_under_a_deleted_events_id_is_named_at_its_position(
    audited: Audited,
) -> None:
    position = audited.middle
    originator_id, version, topic, state = audited.raw.row(position)
    audited.raw.delete(position)
    audited.raw.insert(position, (originator_id, version, topic, bytes(state) + b" "))

    result = verify(audited.app, KEY)

    assert not result.ok
    assert result.first_bad_position == position


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_an_event_inserted_into_a_gap_of_the_anchored_range_is_named(store: Store) -> None:
    # A gap below the anchored end, as a rolled-back PostgreSQL transaction leaves in
    # the notification id sequence; the attacker fills it with a forged event.
    app = store.open()
    raw = RawEvents(store, app.recorder.events_table_name)
    try:
        record_cohort(app)
        gap = raw.positions()[500]
        originator_id, version, topic, state = raw.row(gap)
        raw.delete(gap)
        checkpoint(app, KEY, now=CHECKPOINTED)
        assert verify(app, KEY).ok

        raw.insert(gap, (originator_id, version, topic, state))
        result = verify(app, KEY)
    finally:
        raw.close()
        app.close()

    assert not result.ok
    assert result.first_bad_position == gap
    assert "inserted" in (result.problem or "")


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_two_swapped_events_are_named_at_the_first_of_them(audited: Audited) -> None:
    positions = audited.raw.positions()
    first, second = positions[300], positions[900]
    first_row, second_row = audited.raw.row(first), audited.raw.row(second)
    audited.raw.delete(first)
    audited.raw.delete(second)
    audited.raw.insert(first, second_row)
    audited.raw.insert(second, first_row)

    result = verify(audited.app, KEY)

    assert not result.ok
    assert result.first_bad_position == first
    assert f"anchored at position {second}: events were reordered" in (result.problem or "")


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_events_after_the_last_checkpoint_are_unanchored_until_the_next(
    audited: Audited,
) -> None:
    before = len(audited.raw.positions())
    for version in ("2", "3"):
        audited.app.activate_protocol(
            ProtocolParameters(version=version), activated_by="test", reason="amendment", at=ARRIVED
        )
    added = len(audited.raw.positions()) - before
    assert added > 0

    pending = verify(audited.app, KEY)
    later = checkpoint(audited.app, KEY, now=CHECKPOINTED)
    anchored = verify(audited.app, KEY)

    assert pending.ok and pending.unanchored == added
    assert later.count == before + added
    assert anchored.ok and (anchored.unanchored, anchored.checkpoints) == (0, 2)


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_a_checkpoint_with_an_altered_head_is_rejected(audited: Audited) -> None:
    forged = Checkpoint.from_mapping(
        {**audited.checkpoint.__dict__, "head": "00" * 32, "created_at": "2025-03-03T00:00:00"}
    )

    result = verify(audited.app, KEY, [forged])

    assert not result.ok
    assert "invalid signature" in (result.problem or "")


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_a_checkpoint_signed_with_another_key_is_rejected(audited: Audited) -> None:
    other = AuditKey(b"not-the-audit-key-0123456789abcdef")
    forged = Checkpoint.signed(other, 1, 1, bytes(32), CHECKPOINTED)

    result = verify(audited.app, KEY, [forged])

    assert not result.ok
    assert f"signed with key {other.key_id}" in (result.problem or "")


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_rewriting_the_chain_table_to_cover_a_modified_event_is_detected(
    audited: Audited,
) -> None:
    position = audited.middle
    state = bytes(audited.raw.row(position)[3])
    audited.raw.set_state(position, state.replace(b"NCT", b"NCX"))
    chain = audited.raw.audit_table(CHAIN_TABLE)
    head = bytes(32)
    for notification in audited.app.recorder.select_notifications(0, 100_000):
        leaf = Leaves(audited.app, KEY)(notification)
        head = link(head, notification.id, leaf)
        audited.raw.execute(
            f"UPDATE {chain} SET event_hash = ?, chain_hash = ? WHERE position = ?",
            (leaf, head, notification.id),
        )

    result = verify(audited.app, KEY)

    assert not result.ok
    assert result.first_bad_position is None
    assert "do not match the checkpoint" in (result.problem or "")


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_removing_the_stored_checkpoints_is_detected(audited: Audited) -> None:
    audited.raw.execute(f"DELETE FROM {audited.raw.audit_table(CHECKPOINT_TABLE)}")

    result = verify(audited.app, KEY)

    assert not result.ok
    assert "a checkpoint was removed" in (result.problem or "")


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_an_exported_checkpoint_still_names_the_event_when_the_stored_ones_are_gone(
    audited: Audited, tmp_path: Path
) -> None:
    exported = tmp_path / "checkpoints.jsonl"
    exported.write_text(audited.checkpoint.to_json() + "\n")
    audited.raw.execute(f"DELETE FROM {audited.raw.audit_table(CHECKPOINT_TABLE)}")
    position = audited.middle
    audited.raw.set_state(position, b"{}")

    result = verify(audited.app, KEY, load_checkpoints(exported))

    assert not result.ok
    assert result.first_bad_position == position
