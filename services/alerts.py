"""The alerts process (architecture decision 8): decisions and human actions.

:class:`AlertDesk` follows the event store's notification log after its tracked
position (``alerts``), folds each entry into the :class:`projections.alerts.AlertBook`
and saves the resulting Alert events **with its new position in one transaction**.
On start it folds the log up to that position without saving, so its in-memory state
(open alerts, clocks, sites) is exactly what a continuous run would hold, and a
replay from zero gives the same alerts. The relay publishes the alert events on the
safety topic like every derived event; the dispatcher delivers them.

:func:`acknowledge` is the human action: it records ``alert.acknowledged`` with who,
when and why, on the same aggregate (a concurrent revision makes one side retry).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, Notification, Tracking
from eventsourcing.utils import get_topic

from domain.errors import NotFound
from domain.participant import Participant, SafetyEventRecorded
from domain.protocol import ProtocolParameters
from domain.records import IngestLedger, TrialClock, TrialLog
from infra.store import TRACKINGS
from projections.alerts import (
    ALERT_EVENT_CLASSES,
    Alert,
    AlertBook,
    AlertCommand,
    EscalateAlert,
    RaiseAlert,
)
from services.application import SAFETY_EVENT_TOPICS, SafetyMonitoring
from services.following import follow_log
from services.ingest_sources import IngestSource

log = logging.getLogger(__name__)

ALERTS_TRACKING = "alerts"
MAX_ATTEMPTS = 5
_ALERT_TOPICS = frozenset(get_topic(cls) for cls in ALERT_EVENT_CLASSES)
INPUT_TOPICS = (
    *(topic for topic in SAFETY_EVENT_TOPICS if topic not in _ALERT_TOPICS),
    get_topic(Participant.Registered),
    get_topic(Participant.ClinicalEventRecorded),
    get_topic(Participant.Parked),
    get_topic(Participant.Released),
    get_topic(IngestLedger.MessageRejected),
    get_topic(TrialClock.Ticked),
    get_topic(Alert.Acknowledged),
    get_topic(TrialLog.ProtocolActivated),
    get_topic(IngestSource.Replaced),
)


class AlertDesk:
    """Follows the log of ``app``'s store and keeps the Alert aggregates up to date."""

    def __init__(self, app: SafetyMonitoring, *, batch_size: int = 1000) -> None:
        self.app = app
        self.batch_size = batch_size
        self.book = AlertBook()
        self._folded_to = 0
        self._protocols: dict[str, ProtocolParameters] = {}
        self._subjects: dict[Any, tuple[str, str]] = {}  # participant aggregate -> ids

    def position(self) -> int:
        return self.app.tracked(ALERTS_TRACKING) or 0

    def run_once(self, *, through: int | None = None) -> int:
        """Process the next notifications (none after ``through``); the number read
        (0: caught up)."""
        self._catch_up()
        notifications = self._select(self._folded_to, through)
        if not notifications:
            return 0
        pending: dict[str, Alert] = {}
        decided: list[Any] = []  # the new events, in the order they were decided
        for notification in notifications:
            for command in self._observe(notification):
                decided.extend(self._execute(command, pending))
        for alert in pending.values():
            alert.collect_events()
        tracking = Tracking(ALERTS_TRACKING, notifications[-1].id)
        try:
            self.app.save(*decided, **{TRACKINGS: [tracking]})
        except IntegrityError:
            # An acknowledgement landed on one of these alerts meanwhile: forget
            # this pass and fold again from the stored position.
            log.info("alert changed concurrently; refolding")
            self._reset()
            raise
        self._folded_to = notifications[-1].id
        return len(notifications)

    def run_until_idle(self, *, through: int | None = None) -> int:
        total = 0
        while read := self.run_once(through=through):
            total += read
        return total

    def follow(
        self,
        stop: threading.Event,
        poll_seconds: float = 0.05,
        on_pass: Callable[[int], None] | None = None,
    ) -> None:
        """Run until ``stop`` is set, polling the log when caught up."""
        follow_log(
            self.run_once,
            stop,
            name="alerts",
            poll_seconds=poll_seconds,
            after_failure=self._reset,
            on_pass=on_pass,
        )

    # ------------------------------------------------------------ folding

    def _reset(self) -> None:
        self.book = AlertBook()
        self._folded_to = 0
        self._protocols = {}
        self._subjects = {}

    def _catch_up(self) -> None:
        """Fold, without saving, what was decided before the tracked position."""
        target = self.position()
        while self._folded_to < target:
            notifications = [n for n in self._select(self._folded_to) if n.id <= target]
            if not notifications:
                break
            for notification in notifications:
                for _ in self._observe(notification):
                    pass
            self._folded_to = notifications[-1].id
        self._folded_to = max(self._folded_to, target)

    def _select(self, after: int, through: int | None = None) -> list[Notification]:
        return list(
            self.app.recorder.select_notifications(
                start=after,
                limit=self.batch_size,
                stop=through,
                topics=INPUT_TOPICS,
                inclusive_of_start=False,
            )
        )

    def _observe(self, notification: Notification) -> list[AlertCommand]:
        event: Any = self.app.mapper.to_domain_event(notification)
        book = self.book
        if isinstance(event, TrialLog.ProtocolActivated):
            # The rules in force from here on in the log (architecture decision 3).
            protocol = ProtocolParameters.model_validate(event.parameters)
            self._protocols[protocol.trial_id] = protocol
            return []
        if isinstance(event, Alert.Acknowledged):
            book.on_acknowledged(event.data["alert_id"], event.data["revision"])
            return []
        if isinstance(event, SafetyEventRecorded):
            return book.on_safety_event(event.to_contract(), self._protocol(event.trial_id))
        if isinstance(event, Participant.ClinicalEventRecorded):
            wire = event.event
            return book.on_clinical_event(wire, self._protocol(wire["trial_id"]))
        if isinstance(event, Participant.Registered):
            book.registered(event.trial_id, event.participant_id, event.site_id)
            self._subjects[event.originator_id] = (event.trial_id, event.participant_id)
            return []
        if isinstance(event, Participant.Parked):
            wire = event.event
            return book.on_parked(
                trial_id=wire["trial_id"],
                participant_id=wire["participant_id"],
                event_type=wire["type"],
                event_id=wire["event_id"],
                reference=event.position,
                received_at=event.received_at,
                protocol=self._protocol(wire["trial_id"]),
            )
        if isinstance(event, Participant.Released):
            trial_id, participant_id = self._subjects[event.originator_id]
            return book.on_released(
                trial_id=trial_id,
                participant_id=participant_id,
                by=event.by,
                at=event.at,
                protocol=self._protocol(trial_id),
            )
        if isinstance(event, TrialClock.Ticked):
            return book.on_tick(event.trial_id, event.at, self._protocol(event.trial_id))
        if isinstance(event, IngestSource.Replaced):
            trial_id = self.app.protocol.trial_id
            return book.on_source_replaced(
                trial_id=trial_id,
                topic=event.topic,
                incarnation=event.incarnation,
                positions_then=event.positions_then,
                detected_at=event.detected_at,
                protocol=self._protocol(trial_id),
            )
        if isinstance(event, IngestLedger.MessageRejected):
            trial_id = self.app.protocol.trial_id
            return book.on_rejection(
                trial_id=trial_id,
                received_at=event.received_at,
                reference=f"{event.topic}#{event.partition}@{event.offset}",
                code=str(event.error.get("code")),
                protocol=self._protocol(trial_id),
            )
        return []

    def _execute(self, command: AlertCommand, pending: dict[str, Alert]) -> list[Any]:
        """Apply a command to its alert; the events it triggered."""
        alert = pending.get(command.alert_id)
        if alert is None:
            try:
                alert = self.app.repository.get(Alert.id_for(command.alert_id))
            except AggregateNotFoundError:
                if not isinstance(command, RaiseAlert):
                    log.error("%s of unknown alert %s", type(command).__name__, command.alert_id)
                    return []
                alert = Alert.open(command.finding)
                pending[command.alert_id] = alert
                before = 0  # the new alert's Opened event goes first
            else:
                pending[command.alert_id] = alert
                before = len(alert.pending_events)
        else:
            before = len(alert.pending_events)
        if isinstance(command, RaiseAlert):
            alert.raise_revision(command)
        elif isinstance(command, EscalateAlert):
            alert.escalate(command)
        else:
            alert.resolve(command)
        return list(alert.pending_events[before:])

    def _protocol(self, trial_id: str) -> ProtocolParameters:
        """The protocol version in force at this point of the log."""
        return self._protocols.get(trial_id, self.app.protocol)


def acknowledge(
    app: SafetyMonitoring,
    alert_id: str,
    *,
    by: str,
    at: datetime,
    comment: str,
    revision: int | None = None,
) -> Alert:
    """Record that ``by`` acknowledged the alert (raises ``NotFound`` and the domain's
    ``AlertAlreadyAcknowledged`` / ``AlertRevisionChanged``)."""
    attempt = 1
    while True:
        try:
            alert: Alert = app.repository.get(Alert.id_for(alert_id))
        except (AggregateNotFoundError, ValueError) as error:
            raise NotFound(f"no alert {alert_id}") from error
        alert.acknowledge(by=by, at=at, comment=comment, revision=revision)
        try:
            app.save(alert)
        except IntegrityError:
            if attempt == MAX_ATTEMPTS:
                raise
            attempt += 1
        else:
            return alert
