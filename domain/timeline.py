"""The clinical timeline a participant's grades are derived from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel


@dataclass(frozen=True)
class TimelineEntry:
    """One accepted clinical observation, in force at ``at`` (clinical time).

    ``data`` is the validated data model of the contract for ``type``; ``seq`` is the
    arrival order, which breaks ties between observations at the same instant.
    """

    event_id: str
    type: str
    at: datetime
    data: BaseModel
    seq: int

    @property
    def order(self) -> tuple[datetime, int]:
        return (self.at, self.seq)


@dataclass(frozen=True)
class AdjudicationQuestion:
    """A question the rules cannot answer alone (reference §9)."""

    key: str
    at: datetime
    question: str
    target: dict[str, str]
    evidence: tuple[str, ...]
