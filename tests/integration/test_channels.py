"""Alert channels against real receivers: a local HTTP endpoint, an SMTP server, the
embedded broker and in-process live-feed subscribers (architecture decision 8).

Each channel makes one attempt per ``send``; a failure says whether retrying can
help. The alert's ``event_id`` is the idempotency key on every channel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from domain.contract import SafetyEvent
from infra.channels import (
    DeliveryFailed,
    EmailChannel,
    KafkaChannel,
    Receipt,
    WebhookChannel,
    sign,
    verify_signature,
)
from infra.receivers import Delivery, SmtpSink, WebhookReceiver, free_port
from tests.conftest import Kafka, Topics

SECRET = b"whsec-test-0123456789"
CST = timezone(timedelta(hours=8))


def make_alert(
    *,
    event_id: str = "alert-crs-G79-001-1-r1",
    type: str = "alert.raised",
    alert_id: str = "crs-G79-001-1",
    severity: str = "critical",
    title: str = "Grade ≥3 CRS in G79-001",
    **data: object,
) -> SafetyEvent:
    return SafetyEvent.model_validate(
        {
            "schema": "toxwatch.safety.v1",
            "event_id": event_id,
            "type": type,
            "trial_id": "NCT07049081",
            "participant_id": "G79-001",
            "dose_level": "DL2",
            "effective_at": datetime(2026, 3, 3, 2, 0, tzinfo=CST),
            "recorded_at": datetime(2026, 3, 2, 18, 0, 1, tzinfo=UTC),
            "caused_by": ["edc-7f3a9c2e-0042"],
            "data": {
                "alert_id": alert_id,
                "severity": severity,
                "category": "crs",
                "title": title,
                "evidence": ["edc-7f3a9c2e-0041", "edc-7f3a9c2e-0042"],
                "site_id": "CN-001",
                **data,
            },
        }
    )


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as running:
        yield running


@pytest.fixture
def webhook(receiver: WebhookReceiver) -> Iterator[WebhookChannel]:
    channel = WebhookChannel(receiver.url, SECRET, timeout_s=2.0)
    yield channel
    channel.close()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def email_channel(sink: SmtpSink, **overrides: object) -> EmailChannel:
    options: dict[str, object] = {
        "host": sink.host,
        "port": sink.port,
        "sender": "toxwatch@example.org",
        "recipients": ("safety-desk@example.org", "pi@example.org"),
        "api_base_url": "https://toxwatch.example.org/api",
        "timeout_s": 5,
    } | overrides
    return EmailChannel(**options)  # type: ignore[arg-type]


# ---------------------------------------------------------------- webhook


def test_webhook_delivers_the_signed_wire_json_to_the_receiver(
    receiver: WebhookReceiver, webhook: WebhookChannel
) -> None:
    alert = make_alert()

    receipt = webhook.send(alert)

    assert receipt == Receipt("webhook", receiver.url, alert.event_id, "HTTP 200")
    [delivery] = receiver.wait_for(1)
    assert delivery.valid
    assert delivery.body == alert.to_wire()
    assert delivery.idempotency_key == alert.event_id
    headers = {name.lower(): value for name, value in delivery.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["x-toxwatch-event"] == "alert.raised"
    assert headers["x-toxwatch-signature"].startswith("sha256=")
    assert abs(int(headers["x-toxwatch-timestamp"]) - time.time()) < 5


def test_webhook_signed_with_a_wrong_secret_is_rejected_and_not_retried(
    receiver: WebhookReceiver,
) -> None:
    channel = WebhookChannel(receiver.url, b"not-the-shared-secret", timeout_s=2.0)
    try:
        with pytest.raises(DeliveryFailed) as failure:
            channel.send(make_alert())
    finally:
        channel.close()

    assert not failure.value.retryable
    assert "401" in failure.value.reason
    [request] = receiver.requests
    assert (request.valid, request.status) == (False, 401)
    assert receiver.deliveries == []


def test_webhook_to_a_stopped_endpoint_fails_retryably(
    receiver: WebhookReceiver, webhook: WebhookChannel
) -> None:
    receiver.stop()

    with pytest.raises(DeliveryFailed) as failure:
        webhook.send(make_alert())

    assert failure.value.retryable
    assert "ConnectError" in failure.value.reason


def test_webhook_succeeds_after_two_unavailable_answers(
    receiver: WebhookReceiver, webhook: WebhookChannel
) -> None:
    alert = make_alert()
    receiver.fail_next(2)
    outcomes: list[object] = []

    for _ in range(3):
        try:
            outcomes.append(webhook.send(alert))
        except DeliveryFailed as failure:
            outcomes.append(failure)

    first, second, third = outcomes
    assert isinstance(first, DeliveryFailed) and first.retryable and "503" in first.reason
    assert isinstance(second, DeliveryFailed) and second.retryable
    assert isinstance(third, Receipt)
    assert [d.idempotency_key for d in receiver.wait_for(1)] == [alert.event_id]
    assert [r.status for r in receiver.requests] == [503, 503, 200]


@pytest.mark.parametrize(
    ("status", "retryable"), [(408, True), (429, True), (500, True), (400, False), (410, False)]
)
def test_webhook_retries_only_answers_that_can_change(
    receiver: WebhookReceiver, webhook: WebhookChannel, status: int, retryable: bool
) -> None:
    receiver.fail_next(1, status=status)

    with pytest.raises(DeliveryFailed) as failure:
        webhook.send(make_alert())

    assert failure.value.retryable is retryable


def test_webhook_slower_than_the_timeout_fails_retryably(receiver: WebhookReceiver) -> None:
    receiver.stall_next(1, seconds=3.0)
    channel = WebhookChannel(receiver.url, SECRET, timeout_s=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(DeliveryFailed) as failure:
            channel.send(make_alert())
    finally:
        channel.close()

    assert failure.value.retryable
    assert time.monotonic() - started < 2.0


def test_webhook_receiver_comes_back_on_the_same_port(
    receiver: WebhookReceiver, webhook: WebhookChannel
) -> None:
    url = receiver.url
    receiver.stop()
    with pytest.raises(DeliveryFailed):
        webhook.send(make_alert())

    receiver.start()

    assert receiver.url == url
    assert webhook.send(make_alert()).detail == "HTTP 200"
    assert len(receiver.wait_for(1)) == 1


def test_webhook_receiver_calls_back_once_a_delivery_is_answered(
    receiver: WebhookReceiver, webhook: WebhookChannel
) -> None:
    seen: list[Delivery] = []
    called = threading.Event()

    def record(delivery: Delivery) -> None:
        seen.append(delivery)
        called.set()

    receiver.on_delivery = record
    webhook.send(make_alert())

    assert called.wait(5)
    assert [d.idempotency_key for d in seen] == [make_alert().event_id]


def test_webhook_endpoint_never_shows_credentials_or_query() -> None:
    channel = WebhookChannel("https://user:pw@hooks.example.org:8443/x?token=abc", SECRET)
    try:
        assert channel.endpoint == "https://hooks.example.org:8443/x?…"
    finally:
        channel.close()


# ---------------------------------------------------------------- signatures


def test_signature_verifies_only_the_exact_body_and_secret() -> None:
    body = b'{"type":"alert.raised"}'
    now = 1_770_000_000
    headers = {"X-ToxWatch-Timestamp": str(now), "X-ToxWatch-Signature": sign(SECRET, now, body)}

    assert verify_signature(SECRET, headers, body, now=now)
    assert verify_signature(SECRET, {k.lower(): v for k, v in headers.items()}, body, now=now)
    assert not verify_signature(SECRET, headers, body + b" ", now=now)
    assert not verify_signature(b"other", headers, body, now=now)
    assert not verify_signature(SECRET, {"X-ToxWatch-Timestamp": str(now)}, body, now=now)


def test_signature_with_a_stale_timestamp_is_rejected() -> None:
    body = b"{}"
    signed_at = 1_770_000_000
    headers = {
        "X-ToxWatch-Timestamp": str(signed_at),
        "X-ToxWatch-Signature": sign(SECRET, signed_at, body),
    }

    assert verify_signature(SECRET, headers, body, now=signed_at + 300)
    assert not verify_signature(SECRET, headers, body, now=signed_at + 301)
    assert not verify_signature(SECRET, headers, body, now=signed_at - 301)


# ---------------------------------------------------------------- e-mail


def test_email_reaches_every_recipient_with_subject_message_id_and_link(
    smtp_sink: SmtpSink,
) -> None:
    alert = make_alert(revision=2)

    receipt = email_channel(smtp_sink).send(alert)

    assert receipt.channel == "email"
    assert receipt.endpoint == "safety-desk@example.org, pi@example.org"
    assert receipt.detail == f"<{alert.event_id}@toxwatch>"
    [mail] = smtp_sink.wait_for(1)
    assert mail.mail_from == "toxwatch@example.org"
    assert mail.rcpt_tos == ("safety-desk@example.org", "pi@example.org")
    message = mail.message
    assert message["Subject"] == "[ToxWatch CRITICAL] Grade ≥3 CRS in G79-001"
    assert message["Message-ID"] == f"<{alert.event_id}@toxwatch>"
    assert message["X-ToxWatch-Alert-Id"] == "crs-G79-001-1"
    assert message["X-ToxWatch-Event-Id"] == alert.event_id
    text = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    for expected in (
        "NCT07049081",
        "G79-001",
        "crs",
        "critical",
        "2026-03-03T02:00:00+08:00",
        "edc-7f3a9c2e-0041",
        "edc-7f3a9c2e-0042",
        "revision 2",
        "https://toxwatch.example.org/api/alerts/crs-G79-001-1",
    ):
        assert expected in text


def test_escalated_alert_email_says_so_and_names_who_it_went_to(smtp_sink: SmtpSink) -> None:
    alert = make_alert(
        event_id="alert-crs-G79-001-1-esc1", type="alert.escalated", to=["pi", "dsmb"]
    )

    email_channel(smtp_sink, api_base_url=None).send(alert)

    [mail] = smtp_sink.wait_for(1)
    assert mail.message["Subject"] == "[ToxWatch ESCALATED CRITICAL] Grade ≥3 CRS in G79-001"
    text = mail.message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "pi, dsmb" in text
    assert "/alerts/" not in text


def test_a_resolved_alert_is_mailed_as_resolved(smtp_sink: SmtpSink) -> None:
    alert = make_alert(
        event_id="alert-crs-G79-001-1-resolved", type="alert.resolved",
        reason="CRS episode 1 resolved (max grade 3)",
    )  # fmt: skip

    email_channel(smtp_sink, api_base_url=None).send(alert)

    [mail] = smtp_sink.wait_for(1)
    assert mail.message["Subject"] == "[ToxWatch RESOLVED CRITICAL] Grade ≥3 CRS in G79-001"


def test_email_to_a_server_that_is_down_fails_retryably() -> None:
    channel = EmailChannel(
        "127.0.0.1", free_port(), "toxwatch@example.org", ("desk@example.org",), timeout_s=2
    )

    with pytest.raises(DeliveryFailed) as failure:
        channel.send(make_alert())

    assert failure.value.retryable


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [("451 4.3.0 Try again later", True), ("554 5.7.1 Rejected by policy", False)],
)
def test_email_refused_by_the_server_is_retried_only_when_transient(
    smtp_sink: SmtpSink, reply: str, retryable: bool
) -> None:
    smtp_sink.reject_next(1, reply)

    with pytest.raises(DeliveryFailed) as failure:
        email_channel(smtp_sink).send(make_alert())

    assert failure.value.retryable is retryable
    assert reply.split()[0] in failure.value.reason
    assert smtp_sink.messages == []


# ---------------------------------------------------------------- Kafka


@pytest.mark.broker
def test_kafka_publishes_the_wire_json_keyed_by_alert_id(
    broker: Kafka, fresh_topics: Topics
) -> None:
    channel = KafkaChannel(broker.bootstrap_servers, topic=fresh_topics.alerts)
    alert = make_alert()
    try:
        receipt = channel.send(alert)
    finally:
        channel.close()

    [record] = broker.read(fresh_topics.alerts)
    assert record.key == b"crs-G79-001-1"
    assert record.json() == alert.to_wire()
    assert receipt == Receipt(
        "kafka",
        fresh_topics.alerts,
        alert.event_id,
        f"partition {record.partition} offset {record.offset}",
    )


def test_kafka_without_a_broker_fails_retryably() -> None:
    channel = KafkaChannel(f"127.0.0.1:{free_port()}", timeout_s=1.0)
    try:
        with pytest.raises(DeliveryFailed) as failure:
            channel.send(make_alert())
    finally:
        channel.close()

    assert failure.value.retryable


def test_a_non_alert_event_is_never_delivered() -> None:
    crs = make_alert(type="crs.graded")

    channel = WebhookChannel(f"http://127.0.0.1:{free_port()}/", SECRET)
    try:
        with pytest.raises(DeliveryFailed) as failure:
            channel.send(crs)
    finally:
        channel.close()

    assert not failure.value.retryable
