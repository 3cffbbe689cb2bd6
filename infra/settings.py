"""Runtime configuration from the environment (pydantic-settings).

Embedded mode is the default: a SQLite store under ``TOXWATCH_DATA_DIR`` and the
embedded broker. ``TOXWATCH_STORE=postgres`` with ``TOXWATCH_POSTGRES_*`` selects
PostgreSQL; ``KAFKA_BOOTSTRAP_SERVERS`` selects an external Kafka.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOXWATCH_", extra="ignore")

    data_dir: Path = Path("data")
    store: Literal["sqlite", "postgres"] = "sqlite"
    sqlite_file: Path | None = None
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    postgres_dbname: str = "test"
    postgres_user: str = "postgres"
    postgres_password: str = ""
    postgres_schema: str = "public"

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "KAFKA_BOOTSTRAP_SERVERS", "TOXWATCH_KAFKA_BOOTSTRAP_SERVERS"
        ),
    )
    tansu_bin: Path | None = None
    partitions: int = 4
    clinical_topic: str = "toxwatch.clinical.v1"
    rejected_topic: str = "toxwatch.clinical.v1.rejected"
    safety_topic: str = "toxwatch.safety.v1"
    alerts_topic: str = "toxwatch.alerts.v1"
    consumer_group: str = "toxwatch-ingest"

    batch_max_messages: int = 500
    batch_max_wait_ms: int = 50
    #: Most message bytes one store transaction applies: a batch over it is applied in
    #: several (in order, each committed with its positions). Applying holds several
    #: copies of each message (the ingest ledger keeps rejected ones whole, as base64
    #: inside a JSON event), so this bounds the worker's memory when messages are large
    #: (``toxwatch bench large``: 800 rejected messages of 900 KiB peaked the worker at
    #: 1,743 MiB applied one transaction per batch, at 809 MiB in transactions of this).
    batch_max_bytes: int = Field(16 * 1024 * 1024, gt=0)
    #: How long the broker may hold a fetch with nothing new (lower: less latency on
    #: a broker that holds fetches for their whole wait, more idle requests).
    fetch_max_wait_ms: int = 100
    max_message_bytes: int = 256 * 1024
    future_skew_seconds: float = 300.0
    aggregate_cache_size: int = 10_000
    idle_record_days: float = Field(14.0, gt=0)
    relay_batch: int = 500
    relay_poll_seconds: float = 0.2
    relay_send_timeout_s: float = 30.0

    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    protocol_file: Path | None = None

    # alerts: delivery endpoints (TOML file), webhook signing secret, SMTP, API
    alert_endpoints_file: Path | None = None
    webhook_secret: str | None = None
    webhook_secret_file: Path | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_sender: str = "toxwatch@localhost"
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    dispatch_max_backoff_seconds: float = 30.0
    api_host: str = "127.0.0.1"
    api_port: int = 8079
    api_base_url: str | None = None

    # encryption at rest (infra.store.KeyringCipher): keys newest first, base64 AES-256
    cipher_key: SecretStr | None = None
    cipher_key_file: Path | None = None
    cipher_keys_previous: SecretStr | None = None
    require_encryption: bool = False

    @property
    def sqlite_path(self) -> Path:
        return self.sqlite_file or self.data_dir / "toxwatch.sqlite3"

    def cipher_keys(self) -> tuple[str, ...]:
        """The keyring, newest (current) first; empty when encryption is off.

        ``TOXWATCH_CIPHER_KEY`` (or the first key of ``TOXWATCH_CIPHER_KEY_FILE``, one
        key a line, ``#`` comments) encrypts; the rest of the file and
        ``TOXWATCH_CIPHER_KEYS_PREVIOUS`` (comma-separated) only decrypt.
        """
        keys: list[str] = []
        if self.cipher_key is not None:
            keys.append(self.cipher_key.get_secret_value())
        if self.cipher_key_file is not None:
            for line in self.cipher_key_file.read_text().splitlines():
                if (key := line.split("#", 1)[0].strip()) and key not in keys:
                    keys.append(key)
        if self.cipher_keys_previous is not None:
            previous = self.cipher_keys_previous.get_secret_value().split(",")
            keys.extend(key for p in previous if (key := p.strip()) and key not in keys)
        return tuple(key for key in keys if key)

    @property
    def topics(self) -> tuple[str, ...]:
        return (self.clinical_topic, self.rejected_topic, self.safety_topic, self.alerts_topic)
