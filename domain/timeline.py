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


def study_day(at: datetime, infusion_at: datetime, *, day_zero_is_infusion_day: bool) -> int:
    """The protocol study day of ``at`` (reference §0.5).

    Days are calendar days in the infusion's UTC offset: the infusion's calendar day
    is Day 0 (or Day 1), the day before it Day -1 (there is no Day 0 under the Day 1
    convention, as in oncology protocols that count D-1, D1).
    """
    local = at.astimezone(infusion_at.tzinfo)
    delta = (local.date() - infusion_at.date()).days
    if day_zero_is_infusion_day or delta < 0:
        return delta
    return delta + 1
