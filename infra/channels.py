"""Alert delivery channels behind one port (architecture decision 8).

An alert is a ``SafetyEvent`` of type ``alert.raised``, ``alert.escalated`` or
``alert.acknowledged`` (contract §3). Its ``event_id`` is deterministic and unique
per alert revision or escalation: it is the **idempotency key** every channel passes
on (Kafka: the value's ``event_id``; webhook: ``Idempotency-Key``; e-mail:
``Message-ID``). Delivery is at least once, so receivers deduplicate by that key. The
live feed is not a push channel: the API serves it as server-sent events read from
the alert log, so a client that reconnects resumes from its last position.

``AlertChannel.send`` makes exactly one attempt with a bounded timeout and returns a
``Receipt`` or raises ``DeliveryFailed``; retrying with backoff is the dispatcher's
job, guided by ``DeliveryFailed.retryable``.

Webhook signing mirrors Stripe and GitHub webhooks. For each request::

    X-ToxWatch-Timestamp: <unix seconds, integer>
    X-ToxWatch-Signature: sha256=<hex HMAC-SHA256(secret, b"<timestamp>." + body)>

where ``body`` is the exact bytes sent. A receiver recomputes the HMAC over the raw
body it received (``verify_signature``), compares in constant time, and rejects a
timestamp more than five minutes from its clock, which bounds replays. The secret is
shared out of band and never appears in a receipt, an error or a log.
"""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import ssl
import threading
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import orjson
from kafka.errors import KafkaError

from domain.contract import SafetyEvent
from domain.errors import ToxWatchError

ALERTS_TOPIC = "toxwatch.alerts.v1"
ALERT_TYPES = frozenset({"alert.raised", "alert.escalated", "alert.acknowledged", "alert.resolved"})

SIGNATURE_HEADER = "X-ToxWatch-Signature"
TIMESTAMP_HEADER = "X-ToxWatch-Timestamp"
EVENT_HEADER = "X-ToxWatch-Event"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_TOLERANCE_S = 300


@dataclass(frozen=True)
class Receipt:
    """Proof that one channel accepted one alert."""

    channel: str
    endpoint: str
    idempotency_key: str
    detail: str


class DeliveryFailed(ToxWatchError):
    """One delivery attempt failed; ``retryable`` tells the dispatcher whether trying
    again later can succeed (a timeout, a 503) or not (a 400, a refused address)."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable

    def __repr__(self) -> str:
        return f"DeliveryFailed({self.reason!r}, retryable={self.retryable})"


class AlertChannel(Protocol):
    """The port: one attempt to deliver one alert."""

    name: str
    endpoint: str

    def send(self, alert: SafetyEvent) -> Receipt: ...

    def close(self) -> None: ...


def check_alert(alert: SafetyEvent) -> str:
    """The alert's ``alert_id``; a non-alert event cannot be delivered, ever."""
    alert_id = alert.data.get("alert_id")
    if alert.type not in ALERT_TYPES:
        raise DeliveryFailed(f"{alert.event_id} is a {alert.type}, not an alert", retryable=False)
    if not isinstance(alert_id, str) or not alert_id:
        raise DeliveryFailed(f"{alert.event_id} has no alert_id", retryable=False)
    return alert_id


def wire_bytes(alert: SafetyEvent) -> bytes:
    """The alert as compact UTF-8 JSON, the form every channel sends."""
    return orjson.dumps(alert.to_wire())


# ---------------------------------------------------------------- Kafka


class KafkaChannel:
    """Publishes alerts to ``toxwatch.alerts.v1``, keyed by ``alert_id``, and waits
    for the broker's acknowledgement. The producer is created on first use."""

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = ALERTS_TOPIC,
        producer: Any | None = None,
        *,
        timeout_s: float = 10.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.endpoint = topic
        self.timeout_s = timeout_s
        self._producer = producer
        self._owns_producer = producer is None
        self._lock = threading.Lock()

    def _ensure_producer(self) -> Any:
        with self._lock:
            if self._producer is None:
                from infra.kafka import reliable_producer

                timeout_ms = int(self.timeout_s * 1000)
                self._producer = reliable_producer(
                    self.bootstrap_servers, max_block_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms
                )
            return self._producer

    def send(self, alert: SafetyEvent) -> Receipt:
        key = check_alert(alert).encode()
        try:
            future = self._ensure_producer().send(self.topic, key=key, value=wire_bytes(alert))
            metadata = future.get(timeout=self.timeout_s)
        except KafkaError as error:
            self._discard_producer()  # a producer can be stuck for good (broker restart)
            raise DeliveryFailed(
                f"Kafka: {type(error).__name__}: {error}", retryable=True
            ) from error
        return Receipt(
            self.name,
            self.endpoint,
            alert.event_id,
            f"partition {metadata.partition} offset {metadata.offset}",
        )

    def _discard_producer(self) -> None:
        """Drop a producer this channel made, so the next attempt makes a new one."""
        if not self._owns_producer:
            return
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            with suppress(Exception):
                producer.close(timeout=1)

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None and self._owns_producer:
            producer.close(timeout=self.timeout_s)


# ---------------------------------------------------------------- webhook


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, b"<timestamp>." + body)>``."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """Whether ``body`` was signed with ``secret`` no more than ``tolerance_s`` seconds
    from ``now`` (header names are matched case-insensitively)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    signature = lowered.get(SIGNATURE_HEADER.lower())
    try:
        timestamp = int(lowered.get(TIMESTAMP_HEADER.lower(), ""))
    except ValueError:
        return False
    if signature is None or abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(signature.encode(), sign(secret, timestamp, body).encode())


def redact_url(url: str) -> str:
    """``url`` without credentials or query string, fit for a receipt or a log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


class WebhookChannel:
    """POSTs the alert's wire JSON, signed, to one URL."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: bytes,
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
    ) -> None:
        if not secret:
            raise ValueError("a webhook needs a non-empty signing secret")
        self.url = url
        self.endpoint = redact_url(url)
        self._secret = secret
        self._client = client or httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._owns_client = client is None
        self.timeout_s = timeout_s

    def send(self, alert: SafetyEvent) -> Receipt:
        check_alert(alert)
        body = wire_bytes(alert)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "ToxWatch-Webhook/1",
            EVENT_HEADER: alert.type,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
            IDEMPOTENCY_HEADER: alert.event_id,
        }
        try:
            response = self._client.post(
                self.url, content=body, headers=headers, timeout=self.timeout_s
            )
        except httpx.UnsupportedProtocol as error:
            raise DeliveryFailed(f"webhook: {error}", retryable=False) from error
        except httpx.TransportError as error:
            raise DeliveryFailed(
                f"webhook: {type(error).__name__}: {error}", retryable=True
            ) from error
        status = response.status_code
        if 200 <= status < 300:
            return Receipt(self.name, self.endpoint, alert.event_id, f"HTTP {status}")
        raise DeliveryFailed(
            f"webhook answered HTTP {status} {response.reason_phrase}".rstrip(),
            retryable=_retryable_status(status),
        )

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


# ---------------------------------------------------------------- e-mail

_MESSAGE_ID_SAFE = "-._~!$&'*+=^`{|}"
_SUBJECT_PREFIX = {
    "alert.raised": "",
    "alert.escalated": "ESCALATED ",
    "alert.acknowledged": "ACKNOWLEDGED ",
    "alert.resolved": "RESOLVED ",
}


def message_id(event_id: str) -> str:
    """``<event_id@toxwatch>``, percent-encoding anything not allowed in a msg-id
    (RFC 5322 §3.6.4), so distinct event ids stay distinct."""
    return f"<{quote(event_id, safe=_MESSAGE_ID_SAFE)}@toxwatch>"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def email_subject(alert: SafetyEvent) -> str:
    data = alert.data
    severity = str(data.get("severity") or "").upper()
    label = f"{_SUBJECT_PREFIX.get(alert.type, '')}{severity}".strip()
    title = _one_line(
        str(data.get("title") or data.get("reason") or f"alert {data.get('alert_id')}")
    )
    return f"[ToxWatch {label}] {title}" if label else f"[ToxWatch] {title}"


def email_body(alert: SafetyEvent, api_base_url: str | None = None) -> str:
    """Plain-text summary: who, what, when, on what evidence, and where to act."""
    data = alert.data
    evidence = data.get("evidence")
    lines = [
        email_subject(alert),
        "",
        f"Trial:        {alert.trial_id}",
        f"Site:         {data.get('site_id') or '-'}",
        f"Participant:  {alert.participant_id} (pseudonym)",
    ]
    if alert.dose_level:
        lines.append(f"Dose level:   {alert.dose_level}")
    lines += [
        f"Category:     {data.get('category') or '-'}",
        f"Severity:     {data.get('severity') or '-'}",
        f"Effective at: {alert.effective_at.isoformat()}",
        f"Alert:        {data.get('alert_id')}"
        + (f" (revision {data['revision']})" if data.get("revision") is not None else ""),
        f"Event:        {alert.type} {alert.event_id}",
    ]
    if data.get("to"):
        lines.append(f"Escalated to: {_joined(data['to'])}")
    if data.get("by"):
        lines.append(f"By:           {data['by']}")
    if data.get("reason"):
        lines.append(f"Resolved:     {_one_line(str(data['reason']))}")
    lines += ["", "Evidence:"]
    lines += [f"  - {item}" for item in evidence] if isinstance(evidence, list) else ["  -"]
    if api_base_url:
        lines += ["", f"Open: {api_base_url.rstrip('/')}/alerts/{data.get('alert_id')}"]
    return "\n".join(lines) + "\n"


def _joined(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _smtp_failure(error: Exception) -> DeliveryFailed:
    """Transient (4xx, network) failures are retryable; permanent 5xx replies are not."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return _refused(error.recipients, accepted=0)
    if isinstance(error, smtplib.SMTPResponseException):
        text = (
            error.smtp_error.decode(errors="replace")
            if isinstance(error.smtp_error, bytes)
            else str(error.smtp_error)
        )
        return DeliveryFailed(
            f"SMTP {error.smtp_code} {_one_line(text)}", retryable=not 500 <= error.smtp_code < 600
        )
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return DeliveryFailed(f"SMTP: {error}", retryable=False)
    return DeliveryFailed(f"SMTP: {type(error).__name__}: {error}", retryable=True)


def _refused(refusals: Mapping[str, tuple[int, bytes]], accepted: int) -> DeliveryFailed:
    detail = "; ".join(
        f"{address}: {code} {_one_line(reply.decode(errors='replace'))}"
        for address, (code, reply) in refusals.items()
    )
    permanent = all(500 <= code < 600 for code, _ in refusals.values())
    return DeliveryFailed(
        f"SMTP refused {len(refusals)} of {len(refusals) + accepted} recipients: {detail}",
        retryable=not permanent,
    )


class EmailChannel:
    """Sends one plain-text e-mail per alert to fixed recipients over SMTP.

    ``Message-ID`` is derived from the event id, so a retried alert is the same
    message to mail clients. A partial refusal (some recipients refused) is a failure:
    a safety alert that reaches only part of its audience must be looked at.
    """

    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: tuple[str, ...],
        api_base_url: str | None = None,
        timeout_s: float = 10,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if not recipients:
            raise ValueError("an e-mail channel needs at least one recipient")
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = tuple(recipients)
        self.endpoint = ", ".join(self.recipients)
        self.api_base_url = api_base_url
        self.timeout_s = timeout_s
        self.starttls = starttls
        self._credentials = (username, password) if username else None

    def compose(self, alert: SafetyEvent) -> EmailMessage:
        alert_id = check_alert(alert)
        message = EmailMessage()
        message["Subject"] = email_subject(alert)
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = message_id(alert.event_id)
        message["X-ToxWatch-Alert-Id"] = alert_id
        message["X-ToxWatch-Event-Id"] = alert.event_id
        message["X-ToxWatch-Event"] = alert.type
        if alert.data.get("severity"):
            message["X-ToxWatch-Severity"] = str(alert.data["severity"])
        message.set_content(email_body(alert, self.api_base_url))
        return message

    def send(self, alert: SafetyEvent) -> Receipt:
        message = self.compose(alert)
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        except (smtplib.SMTPException, OSError) as error:
            raise _smtp_failure(error) from error
        try:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self._credentials is not None:
                smtp.login(self._credentials[0] or "", self._credentials[1] or "")
            refused = smtp.send_message(message, self.sender, list(self.recipients))
        except (smtplib.SMTPException, OSError) as error:
            raise _smtp_failure(error) from error
        finally:
            with suppress(smtplib.SMTPException, OSError):
                smtp.quit()
            smtp.close()
        if refused:
            raise _refused(refused, accepted=len(self.recipients) - len(refused))
        return Receipt(self.name, self.endpoint, alert.event_id, str(message["Message-ID"]))

    def close(self) -> None:
        """Nothing held open: each alert uses its own SMTP session."""
