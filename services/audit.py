"""Tamper evidence for the event store: a hash chain over the stored events in
notification order, anchored in signed checkpoints (issue 7, item 3).

Each stored event has a *leaf*: an HMAC-SHA256, keyed with the audit key, over its
content (originator id, version, topic, and its state as plaintext: decrypted and
decompressed when the store is encrypted). The leaf is over the plaintext so that a
key rotation, which re-encrypts every state, leaves the chain valid; it is keyed so
that the chain rows do not let anyone confirm a guess of an encrypted event's
content. A state that does not decrypt (altered ciphertext) has a leaf over its raw
bytes, which matches no anchored leaf. The chain links leaves in notification
order::

    h_0 = 32 zero bytes
    h_i = SHA-256(h_{i-1} || notification_id as 8 bytes || leaf_i)

``checkpoint`` extends the chain from the last checkpoint to the current end of the
log, writes one row per event to ``toxwatch_audit_chain`` (position, leaf, chain) and a
signed checkpoint (position, count, head) to ``toxwatch_audit_checkpoints``, both in
the store's own database and in one transaction. The checkpoint is also returned as
JSON, to be kept off-site: whoever can edit the events can edit these tables too, and
``verify`` takes exported checkpoints as well.

``verify`` walks the stored events and the chain rows side by side. The chain rows are
trusted only up to where they reproduce every signed checkpoint; then the first
position where the events and the rows differ is the first bad event: a changed
content (modified, or moved from another position: reordered), a position with no row
(inserted), or a row with no event (deleted). Events after the last checkpoint are
reported as not yet anchored.

Signatures are HMAC-SHA256 with a secret from ``TOXWATCH_AUDIT_KEY`` or
``TOXWATCH_AUDIT_KEY_FILE``: the ``cryptography`` package is not in the environment.
An asymmetric signature (Ed25519) would let auditors verify without holding the
signing secret; the checkpoint names its ``algorithm`` so one can be added.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from eventsourcing.application import Application
from eventsourcing.persistence import Notification
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from psycopg import sql

from domain.errors import ToxWatchError

CHAIN_TABLE = "toxwatch_audit_chain"
CHECKPOINT_TABLE = "toxwatch_audit_checkpoints"
GENESIS = bytes(32)
ALGORITHM = "HMAC-SHA256"
KEY_ENV = "TOXWATCH_AUDIT_KEY"
KEY_FILE_ENV = "TOXWATCH_AUDIT_KEY_FILE"
MIN_KEY_BYTES = 16
PAGE = 1000
_LEAF_DOMAIN = b"toxwatch-audit-leaf-v2\x00"
_CHECKPOINT_DOMAIN = b"toxwatch-audit-checkpoint-v1\x00"


class AuditError(ToxWatchError):
    """The audit trail cannot be extended or checked (no key, altered tables)."""


# ---------------------------------------------------------------- hashing


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(8, "big") + value


def leaf_hash(notification: Notification, key: AuditKey, plaintext: bytes | None) -> bytes:
    """The keyed hash of one stored event's content (not of its position);
    ``plaintext``: its state decrypted and decompressed, None if it did not decrypt."""
    state = b"\x01" + plaintext if plaintext is not None else b"\x00" + bytes(notification.state)
    parts = (
        str(notification.originator_id).encode(),
        str(notification.originator_version).encode(),
        notification.topic.encode(),
        state,
    )
    return hmac.new(
        key.secret, _LEAF_DOMAIN + b"".join(_field(p) for p in parts), hashlib.sha256
    ).digest()


class Leaves:
    """Leaf hashes of ``app``'s stored events: their states read as plaintext with
    the store's own cipher and compressor."""

    def __init__(self, app: Application[Any], key: AuditKey) -> None:
        self.cipher = app.mapper.cipher
        self.compressor = app.mapper.compressor
        self.key = key

    def __call__(self, notification: Notification) -> bytes:
        state = bytes(notification.state)
        try:
            if self.cipher is not None:
                state = self.cipher.decrypt(state)
            if self.compressor is not None:
                state = self.compressor.decompress(state)
        except Exception:
            return leaf_hash(notification, self.key, None)
        return leaf_hash(notification, self.key, state)


def link(previous: bytes, position: int, leaf: bytes) -> bytes:
    return hashlib.sha256(previous + position.to_bytes(8, "big") + leaf).digest()


# ---------------------------------------------------------------- signing


@dataclass(frozen=True)
class AuditKey:
    secret: bytes

    @property
    def key_id(self) -> str:
        return hmac.new(self.secret, b"toxwatch-audit-key-id", hashlib.sha256).hexdigest()[:16]

    def sign(self, payload: bytes) -> str:
        return hmac.new(self.secret, _CHECKPOINT_DOMAIN + payload, hashlib.sha256).hexdigest()


def audit_key_from_env(environ: Mapping[str, str] = os.environ) -> AuditKey:
    """The signing key: ``TOXWATCH_AUDIT_KEY_FILE`` (its content) or ``TOXWATCH_AUDIT_KEY``."""
    if environ.get(KEY_FILE_ENV):
        secret = Path(environ[KEY_FILE_ENV]).read_bytes().strip()
    else:
        secret = environ.get(KEY_ENV, "").encode()
    if len(secret) < MIN_KEY_BYTES:
        raise AuditError(f"set {KEY_ENV} or {KEY_FILE_ENV} to a secret of {MIN_KEY_BYTES}+ bytes")
    return AuditKey(secret)


@dataclass(frozen=True)
class Checkpoint:
    """The chain head after the event at ``position``; ``count`` events up to there."""

    position: int
    count: int
    head: str
    created_at: str
    key_id: str
    algorithm: str
    signature: str

    def payload(self) -> bytes:
        fields = asdict(self)
        del fields["signature"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Checkpoint:
        return cls(
            position=int(data["position"]),
            count=int(data["count"]),
            head=str(data["head"]),
            created_at=str(data["created_at"]),
            key_id=str(data["key_id"]),
            algorithm=str(data["algorithm"]),
            signature=str(data["signature"]),
        )

    @classmethod
    def signed(
        cls, key: AuditKey, position: int, count: int, head: bytes, at: datetime
    ) -> Checkpoint:
        unsigned = cls(position, count, head.hex(), at.isoformat(), key.key_id, ALGORITHM, "")
        return cls(**(asdict(unsigned) | {"signature": key.sign(unsigned.payload())}))

    def signature_problem(self, key: AuditKey) -> str | None:
        where = f"checkpoint at position {self.position} ({self.created_at})"
        if self.algorithm != ALGORITHM:
            return f"{where} uses an unknown algorithm {self.algorithm!r}"
        if self.key_id != key.key_id:
            return f"{where} is signed with key {self.key_id}, not the configured {key.key_id}"
        if not hmac.compare_digest(self.signature, key.sign(self.payload())):
            return f"{where} has an invalid signature: forged or altered"
        return None


def load_checkpoints(path: Path) -> list[Checkpoint]:
    """Exported checkpoints: one JSON object per line."""
    checkpoints = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            checkpoints.append(Checkpoint.from_mapping(json.loads(line)))
        except (ValueError, KeyError, TypeError) as error:
            raise AuditError(f"{path}:{number}: not a checkpoint ({error!r})") from None
    return checkpoints


def append_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Add a checkpoint to an export file (JSON lines)."""
    with path.open("a") as handle:
        handle.write(checkpoint.to_json() + "\n")


# ---------------------------------------------------------------- storage


ChainRow = tuple[int, bytes, bytes]


class AuditTables(Protocol):
    def create(self) -> None: ...
    def checkpoints(self) -> list[Checkpoint]: ...
    def chain_rows(self, after: int, upto: int, limit: int) -> list[ChainRow]: ...
    def last_chain_position(self) -> int: ...
    def position_of_leaf(self, leaf: bytes, upto: int) -> int | None: ...
    def append(self, rows: Sequence[ChainRow], checkpoint: Checkpoint) -> None: ...


_CHECKPOINT_COLUMNS = "position, count, head, created_at, key_id, algorithm, signature"


class _SQLiteAuditTables:
    def __init__(self, recorder: SQLiteApplicationRecorder) -> None:
        self.datastore = recorder.datastore

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall())

    def create(self) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {CHAIN_TABLE} (position INTEGER PRIMARY KEY, "
                "event_hash BLOB NOT NULL, chain_hash BLOB NOT NULL)"
            )
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} (position INTEGER NOT NULL, "
                "count INTEGER NOT NULL, head TEXT NOT NULL, created_at TEXT NOT NULL, "
                "key_id TEXT NOT NULL, algorithm TEXT NOT NULL, signature TEXT NOT NULL)"
            )

    def checkpoints(self) -> list[Checkpoint]:
        rows = self._query(f"SELECT {_CHECKPOINT_COLUMNS} FROM {CHECKPOINT_TABLE}")
        return [Checkpoint.from_mapping(dict(row)) for row in rows]

    def chain_rows(self, after: int, upto: int, limit: int) -> list[ChainRow]:
        rows = self._query(
            f"SELECT position, event_hash, chain_hash FROM {CHAIN_TABLE} "
            "WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
            (after, upto, limit),
        )
        return [(row[0], bytes(row[1]), bytes(row[2])) for row in rows]

    def last_chain_position(self) -> int:
        return int(self._query(f"SELECT COALESCE(MAX(position), 0) FROM {CHAIN_TABLE}")[0][0])

    def position_of_leaf(self, leaf: bytes, upto: int) -> int | None:
        rows = self._query(
            f"SELECT position FROM {CHAIN_TABLE} WHERE event_hash = ? AND position <= ? LIMIT 1",
            (leaf, upto),
        )
        return int(rows[0][0]) if rows else None

    def append(self, rows: Sequence[ChainRow], checkpoint: Checkpoint) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            cursor.executemany(f"INSERT INTO {CHAIN_TABLE} VALUES (?, ?, ?)", rows)
            cursor.execute(
                f"INSERT INTO {CHECKPOINT_TABLE} ({_CHECKPOINT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                tuple(asdict(checkpoint).values()),
            )


class _PostgresAuditTables:
    def __init__(self, recorder: PostgresApplicationRecorder) -> None:
        self.datastore = recorder.datastore
        schema = sql.Identifier(recorder.datastore.schema)
        self.chain = sql.SQL("{}.{}").format(schema, sql.Identifier(CHAIN_TABLE))
        self.checkpoint_table = sql.SQL("{}.{}").format(schema, sql.Identifier(CHECKPOINT_TABLE))

    def _query(self, statement: sql.Composed, params: Sequence[Any] = ()) -> list[Any]:
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall())

    def create(self) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (position bigint PRIMARY KEY, "
                    "event_hash bytea NOT NULL, chain_hash bytea NOT NULL)"
                ).format(self.chain)
            )
            cursor.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (position bigint NOT NULL, "
                    "count bigint NOT NULL, head text NOT NULL, created_at text NOT NULL, "
                    "key_id text NOT NULL, algorithm text NOT NULL, signature text NOT NULL)"
                ).format(self.checkpoint_table)
            )

    def checkpoints(self) -> list[Checkpoint]:
        statement = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(_CHECKPOINT_COLUMNS), self.checkpoint_table
        )
        return [Checkpoint.from_mapping(row) for row in self._query(statement)]

    def chain_rows(self, after: int, upto: int, limit: int) -> list[ChainRow]:
        rows = self._query(
            sql.SQL(
                "SELECT position, event_hash, chain_hash FROM {} "
                "WHERE position > %s AND position <= %s ORDER BY position LIMIT %s"
            ).format(self.chain),
            (after, upto, limit),
        )
        return [(r["position"], bytes(r["event_hash"]), bytes(r["chain_hash"])) for r in rows]

    def last_chain_position(self) -> int:
        statement = sql.SQL("SELECT COALESCE(MAX(position), 0) AS last FROM {}").format(self.chain)
        return int(self._query(statement)[0]["last"])

    def position_of_leaf(self, leaf: bytes, upto: int) -> int | None:
        rows = self._query(
            sql.SQL(
                "SELECT position FROM {} WHERE event_hash = %s AND position <= %s LIMIT 1"
            ).format(self.chain),
            (leaf, upto),
        )
        return int(rows[0]["position"]) if rows else None

    def append(self, rows: Sequence[ChainRow], checkpoint: Checkpoint) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            cursor.executemany(
                sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(self.chain), rows
            )
            cursor.execute(
                sql.SQL("INSERT INTO {} ({}) VALUES (%s, %s, %s, %s, %s, %s, %s)").format(
                    self.checkpoint_table, sql.SQL(_CHECKPOINT_COLUMNS)
                ),
                tuple(asdict(checkpoint).values()),
            )


def audit_tables(app: Application[Any]) -> AuditTables:
    """The audit tables beside the application's events (created if absent)."""
    recorder = app.recorder
    tables: AuditTables
    if isinstance(recorder, SQLiteApplicationRecorder):
        tables = _SQLiteAuditTables(recorder)
    elif isinstance(recorder, PostgresApplicationRecorder):
        tables = _PostgresAuditTables(recorder)
    else:
        raise AuditError(f"no audit trail for a {type(recorder).__name__} store")
    tables.create()
    return tables


def _events(app: Application[Any], after: int, upto: int) -> Iterator[Notification]:
    while after < upto:
        page = app.recorder.select_notifications(after, PAGE, stop=upto, inclusive_of_start=False)
        if not page:
            return
        yield from page
        after = page[-1].id


def _rows(tables: AuditTables, upto: int) -> Iterator[ChainRow]:
    after = 0
    while page := tables.chain_rows(after, upto, PAGE):
        yield from page
        after = page[-1][0]


# ---------------------------------------------------------------- checkpoint


def checkpoint(app: Application[Any], key: AuditKey, *, now: datetime) -> Checkpoint:
    """Extend the chain to the current end of the log and record a signed checkpoint."""
    tables = audit_tables(app)
    last = max(tables.checkpoints(), key=lambda c: (c.position, c.created_at), default=None)
    if last is not None and (problem := last.signature_problem(key)):
        raise AuditError(f"{problem}; run `toxwatch audit verify`")
    position, count, head = (
        (last.position, last.count, bytes.fromhex(last.head)) if last else (0, 0, GENESIS)
    )
    if tables.last_chain_position() > position:
        raise AuditError(
            f"the audit chain runs past the last checkpoint (position {position}): "
            "a checkpoint was removed; run `toxwatch audit verify`"
        )
    rows: list[ChainRow] = []
    leaves = Leaves(app, key)
    for event in _events(app, position, app.recorder.max_notification_id() or 0):
        leaf = leaves(event)
        head = link(head, event.id, leaf)
        rows.append((event.id, leaf, head))
        position, count = event.id, count + 1
    signed = Checkpoint.signed(key, position, count, head, now)
    tables.append(rows, signed)
    return signed


# ---------------------------------------------------------------- verify


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events_checked: int
    checkpoints: int
    first_bad_position: int | None
    problem: str | None
    unanchored: int

    def summary(self) -> str:
        if self.ok:
            anchored = f"{self.events_checked} events match {self.checkpoints} checkpoint(s)"
            return f"audit OK: {anchored}; {self.unanchored} not yet anchored"
        where = f" at position {self.first_bad_position}" if self.first_bad_position else ""
        return f"audit FAILED{where}: {self.problem}"


class _Walk:
    """The stored events and the chain rows side by side, checked at every checkpoint.

    The rows are authentic up to ``rows_trusted_to``, the last checkpoint whose head
    they reproduce (with every one before it): a difference from the events there names
    the first bad event.
    """

    def __init__(
        self,
        tables: AuditTables,
        checkpoints: Sequence[Checkpoint],
        leaves: Callable[[Notification], bytes],
    ) -> None:
        self.tables = tables
        self.leaves = leaves
        self.pending = sorted(checkpoints, key=lambda c: c.position)
        self.anchored_to = self.pending[-1].position if self.pending else 0
        self.events = (GENESIS, 0)
        self.rows = (GENESIS, 0)
        self.rows_trusted_to = 0
        self._last_settled = 0
        self.divergence: tuple[int, str] | None = None
        self.table_problem: str | None = None
        self.events_unmatched: Checkpoint | None = None

    def run(self, events: Iterable[Notification], rows: Iterable[ChainRow]) -> None:
        event_iter, row_iter = iter(events), iter(rows)
        event, row = next(event_iter, None), next(row_iter, None)
        while event is not None or row is not None:
            positions = ([event.id] if event else []) + ([row[0]] if row else [])
            position = min(positions)
            self._settle(before=position)
            here = event if event is not None and event.id == position else None
            stored = row if row is not None and row[0] == position else None
            self._step(position, here, stored)
            if here is not None:
                event = next(event_iter, None)
            if stored is not None:
                row = next(row_iter, None)
        self._settle(before=None)

    def _step(self, position: int, event: Notification | None, row: ChainRow | None) -> None:
        leaf = self.leaves(event) if event is not None else None
        if leaf is not None:
            self.events = (link(self.events[0], position, leaf), self.events[1] + 1)
        if row is not None:
            self.rows = (link(self.rows[0], position, row[1]), self.rows[1] + 1)
            if row[2] != self.rows[0]:
                self._table_altered(f"the audit chain table was altered at position {position}")
        if self.divergence is None:
            self.divergence = self._difference(position, leaf, row)

    def _difference(
        self, position: int, leaf: bytes | None, row: ChainRow | None
    ) -> tuple[int, str] | None:
        if row is None:
            return position, f"stored event at position {position} was inserted"
        if leaf is None:
            return position, f"stored event at position {position} was deleted"
        if leaf == row[1]:
            return None
        origin = self.tables.position_of_leaf(leaf, self.anchored_to)
        if origin is not None:
            return position, (
                f"stored event at position {position} is the one anchored at position "
                f"{origin}: events were reordered"
            )
        return position, f"stored event at position {position} was modified"

    def _table_altered(self, problem: str) -> None:
        if self.table_problem is None:
            self.table_problem = problem

    def _settle(self, before: int | None) -> None:
        while self.pending and (before is None or self.pending[0].position < before):
            done = self.pending.pop(0)
            head = (bytes.fromhex(done.head), done.count)
            if self.rows == head and self.rows_trusted_to == self._last_settled:
                self.rows_trusted_to = done.position
            elif self.rows != head:
                self._table_altered(
                    f"the audit chain table does not match the checkpoint at {done.position}"
                )
            self._last_settled = done.position
            if self.events != head and self.events_unmatched is None:
                self.events_unmatched = done

    def problem(self) -> tuple[int | None, str | None]:
        """The first bad position (when the rows locate it) and what is wrong."""
        if self.divergence is not None and self.divergence[0] <= self.rows_trusted_to:
            return self.divergence
        if self.events_unmatched is not None:
            where = (
                f"the stored events do not match the checkpoint at {self.events_unmatched.position}"
            )
            return None, f"{where} and {self.table_problem or 'the audit chain table disagrees'}"
        if self.table_problem is not None:
            return None, f"{self.table_problem}; the stored events match every checkpoint"
        return self.divergence or (None, None)


def verify(
    app: Application[Any], key: AuditKey, exported: Iterable[Checkpoint] = ()
) -> VerifyResult:
    """Check the stored events against every checkpoint, stored or exported."""
    tables = audit_tables(app)
    checkpoints = list({c.signature: c for c in [*tables.checkpoints(), *exported]}.values())
    end = app.recorder.max_notification_id() or 0
    for c in checkpoints:
        if problem := c.signature_problem(key):
            return VerifyResult(False, 0, len(checkpoints), None, problem, 0)
    walk = _Walk(tables, checkpoints, Leaves(app, key))
    anchored_to = walk.anchored_to
    walk.run(_events(app, 0, min(end, anchored_to)), _rows(tables, anchored_to))
    unanchored = sum(1 for _ in _events(app, anchored_to, end))
    position, problem = walk.problem()
    if problem is None and tables.last_chain_position() > anchored_to:
        problem = (
            f"the audit chain runs past the last checkpoint (position {anchored_to}): "
            "a checkpoint was removed"
        )
    return VerifyResult(
        ok=problem is None,
        events_checked=walk.events[1],
        checkpoints=len(checkpoints),
        first_bad_position=position,
        problem=problem,
        unanchored=unanchored,
    )


# ---------------------------------------------------------------- the audit trail


def audit_trail(app: Any) -> Any:
    """Every human action on the record (``projections.audit_trail``), from the log."""
    from eventsourcing.utils import get_topic

    from projections.audit_trail import AUDIT_TRAIL_CLASSES, AuditTrail

    topics = [get_topic(cls) for cls in AUDIT_TRAIL_CLASSES]
    trail = AuditTrail()
    after = 0
    while True:
        page = app.recorder.select_notifications(
            start=after, limit=1000, topics=topics, inclusive_of_start=False
        )
        if not page:
            return trail
        for notification in page:
            trail.apply(app.mapper.to_domain_event(notification), notification.id)
        after = page[-1].id


# ---------------------------------------------------------------- as of


def participant_as_of(
    app: Any,
    trial_id: str,
    participant_id: str,
    *,
    recorded_at: datetime | None,
    clinical_at: datetime | None,
) -> dict[str, Any]:
    """What ToxWatch knew of a participant as recorded up to ``recorded_at`` (all of it
    without), and the grades in force at the clinical time ``clinical_at`` (default:
    ``recorded_at``, else the latest clinical time known)."""
    from eventsourcing.utils import get_topic

    from domain.participant import participant_aggregate_id
    from projections.alerts import ALERT_EVENT_CLASSES
    from projections.asof import AsOf

    state = AsOf(recorded_at)
    for event in app.repository.event_store.get(participant_aggregate_id(trial_id, participant_id)):
        state.apply(event)
    topics = [get_topic(cls) for cls in ALERT_EVENT_CLASSES]
    after = 0
    while page := app.recorder.select_notifications(
        start=after, limit=1000, topics=topics, inclusive_of_start=False
    ):
        for notification in page:
            event = app.mapper.to_domain_event(notification)
            if event.trial_id == trial_id and event.participant_id == participant_id:
                state.apply(event)
        after = page[-1].id
    moments = [datetime.fromisoformat(e["occurred_at"]) for e in state.clinical]
    when = clinical_at or recorded_at or (max(moments) if moments else None)
    return {
        "trial_id": trial_id,
        "participant_id": participant_id,
        "recorded_at": recorded_at.isoformat() if recorded_at else None,
        "clinical_at": when.isoformat() if when else None,
        "clinical_events_known": len(state.clinical),
        "derived_events_known": len(state.derived),
        "grades": state.grades_at(when) if when else {},
        "alerts": sorted(state.alerts.values(), key=lambda a: (a["raised_at"], a["alert_id"])),
    }


def trial_as_of(
    app: Any,
    trial_id: str,
    *,
    recorded_at: datetime | None,
    clinical_at: datetime | None,
) -> dict[str, Any]:
    """What ToxWatch knew of the trial as recorded up to ``recorded_at`` (all of it
    without): every participant's grades in force at ``clinical_at``, the dose levels'
    tallies, the trial monitor's findings and the alerts with their state then."""
    from eventsourcing.utils import get_topic

    from domain.trial import DoseLevel
    from projections.asof import TrialAsOf
    from services.application import SAFETY_EVENT_TOPICS

    state = TrialAsOf(trial_id, recorded_at)
    topics = [*SAFETY_EVENT_TOPICS, get_topic(DoseLevel.Opened), get_topic(DoseLevel.Tallied)]
    after = 0
    while page := app.recorder.select_notifications(
        start=after, limit=1000, topics=topics, inclusive_of_start=False
    ):
        for notification in page:
            state.apply(app.mapper.to_domain_event(notification))
        after = page[-1].id
    return state.summary(clinical_at)
