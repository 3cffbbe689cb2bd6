"""A small builder of neurological courses for ICANS tests (reference §2, vignettes.md).

Extends the CRS builder's ``Course`` (same clock, ``day(n, "hh:mm")`` and event ids)
with neuro assessments and sedatives, and derives ICANS instead of CRS.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from domain.icans import ICANSChange, ICANSDerivation, ICANSParameters, derive_icans
from domain.timeline import AdjudicationQuestion
from tests.unit.clinical_course import D0, Course

FULL_ICE_ITEMS = {"orientation": 4, "naming": 3, "commands": 1, "writing": 1, "attention": 1}


class NeuroCourse(Course):
    """One participant's neurological timeline, recorded in arrival order."""

    def neuro(self, at: datetime, **fields: Any) -> str:
        """A full ``neuro.assessed`` (contract §2 field names)."""
        return self.record("neuro.assessed", at, **fields)

    def normal(self, at: datetime) -> str:
        """ICE 10/10, awake, no other finding (ICANS grade 0)."""
        return self.neuro(at, ice_score=10, consciousness="awake", seizure="none")

    def sedative(self, at: datetime, drug: str = "midazolam") -> str:
        return self.medication(at, drug, "sedative")

    def derive(  # type: ignore[override]
        self, as_of: datetime | None = None, params: ICANSParameters | None = None
    ) -> ICANSDerivation:
        """Derive ICANS; ``as_of`` defaults to the latest observation."""
        if as_of is None:
            as_of = max((e.at for e in self.entries), default=self.infusion_at or D0)
        return derive_icans(
            self.entries,
            params or ICANSParameters(),
            infusion_at=self.infusion_at,
            as_of=as_of,
        )


def change_at(derivation: ICANSDerivation, at: datetime) -> ICANSChange:
    """The grade change in force at ``at`` (the last one at or before it)."""
    in_force = [change for change in derivation.changes if change.at <= at]
    assert in_force, f"no ICANS grade in force at {at.isoformat()}"
    return in_force[-1]


def questions(
    derivation: ICANSDerivation, *, about: str | None = None, evidence: str | None = None
) -> list[AdjudicationQuestion]:
    """Adjudication questions whose text mentions ``about`` and/or cite ``evidence``."""
    return [
        q
        for q in derivation.questions
        if (about is None or about.lower() in q.question.lower())
        and (evidence is None or evidence in q.evidence)
    ]
