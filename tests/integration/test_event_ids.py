"""Contract §1: ``event_id`` is the idempotency key trial-wide: a repeated id is
ignored whatever it carries, even when another participant's message repeats it, in a
later batch, on another partition, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from services.application import InboundMessage
from tests.conftest import Store

STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
NOW = datetime(2026, 6, 1, tzinfo=UTC)
TOPIC = "toxwatch.clinical.v1"


def message(partition: int, offset: int, participant: str, event_id: str, **data: object):
    value = json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": event_id,
            "type": "vitals.recorded",
            "trial_id": "NCT07049081",
            "site_id": "CN-001",
            "participant_id": participant,
            "occurred_at": "2026-03-02T09:00:00+08:00",
            "data": data,
        }
    ).encode()
    return InboundMessage(TOPIC, partition, offset, participant.encode(), value, NOW)


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_an_event_id_first_sent_for_one_participant_is_ignored_for_another(store: Store):
    store.initialise()
    app = store.open()
    try:
        first = app.apply_batch([message(0, 0, "G79-001", "e-1", heart_rate_bpm=80)], now=NOW)
        assert first.accepted == 1
        # Later, on another partition, another participant's message reuses the id.
        again = app.apply_batch(
            [
                message(1, 0, "G79-002", "e-1", temperature_c=40.1),
                message(1, 1, "G79-002", "e-2", temperature_c=37.0),
            ],
            now=NOW,
        )
        assert (again.accepted, again.duplicates) == (1, 1)
        second = app.get_participant("NCT07049081", "G79-002")
        assert "e-1" not in second.seen and "e-2" in second.seen
    finally:
        app.close()
    # A restarted worker (fresh application) knows the ids from the store.
    app = store.open()
    try:
        later = app.apply_batch([message(1, 2, "G79-003", "e-2", temperature_c=39.0)], now=NOW)
        assert (later.accepted, later.duplicates) == (0, 1)
    finally:
        app.close()
