"""A batch of large messages is applied in several store transactions, at most
``TOXWATCH_BATCH_MAX_BYTES`` of keys and values each, in order and none lost: what
bounds the worker's memory when messages near the broker's limit arrive (the ingest
ledger keeps a rejected message whole, contract §4)."""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from domain.records import IngestLedger
from infra.metrics import Metrics
from infra.settings import Settings
from services.application import BatchOutcome, InboundMessage, SafetyMonitoring
from services.bootstrap import build_application
from services.worker import apply_in_transactions
from tests.application.test_ingest import TOPIC, TRIAL, at_offsets, course

#: Valid JSON padded over the worker's 256 KiB limit: rejected ``too_large``.
OVERSIZED = b"{" + b" " * 300_000 + b"}"


def apply(
    app: SafetyMonitoring, messages: list[InboundMessage], max_bytes: int, metrics: Metrics
) -> list[BatchOutcome]:
    async def run() -> list[BatchOutcome]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            return await apply_in_transactions(
                asyncio.get_running_loop(), executor, app, messages, metrics, max_bytes
            )

    return asyncio.run(run())


def test_a_batch_over_the_byte_cap_is_applied_in_transactions_in_order_none_lost(
    tmp_path: Path,
) -> None:
    enrolled, infused, fever = course()
    values = [enrolled, OVERSIZED, infused, OVERSIZED, OVERSIZED, fever]
    messages = at_offsets(values)
    # Keys are 7 bytes: the first four messages hold about 600 kB, a fifth would pass
    # 700 kB; the last two make the second transaction.
    app = build_application(Settings(store="sqlite", data_dir=tmp_path))
    metrics = Metrics()
    try:
        outcomes = apply(app, messages, max_bytes=700_000, metrics=metrics)

        assert [o.positions for o in outcomes] == [{(TOPIC, 0): 4}, {(TOPIC, 0): 6}]
        assert [(o.accepted, o.rejected) for o in outcomes] == [(2, 2), (1, 1)]
        assert [o.rejected_by_code for o in outcomes] == [{"too_large": 2}, {"too_large": 1}]
        # Each transaction's outcome is counted once, as the batch's were.
        assert metrics.registry.get_sample_value("toxwatch_batch_size_count") == 2
        assert metrics.registry.get_sample_value("toxwatch_batch_size_sum") == 6
        # The fever on D+1 after the infusion of the first transaction: CRS grade 1
        # (ASTCT 2019, fever only).
        assert [(e.type, e.data["grade"]) for e in outcomes[1].derived][:1] == [("crs.graded", 1)]
        assert app.next_offset(TOPIC, 0) == 6
        assert [e.event_id for e in app.get_participant(TRIAL, "G79-001").entries] == [
            "e1",
            "e2",
            "e3",
        ]
        kept = [
            event
            for n in app.safety_notifications(0, 1000, with_rejections=True)
            if isinstance(event := app.mapper.to_domain_event(n), IngestLedger.MessageRejected)
        ]
        assert [k.offset for k in kept] == [1, 3, 4]
        assert all(base64.b64decode(k.value_b64 or "") == OVERSIZED for k in kept)
    finally:
        app.close()


def test_a_batch_within_the_cap_is_one_transaction_and_a_larger_message_its_own(
    tmp_path: Path,
) -> None:
    enrolled, infused, fever = course()
    app = build_application(Settings(store="sqlite", data_dir=tmp_path))
    try:
        whole = apply(app, at_offsets([enrolled, infused]), 16 * 1024 * 1024, Metrics())
        alone = apply(app, at_offsets([OVERSIZED, fever], first=2), 1_000, Metrics())

        assert [o.positions for o in whole] == [{(TOPIC, 0): 2}]
        assert [o.positions for o in alone] == [{(TOPIC, 0): 3}, {(TOPIC, 0): 4}]
        assert [(o.accepted, o.rejected) for o in alone] == [(0, 1), (1, 0)]
    finally:
        app.close()
