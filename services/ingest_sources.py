"""Which incarnation of an inbound Kafka topic the store's positions belong to.

A topic deleted and created again under the same name, or lost with a broker's data
(the embedded broker keeps its topics in memory), starts again at offset 0. Positions
tracked for the old topic would make the worker skip every new message below them as
already applied: a silent loss. So the store records, per inbound topic, the Kafka
topic id (a UUID, from ``DescribeTopics``) its positions belong to, as the events of
an :class:`IngestSource` aggregate (in the same log, so it is part of the audited
history):

- ``Bound``: the first time a worker checks the topic. A store from before this record
  existed (positions, no binding) is bound to the topic's current id without complaint:
  ``positions_found`` keeps the positions it had.
- ``Replaced``: a worker found another id. The old incarnation's positions are kept
  (``positions_then``) and the topic is tracked from then on under the names of the
  next incarnation (``infra.store.partition_tracking_name``), from offset 0.

Several workers may find the replacement at once: the aggregate's version makes one
``Replaced`` win; the others reload it and adopt it
(``SafetyMonitoring.verify_source``).

The aggregate lives here rather than in ``domain/records.py`` beside the ingest ledger
only because that package was being changed concurrently; moving it needs its stored
topics registered under the old names (``eventsourcing.utils.register_topic``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import ProtocolViolation, ToxWatchError
from domain.participant import NAMESPACE

SourceOutcome = Literal["bound", "unchanged", "replaced", "adopted"]


class SourceUnavailable(ToxWatchError):
    """The inbound topic's id cannot be looked up (the broker is unreachable, the
    topic does not exist, or the broker reports no topic ids: Kafka before 2.8).
    A batch that needs the check is not applied until it can be made."""


class SourceReplaced(ToxWatchError):
    """The inbound topic was replaced while this process consumed it, with no
    rebalance between: the consumer was positioned for one incarnation and a batch's
    check found another. The batch in hand may come from the old topic, or from the
    new one read at the old topic's offsets, so nothing of it is applied; the
    replacement is recorded (``check``) and the consumer must be positioned again
    from the store's positions of the new incarnation."""

    def __init__(self, check: SourceCheck, positioned: int) -> None:
        super().__init__(
            f"inbound topic {check.topic} was replaced while being consumed (consumer "
            f"positioned for incarnation {positioned}, the topic is now incarnation "
            f"{check.incarnation})"
        )
        self.check = check
        self.positioned = positioned


class NotAReplacement(ProtocolViolation):
    """A replacement by the id the topic already has."""


class IngestSource(Aggregate):
    """One inbound topic: the Kafka topic id its tracked positions belong to, and how
    many times it has been replaced (its incarnation)."""

    @staticmethod
    def id_for(topic: str) -> UUID:
        return uuid5(NAMESPACE, f"ingest-source/{topic}")

    @staticmethod
    def create_id(topic: str) -> UUID:
        return IngestSource.id_for(topic)

    @event("Bound")
    def __init__(
        self, topic: str, topic_id: str, bound_at: datetime, positions_found: dict[str, int]
    ) -> None:
        self.topic = topic
        self.topic_id = topic_id
        self.topic_ids = [topic_id]
        self.incarnation = 0

    @classmethod
    def bind(
        cls, topic: str, topic_id: str, *, at: datetime, positions: Mapping[int, int]
    ) -> IngestSource:
        """Bind ``topic``'s positions (those already tracked, if any) to ``topic_id``."""
        return cls(topic=topic, topic_id=topic_id, bound_at=at, positions_found=_wire(positions))

    def replace(self, topic_id: str, *, at: datetime, positions_then: Mapping[int, int]) -> None:
        """The topic now has another id: retire the current incarnation's positions
        (``positions_then``) and start the next incarnation at offset 0."""
        self.check_is_replacement(topic_id)
        self._replaced(
            topic=self.topic,
            old_topic_id=self.topic_id,
            new_topic_id=topic_id,
            incarnation=self.incarnation + 1,
            positions_then=_wire(positions_then),
            detected_at=at,
        )

    def check_is_replacement(self, topic_id: str) -> None:
        if topic_id == self.topic_id:
            raise NotAReplacement(f"topic {self.topic} already has id {topic_id}")

    @event("Replaced")
    def _replaced(
        self,
        topic: str,
        old_topic_id: str,
        new_topic_id: str,
        incarnation: int,
        positions_then: dict[str, int],
        detected_at: datetime,
    ) -> None:
        self.topic_id = new_topic_id
        self.topic_ids.append(new_topic_id)
        self.incarnation = incarnation


def _wire(positions: Mapping[int, int]) -> dict[str, int]:
    """Positions as stored: partition (a string, as JSON keys are) -> next offset."""
    return {str(partition): offset for partition, offset in sorted(positions.items())}


@dataclass(frozen=True)
class SourceCheck:
    """What checking an inbound topic's id found.

    ``bound``: first check, binding recorded; ``unchanged``: the bound id; ``replaced``:
    this worker recorded a replacement; ``adopted``: another worker had recorded it
    (possibly while this one tried to)."""

    topic: str
    outcome: SourceOutcome
    incarnation: int
    topic_id: str
    previous_topic_id: str | None = None
    positions: dict[int, int] = field(default_factory=dict)
