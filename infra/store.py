"""Event store configuration: SQLite (embedded) or PostgreSQL (production).

The recorders here extend eventsourcing's process recorders so that one batch can
carry the tracking positions of several Kafka partitions: the new domain events and
every partition's position are written in one transaction (architecture decision 4).

With cipher keys configured (``Settings.cipher_keys``), each stored event's ``state``
is compressed (zlib) and then encrypted by ``KeyringCipher`` (architecture decision
10). Its ciphertext layout, version 1::

    b"TK" | 0x01 | key id (4 bytes) | nonce (12) | GCM tag (16) | encrypted

``key id`` is the first 4 bytes of SHA-256(b"toxwatch-cipher-key-id\x00" || key); the
rest is eventsourcing's ``AESCipher`` (AES-GCM) output unchanged. The current key
encrypts; the current and every previous key decrypt, each picked by its id.
"""

from __future__ import annotations

import hashlib
from base64 import b64decode
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any
from uuid import UUID

from eventsourcing.cryptography import AESCipher
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    Cipher,
    InterfaceError,
    OperationalError,
    StoredEvent,
    Tracking,
)
from eventsourcing.postgres import PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteProcessRecorder
from eventsourcing.utils import Environment, retry
from psycopg import Cursor, sql
from psycopg.rows import DictRow

from domain.errors import ToxWatchError
from infra.settings import Settings

TRACKINGS = "trackings"
#: Save keyword: (trial, event id, participant) first sent in this batch; their rows in
#: ``EVENT_IDS_TABLE`` (hashed: ``event_key``, ``sender_key``) make a repeated event id
#: a duplicate trial-wide (contract §1).
EVENT_ID_CLAIMS = "event_id_claims"
EVENT_IDS_TABLE = "toxwatch_event_ids"
_CHUNK = 400
CIPHER_TOPIC = "infra.store:KeyringCipher"
COMPRESSOR_TOPIC = "eventsourcing.compressor:ZlibCompressor"
PREVIOUS_KEYS = "CIPHER_KEYS_PREVIOUS"
CIPHER_MAGIC = b"TK\x01"
KEY_ID_BYTES = 4
HEADER_BYTES = len(CIPHER_MAGIC) + KEY_ID_BYTES
KEY_BYTES = 32
_KEY_ID_DOMAIN = b"toxwatch-cipher-key-id\x00"


class CipherKeyError(ToxWatchError, ValueError):
    """A cipher key is malformed, or a stored event needs a key the keyring lacks."""


def decode_key(key: str) -> bytes:
    """The raw bytes of a base64 AES-256 key."""
    try:
        raw = b64decode(key.encode(), validate=True)
    except ValueError:
        raise CipherKeyError("a cipher key is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise CipherKeyError(f"a cipher key must be {KEY_BYTES} bytes (AES-256), not {len(raw)}")
    return raw


def key_id(key: str) -> bytes:
    return hashlib.sha256(_KEY_ID_DOMAIN + decode_key(key)).digest()[:KEY_ID_BYTES]


def new_key() -> str:
    """A new random AES-256 key, base64."""
    return AESCipher.create_key(KEY_BYTES)


def is_encrypted(state: bytes) -> bool:
    return state[: len(CIPHER_MAGIC)] == CIPHER_MAGIC


def ciphertext_key_id(state: bytes) -> bytes | None:
    return state[len(CIPHER_MAGIC) : HEADER_BYTES] if is_encrypted(state) else None


class KeyringCipher(Cipher):
    """eventsourcing cipher (``CIPHER_TOPIC``) over a keyring: encrypts with
    ``CIPHER_KEY`` and decrypts with it or any of ``CIPHER_KEYS_PREVIOUS``
    (comma-separated), choosing the key by the id in the ciphertext's header."""

    def __init__(self, environment: Environment) -> None:
        current = environment.get(AESCipher.CIPHER_KEY)
        if not current:
            raise CipherKeyError(f"{AESCipher.CIPHER_KEY} is not set")
        previous = (environment.get(PREVIOUS_KEYS) or "").split(",")
        keys = [current, *(key.strip() for key in previous if key.strip())]
        self._ciphers = {
            key_id(key): AESCipher(Environment(env={AESCipher.CIPHER_KEY: key})) for key in keys
        }
        self.current_key_id = key_id(current)

    @classmethod
    def from_keys(cls, keys: Sequence[str]) -> KeyringCipher:
        """The keyring of ``keys``, newest (current) first."""
        current, *previous = keys
        return cls(
            Environment(env={AESCipher.CIPHER_KEY: current, PREVIOUS_KEYS: ",".join(previous)})
        )

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(kid.hex() for kid in self._ciphers)

    def encrypt(self, plaintext: bytes) -> bytes:
        ciphertext = self._ciphers[self.current_key_id].encrypt(plaintext)
        return CIPHER_MAGIC + self.current_key_id + ciphertext

    def decrypt(self, ciphertext: bytes) -> bytes:
        kid = ciphertext_key_id(ciphertext)
        if kid is None:
            raise CipherKeyError(
                "the stored state is not encrypted (a store written without a cipher key: "
                "encrypt it with `toxwatch key rotate`)"
            )
        cipher = self._ciphers.get(kid)
        if cipher is None:
            known = ", ".join(self.key_ids)
            raise CipherKeyError(
                f"the stored state was encrypted with key id {kid.hex()}, "
                f"not in the keyring (key ids {known})"
            )
        return cipher.decrypt(ciphertext[HEADER_BYTES:])


def cipher_env(settings: Settings) -> dict[str, str]:
    """The cipher and compressor environment; empty when encryption is off."""
    keys = settings.cipher_keys()
    if not keys:
        if settings.require_encryption:
            raise CipherKeyError(
                "encryption is required (TOXWATCH_REQUIRE_ENCRYPTION) but no key is set: "
                "TOXWATCH_CIPHER_KEY or TOXWATCH_CIPHER_KEY_FILE"
            )
        return {}
    for key in keys:
        decode_key(key)
    return {
        "CIPHER_TOPIC": CIPHER_TOPIC,
        AESCipher.CIPHER_KEY: keys[0],
        PREVIOUS_KEYS: ",".join(keys[1:]),
        "COMPRESSOR_TOPIC": COMPRESSOR_TOPIC,
    }


class SQLiteBatchRecorder(SQLiteProcessRecorder):
    """SQLite process recorder accepting ``trackings=[Tracking, ...]`` and
    ``event_id_claims=[(trial, event_id, participant), ...]`` (``EVENT_IDS_TABLE``)."""

    def construct_create_table_statements(self) -> list[str]:
        statements = super().construct_create_table_statements()
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {EVENT_IDS_TABLE} (event_key TEXT PRIMARY KEY, "
            "sender_key TEXT NOT NULL) WITHOUT ROWID"
        )
        return statements

    def _insert_events(
        self, c: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        returning = super()._insert_events(c, stored_events, **kwargs)
        for tracking in kwargs.get(TRACKINGS, ()):
            self._insert_tracking(c, tracking)
        claims = [_claim_row(*claim) for claim in kwargs.get(EVENT_ID_CLAIMS, ())]
        if claims:
            c.executemany(f"INSERT INTO {EVENT_IDS_TABLE} VALUES (?, ?)", claims)
        return returning

    def event_id_senders(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """For each (trial, event id) already stored, the key of its first sender
        (``sender_key``)."""
        by_hash = {event_key(*key): key for key in set(keys)}
        rows = self._rows_in(
            f"SELECT event_key, sender_key FROM {EVENT_IDS_TABLE} WHERE event_key IN ({{marks}})",
            sorted(by_hash),
        )
        return {by_hash[hashed]: sender for hashed, sender in rows}

    def existing(self, ids: Iterable[UUID]) -> set[UUID]:
        """Which of these aggregates the store holds (their first event), in one read
        per ``_CHUNK`` ids rather than one per aggregate."""
        rows = self._rows_in(
            f"SELECT originator_id FROM {self.events_table_name} "
            "WHERE originator_id IN ({marks}) AND originator_version = ?",
            sorted({aggregate_id.hex for aggregate_id in ids}),
            Aggregate.INITIAL_VERSION,
        )
        return {_uuid(row[0]) for row in rows}

    def _rows_in(self, query: str, values: Sequence[str], *params: object) -> list[Any]:
        """The rows of ``query`` for ``values``, read ``_CHUNK`` at a time: ``{marks}``
        in the query stands for one chunk's placeholders, and ``params`` follow them."""
        rows: list[Any] = []
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(values), _CHUNK):
                chunk = values[start : start + _CHUNK]
                c.execute(query.format(marks=", ".join("?" * len(chunk))), [*chunk, *params])
                rows.extend(c.fetchall())
        return rows

    def changes_since(self, position: int, limit: int) -> tuple[int, list[tuple[UUID, int]]]:
        """The (originator id, version) of at most ``limit`` events stored after
        notification ``position``, in order, and the position of the last one read
        (``position`` when none)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT rowid, originator_id, originator_version FROM {self.events_table_name} "
                "WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (position, limit),
            )
            rows = c.fetchall()
        return _changes(position, [(row[0], row[1], row[2]) for row in rows])


class PostgresBatchRecorder(PostgresProcessRecorder):
    """PostgreSQL process recorder accepting ``trackings=[Tracking, ...]`` and
    ``event_id_claims=[(trial, event_id, participant), ...]`` (``EVENT_IDS_TABLE``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._event_ids = sql.Identifier(self.datastore.schema, EVENT_IDS_TABLE)
        self.sql_create_statements.append(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (event_key text PRIMARY KEY, "
                "sender_key text NOT NULL)"
            ).format(self._event_ids)
        )

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        for tracking in kwargs.get(TRACKINGS, ()):
            self._insert_tracking(curs, tracking=tracking)
        claims = [_claim_row(*claim) for claim in kwargs.get(EVENT_ID_CLAIMS, ())]
        if claims:
            curs.executemany(
                sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(self._event_ids), claims
            )
        super()._insert_events(curs, stored_events, **kwargs)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def event_id_senders(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """For each (trial, event id) already stored, the key of its first sender
        (``sender_key``)."""
        by_hash = {event_key(*key): key for key in set(keys)}
        rows = self._rows_in(
            sql.SQL("SELECT event_key, sender_key FROM {} WHERE event_key = ANY(%s)").format(
                self._event_ids
            ),
            sorted(by_hash),
        )
        return {by_hash[row["event_key"]]: row["sender_key"] for row in rows}

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def existing(self, ids: Iterable[UUID]) -> set[UUID]:
        """Which of these aggregates the store holds (their first event), in one read
        per ``_CHUNK`` ids rather than one per aggregate."""
        rows = self._rows_in(
            sql.SQL(
                "SELECT originator_id FROM {}.{} "
                "WHERE originator_id = ANY(%s) AND originator_version = %s"
            ).format(sql.Identifier(self.datastore.schema), sql.Identifier(self.events_table_name)),
            sorted(set(ids)),
            Aggregate.INITIAL_VERSION,
        )
        return {_uuid(row["originator_id"]) for row in rows}

    def _rows_in(self, query: sql.Composable, values: Sequence[Any], *params: object) -> list[Any]:
        """The rows of ``query`` for ``values``, read ``_CHUNK`` at a time: one chunk is
        its first parameter (``= ANY(%s)``), and ``params`` follow it."""
        rows: list[Any] = []
        with self.datastore.transaction(commit=False) as curs:
            for start in range(0, len(values), _CHUNK):
                curs.execute(query, (values[start : start + _CHUNK], *params))
                rows.extend(curs.fetchall())
        return rows

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def changes_since(self, position: int, limit: int) -> tuple[int, list[tuple[UUID, int]]]:
        """The (originator id, version) of at most ``limit`` events stored after
        notification ``position``, in order, and the position of the last one read
        (``position`` when none). Notification ids commit in order here: eventsourcing
        locks the events table for each insert."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                sql.SQL(
                    "SELECT notification_id, originator_id, originator_version FROM {}.{} "
                    "WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
                ).format(
                    sql.Identifier(self.datastore.schema), sql.Identifier(self.events_table_name)
                ),
                (position, limit),
            )
            rows = curs.fetchall()
        return _changes(
            position,
            [(r["notification_id"], r["originator_id"], r["originator_version"]) for r in rows],
        )


def event_key(trial_id: str, event_id: str) -> str:
    """The stored form of a (trial, event id): a hash, so that the index holds no
    identifier in plain text (an encrypted store keeps none)."""
    return _digest(b"toxwatch-event-id", trial_id, event_id)


@lru_cache(maxsize=65536)
def sender_key(trial_id: str, participant_id: str) -> str:
    """The stored form of who sent an event id (the participant, or ``-``)."""
    return _digest(b"toxwatch-event-sender", trial_id, participant_id)


def _changes(
    position: int, rows: Sequence[tuple[int, object, int]]
) -> tuple[int, list[tuple[UUID, int]]]:
    changed = [(_uuid(originator_id), version) for _, originator_id, version in rows]
    return (rows[-1][0] if rows else position), changed


def _uuid(value: object) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def _digest(domain: bytes, *parts: str) -> str:
    return hashlib.sha256(domain + b"".join(b"\x00" + p.encode() for p in parts)).hexdigest()


def _claim_row(trial_id: str, event_id: str, participant_id: str) -> tuple[str, str]:
    return event_key(trial_id, event_id), sender_key(trial_id, participant_id)


def partition_tracking_name(topic: str, partition: int, incarnation: int = 0) -> str:
    """The tracking name of a partition of an inbound topic: ``{topic}#{partition}``
    for the topic's first incarnation (the name stores have always used), and
    ``{topic}~{n}#{partition}`` once the topic has been replaced ``n`` times (deleted
    and recreated, or lost with a broker's data: its offsets start again at 0). ``~``
    cannot occur in a Kafka topic name."""
    if incarnation == 0:
        return f"{topic}#{partition}"
    return f"{topic}~{incarnation}#{partition}"


def kafka_tracking(topic: str, partition: int, offset: int, incarnation: int = 0) -> Tracking:
    """Tracking of a consumed Kafka message: the next offset to read."""
    return Tracking(partition_tracking_name(topic, partition, incarnation), offset + 1)


def eventsourcing_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment for the configured store."""
    common = {
        "AGGREGATE_CACHE_MAXSIZE": str(settings.aggregate_cache_size),
        "IDLE_RECORD_DAYS": str(settings.idle_record_days),
        "ORIGINATOR_ID_TYPE": "uuid",
    } | cipher_env(settings)
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
