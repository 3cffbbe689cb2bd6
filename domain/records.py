"""Aggregates that keep the ingest itself on the record."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.contract import ClinicalEvent, RejectionError
from domain.participant import NAMESPACE
from domain.protocol import ProtocolParameters


class ProtocolMismatch(ValueError):
    """A protocol file names another trial than the one it is activated for."""


class PartitionRoster(Aggregate):
    """The participants whose events arrive on one partition of the inbound topic.

    A ``clock.ticked`` written to that partition applies to each of them (contract §2).
    """

    @staticmethod
    @lru_cache(maxsize=4096)
    def id_for(topic: str, partition: int) -> UUID:
        return uuid5(NAMESPACE, f"roster/{topic}/{partition}")

    @event("Opened")
    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.members: list[tuple[str, str]] = []
        self.member_set: set[tuple[str, str]] = set()
        #: Each trial's participants, in the order they joined: a tick is a trial's.
        self.by_trial: dict[str, list[str]] = {}

    @staticmethod
    def create_id(topic: str, partition: int) -> UUID:
        return PartitionRoster.id_for(topic, partition)

    @event("ParticipantJoined")
    def join(self, trial_id: str, participant_id: str) -> None:
        self.members.append((trial_id, participant_id))
        self.member_set.add((trial_id, participant_id))
        self.by_trial.setdefault(trial_id, []).append(participant_id)


class IngestLedger(Aggregate):
    """Every message one partition delivered that failed validation, kept with its
    reason and its exact bytes, so that nothing sent is ever lost (contract §4)."""

    @staticmethod
    @lru_cache(maxsize=4096)
    def id_for(topic: str, partition: int) -> UUID:
        return uuid5(NAMESPACE, f"ledger/{topic}/{partition}")

    @event("Opened")
    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.rejected = 0

    @staticmethod
    def create_id(topic: str, partition: int) -> UUID:
        return IngestLedger.id_for(topic, partition)

    class MessageRejected(Aggregate.Event):
        topic: str
        partition: int
        offset: int
        key_b64: str | None
        value_b64: str | None
        sha256: str
        size: int
        error: dict[str, Any]
        received_at: datetime

        def apply(self, aggregate: Aggregate) -> None:
            aggregate.rejected += 1  # type: ignore[attr-defined]

    def reject(
        self,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        error: RejectionError,
        received_at: datetime,
    ) -> None:
        raw = value or b""
        self.trigger_event(
            self.MessageRejected,
            topic=self.topic,
            partition=self.partition,
            offset=offset,
            key_b64=base64.b64encode(key).decode() if key is not None else None,
            value_b64=base64.b64encode(value).decode() if value is not None else None,
            sha256=hashlib.sha256(raw).hexdigest(),
            size=len(raw),
            error=error.model_dump(),
            received_at=received_at,
        )


class TrialClock(Aggregate):
    """The ``clock.ticked`` times of one trial as one inbound partition delivered them,
    one aggregate per UTC day so that none grows without bound. Only a tick that
    advances the clock is recorded; time-based alert rules (escalation) follow these
    events, so a replay escalates exactly as the live run did."""

    @staticmethod
    @lru_cache(maxsize=4096)
    def id_for(trial_id: str, topic: str, partition: int, day: str) -> UUID:
        return uuid5(NAMESPACE, f"clock/{trial_id}/{topic}/{partition}/{day}")

    @event("Opened")
    def __init__(self, trial_id: str, topic: str, partition: int, day: str) -> None:
        self.trial_id = trial_id
        self.latest: datetime | None = None
        self.seen: set[str] = set()

    @staticmethod
    def create_id(trial_id: str, topic: str, partition: int, day: str) -> UUID:
        return TrialClock.id_for(trial_id, topic, partition, day)

    def has_seen(self, event_id: str) -> bool:
        """A tick of this id was delivered on this partition this day (contract §1: a
        repeated ``event_id`` is ignored, whatever time it carries)."""
        return event_id in self.seen

    def tick(self, at: datetime, event_id: str | None = None) -> bool:
        if event_id is not None and event_id in self.seen:
            return False
        if self.latest is not None and at <= self.latest:
            if event_id is not None:
                self._seen(event_id=event_id)
            return False
        self._ticked(trial_id=self.trial_id, at=at, event_id=event_id)
        return True

    @event("Ticked")
    def _ticked(self, trial_id: str, at: datetime, event_id: str | None = None) -> None:
        self.latest = at
        if event_id is not None:
            self.seen.add(event_id)

    @event("TickSeen")
    def _seen(self, event_id: str) -> None:
        self.seen.add(event_id)


class TrialLog(Aggregate):
    """Trial-level clinical events (committee decisions), recorded once each, and the
    protocol versions activated for the trial (architecture decision 3)."""

    @staticmethod
    @lru_cache(maxsize=4096)
    def id_for(trial_id: str) -> UUID:
        return uuid5(NAMESPACE, f"trial-log/{trial_id}")

    @event("Opened")
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.seen: set[str] = set()
        self.protocol: ProtocolParameters | None = None

    @staticmethod
    def create_id(trial_id: str) -> UUID:
        return TrialLog.id_for(trial_id)

    def activate_protocol(
        self, protocol: ProtocolParameters, *, activated_by: str, reason: str, at: datetime
    ) -> None:
        """Put a protocol version in force from this point of the log on."""
        if protocol.trial_id != self.trial_id:
            raise ProtocolMismatch(
                f"protocol {protocol.protocol_id} v{protocol.version} is for trial "
                f"{protocol.trial_id}, not {self.trial_id}"
            )
        self._activated(
            parameters=protocol.model_dump(mode="json"),
            activated_by=activated_by,
            reason=reason,
            at=at,
        )

    @event("ProtocolActivated")
    def _activated(
        self, parameters: dict[str, Any], activated_by: str, reason: str, at: datetime
    ) -> None:
        self.protocol = ProtocolParameters.model_validate(parameters)

    def record(self, event: ClinicalEvent, received_at: datetime) -> bool:
        if event.event_id in self.seen:
            return False
        self._recorded(event=event.to_wire(), received_at=received_at)
        return True

    @event("TrialEventRecorded")
    def _recorded(self, event: dict[str, Any], received_at: datetime) -> None:
        self.seen.add(event["event_id"])
