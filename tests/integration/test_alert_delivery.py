"""Alerts end to end (issue 5): clinical events on Kafka → worker → trial monitor →
alerts process → dispatcher → a Kafka topic, a real HTTP receiver that verifies the
HMAC signature, and a real SMTP server.

The stream is the DLT-heavy simulated cohort (its highest dose level crosses the
stopping boundaries, test_trial_monitor_pipeline) with malformed messages, plus a
few records that complete the alert categories: a death report, a second infusion,
and records for a participant who is never enrolled, followed by a day of clock
ticks. The protocol is the shipped one with every severity routed to every channel,
so that each category must arrive on each of the three.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from infra.receivers import SmtpSink, WebhookReceiver
from services.simulator import CohortSpec, simulate_cohort
from tests.conftest import Kafka, Services, Store, Topics
from tests.integration import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PROTOCOL = Path(__file__).resolve().parents[2] / "protocols" / "lucar-g79.toml"
SECRET = b"test-webhook-secret"
CATEGORIES = {
    "crs",
    "icans",
    "dlt",
    "stopping_rule",
    "dose_decision",
    "iechs",
    "sae_deadline",
    "protocol_deviation",
    "data_quality",
    "death",
}


def protocol_routing_everything_everywhere(tmp_path: Path) -> Path:
    text = PROTOCOL.read_text()
    every = 'channels = ["kafka", "webhook", "email", "live_feed"]'
    for routed in (
        'channels = ["kafka", "webhook", "live_feed"]',
        'channels = ["kafka", "live_feed"]',
        'channels = ["kafka"]',
    ):
        assert routed in text
        text = text.replace(routed, every)
    path = tmp_path / "protocol.toml"
    path.write_text(text)
    return path


def clinical(event_id: str, kind: str, participant: str, at: datetime, **data: Any) -> bytes:
    return json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": event_id,
            "type": kind,
            "trial_id": "NCT07049081",
            "site_id": "CN-001",
            "participant_id": participant,
            "occurred_at": at.isoformat(),
            "data": data,
        }
    ).encode()


def completing_records(end: datetime) -> list[tuple[bytes, bytes]]:
    """A death, a duplicate infusion and a never-enrolled participant, then ticks."""
    records = [
        (b"G79-001", clinical("x-dup-inf", "infusion.administered", "G79-001", end,
                              dose_level="DL1", cells_per_kg=1.0e6)),
        (b"G79-002", clinical("x-death", "death.reported", "G79-002", end,
                              cause="Sepsis", attributed_to="infection", related="unlikely")),
        (b"G79-900", clinical("x-orphan", "vitals.recorded", "G79-900", end,
                              temperature_c=37.1)),
    ]  # fmt: skip
    for hour in range(1, 27):
        at = end + timedelta(hours=hour)
        records.append((b"-", clinical(f"x-tick-{hour}", "clock.ticked", "-", at)))
    return records


def endpoints_file(tmp_path: Path, topics: Topics, receiver: WebhookReceiver) -> Path:
    path = tmp_path / "endpoints.toml"
    path.write_text(
        f"""
[[endpoints]]
id = "integrations"
kind = "kafka"
topic = "{topics.alerts}"

[[endpoints]]
id = "safety-desk"
kind = "webhook"
url = "{receiver.url}"

[[endpoints]]
id = "safety-mailbox"
kind = "email"
to = ["safety-desk@sponsor.example"]
"""
    )
    return path


def stored_alert_events(store: Store) -> list[dict[str, Any]]:
    from services.dispatcher import ALERT_TOPICS

    app = store.open()
    try:
        notifications = app.recorder.select_notifications(
            start=0, limit=1_000_000, topics=ALERT_TOPICS, inclusive_of_start=False
        )
        return [app.mapper.to_domain_event(n).to_contract().to_wire() for n in notifications]
    finally:
        app.close()


def test_every_alert_category_reaches_kafka_a_signed_webhook_and_a_mailbox(
    broker: Kafka, fresh_topics: Topics, store: Store, services: Services, tmp_path: Path
) -> None:
    messages = simulate_cohort(
        CohortSpec(participants=9, follow_up_days=40, malformed=True, dlt_heavy_dose="DL3")
    )
    end = max(m.deliver_at for m in messages)
    stream = [(m.key, m.value) for m in messages] + completing_records(end)

    with WebhookReceiver(SECRET) as receiver, SmtpSink() as mailbox:
        endpoints = endpoints_file(tmp_path, fresh_topics, receiver)
        env = (
            fresh_topics.env()
            | store.env
            | {
                "TOXWATCH_PROTOCOL_FILE": str(protocol_routing_everything_everywhere(tmp_path)),
                "TOXWATCH_ALERT_ENDPOINTS_FILE": str(endpoints),
                "TOXWATCH_WEBHOOK_SECRET": SECRET.decode(),
                "TOXWATCH_SMTP_HOST": "127.0.0.1",
                "TOXWATCH_SMTP_PORT": str(mailbox.port),
                "TOXWATCH_API_BASE_URL": "http://127.0.0.1:8079",
            }
        )  # fmt: skip
        store.initialise()
        for command in ("worker", "monitor", "alerts", "dispatcher"):
            services.start(command, env)
        broker.produce_clinical(fresh_topics.clinical, stream)

        def categories(events: list[dict[str, Any]]) -> set[str]:
            return {e["data"]["category"] for e in events if e["type"] == "alert.raised"}

        assert wait_until(lambda: categories(stored_alert_events(store)) >= CATEGORIES, 400), (
            categories(stored_alert_events(store)),
            services.logs(),
        )

        def delivered_everywhere() -> bool:
            wanted = {e["event_id"] for e in stored_alert_events(store)}
            webhook = {d.idempotency_key for d in receiver.deliveries}
            mails = {m.message["X-ToxWatch-Event-Id"] for m in mailbox.messages}
            kafka = {r.json()["event_id"] for r in broker.read(fresh_topics.alerts, timeout=10)}
            return wanted <= webhook and wanted <= kafka and wanted <= mails

        assert wait_until(delivered_everywhere, 300, interval=2), services.logs()
        stored = stored_alert_events(store)
        by_id = {e["event_id"]: e for e in stored}

        # Webhook: every request signed with the shared secret, each event once.
        assert all(d.valid for d in receiver.requests), "every request carries a valid signature"
        webhook_keys = Counter(d.idempotency_key for d in receiver.deliveries)
        assert max(webhook_keys.values()) == 1
        assert categories([d.body for d in receiver.deliveries]) >= CATEGORIES
        for delivery in receiver.deliveries:
            assert delivery.body == by_id[delivery.idempotency_key]

        # E-mail: one mail per event, subject with the severity, a link to the alert.
        mails = Counter(m.message["Message-ID"] for m in mailbox.messages)
        assert max(mails.values()) == 1
        assert len(mails) == len(stored)
        mailed_categories = {
            by_id[m.message["X-ToxWatch-Event-Id"]]["data"].get("category")
            for m in mailbox.messages
        }
        assert mailed_categories >= CATEGORIES
        critical = [m for m in mailbox.messages if "CRITICAL" in m.message["Subject"]]
        assert critical
        body = critical[0].message.get_content()
        assert (
            f"/alerts/{by_id[critical[0].message['X-ToxWatch-Event-Id']]['data']['alert_id']}"
            in body
        )
        assert all(m.rcpt_tos == ("safety-desk@sponsor.example",) for m in mailbox.messages)

        # Kafka: keyed by alert id, the contract's wire form, each event once.
        records = broker.read(fresh_topics.alerts, timeout=10)
        assert Counter(r.json()["event_id"] for r in records).most_common(1)[0][1] == 1
        for record in records:
            assert record.key == record.json()["data"]["alert_id"].encode()
            assert record.json() == by_id[record.json()["event_id"]]
        assert categories([r.json() for r in records]) >= CATEGORIES

    # One alert per clinical situation: a CRS episode going 2 -> 3 is one alert with
    # two revisions, not two alerts.
    raised = [e for e in stored if e["type"] == "alert.raised"]
    revisions = defaultdict(list)
    for event in raised:
        revisions[event["data"]["alert_id"]].append(event["data"]["revision"])
    assert all(r == list(range(1, len(r) + 1)) for r in revisions.values())
    crs_escalated = [
        e for e in raised if e["data"]["category"] == "crs" and e["data"]["revision"] > 1
    ]
    assert crs_escalated and all(e["data"]["previous_severity"] for e in crs_escalated)
    # Unacknowledged critical alerts escalate on clock ticks to the route's next role.
    escalated = [e for e in stored if e["type"] == "alert.escalated"]
    assert {e["data"]["to"] for e in escalated} >= {"principal_investigator"}


def test_a_webhook_down_for_a_while_gets_every_alert_exactly_once_in_order(
    broker: Kafka, fresh_topics: Topics, store: Store, services: Services, tmp_path: Path
) -> None:
    messages = simulate_cohort(CohortSpec(participants=4, follow_up_days=30, malformed=False))
    receiver = WebhookReceiver(SECRET)
    receiver.start()
    url = receiver.url
    receiver.stop()  # down from the start
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(f'[[endpoints]]\nid = "desk"\nkind = "webhook"\nurl = "{url}"\n')
    env = (
        fresh_topics.env()
        | store.env
        | {
            "TOXWATCH_ALERT_ENDPOINTS_FILE": str(endpoints),
            "TOXWATCH_WEBHOOK_SECRET": SECRET.decode(),
            "TOXWATCH_DISPATCH_MAX_BACKOFF_SECONDS": "2",
        }
    )
    store.initialise()
    for command in ("worker", "monitor", "alerts", "dispatcher"):
        services.start(command, env)
    broker.produce_clinical(fresh_topics.clinical, [(m.key, m.value) for m in messages])

    def wanted() -> list[dict[str, Any]]:
        return [
            e
            for e in stored_alert_events(store)
            if e["type"] != "alert.acknowledged"
            and (e["type"] == "alert.escalated" or "webhook" in e["data"]["channels"])
        ]

    def failed_attempts() -> int:
        from projections.alerts import Delivery

        app = store.open()
        try:
            from eventsourcing.utils import get_topic

            return len(
                app.recorder.select_notifications(
                    start=0,
                    limit=100_000,
                    topics=[get_topic(Delivery.AttemptFailed)],
                    inclusive_of_start=False,
                )
            )
        finally:
            app.close()

    # The endpoint stays down until the dispatcher has failed several times.
    assert wait_until(lambda: failed_attempts() >= 3, 300), services.logs()
    with receiver:  # back up, on the same port
        assert wait_until(lambda: len(wanted()) > 0, 300), services.logs()

        def all_arrived() -> bool:
            keys = {d.idempotency_key for d in receiver.deliveries}
            return {e["event_id"] for e in wanted()} <= keys

        # Wait for the stream to be fully processed and delivered.
        assert wait_until(all_arrived, 400, interval=2), services.logs()
        assert wait_until(lambda: not all_arrived() or _quiet(receiver), 60)
        assert all_arrived()
        deliveries = receiver.deliveries

    keys = [d.idempotency_key for d in deliveries]
    assert len(keys) == len(set(keys)), "no alert event delivered twice"
    assert {e["event_id"] for e in wanted()} == set(keys)
    # In log order, so in order for each participant.
    log_order = {e["event_id"]: i for i, e in enumerate(wanted())}
    per_participant: dict[str, list[int]] = defaultdict(list)
    for delivery in deliveries:
        per_participant[delivery.body["participant_id"]].append(log_order[delivery.idempotency_key])
    assert all(order == sorted(order) for order in per_participant.values())
    assert failed_attempts() >= 3


def _quiet(receiver: WebhookReceiver, seconds: float = 5.0) -> bool:
    """No delivery in the last ``seconds``."""
    import time

    deliveries = receiver.deliveries
    return not deliveries or time.time() - deliveries[-1].received_at > seconds
