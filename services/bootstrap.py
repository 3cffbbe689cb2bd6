"""Composition root: builds the application and its adapters from settings."""

from __future__ import annotations

from pathlib import Path

from domain.protocol import ProtocolParameters
from domain.validation import ValidationLimits
from infra.settings import Settings
from infra.store import eventsourcing_env
from services.application import SafetyMonitoring


def load_protocol(path: Path | None) -> ProtocolParameters:
    if path is None:
        return ProtocolParameters()
    import tomllib

    with path.open("rb") as handle:
        return ProtocolParameters.model_validate(tomllib.load(handle))


def build_application(settings: Settings) -> SafetyMonitoring:
    from datetime import timedelta

    limits = ValidationLimits(
        max_bytes=settings.max_message_bytes,
        future_skew=timedelta(seconds=settings.future_skew_seconds),
    )
    return SafetyMonitoring(
        eventsourcing_env(settings), protocol=load_protocol(settings.protocol_file), limits=limits
    )
