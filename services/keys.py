"""Encryption-at-rest keys: generation and rotation (issue 7, item 6).

Rotation re-encrypts the stored events in place so that an old key can be retired::

    1. ``toxwatch key generate`` -> key B.
    2. Restart every service with B current and A previous
       (``TOXWATCH_CIPHER_KEY=B TOXWATCH_CIPHER_KEYS_PREVIOUS=A``, or a key file
       listing B then A): new events are written with B, old ones still read with A.
    3. ``toxwatch key rotate`` (same settings): every event not under B is re-encrypted
       with B, batch by batch, each batch in one transaction. Writers may keep running
       (they write with B; rotation only rewrites events under another key). Re-running
       is harmless: it reports 0 re-encrypted.
    4. Restart with B alone; destroy A.

The same command encrypts a store written without a key (plain JSON states). Old
ciphertexts (or, after encrypting a plain store, plaintexts) can survive in free
database pages: SQLite is rotated with ``secure_delete`` and its WAL truncated; on
PostgreSQL run ``VACUUM FULL`` on the events tables afterwards.

The audit hash chain (``services.audit``) hashes each event's plaintext, so a
rotation leaves it valid: ``toxwatch audit verify`` passes before and after.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import sql

from domain.errors import ToxWatchError
from infra.settings import Settings
from infra.store import KeyringCipher, ciphertext_key_id, is_encrypted, new_key

BATCH = 500
_KEY_COLUMNS = ("originator_id", "originator_version", "state")

Row = tuple[Any, int, bytes]


class KeyRotationError(ToxWatchError):
    """The store cannot be rotated (no key, unreadable states)."""


def generate_key() -> str:
    """A new random AES-256 key, base64 (for ``TOXWATCH_CIPHER_KEY``)."""
    return new_key()


@dataclass
class RotationReport:
    key_id: str
    tables: list[str]
    scanned: int = 0
    reencrypted: int = 0
    encrypted_plaintext: int = 0
    already_current: int = 0

    def summary(self) -> str:
        return (
            f"rotated to key id {self.key_id}: {self.scanned} events scanned in "
            f"{len(self.tables)} table(s), {self.reencrypted} re-encrypted, "
            f"{self.encrypted_plaintext} plaintext encrypted, "
            f"{self.already_current} already under the current key"
        )


class _Store(Protocol):
    def state_tables(self) -> list[str]: ...
    def batch(self, table: str, after: tuple[Any, int] | None, limit: int) -> Any: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...


def rotate(settings: Settings, *, batch: int = BATCH) -> RotationReport:
    """Re-encrypt every stored state not under the current key with the current key."""
    keys = settings.cipher_keys()
    if not keys:
        raise KeyRotationError("no cipher key: set TOXWATCH_CIPHER_KEY or TOXWATCH_CIPHER_KEY_FILE")
    cipher = KeyringCipher.from_keys(keys)
    with closing(_open(settings)) as store:
        report = RotationReport(cipher.current_key_id.hex(), store.state_tables())
        for table in report.tables:
            after: tuple[Any, int] | None = None
            while True:
                with store.batch(table, after, batch) as (rows, update):
                    for originator_id, version, state in rows:
                        new_state = _reencrypt(cipher, bytes(state), report)
                        if new_state is not None:
                            update(originator_id, version, state, new_state)
                if len(rows) < batch:
                    break
                after = (rows[-1][0], rows[-1][1])
        store.finish()
    return report


def _reencrypt(cipher: KeyringCipher, state: bytes, report: RotationReport) -> bytes | None:
    report.scanned += 1
    if is_encrypted(state):
        if ciphertext_key_id(state) == cipher.current_key_id:
            report.already_current += 1
            return None
        report.reencrypted += 1
        return cipher.encrypt(cipher.decrypt(state))
    if state[:1] == b"{":
        report.encrypted_plaintext += 1
        return cipher.encrypt(zlib.compress(state))
    raise KeyRotationError("a stored state is neither a ToxWatch ciphertext nor plain JSON")


def _open(settings: Settings) -> _Store:
    if settings.store == "postgres":
        return _PostgresStore(settings)
    return _SQLiteStore(settings)


class _SQLiteStore:
    def __init__(self, settings: Settings) -> None:
        self.connection = sqlite3.connect(settings.sqlite_path, isolation_level=None, timeout=30)
        self.connection.execute("PRAGMA secure_delete = ON")

    def _tables(self) -> list[str]:
        rows = self.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return sorted(row[0] for row in rows)

    def state_tables(self) -> list[str]:
        return [
            table
            for table in self._tables()
            if set(_KEY_COLUMNS)
            <= {row[1] for row in self.connection.execute(f'PRAGMA table_info("{table}")')}
        ]

    @contextmanager
    def batch(self, table: str, after: tuple[Any, int] | None, limit: int) -> Iterator[Any]:
        where = "WHERE (originator_id, originator_version) > (?, ?)" if after else ""
        query = (
            f'SELECT originator_id, originator_version, state FROM "{table}" {where} '
            "ORDER BY originator_id, originator_version LIMIT ?"
        )
        update = (
            f'UPDATE "{table}" SET state = ? '
            "WHERE originator_id = ? AND originator_version = ? AND state = ?"
        )

        def write(originator_id: Any, version: int, old: bytes, new: bytes) -> None:
            self.connection.execute(update, (new, originator_id, version, old))

        self.connection.execute("BEGIN IMMEDIATE")
        try:
            rows = self.connection.execute(query, (*(after or ()), limit)).fetchall()
            yield rows, write
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    def finish(self) -> None:
        self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self.connection.close()


class _PostgresStore:
    def __init__(self, settings: Settings) -> None:
        self.schema = settings.postgres_schema
        self.connection = psycopg.connect(
            host=settings.postgres_host,
            port=settings.postgres_port,
            dbname=settings.postgres_dbname,
            user=settings.postgres_user,
            password=settings.postgres_password,
            autocommit=True,
        )

    def _columns(self) -> dict[str, set[str]]:
        rows = self.connection.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = %s",
            (self.schema,),
        ).fetchall()
        columns: dict[str, set[str]] = {}
        for table, column in rows:
            columns.setdefault(table, set()).add(column)
        return columns

    def state_tables(self) -> list[str]:
        return sorted(t for t, cs in self._columns().items() if set(_KEY_COLUMNS) <= cs)

    @contextmanager
    def batch(self, table: str, after: tuple[Any, int] | None, limit: int) -> Iterator[Any]:
        name = sql.Identifier(self.schema, table)
        where = sql.SQL("WHERE (originator_id, originator_version) > (%s, %s)" if after else "")
        query = sql.SQL(
            "SELECT originator_id, originator_version, state FROM {} {} "
            "ORDER BY originator_id, originator_version LIMIT %s FOR UPDATE"
        ).format(name, where)
        update = sql.SQL(
            "UPDATE {} SET state = %s "
            "WHERE originator_id = %s AND originator_version = %s AND state = %s"
        ).format(name)
        with self.connection.transaction(), self.connection.cursor() as cursor:

            def write(originator_id: Any, version: int, old: bytes, new: bytes) -> None:
                cursor.execute(update, (new, originator_id, version, old))

            rows = cursor.execute(query, (*(after or ()), limit)).fetchall()
            yield rows, write

    def finish(self) -> None:
        pass

    def close(self) -> None:
        self.connection.close()
