"""Composition root: builds the application and its adapters from settings."""

from __future__ import annotations

import logging
import random
import sqlite3
import time
import tomllib
from datetime import timedelta
from pathlib import Path

import psycopg
from eventsourcing.persistence import PersistenceError

from domain.protocol import ProtocolParameters
from domain.validation import ValidationLimits
from infra.settings import Settings
from infra.store import eventsourcing_env
from services.application import SafetyMonitoring

log = logging.getLogger(__name__)


def load_protocol(path: Path | None) -> ProtocolParameters:
    if path is None:
        return ProtocolParameters()
    with path.open("rb") as handle:
        return ProtocolParameters.model_validate(tomllib.load(handle))


def build_application(settings: Settings, *, attempts: int = 10) -> SafetyMonitoring:
    """The application on the configured store.

    Processes started together on a new store race to create its tables
    (eventsourcing's table creation is not safe across processes): a loser retries
    and finds the tables there.
    """
    limits = ValidationLimits(
        max_bytes=settings.max_message_bytes,
        future_skew=timedelta(seconds=settings.future_skew_seconds),
    )
    protocol = load_protocol(settings.protocol_file)
    for attempt in range(1, attempts + 1):
        try:
            return SafetyMonitoring(eventsourcing_env(settings), protocol=protocol, limits=limits)
        except (PersistenceError, psycopg.Error, sqlite3.Error) as error:
            if attempt == attempts:
                raise
            log.info("creating the store's tables raced (%s); retrying", error)
            time.sleep(random.uniform(0.05, 0.3) * attempt)
    raise AssertionError("unreachable")
