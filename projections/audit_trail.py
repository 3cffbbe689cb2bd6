"""The audit trail (issue 7, item 4): every human action on the record, with who,
when, what and why, folded from the event store's log in its order.

Human actions are: an alert acknowledged; an adjudication (a committee's decision on
an episode, a DLT, a screen or an event); a record corrected or voided (shown with
the original and the replacement side by side); a committee decision on the trial; a
protocol version activated; an API token issued or revoked. ``recorded_at`` is when
ToxWatch stored the action; ``at`` is when the person says it was done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.access import ApiToken
from domain.contract import TRIAL_LEVEL_PARTICIPANT
from domain.participant import Participant
from domain.records import TrialLog
from projections.alerts import Alert

#: The recorded events that are a person's action on the record.
_HUMAN_ACTIONS = frozenset(
    {"adjudication.recorded", "record.corrected", "record.voided", "committee.decided"}
)


@dataclass(frozen=True)
class AuditEntry:
    position: int
    recorded_at: datetime
    at: datetime
    who: str
    action: str
    what: str
    why: str
    trial_id: str | None = None
    participant_id: str | None = None
    original: Mapping[str, Any] | None = None
    replacement: Mapping[str, Any] | None = None


@dataclass
class AuditTrail:
    entries: list[AuditEntry] = field(default_factory=list)
    _records: dict[str, dict[str, Any]] = field(default_factory=dict)  # event_id -> wire
    _tokens: dict[UUID, str] = field(default_factory=dict)

    def apply(self, event: Any, position: int) -> None:
        """Fold one stored domain event."""
        handler = self.route(type(event))
        if handler is not None:
            handler(event, position)

    def route(self, cls: type) -> Callable[[Any, int], None] | None:
        """The fold of a stored-event class (``projections.fold``), None if the trail
        does not read it."""
        if issubclass(cls, Participant.ClinicalEventRecorded | TrialLog.TrialEventRecorded):
            return self._recorded
        if issubclass(cls, Alert.Acknowledged):
            return self._acknowledged
        if issubclass(cls, TrialLog.ProtocolActivated):
            return self._activated
        if issubclass(cls, ApiToken.Created):
            return self._token_created
        if issubclass(cls, ApiToken.Revoked):
            return self._token_revoked
        return None

    def _recorded(self, event: Any, position: int) -> None:
        self._clinical(event.event, event.received_at, position, event.timestamp)

    def _acknowledged(self, event: Any, position: int) -> None:
        data = event.data
        self._add(
            position, event.timestamp, datetime.fromisoformat(data["at"]), data["by"],
            "alert.acknowledged",
            f"acknowledged alert {data['alert_id']} (revision {data['revision']})",
            data.get("comment") or "", event.trial_id, event.participant_id,
        )  # fmt: skip

    def _activated(self, event: Any, position: int) -> None:
        parameters = event.parameters
        self._add(
            position, event.timestamp, event.at, event.activated_by, "protocol.activated",
            f"protocol {parameters.get('protocol_id')} version {parameters.get('version')} "
            "put in force", event.reason, parameters.get("trial_id"), None,
        )  # fmt: skip

    def _token_created(self, event: Any, position: int) -> None:
        self._tokens[event.originator_id] = event.token_id
        site = f", site {event.site_id}" if event.site_id else ""
        self._add(
            position, event.timestamp, event.created_at, event.created_by, "token.issued",
            f"API token {event.token_id} ({event.name}) issued: role {event.role}{site}",
            event.reason, None, None,
        )  # fmt: skip

    def _token_revoked(self, event: Any, position: int) -> None:
        token_id = self._tokens.get(event.originator_id, str(event.originator_id))
        self._add(
            position, event.timestamp, event.at, event.by, "token.revoked",
            f"API token {token_id} revoked", event.reason, None, None,
        )  # fmt: skip

    def _clinical(
        self, wire: Mapping[str, Any], received_at: datetime, position: int, stored: datetime
    ) -> None:
        kind = wire["type"]
        data = wire["data"]
        if kind in _HUMAN_ACTIONS:
            self._human_action(kind, wire, data, position, stored)
        if kind != "clock.ticked":
            self._records[wire["event_id"]] = {"data": dict(data)}

    def _human_action(
        self,
        kind: str,
        wire: Mapping[str, Any],
        data: Mapping[str, Any],
        position: int,
        stored: datetime,
    ) -> None:
        who = wire.get("recorded_by") or (wire.get("source") or {}).get("reference") or "-"
        at = datetime.fromisoformat(wire["occurred_at"])
        trial, participant = wire["trial_id"], wire["participant_id"]
        if participant == TRIAL_LEVEL_PARTICIPANT:
            participant = None
        if kind == "adjudication.recorded":
            target = data["target"]
            grade = f" to grade {data['grade']}" if data.get("grade") is not None else ""
            cause = f", attributed to {data['attributed_to']}" if data.get("attributed_to") else ""
            self._add(
                position, stored, at, data.get("adjudicator") or who, kind,
                f"{data['decision']} {target['kind']} {target['id']}{grade}{cause}",
                data.get("reason") or "", trial, participant,
            )  # fmt: skip
        elif kind == "record.corrected":
            original = self._records.get(data["corrects_event_id"])
            self._add(
                position, stored, at, who, kind,
                f"corrected {data['corrects_event_id']}", data["reason"], trial, participant,
                original=original["data"] if original else None, replacement=data["data"],
            )  # fmt: skip
            if original is not None:
                original["data"] = data["data"]
        elif kind == "record.voided":
            original = self._records.get(data["voids_event_id"])
            self._add(
                position, stored, at, who, kind, f"voided {data['voids_event_id']}",
                data["reason"], trial, participant,
                original=original["data"] if original else None,
            )  # fmt: skip
        elif kind == "committee.decided":
            level = f" ({data['dose_level']})" if data.get("dose_level") else ""
            self._add(
                position, stored, at, f"{data['committee']} ({who})", kind,
                f"{data['decision']}{level}", data["reason"], trial, None,
            )  # fmt: skip

    def _add(
        self,
        position: int,
        recorded_at: datetime,
        at: datetime,
        who: str,
        action: str,
        what: str,
        why: str,
        trial_id: str | None,
        participant_id: str | None,
        *,
        original: Mapping[str, Any] | None = None,
        replacement: Mapping[str, Any] | None = None,
    ) -> None:
        self.entries.append(
            AuditEntry(
                position,
                recorded_at,
                at,
                who,
                action,
                what,
                why,
                trial_id,
                participant_id,
                original,
                replacement,
            )
        )

    def select(
        self, *, participant_id: str | None = None, since: datetime | None = None
    ) -> list[AuditEntry]:
        """Entries in log order, of one participant and recorded since a moment."""
        return [
            e
            for e in self.entries
            if (participant_id is None or e.participant_id == participant_id)
            and (since is None or e.recorded_at >= since)
        ]


#: The stored-event classes the trial reads.
AUDIT_TRAIL_CLASSES: tuple[type, ...] = (
    Participant.ClinicalEventRecorded,
    TrialLog.TrialEventRecorded,
    TrialLog.ProtocolActivated,
    Alert.Acknowledged,
    ApiToken.Created,
    ApiToken.Revoked,
)
