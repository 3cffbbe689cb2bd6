"""A small builder of clinical courses for CRS tests (reference §1, vignettes.md).

``day(n, "hh:mm")`` is n days after the infusion day at that clock time (UTC+08:00);
the infusion is at D0 08:00. Every recorded observation gets a unique ``event_id``
and the next ``seq`` (arrival order), and each builder method returns the event id
so a test can check ``caused_by`` and adjudication evidence.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from typing import Any

from domain.contract import DATA_MODELS
from domain.crs import CRSChange, CRSDerivation, derive_crs
from domain.protocol import CRSParameters
from domain.timeline import AdjudicationQuestion, TimelineEntry

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)


def day(n: int, hhmm: str) -> datetime:
    """n days after the infusion day (negative: before it), at clock time ``hh:mm``."""
    hours, minutes = (int(part) for part in hhmm.split(":"))
    return datetime.combine(D0.date() + timedelta(days=n), time(hours, minutes), tzinfo=TZ)


class Course:
    """One participant's clinical timeline, recorded in arrival order."""

    def __init__(self, infusion_at: datetime | None = D0) -> None:
        self.infusion_at = infusion_at
        self.entries: list[TimelineEntry] = []

    def record(self, type_: str, at: datetime, **data: Any) -> str:
        seq = len(self.entries) + 1
        event_id = f"ev{seq:03d}-{type_}"
        model = DATA_MODELS[type_](**data)
        self.entries.append(TimelineEntry(event_id, type_, at, model, seq))
        return event_id

    def vitals(self, at: datetime, **fields: Any) -> str:
        return self.record("vitals.recorded", at, **fields)

    def oxygen(
        self,
        at: datetime,
        device: str,
        flow_l_min: float | None = None,
        reason: str = "hypoxia",
    ) -> str:
        return self.record(
            "oxygen.changed", at, device=device, flow_l_min=flow_l_min, reason=reason
        )

    def vasopressor(self, at: datetime, drug: str, action: str = "start") -> str:
        return self.record("vasopressor.changed", at, drug=drug, action=action)

    def bolus(self, at: datetime, volume_ml: float = 1000, indication: str = "hypotension") -> str:
        return self.record("fluid.bolus", at, volume_ml=volume_ml, indication=indication)

    def medication(self, at: datetime, drug: str, drug_class: str) -> str:
        return self.record("medication.administered", at, drug=drug, drug_class=drug_class)

    def death(self, at: datetime, cause: str, attributed_to: str = "product") -> str:
        return self.record("death.reported", at, cause=cause, attributed_to=attributed_to)

    def derive(
        self, as_of: datetime | None = None, params: CRSParameters | None = None
    ) -> CRSDerivation:
        """Derive CRS; ``as_of`` defaults to the latest observation."""
        if as_of is None:
            as_of = max((e.at for e in self.entries), default=self.infusion_at or D0)
        return derive_crs(
            self.entries,
            params or CRSParameters(),
            infusion_at=self.infusion_at,
            as_of=as_of,
        )

    def grade_at(self, at: datetime, **derive_kwargs: Any) -> int:
        return self.derive(**derive_kwargs).grade_at(at)


def change_at(derivation: CRSDerivation, at: datetime) -> CRSChange:
    """The grade change in force at ``at`` (the last one at or before it)."""
    in_force = [change for change in derivation.changes if change.at <= at]
    assert in_force, f"no CRS grade in force at {at.isoformat()}"
    return in_force[-1]


def questions(
    derivation: CRSDerivation, *, about: str | None = None, evidence: str | None = None
) -> list[AdjudicationQuestion]:
    """Adjudication questions whose text mentions ``about`` and/or cite ``evidence``."""
    return [
        q
        for q in derivation.questions
        if (about is None or about.lower() in q.question.lower())
        and (evidence is None or evidence in q.evidence)
    ]


def hours_at_or_above(derivation: CRSDerivation, grade: int) -> float | None:
    """Hours from the first time ``grade`` was met to the start of a sustained return
    below it (reference §7); None if it was never met or never left."""
    start: datetime | None = None
    end: datetime | None = None
    for change in derivation.changes:
        if change.grade >= grade:
            start = start or change.at
            end = None
        elif start is not None and end is None:
            end = change.at
    if start is None or end is None:
        return None
    return (end - start) / timedelta(hours=1)
