"""The alert dispatcher (architecture decision 8): the alert log to the channels.

Each configured endpoint (a Kafka topic, a webhook URL, a mailbox) has its own
follower of the alert events in log order, with its own tracked position
(``dispatch:<endpoint id>``). An event the endpoint's routing wants is sent through
the endpoint's :class:`infra.channels.AlertChannel`; the receipt and the new position
are saved in one transaction, so a restart never sends an event the endpoint already
acknowledged. A failed attempt is recorded with its reason and retried with
exponential backoff, and the follower does not move past it: a channel that is down
delays delivery, in order, and never loses it. If the process dies between a send and
its commit, the event is sent again with the same idempotency key (``event_id``):
the webhook's ``Idempotency-Key``, the mail's ``Message-ID``.

Routing: ``alert.raised`` (and ``alert.resolved``) goes to endpoints whose kind is one
of the alert's ``channels`` and whose roles meet its ``notify``; ``alert.escalated`` goes to
endpoints serving the role escalated to; integrations (endpoints without roles)
receive every raise, escalation and acknowledgement. Site-scoped endpoints receive
their sites' alerts and trial-level ones. The live feed is served by the API from
the same log (server-sent events with resume).
"""

from __future__ import annotations

import logging
import random
import threading
import tomllib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import Tracking
from eventsourcing.utils import get_topic
from pydantic import BaseModel, ConfigDict, Field

from domain.contract import SafetyEvent
from infra.channels import AlertChannel, DeliveryFailed, EmailChannel, KafkaChannel, WebhookChannel
from infra.metrics import Metrics
from infra.settings import Settings
from infra.store import TRACKINGS
from projections.alerts import ALERT_EVENT_CLASSES, Delivery
from services.application import SafetyMonitoring
from services.following import follow_log

log = logging.getLogger(__name__)
ALERT_TOPICS = tuple(get_topic(cls) for cls in ALERT_EVENT_CLASSES)


class Endpoint(BaseModel):
    """One place alerts are delivered to, and what it wants."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    kind: Literal["kafka", "webhook", "email"]
    url: str | None = None
    to: tuple[str, ...] = ()
    topic: str | None = None
    roles: tuple[str, ...] | None = Field(
        default=None, description="roles served; none: an integration that takes every alert"
    )
    sites: tuple[str, ...] | None = Field(default=None, description="none: every site")
    secret_file: Path | None = None

    def wants(self, alert: SafetyEvent) -> bool:
        data = alert.data
        site = data.get("site_id")
        if self.sites is not None and site is not None and site not in self.sites:
            return False
        if alert.type in ("alert.raised", "alert.resolved"):
            channels = data.get("channels") or []
            notify = data.get("notify") or []
            return self.kind in channels and (
                self.roles is None or any(role in notify for role in self.roles)
            )
        if alert.type == "alert.escalated":
            return self.roles is None or data.get("to") in self.roles
        return self.roles is None


class EndpointFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoints: tuple[Endpoint, ...] = ()


def load_endpoints(settings: Settings) -> tuple[Endpoint, ...]:
    """The endpoints of ``TOXWATCH_ALERT_ENDPOINTS_FILE`` (TOML), else the Kafka alerts
    topic alone when a broker is configured."""
    if settings.alert_endpoints_file is not None:
        with settings.alert_endpoints_file.open("rb") as handle:
            return EndpointFile.model_validate(tomllib.load(handle)).endpoints
    if settings.kafka_bootstrap_servers:
        return (Endpoint(id="kafka-alerts", kind="kafka", topic=settings.alerts_topic),)
    return ()


def build_channel(endpoint: Endpoint, settings: Settings) -> AlertChannel:
    if endpoint.kind == "kafka":
        if not settings.kafka_bootstrap_servers:
            raise ValueError(f"endpoint {endpoint.id}: no Kafka bootstrap servers configured")
        return KafkaChannel(
            settings.kafka_bootstrap_servers, endpoint.topic or settings.alerts_topic
        )
    if endpoint.kind == "webhook":
        if not endpoint.url:
            raise ValueError(f"endpoint {endpoint.id}: a webhook needs a url")
        return WebhookChannel(endpoint.url, _secret(endpoint, settings))
    if not settings.smtp_host or not endpoint.to:
        raise ValueError(f"endpoint {endpoint.id}: e-mail needs TOXWATCH_SMTP_HOST and `to`")
    return EmailChannel(
        settings.smtp_host,
        settings.smtp_port,
        settings.smtp_sender,
        endpoint.to,
        api_base_url=settings.api_base_url,
        starttls=settings.smtp_starttls,
        username=settings.smtp_username,
        password=settings.smtp_password,
    )


def _secret(endpoint: Endpoint, settings: Settings) -> bytes:
    if endpoint.secret_file is not None:
        return endpoint.secret_file.read_bytes().strip()
    if settings.webhook_secret_file is not None:
        return settings.webhook_secret_file.read_bytes().strip()
    if settings.webhook_secret:
        return settings.webhook_secret.encode()
    raise ValueError(f"endpoint {endpoint.id}: no webhook secret configured")


class EndpointDispatcher:
    """Delivers the alert log to one endpoint, in order, each event once."""

    def __init__(
        self,
        app: SafetyMonitoring,
        endpoint: Endpoint,
        channel: AlertChannel,
        *,
        metrics: Metrics | None = None,
        first_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        batch_size: int = 100,
    ) -> None:
        self.app = app
        self.endpoint = endpoint
        self.channel = channel
        self.metrics = metrics
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.batch_size = batch_size
        self.tracking = f"dispatch:{endpoint.id}"

    def position(self) -> int:
        return self.app.tracked(self.tracking) or 0

    def run_once(self, stop: threading.Event) -> int:
        """Deliver what follows the tracked position; the number of log entries done."""
        after = self.position()
        notifications = self.app.recorder.select_notifications(
            start=after, limit=self.batch_size, topics=ALERT_TOPICS, inclusive_of_start=False
        )
        done = 0
        skipped_to = 0
        for notification in notifications:
            alert = self.app.mapper.to_domain_event(notification).to_contract()  # type: ignore[attr-defined]
            if not self.endpoint.wants(alert):
                skipped_to = notification.id
                done += 1
                continue
            if skipped_to:
                self.app.record_tracking(self.tracking, skipped_to)
                skipped_to = 0
            if not self._deliver(alert, notification.id, stop):
                return done
            done += 1
        if skipped_to:
            self.app.record_tracking(self.tracking, skipped_to)
        return done

    def follow(self, stop: threading.Event, poll_seconds: float = 0.05) -> None:
        follow_log(
            lambda: self.run_once(stop),
            stop,
            name=f"dispatch to {self.endpoint.id}",
            poll_seconds=poll_seconds,
        )

    def _deliver(self, alert: SafetyEvent, position: int, stop: threading.Event) -> bool:
        """Send until it is received (True) or ``stop`` is set (False)."""
        alert_id = str(alert.data["alert_id"])
        try:
            delivery: Delivery = self.app.repository.get(
                Delivery.id_for(self.endpoint.id, alert.event_id)
            )
        except AggregateNotFoundError:
            delivery = Delivery.open(self.endpoint.id, alert.event_id, alert_id)
        backoff = self.first_backoff_s
        while True:
            if delivery.delivered_at is not None:  # receipt saved, position not: move on
                self.app.record_tracking(self.tracking, position)
                return True
            try:
                receipt = self.channel.send(alert)
            except DeliveryFailed as failure:
                delivery.failed(reason=failure.reason, retryable=failure.retryable, at=_now())
                self.app.save(delivery)
                if self.metrics:
                    self.metrics.dispatch_failures.labels(self.endpoint.kind).inc()
                log.warning(
                    "delivery of %s to %s failed (attempt %d): %s",
                    alert.event_id,
                    self.endpoint.id,
                    delivery.attempts,
                    failure.reason,
                )
                if not failure.retryable:
                    # A refusal that will not pass by itself (a wrong secret, a bad
                    # address): keep the alert, retry slowly, and say so loudly.
                    log.error("endpoint %s refuses alerts: %s", self.endpoint.id, failure.reason)
                    backoff = self.max_backoff_s
                if stop.wait(backoff * random.uniform(0.8, 1.2)):
                    return False
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            delivered_at = _now()
            delivery.delivered(
                channel=receipt.channel,
                endpoint=receipt.endpoint,
                detail=receipt.detail,
                at=delivered_at,
            )
            self.app.save(delivery, **{TRACKINGS: [Tracking(self.tracking, position)]})
            if self.metrics:
                latency = (delivered_at - alert.recorded_at).total_seconds()
                self.metrics.alert_delivery_seconds.labels(self.endpoint.kind).observe(latency)
            return True


class Dispatcher:
    """One delivering thread per endpoint."""

    def __init__(
        self,
        app: SafetyMonitoring,
        endpoints: Sequence[tuple[Endpoint, AlertChannel]],
        *,
        metrics: Metrics | None = None,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.followers = [
            EndpointDispatcher(app, e, c, metrics=metrics, max_backoff_s=max_backoff_s)
            for e, c in endpoints
        ]

    def run(self, stop: threading.Event) -> None:
        threads = [
            threading.Thread(target=f.follow, args=(stop,), name=f"dispatch-{f.endpoint.id}")
            for f in self.followers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for follower in self.followers:
            follower.channel.close()


def _now() -> datetime:
    return datetime.now(UTC)
