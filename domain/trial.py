"""The trial monitor's aggregates (architecture decision 6; reference §8).

The monitor follows the participant log and turns what it reads into **facts**: an
infusion, a DLT window opened or closed (evaluable? with a DLT?), a death at least
possibly related, a grade 4 CRS or ICANS, a committee decision. The :class:`Trial`
aggregate records each fact once and derives, with :func:`evaluate_trial`, every
trial-level safety event of the contract:

- ``dose.decision`` after each evaluable outcome at a dose (BOIN or 3+3, from the
  protocol), ``eliminate`` included, and ``suspend_accrual`` while more than
  ``suspend_when_pending_fraction_over`` of the dose's infused participants have a
  DLT window still open (TITE-BOIN convention);
- ``mtd.estimated`` whenever the dose the design selects as MTD changes (with the
  isotonic estimate of every dose);
- ``stopping_rule.triggered`` when a continuous rule (Bayesian, Pocock-type) first
  crosses its boundary, and for the fixed pause rules (a related death, a grade 4
  CRS or ICANS, >= y DLTs among the first n evaluable at a dose);
- ``enrollment.paused`` by a fixed pause rule (pending the committee's review) or by
  a committee, ``enrollment.resumed`` only by a committee;
- ``protocol.deviation`` for an infusion while enrolment is paused or stopped, or at a
  dose level the committee closed.

Rules recommend; only committee decisions resume enrolment and open or close doses.

**Determinism.** The evaluation is a pure function of the facts, swept in clinical
time order (ties by the order facts were recorded), so the same facts give the same
events whether they were read live from several partitions or offline from one.
Each event has a key; the aggregate publishes an event whose key is new, and again
(a correction, ``data.revises`` = true) when late or overturned data changed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, cast
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from domain.designs import (
    bayesian_boundary,
    binomial_tail,
    boin_decision,
    boin_select_mtd,
    exceed_probability,
    pocock_design,
    three_plus_three_decision,
    three_plus_three_mtd,
)
from domain.participant import NAMESPACE, SafetyEventRecorded
from domain.protocol import (
    BayesianStoppingRule,
    BOINDesign,
    PocockStoppingRule,
    ProtocolParameters,
)

TRIAL_PARTICIPANT = "-"

FactKind = Literal[
    "infusion", "window_opened", "window_closed", "related_death", "grade4", "committee"
]


@dataclass(frozen=True)
class Fact:
    """One thing the monitor read: ``key`` is unique per fact (usually the source event
    id); ``at`` its clinical time."""

    kind: FactKind
    key: str
    at: datetime
    participant_id: str
    dose_level: str | None
    data: dict[str, Any] = field(default_factory=dict)
    caused_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Finding:
    """A trial-level safety event the facts imply."""

    key: str
    type: str
    at: datetime
    participant_id: str
    dose_level: str | None
    caused_by: tuple[str, ...]
    data: dict[str, Any]


@dataclass
class DoseTally:
    """What the DSMB reads per dose level."""

    infused: set[str] = field(default_factory=set)
    open_windows: set[str] = field(default_factory=set)
    outcomes: list[tuple[datetime, str, bool]] = field(default_factory=list)
    related_deaths: int = 0
    grade4_crs_icans: int = 0
    suspended: bool = False
    eliminated: bool = False

    @property
    def n(self) -> int:
        return len(self.outcomes)

    @property
    def y(self) -> int:
        return sum(1 for _, _, dlt in self.outcomes if dlt)

    def summary(self) -> dict[str, int | bool]:
        return {
            "infused": len(self.infused),
            "evaluable": self.n,
            "dlts": self.y,
            "open_windows": len(self.open_windows),
            "related_deaths": self.related_deaths,
            "grade4_crs_icans": self.grade4_crs_icans,
            "suspended": self.suspended,
            "eliminated": self.eliminated,
        }


@dataclass
class _Sweep:
    protocol: ProtocolParameters
    findings: dict[str, Finding] = field(default_factory=dict)
    doses: dict[str, DoseTally] = field(default_factory=dict)
    paused_by: str | None = None
    stopped: bool = False
    closed: set[str] = field(default_factory=set)
    crossed: set[str] = field(default_factory=set)
    last_mtd: tuple[Any, ...] | None = None

    @property
    def dose_ids(self) -> list[str]:
        return [d.id for d in self.protocol.dose_levels]

    def dose(self, dose_level: str | None) -> DoseTally | None:
        if dose_level is None:
            return None
        return self.doses.setdefault(dose_level, DoseTally())

    def find(self, key: str, type_: str, fact: Fact, data: dict[str, Any], **kw: Any) -> None:
        self.findings[key] = Finding(
            key,
            type_,
            fact.at,
            kw.get("participant_id", TRIAL_PARTICIPANT),
            kw.get("dose_level", fact.dose_level),
            fact.caused_by or (fact.key,),
            data,
        )

    # -------------------------------------------------------------- facts

    def apply(self, fact: Fact) -> None:
        tally = self.dose(fact.dose_level)
        if fact.kind == "infusion":
            self._deviations(fact)
            if tally is not None:
                tally.infused.add(fact.participant_id)
        elif fact.kind == "window_opened" and tally is not None:
            self._deviations(fact)  # the window opens at the infusion
            tally.infused.add(fact.participant_id)
            tally.open_windows.add(fact.participant_id)
            self._pending(fact, tally)
        elif fact.kind == "window_closed" and tally is not None:
            tally.open_windows.discard(fact.participant_id)
            if fact.data["evaluable"]:
                tally.outcomes.append((fact.at, fact.participant_id, bool(fact.data["had_dlt"])))
                self._decide(fact, tally)
                self._mtd(fact)
                self._continuous(fact)
                self._first_n(fact, tally)
            self._pending(fact, tally)
        elif fact.kind == "related_death":
            if tally is not None:
                tally.related_deaths += 1
            if self.protocol.pause_rules.related_grade5_pauses:
                self._pause_rule(fact, "related_grade5", "a death at least possibly related")
        elif fact.kind == "grade4":
            if tally is not None:
                tally.grade4_crs_icans += 1
            if self.protocol.pause_rules.grade4_crs_or_icans_pauses:
                term = fact.data.get("term", "CRS/ICANS")
                self._pause_rule(fact, "grade4_crs_or_icans", f"grade 4 {term}")
        elif fact.kind == "committee":
            self._committee(fact)

    def _deviations(self, fact: Fact) -> None:
        problems = []
        if self.stopped:
            problems.append(("infusion_after_trial_stopped", "the trial was stopped"))
        elif self.paused_by is not None:
            problems.append(
                ("infusion_while_enrollment_paused", f"enrolment paused by {self.paused_by}")
            )
        if fact.dose_level in self.closed:
            problems.append(
                ("infusion_at_closed_dose_level", f"dose level {fact.dose_level} was closed")
            )
        for rule, why in problems:
            self.find(
                f"trial-deviation:{rule}:{fact.key}",
                "protocol.deviation",
                fact,
                {"rule": rule, "detail": f"infusion at {fact.dose_level} while {why}"},
                participant_id=fact.participant_id,
            )

    def _design_decision(self, tally: DoseTally) -> tuple[str, str] | None:
        design = self.protocol.escalation
        if isinstance(design, BOINDesign):
            decision = boin_decision(
                tally.y,
                tally.n,
                target=design.target,
                phi1=design.target * design.phi1_ratio,
                phi2=design.target * design.phi2_ratio,
                cutoff=design.elimination_cutoff,
            )
            return "BOIN", decision
        three = three_plus_three_decision(tally.y, tally.n)
        return ("3+3", three) if three is not None else None

    def _decide(self, fact: Fact, tally: DoseTally) -> None:
        decided = self._design_decision(tally)
        if decided is None:
            return
        design, decision = decided
        if decision == "eliminate":
            self._eliminate_from(cast(str, fact.dose_level))
            if self.dose_ids[:1] == [fact.dose_level]:
                # Reference §8: eliminating the lowest dose stops the trial (recommended).
                self.find(
                    "stopping:lowest_dose_eliminated:trial",
                    "stopping_rule.triggered",
                    fact,
                    {
                        "rule_id": "lowest_dose_eliminated",
                        "scope": "trial",
                        "n": tally.n,
                        "y": tally.y,
                        "boundary": self._elimination_boundary(tally.n),
                        "statistic": self._elimination_statistic(tally),
                        "kind": design,
                        "detail": f"{fact.dose_level}, the lowest dose, is eliminated: "
                        "the design recommends stopping the trial",
                    },
                    dose_level=None,
                )
        self.find(
            f"dose-decision:{fact.dose_level}:{fact.participant_id}",
            "dose.decision",
            fact,
            {
                "dose_level": fact.dose_level,
                "design": design,
                "decision": decision,
                "n": tally.n,
                "y": tally.y,
            },
        )

    def _elimination_boundary(self, n: int) -> int | None:
        design = self.protocol.escalation
        if not isinstance(design, BOINDesign):
            return 2  # 3+3: >= 2 DLTs exceed the MTD
        return next(
            (
                y
                for y in range(n + 1)
                if n >= 3 and exceed_probability(y, n, design.target) > design.elimination_cutoff
            ),
            None,
        )

    def _elimination_statistic(self, tally: DoseTally) -> float:
        design = self.protocol.escalation
        if not isinstance(design, BOINDesign):
            return float(tally.y)
        return exceed_probability(tally.y, tally.n, design.target)

    def _eliminate_from(self, dose_level: str) -> None:
        ids = self.dose_ids
        start = ids.index(dose_level) if dose_level in ids else len(ids)
        for higher in ids[start:]:
            cast(DoseTally, self.dose(higher)).eliminated = True

    def _mtd(self, fact: Fact) -> None:
        ids = self.dose_ids
        n = [self.doses[d].n if d in self.doses else 0 for d in ids]
        y = [self.doses[d].y if d in self.doses else 0 for d in ids]
        design = self.protocol.escalation
        if isinstance(design, BOINDesign):
            estimate = boin_select_mtd(n, y, target=design.target, cutoff=design.elimination_cutoff)
            index, reason = estimate.dose_index, estimate.reason
            estimates = {
                d: (round(v, 4) if v is not None else None)
                for d, v in zip(ids, estimate.estimates, strict=True)
            }
            name = "BOIN"
        else:
            index = three_plus_three_mtd(n, y)
            reason = "highest dose with <= 1 DLT among 6"
            estimates = {
                d: (round(yy / nn, 4) if nn else None) for d, nn, yy in zip(ids, n, y, strict=True)
            }
            name = "3+3"
        mtd = ids[index] if index is not None else None
        # Published when the selected dose changes (the estimates move with every outcome;
        # the dose levels' tallies carry them).
        state = (mtd,)
        if state == self.last_mtd:
            return
        self.last_mtd = state
        self.find(
            f"mtd:{fact.at.isoformat()}:{fact.participant_id}",
            "mtd.estimated",
            fact,
            {"dose_level": mtd, "design": name, "estimates": estimates, "reason": reason},
            dose_level=None,
        )

    def _continuous(self, fact: Fact) -> None:
        for rule in self.protocol.stopping_rules:
            scopes: list[tuple[str, list[DoseTally]]]
            if rule.scope == "trial":
                scopes = [("trial", list(self.doses.values()))]
            else:
                tally = self.dose(fact.dose_level)
                scopes = [(cast(str, fact.dose_level), [tally] if tally else [])]
            for scope, tallies in scopes:
                n = sum(t.n for t in tallies)
                y = sum(t.y for t in tallies)
                crossed = _crossed(rule, n, y)
                key = f"stopping:{rule.rule_id}:{scope}"
                if crossed is None or key in self.crossed:
                    continue
                boundary, statistic = crossed
                self.crossed.add(key)
                self.find(
                    key,
                    "stopping_rule.triggered",
                    fact,
                    {
                        "rule_id": rule.rule_id,
                        "scope": scope,
                        "n": n,
                        "y": y,
                        "boundary": boundary,
                        "statistic": statistic,
                        "kind": rule.kind,
                    },
                    dose_level=None if scope == "trial" else scope,
                )

    def _first_n(self, fact: Fact, tally: DoseTally) -> None:
        limit_y, first_n = self.protocol.pause_rules.dlts_exceeding_mtd
        first = sorted(tally.outcomes)[:first_n]
        y = sum(1 for _, _, dlt in first if dlt)
        key = f"stopping:dlts_exceeding_mtd:{fact.dose_level}"
        if y >= limit_y and key not in self.crossed:
            self.crossed.add(key)
            self.find(
                key,
                "stopping_rule.triggered",
                fact,
                {
                    "rule_id": "dlts_exceeding_mtd",
                    "scope": fact.dose_level,
                    "n": len(first),
                    "y": y,
                    "boundary": limit_y,
                    "statistic": y,
                    "kind": "fixed",
                    "detail": f">= {limit_y} DLTs among the first {first_n} evaluable: "
                    f"{fact.dose_level} exceeds the MTD",
                },
            )

    def _pending(self, fact: Fact, tally: DoseTally) -> None:
        limit = self.protocol.pause_rules.suspend_when_pending_fraction_over
        infused = len(tally.infused)
        pending = len(tally.open_windows)
        suspended = infused > 0 and pending / infused > limit
        if suspended == tally.suspended:
            return
        tally.suspended = suspended
        decided = self._design_decision(tally) if tally.n else None
        decision = "suspend_accrual" if suspended else (decided[1] if decided else "stay")
        self.find(
            f"accrual:{fact.dose_level}:{fact.key}",
            "dose.decision",
            fact,
            {
                "dose_level": fact.dose_level,
                "design": self.protocol.escalation.design,
                "decision": decision,
                "n": tally.n,
                "y": tally.y,
                "pending": pending,
                "infused": infused,
                "reason": f"{pending} of {infused} DLT windows open "
                f"({'>' if suspended else '<='} {limit:g})",
            },
        )

    def _pause_rule(self, fact: Fact, rule_id: str, what: str) -> None:
        n = sum(t.n for t in self.doses.values())
        count = sum(
            t.related_deaths if rule_id == "related_grade5" else t.grade4_crs_icans
            for t in self.doses.values()
        )
        self.find(
            f"stopping:{rule_id}:{fact.key}",
            "stopping_rule.triggered",
            fact,
            {
                "rule_id": rule_id,
                "scope": "trial",
                "n": n,
                "y": count,
                "boundary": 1,
                "statistic": count,
                "kind": "fixed",
                "detail": f"{what} ({fact.participant_id}): enrolment paused pending review",
            },
        )
        if self.paused_by is None and not self.stopped:
            self.paused_by = f"pause rule {rule_id}"
            self.find(
                f"pause:{rule_id}:{fact.key}",
                "enrollment.paused",
                fact,
                {"by": self.paused_by, "reason": f"{what} ({fact.participant_id})"},
                dose_level=None,
            )

    def _committee(self, fact: Fact) -> None:
        decision = fact.data["decision"]
        by = f"{fact.data['committee']} ({fact.key})"
        reason = fact.data["reason"]
        dose_level = fact.dose_level
        if decision == "pause_enrollment":
            self.paused_by = by
            self.find(f"pause:{fact.key}", "enrollment.paused", fact, {"by": by, "reason": reason})
        elif decision == "resume_enrollment" and not self.stopped:
            self.paused_by = None
            self.find(
                f"resume:{fact.key}", "enrollment.resumed", fact, {"by": by, "reason": reason}
            )
        elif decision == "stop_trial":
            self.stopped = True
            self.paused_by = by
            self.find(
                f"stop:{fact.key}",
                "enrollment.paused",
                fact,
                {"by": by, "reason": reason, "trial_stopped": True},
            )
        elif decision == "close_dose_level" and dose_level is not None:
            self.closed.add(dose_level)
        elif decision == "open_dose_level" and dose_level is not None:
            self.closed.discard(dose_level)


def _crossed(
    rule: BayesianStoppingRule | PocockStoppingRule, n: int, y: int
) -> tuple[int, float] | None:
    """(boundary, statistic) when y of n crosses the rule's boundary."""
    if n < 1:
        return None
    if isinstance(rule, BayesianStoppingRule):
        if n > rule.max_n:
            return None
        if n < rule.min_evaluable:
            return None
        boundary = bayesian_boundary(
            n, p0=rule.p0, cutoff=rule.cutoff, a=rule.prior_a, b=rule.prior_b
        )
        if boundary is None or y < boundary:
            return None
        return boundary, exceed_probability(y, n, rule.p0, rule.prior_a, rule.prior_b)
    if n > rule.max_n:
        return None
    design = pocock_design(rule.theta0, rule.alpha, rule.max_n)
    bound = design.boundaries[n - 1]
    if bound is None or y < bound:
        return None
    return bound, binomial_tail(y, n, rule.theta0)


def evaluate_trial(
    facts: Sequence[Fact], protocol: ProtocolParameters
) -> tuple[dict[str, Finding], dict[str, DoseTally]]:
    """Every finding the facts imply, and the dose tallies at the end (module docstring).

    A participant's DLT window outcome is its latest ``window_closed`` fact."""
    latest_closure: dict[str, int] = {}
    for index, fact in enumerate(facts):
        if fact.kind == "window_closed":
            latest_closure[fact.participant_id] = index
    ordered = sorted(
        (
            (fact.at, index, fact)
            for index, fact in enumerate(facts)
            if fact.kind != "window_closed" or latest_closure[fact.participant_id] == index
        ),
        key=lambda item: (item[0], item[1]),
    )
    sweep = _Sweep(protocol)
    for _, _, fact in ordered:
        sweep.apply(fact)
    return sweep.findings, sweep.doses


# ---------------------------------------------------------------- aggregates


def trial_aggregate_id(trial_id: str) -> UUID:
    return uuid5(NAMESPACE, f"trial-monitor/{trial_id}")


def dose_level_aggregate_id(trial_id: str, dose_level: str) -> UUID:
    return uuid5(NAMESPACE, f"dose-level/{trial_id}/{dose_level}")


class TrialSafetyEvent(SafetyEventRecorded):
    """A trial-level safety event (contract §3) the monitor derived."""

    def apply(self, aggregate: Aggregate) -> None:
        trial = cast(Trial, aggregate)
        key = self.data["key"]
        trial.published[key] = Finding(
            key,
            self.contract_type,
            self.effective_at,
            self.participant_id,
            self.dose_level,
            tuple(self.caused_by),
            {k: v for k, v in self.data.items() if k not in ("key", "revises")},
        )


class Trial(Aggregate):
    """The facts the monitor read for one trial, and the events it published."""

    class Opened(Aggregate.Created):
        trial_id: str

    class FactObserved(Aggregate.Event):
        """``read_through``: the last log position the monitor had read when it
        observed the fact; its evaluation used everything up to there, so a replay
        evaluates at the same points (``toxwatch replay``)."""

        fact: dict[str, Any]
        read_through: int | None = None

        def apply(self, aggregate: Aggregate) -> None:
            trial = cast(Trial, aggregate)
            data = self.fact
            fact = Fact(
                data["kind"],
                data["key"],
                datetime.fromisoformat(data["at"]),
                data["participant_id"],
                data["dose_level"],
                data["data"],
                tuple(data["caused_by"]),
            )
            trial.facts.append(fact)
            trial.keys.add(fact.key)

    class DoseDecision(TrialSafetyEvent):
        contract_type = "dose.decision"

    class MTDEstimated(TrialSafetyEvent):
        contract_type = "mtd.estimated"

    class StoppingRuleTriggered(TrialSafetyEvent):
        contract_type = "stopping_rule.triggered"

    class EnrollmentPaused(TrialSafetyEvent):
        contract_type = "enrollment.paused"

    class EnrollmentResumed(TrialSafetyEvent):
        contract_type = "enrollment.resumed"

    class DeviationFound(TrialSafetyEvent):
        contract_type = "protocol.deviation"

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.facts: list[Fact] = []
        self.keys: set[str] = set()
        #: What was published last for each key (``data`` without ``key`` and ``revises``).
        self.published: dict[str, Finding] = {}

    @classmethod
    def open(cls, trial_id: str) -> Trial:
        return cls._create(cls.Opened, id=trial_aggregate_id(trial_id), trial_id=trial_id)

    def observe(self, fact: Fact, *, read_through: int | None = None) -> bool:
        """Record a fact once (by key)."""
        if fact.key in self.keys:
            return False
        self.trigger_event(
            self.FactObserved,
            read_through=read_through,
            fact={
                "kind": fact.kind,
                "key": fact.key,
                "at": fact.at.isoformat(),
                "participant_id": fact.participant_id,
                "dose_level": fact.dose_level,
                "data": fact.data,
                "caused_by": list(fact.caused_by),
            },
        )
        return True

    def evaluate(self, protocol: ProtocolParameters) -> dict[str, DoseTally]:
        """Publish each finding that is new or changed; return the dose tallies."""
        findings, tallies = evaluate_trial(self.facts, protocol)
        # A published finding the facts no longer imply (an overturned DLT, a late
        # outcome) is withdrawn: republished with ``withdrawn`` true.
        for key, stated in list(self.published.items()):
            if key not in findings and not stated.data.get("withdrawn"):
                self._publish(
                    replace(stated, data={**stated.data, "withdrawn": True}), revises=True
                )
        for key, finding in sorted(findings.items(), key=lambda kv: (kv[1].at, kv[0])):
            before = self.published.get(key)
            if before is None or before.data != finding.data:
                self._publish(finding, revises=before is not None)
        return tallies

    def _publish(self, finding: Finding, *, revises: bool) -> None:
        data = {"key": finding.key, **finding.data}
        if revises:
            data["revises"] = True
        self.trigger_event(
            _EVENT_CLASSES[finding.type],
            trial_id=self.trial_id,
            participant_id=finding.participant_id,
            dose_level=finding.dose_level,
            effective_at=finding.at,
            caused_by=list(finding.caused_by),
            data=data,
        )


_EVENT_CLASSES: dict[str, type[TrialSafetyEvent]] = {
    cls.contract_type: cls
    for cls in (
        Trial.DoseDecision,
        Trial.MTDEstimated,
        Trial.StoppingRuleTriggered,
        Trial.EnrollmentPaused,
        Trial.EnrollmentResumed,
        Trial.DeviationFound,
    )
}


class DoseLevel(Aggregate):
    """One dose level's tallies as the DSMB reads them, with their history."""

    class Opened(Aggregate.Created):
        trial_id: str
        dose_level: str

    class Tallied(Aggregate.Event):
        tally: dict[str, int | bool]

        def apply(self, aggregate: Aggregate) -> None:
            cast(DoseLevel, aggregate).tally = dict(self.tally)

    def __init__(self, trial_id: str, dose_level: str) -> None:
        self.trial_id = trial_id
        self.dose_level = dose_level
        self.tally: dict[str, int | bool] = {}

    @classmethod
    def open(cls, trial_id: str, dose_level: str) -> DoseLevel:
        return cls._create(
            cls.Opened,
            id=dose_level_aggregate_id(trial_id, dose_level),
            trial_id=trial_id,
            dose_level=dose_level,
        )

    def update(self, tally: DoseTally) -> None:
        summary = tally.summary()
        if summary != self.tally:
            self.trigger_event(self.Tallied, tally=summary)
