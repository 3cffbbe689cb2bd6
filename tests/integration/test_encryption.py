"""Encryption at rest (issue 7, item 6): with a cipher key no participant id, event id,
site or clinical string is stored in plain text; the key reads it all back, no key or
another key fails loudly; rotation re-encrypts in place so an old key can be retired.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import MapperDeserialisationError
from psycopg import sql

from infra.settings import Settings
from infra.store import CipherKeyError, KeyringCipher, cipher_env, eventsourcing_env
from services.bootstrap import build_application
from services.keys import KeyRotationError, generate_key, rotate
from services.offline import process_lines
from services.simulator import CohortSpec, simulate_cohort
from tests.conftest import Store

STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
ARRIVED = datetime(2025, 3, 1, tzinfo=UTC)
KEY_A = generate_key()
KEY_B = generate_key()
#: In the plain store (checked below), never in an encrypted one.
SECRETS = (
    b"G79-001",  # participant id
    b"edc-2534c02d-001-0001",  # event id
    b"CN-002",  # site id
    b"Cytokine release syndrome",  # a graded term
    b"fludarabine",  # a lymphodepletion agent
    b"diphenhydramine",  # a concomitant medication
    b"temperature_c",  # a vital sign
    b"SLEDAI-2K",  # a disease assessment
)


def with_keys(store: Store, **keys: str) -> Settings:
    return Settings(**store.settings_kwargs, **keys)


def record_cohort(settings: Settings) -> None:
    app = build_application(settings)
    try:
        messages = simulate_cohort(CohortSpec(participants=3, follow_up_days=10))
        process_lines([m.value for m in messages], io.StringIO(), app=app, now=ARRIVED)
    finally:
        app.close()


def derived_events(settings: Settings) -> list[dict[str, Any]]:
    app = build_application(settings)
    try:
        return [
            event.model_dump(mode="json", exclude={"recorded_at"})
            for event in app.iter_safety_events()
        ]
    finally:
        app.close()


def raw_bytes(settings: Settings) -> bytes:
    """Everything the database holds, as an attacker with its files would read it."""
    if settings.store == "sqlite":
        path = settings.sqlite_path
        files = [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))]
        return b"".join(f.read_bytes() for f in files if f.exists())
    chunks: list[bytes] = []
    with psycopg.connect(
        host=settings.postgres_host,
        port=settings.postgres_port,
        dbname=settings.postgres_dbname,
        user=settings.postgres_user,
        password=settings.postgres_password,
    ) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (settings.postgres_schema,),
        ).fetchall()
        assert tables
        for (table,) in tables:
            query = sql.SQL("SELECT * FROM {}").format(
                sql.Identifier(settings.postgres_schema, table)
            )
            for row in connection.execute(query):
                chunks.extend(
                    bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                    for value in row
                )
    return b"\n".join(chunks)


def plaintext_found(settings: Settings) -> list[bytes]:
    data = raw_bytes(settings)
    return [secret for secret in SECRETS if secret in data]


@pytest.fixture(scope="module")
def plain_events(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    store = Store.sqlite(tmp_path_factory.mktemp("plain") / "data")
    record_cohort(store.settings())
    return derived_events(store.settings())


@pytest.fixture
def encrypted(store: Store) -> Iterator[Store]:
    record_cohort(with_keys(store, cipher_key=KEY_A))
    yield store


# ---------------------------------------------------------------- without a key


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_without_a_key_the_store_is_plain_as_before(
    store: Store, plain_events: list[dict[str, Any]]
) -> None:
    assert cipher_env(store.settings()) == {}
    assert "CIPHER_TOPIC" not in eventsourcing_env(store.settings())
    record_cohort(store.settings())
    assert plaintext_found(store.settings()) == list(SECRETS)
    assert derived_events(store.settings()) == plain_events


def test_encryption_can_be_required(tmp_path: Path) -> None:
    with pytest.raises(CipherKeyError, match="required"):
        eventsourcing_env(Settings(data_dir=tmp_path, require_encryption=True))


# ---------------------------------------------------------------- with a key


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_with_a_key_nothing_clinical_is_stored_in_plain_text(encrypted: Store) -> None:
    assert plaintext_found(encrypted.settings()) == []


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_the_key_reads_back_what_a_plain_run_derives(
    encrypted: Store, plain_events: list[dict[str, Any]]
) -> None:
    assert plain_events
    assert derived_events(with_keys(encrypted, cipher_key=KEY_A)) == plain_events


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_without_the_key_reading_fails_clearly(encrypted: Store) -> None:
    with pytest.raises(MapperDeserialisationError):
        derived_events(encrypted.settings())


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_a_wrong_key_fails_naming_the_missing_key_id(encrypted: Store) -> None:
    with pytest.raises(MapperDeserialisationError, match="not in the keyring") as failure:
        derived_events(with_keys(encrypted, cipher_key=KEY_B))
    assert isinstance(failure.value.__cause__, CipherKeyError)


def test_the_key_file_lists_the_current_key_first(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# current\n{KEY_B}\n{KEY_A}  # retired after rotation\n")
    settings = Settings(data_dir=tmp_path, cipher_key_file=key_file)
    assert settings.cipher_keys() == (KEY_B, KEY_A)
    env = eventsourcing_env(settings)
    assert (env["CIPHER_KEY"], env["CIPHER_KEYS_PREVIOUS"]) == (KEY_B, KEY_A)
    assert KEY_A not in repr(Settings(data_dir=tmp_path, cipher_key=KEY_A))


def test_a_malformed_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CipherKeyError, match="32 bytes"):
        eventsourcing_env(Settings(data_dir=tmp_path, cipher_key="c2hvcnQ="))


def test_the_ciphertext_carries_its_key_id_before_the_aes_gcm_layout() -> None:
    old, new = KeyringCipher.from_keys([KEY_A]), KeyringCipher.from_keys([KEY_B, KEY_A])
    ciphertext = old.encrypt(b"G79-001")
    assert ciphertext[:3] == b"TK\x01"
    assert ciphertext[3:7] == old.current_key_id
    assert len(ciphertext) == 7 + 12 + 16 + len(b"G79-001")
    assert new.decrypt(ciphertext) == b"G79-001"
    assert new.encrypt(b"x")[3:7] == new.current_key_id != old.current_key_id


# ---------------------------------------------------------------- rotation


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_rotation_moves_every_event_to_the_new_key(
    encrypted: Store, plain_events: list[dict[str, Any]]
) -> None:
    during = with_keys(encrypted, cipher_key=KEY_B, cipher_keys_previous=KEY_A)
    assert derived_events(during) == plain_events

    first = rotate(during, batch=97)
    assert first.reencrypted == first.scanned > 0
    assert first.already_current == first.encrypted_plaintext == 0

    again = rotate(during, batch=97)
    assert (again.scanned, again.reencrypted) == (first.scanned, 0)
    assert again.already_current == first.scanned

    assert derived_events(with_keys(encrypted, cipher_key=KEY_B)) == plain_events
    with pytest.raises(MapperDeserialisationError, match="not in the keyring"):
        derived_events(with_keys(encrypted, cipher_key=KEY_A))
    assert plaintext_found(encrypted.settings()) == []


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_new_events_written_mid_rotation_use_the_new_key(
    encrypted: Store, plain_events: list[dict[str, Any]]
) -> None:
    during = with_keys(encrypted, cipher_key=KEY_B, cipher_keys_previous=KEY_A)
    more = simulate_cohort(CohortSpec(participants=3, follow_up_days=12))
    app = build_application(during)
    try:
        process_lines([m.value for m in more], io.StringIO(), app=app, now=ARRIVED)
    finally:
        app.close()
    report = rotate(during)
    assert report.already_current > 0 and report.reencrypted > 0
    assert len(derived_events(with_keys(encrypted, cipher_key=KEY_B))) >= len(plain_events)


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_rotation_encrypts_a_store_written_without_a_key(
    store: Store, plain_events: list[dict[str, Any]]
) -> None:
    record_cohort(store.settings())
    report = rotate(with_keys(store, cipher_key=KEY_A))
    assert report.encrypted_plaintext == report.scanned > 0
    assert derived_events(with_keys(store, cipher_key=KEY_A)) == plain_events
    if store.kind == "sqlite":
        assert plaintext_found(store.settings()) == []


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_the_audit_chain_stays_valid_across_a_key_rotation(encrypted: Store) -> None:
    """The chain hashes plaintext: re-encrypting every state under a new key changes
    every stored byte and none of the anchored leaves."""
    from services.audit import AuditKey, checkpoint, verify
    from tests.integration.test_audit_verify import RawEvents

    audit_key = AuditKey(b"audit-key-for-the-tests-0123456789")
    settings = with_keys(encrypted, cipher_key=KEY_A)
    app = build_application(settings)
    try:
        checkpoint(app, audit_key, now=ARRIVED)
        assert verify(app, audit_key).ok
    finally:
        app.close()
    rotated = with_keys(encrypted, cipher_key=KEY_B, cipher_keys_previous=KEY_A)
    report = rotate(rotated)
    assert report.reencrypted > 0
    app = build_application(with_keys(encrypted, cipher_key=KEY_B))  # old key gone
    try:
        result = verify(app, audit_key)
        assert result.ok, result.summary()
        assert result.events_checked > 0
        # And the chain still detects a change made after the rotation: a flipped
        # ciphertext byte no longer decrypts.
        raw = RawEvents(encrypted, app.recorder.events_table_name)
        try:
            position = raw.positions()[5]
            state = bytearray(raw.row(position)[3])
            state[-1] ^= 0x01
            raw.set_state(position, bytes(state))
        finally:
            raw.close()
        tampered = verify(app, audit_key)
        assert (tampered.ok, tampered.first_bad_position) == (False, position)
    finally:
        app.close()


def test_rotation_needs_a_key(tmp_path: Path) -> None:
    with pytest.raises(KeyRotationError, match="no cipher key"):
        rotate(Settings(data_dir=tmp_path))


def test_sqlite_state_is_a_blob_of_ciphertext(tmp_path: Path) -> None:
    store = Store.sqlite(tmp_path / "data")
    record_cohort(with_keys(store, cipher_key=KEY_A))
    with sqlite3.connect(store.settings().sqlite_path) as connection:
        states = [row[0] for row in connection.execute("SELECT state FROM stored_events")]
    assert states and all(state[:3] == b"TK\x01" for state in states)
