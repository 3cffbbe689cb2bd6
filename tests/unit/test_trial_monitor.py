"""Trial monitor vignettes: dose decisions, MTD, stopping and pause rules (reference §8).

Each test builds the monitor's facts directly and checks the trial-level events of the
contract (event-contract.md §3: ``dose.decision``, ``mtd.estimated``,
``stopping_rule.triggered``, ``enrollment.paused``/``resumed``, ``protocol.deviation``)
that :func:`domain.trial.evaluate_trial` and the :class:`domain.trial.Trial` aggregate
derive. The expected result follows from /work/shared/clinical/reference.md §8 (and §7
for evaluability), cited in each docstring. Boundaries of the continuous rules are
recomputed here independently, in exact rational arithmetic. Clinical time starts at
D0 08:00 (+08:00); ``at(h)`` is h hours later.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from functools import cache
from math import comb
from typing import Any

import pytest

from domain.designs import bayesian_table
from domain.protocol import (
    BayesianStoppingRule,
    FixedPauseRules,
    PocockStoppingRule,
    ProtocolParameters,
    ThreePlusThreeDesign,
)
from domain.protocol import (
    DoseLevel as ProtocolDoseLevel,
)
from domain.trial import (
    DoseLevel,
    DoseTally,
    Fact,
    Finding,
    Trial,
    TrialSafetyEvent,
    evaluate_trial,
)

TZ = timezone(timedelta(hours=8))
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
TRIAL_ID = "NCT07049081"
BOIN = ProtocolParameters()
THREE_PLUS_THREE = ProtocolParameters(escalation=ThreePlusThreeDesign())
TRIAL_EVENT_TYPES = {
    "dose.decision",
    "mtd.estimated",
    "stopping_rule.triggered",
    "enrollment.paused",
    "enrollment.resumed",
    "protocol.deviation",
}

# Reference §8, data/boin-phi0.30.csv (CRAN BOIN get.boundary, target 0.30):
# n -> (escalate if y <=, de-escalate if y >=, eliminate if y >= or None).
BOIN_030 = {
    1: (0, 1, None),
    2: (0, 1, None),
    3: (0, 2, 3),
    4: (0, 2, 3),
    5: (1, 2, 4),
    6: (1, 3, 4),
    7: (1, 3, 5),
    8: (1, 3, 5),
    9: (2, 4, 5),
    10: (2, 4, 6),
    11: (2, 4, 6),
    12: (2, 5, 7),
    13: (3, 5, 7),
    14: (3, 6, 8),
    15: (3, 6, 8),
    16: (3, 6, 8),
    17: (4, 7, 9),
    18: (4, 7, 9),
}


# ---------------------------------------------------------------- fact builders


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def opened(participant: str, dose: str, hours: float, key: str | None = None) -> Fact:
    """A participant infused at ``dose``: its DLT window opens (and infusion gates apply)."""
    return Fact(
        "window_opened",
        key or f"open-{participant}",
        at(hours),
        participant,
        dose,
        {"ends_at": at(hours + 28 * 24).isoformat()},
    )


def closed(
    participant: str,
    dose: str,
    hours: float,
    *,
    dlt: bool,
    evaluable: bool = True,
    key: str | None = None,
) -> Fact:
    return Fact(
        "window_closed",
        key or f"close-{participant}",
        at(hours),
        participant,
        dose,
        {"evaluable": evaluable, "had_dlt": dlt},
    )


def related_death(participant: str, dose: str, hours: float) -> Fact:
    return Fact(
        "related_death",
        f"death-{participant}",
        at(hours),
        participant,
        dose,
        {"cause": "CRS", "related": "probable"},
    )


def grade4(participant: str, dose: str, hours: float, term: str = "CRS") -> Fact:
    return Fact(
        "grade4", f"grade4:{participant}:{term}", at(hours), participant, dose, {"term": term}
    )


def committee(
    decision: str, hours: float, *, dose: str | None = None, by: str = "src", key: str = ""
) -> Fact:
    return Fact(
        "committee",
        key or f"committee-{decision}-{hours:g}",
        at(hours),
        "-",
        dose,
        {"committee": by, "decision": decision, "reason": f"{by} minutes, {decision}"},
    )


def outcomes(
    dose: str, pattern: Sequence[int], *, start_hours: float = 0, prefix: str | None = None
) -> list[Fact]:
    """One evaluable window closure per entry (1 = had a DLT), a day apart."""
    name = prefix or dose
    return [
        closed(f"{name}-{i + 1:02d}", dose, start_hours + 24 * i, dlt=bool(dlt))
        for i, dlt in enumerate(pattern)
    ]


# ---------------------------------------------------------------- reading findings


def of_type(findings: dict[str, Finding], type_: str) -> list[Finding]:
    return sorted((f for f in findings.values() if f.type == type_), key=lambda f: (f.at, f.key))


def design_decisions(findings: dict[str, Finding]) -> list[tuple[str, int, int]]:
    return [
        (f.data["decision"], f.data["n"], f.data["y"]) for f in of_type(findings, "dose.decision")
    ]


def triggered(findings: dict[str, Finding], rule_id: str) -> list[Finding]:
    return [f for f in of_type(findings, "stopping_rule.triggered") if f.data["rule_id"] == rule_id]


def evaluate(facts: Iterable[Fact], protocol: ProtocolParameters = BOIN) -> dict[str, Finding]:
    return evaluate_trial(list(facts), protocol)[0]


def tallies(facts: Iterable[Fact], protocol: ProtocolParameters = BOIN) -> dict[str, DoseTally]:
    return evaluate_trial(list(facts), protocol)[1]


# ---------------------------------------------------------------- BOIN decisions


def test_boin_three_evaluable_without_dlt_escalate_after_each_outcome() -> None:
    """§8 BOIN, φ = 0.30: 0/n ≤ λe = 0.2365 → escalate, after every evaluable outcome."""
    facts = outcomes("DL1", [0, 0, 0])
    findings = evaluate(facts)

    assert design_decisions(findings) == [
        ("escalate", 1, 0),
        ("escalate", 2, 0),
        ("escalate", 3, 0),
    ]
    decisions = of_type(findings, "dose.decision")
    assert [f.caused_by for f in decisions] == [(fact.key,) for fact in facts]
    assert all(f.data["design"] == "BOIN" and f.dose_level == "DL1" for f in decisions)
    assert all(f.participant_id == "-" for f in decisions)


def test_boin_one_dlt_of_three_stays() -> None:
    """§8 BOIN: 1/3 = 0.333 lies between λe = 0.2365 and λd = 0.3585 → stay (0/1, 0/2
    escalate before it)."""
    findings = evaluate(outcomes("DL1", [0, 0, 1]))

    assert design_decisions(findings) == [("escalate", 1, 0), ("escalate", 2, 0), ("stay", 3, 1)]


def test_boin_two_dlts_of_three_de_escalate() -> None:
    """§8 BOIN: 1/2 = 0.5 and 2/3 = 0.667 ≥ λd = 0.3585 → de-escalate; 2/3 is below the
    elimination boundary (P(p > 0.3 | 2/3) = 0.92 ≤ 0.95)."""
    findings = evaluate(outcomes("DL1", [0, 1, 1]))

    assert design_decisions(findings) == [
        ("escalate", 1, 0),
        ("de_escalate", 2, 1),
        ("de_escalate", 3, 2),
    ]
    assert not tallies(outcomes("DL1", [0, 1, 1]))["DL1"].eliminated


def test_boin_three_dlts_of_three_eliminate_the_dose_and_higher_doses() -> None:
    """§8 BOIN: n = 3 and P(p > 0.3 | 3/3) = 1 − 0.3⁴ = 0.992 > 0.95 → eliminate this and
    higher doses; 2/2 is not eliminated (n < 3) and de-escalates."""
    facts = outcomes("DL1", [0, 0, 0]) + outcomes("DL2", [1, 1, 1], start_hours=100)
    findings, doses = evaluate_trial(facts, BOIN)

    at_dl2 = [f for f in of_type(findings, "dose.decision") if f.dose_level == "DL2"]
    assert [(f.data["decision"], f.data["n"], f.data["y"]) for f in at_dl2] == [
        ("de_escalate", 1, 1),
        ("de_escalate", 2, 2),
        ("eliminate", 3, 3),
    ]
    assert not doses["DL1"].eliminated
    assert doses["DL2"].eliminated
    assert doses["DL3"].eliminated


def test_boin_eliminating_the_lowest_dose_recommends_stopping_the_trial() -> None:
    """§8 BOIN: "eliminating the lowest dose stops the trial"; rules recommend (§8, last
    line), so the elimination of DL1 (3/3) is a trial-scope stopping_rule.triggered."""
    facts = outcomes("DL1", [1, 1, 1])
    findings = evaluate(facts)

    trial_scope = [
        f for f in of_type(findings, "stopping_rule.triggered") if f.data["scope"] == "trial"
    ]
    assert [f.caused_by for f in trial_scope] == [(facts[-1].key,)]


def test_boin_eliminating_a_higher_dose_does_not_recommend_stopping_the_trial() -> None:
    """§8 BOIN: eliminating DL2 leaves DL1; the trial goes on at the lower dose."""
    facts = outcomes("DL1", [0, 0, 0]) + outcomes("DL2", [1, 1, 1], start_hours=100)
    findings = evaluate(facts)

    assert [
        f for f in of_type(findings, "stopping_rule.triggered") if f.data["scope"] == "trial"
    ] == []


def test_boin_non_evaluable_window_gives_no_decision() -> None:
    """§7: a participant who leaves before day 28 without DLT is not evaluable, so §8's
    y/n does not change and no decision is made for that outcome."""
    facts = [*outcomes("DL1", [0]), closed("DL1-09", "DL1", 48, dlt=False, evaluable=False)]
    findings, doses = evaluate_trial(facts, BOIN)

    assert design_decisions(findings) == [("escalate", 1, 0)]
    assert doses["DL1"].n == 1


@pytest.mark.parametrize("n", sorted(BOIN_030))
def test_boin_decision_matches_the_published_table_on_both_sides_of_each_boundary(
    n: int,
) -> None:
    """§8: the decision after the n-th evaluable outcome, for every y, is the one of
    data/boin-phi0.30.csv (escalate ≤ e < stay < d ≤ de-escalate; eliminate ≥ x)."""
    escalate_le, deescalate_ge, eliminate_ge = BOIN_030[n]
    for y in range(n + 1):
        if eliminate_ge is not None and y >= eliminate_ge:
            expected = "eliminate"
        elif y >= deescalate_ge:
            expected = "de_escalate"
        elif y <= escalate_le:
            expected = "escalate"
        else:
            expected = "stay"
        findings = evaluate(outcomes("DL1", [1] * y + [0] * (n - y)))
        assert design_decisions(findings)[-1] == (expected, n, y), (n, y)


# ---------------------------------------------------------------- MTD


def test_mtd_estimate_is_published_when_the_selected_dose_changes() -> None:
    """§8 MTD selection: with 0/1 at DL1 the only tried dose is the MTD (estimate
    (0 + 0.05)/(1 + 0.1) = 0.0455); a second 0/1 outcome moves the estimate (0.0238) but
    not the selected dose, so nothing new is published; 0/1 at DL2 makes DL2 (the higher
    tried dose, estimates tied below the target after the package's 1e-10 tie-break)
    the MTD: published again."""
    facts = outcomes("DL1", [0, 0]) + outcomes("DL2", [0], start_hours=200)
    findings = evaluate(facts)

    mtd = of_type(findings, "mtd.estimated")
    assert [f.caused_by for f in mtd] == [(facts[0].key,), (facts[2].key,)]
    assert [f.data["dose_level"] for f in mtd] == ["DL1", "DL2"]
    assert mtd[0].data["estimates"]["DL1"] == pytest.approx(0.05 / 1.1, abs=1e-4)
    assert mtd[0].data["estimates"]["DL2"] is None
    assert all(f.participant_id == "-" and f.dose_level is None for f in mtd)


def test_mtd_estimate_is_not_republished_when_unchanged() -> None:
    """§8: eliminating the lowest dose (3/3 at DL1) leaves no MTD. DL1 is the MTD after
    1/1 and 2/2 (the only tried dose); at 3/3 it is eliminated (no MTD). Further
    outcomes, at DL1 or above, cannot change that (no dose is admissible), so no new
    mtd.estimated follows them."""
    facts = outcomes("DL1", [1, 1, 1, 1]) + outcomes("DL2", [0], start_hours=200)
    findings = evaluate(facts)

    mtd = of_type(findings, "mtd.estimated")
    assert [f.caused_by for f in mtd] == [(facts[0].key,), (facts[2].key,)]
    assert mtd[-1].data["dose_level"] is None
    assert set(mtd[-1].data["estimates"].values()) == {None}


def test_mtd_of_the_boin_package_example_is_dose_3() -> None:
    """§8: φ = 0.3, n = (3, 3, 15, 9, 0), y = (0, 0, 4, 4, 0) → MTD = dose 3."""
    protocol = ProtocolParameters(
        dose_levels=tuple(
            ProtocolDoseLevel(id=f"DL{d}", cells_per_kg=d * 1.0e6) for d in range(1, 6)
        )
    )
    facts: list[Fact] = []
    for dose, (n, y) in enumerate([(3, 0), (3, 0), (15, 4), (9, 4)], start=1):
        facts += outcomes(f"DL{dose}", [0] * (n - y) + [1] * y, start_hours=1000 * dose)
    findings = evaluate(facts, protocol)

    # The MTD in force after the last outcome is the last one published.
    last = of_type(findings, "mtd.estimated")[-1]
    assert last.data["dose_level"] == "DL3"
    assert last.data["estimates"]["DL5"] is None  # untried


# ---------------------------------------------------------------- 3+3


def test_three_plus_three_decides_only_at_three_and_six() -> None:
    """§8 3+3: 1/3 → expand to 6 (stay); 1/6 → escalate. Outcomes 1, 2, 4 and 5 complete
    no cohort, so they give no decision."""
    facts = outcomes("DL1", [0, 0, 1, 0, 0, 0])
    findings = evaluate(facts, THREE_PLUS_THREE)

    decisions = of_type(findings, "dose.decision")
    assert [(f.data["decision"], f.data["n"], f.data["y"]) for f in decisions] == [
        ("stay", 3, 1),
        ("escalate", 6, 1),
    ]
    assert [f.caused_by for f in decisions] == [(facts[2].key,), (facts[5].key,)]
    assert all(f.data["design"] == "3+3" for f in decisions)


def test_three_plus_three_zero_of_three_escalates() -> None:
    """§8 3+3: 0/3 → escalate."""
    findings = evaluate(outcomes("DL1", [0, 0, 0]), THREE_PLUS_THREE)

    assert design_decisions(findings) == [("escalate", 3, 0)]


def test_three_plus_three_two_of_three_or_two_of_six_exceed_the_mtd() -> None:
    """§8 3+3: ≥ 2/3 or ≥ 2/6 → MTD exceeded (the dose is eliminated)."""
    two_of_three = evaluate(outcomes("DL1", [0, 1, 1]), THREE_PLUS_THREE)
    two_of_six = evaluate(outcomes("DL1", [0, 0, 1, 0, 0, 1]), THREE_PLUS_THREE)

    assert design_decisions(two_of_three) == [("eliminate", 3, 2)]
    assert design_decisions(two_of_six) == [("stay", 3, 1), ("eliminate", 6, 2)]


def test_three_plus_three_mtd_unchanged_by_incomplete_cohort_is_not_republished() -> None:
    """§8 3+3: MTD = highest dose with ≤ 1/6; with 0/1 and then 0/2 at DL1 there is none,
    and the observed rates (0.0) are the same, so the second outcome publishes nothing."""
    facts = outcomes("DL1", [0, 0])
    findings = evaluate(facts, THREE_PLUS_THREE)

    mtd = of_type(findings, "mtd.estimated")
    assert [f.caused_by for f in mtd] == [(facts[0].key,)]
    assert mtd[0].data["dose_level"] is None


# ---------------------------------------------------------------- fixed pause rules


def test_related_death_triggers_the_grade5_rule_and_pauses_enrolment() -> None:
    """§8 fixed pause rules: any grade 5 event at least possibly related → pause
    enrolment pending review."""
    findings = evaluate([opened("P1", "DL1", 0), related_death("P1", "DL1", 100)])

    [rule] = triggered(findings, "related_grade5")
    assert rule.data["scope"] == "trial"
    assert rule.at == at(100)
    [paused] = of_type(findings, "enrollment.paused")
    assert paused.at == at(100)
    assert paused.participant_id == "-"
    assert "related_grade5" in paused.data["by"]
    assert paused.data["reason"]


def test_related_death_does_nothing_when_its_pause_rule_is_switched_off() -> None:
    """§8: each fixed pause rule is a [parameter]; switched off, a related death neither
    triggers a rule nor pauses enrolment."""
    protocol = ProtocolParameters(pause_rules=FixedPauseRules(related_grade5_pauses=False))
    findings = evaluate([related_death("P1", "DL1", 100)], protocol)

    assert findings == {}


@pytest.mark.parametrize("term", ["CRS", "ICANS"])
def test_grade4_crs_or_icans_pauses_enrolment(term: str) -> None:
    """§8 fixed pause rules: any grade 4 CRS or ICANS → pause."""
    findings = evaluate([grade4("P1", "DL1", 50, term)])

    [rule] = triggered(findings, "grade4_crs_or_icans")
    assert rule.data["scope"] == "trial"
    [paused] = of_type(findings, "enrollment.paused")
    assert paused.at == at(50)


def test_grade4_crs_does_nothing_when_its_pause_rule_is_switched_off() -> None:
    """§8: the grade 4 CRS/ICANS pause is a [parameter]; switched off → nothing."""
    protocol = ProtocolParameters(pause_rules=FixedPauseRules(grade4_crs_or_icans_pauses=False))
    findings = evaluate([grade4("P1", "DL1", 50)], protocol)

    assert findings == {}


def test_two_dlts_among_the_first_six_evaluable_mean_the_dose_exceeds_the_mtd() -> None:
    """§8: ≥ 2 DLTs among the first 6 evaluable at a dose level → that dose exceeds the
    MTD; triggered at the second DLT (the 6th evaluable)."""
    facts = outcomes("DL2", [1, 0, 0, 0, 0, 1])
    findings = evaluate(facts)

    [rule] = triggered(findings, "dlts_exceeding_mtd")
    assert rule.data["scope"] == "DL2"
    assert (rule.data["n"], rule.data["y"]) == (6, 2)
    assert rule.caused_by == (facts[-1].key,)


def test_one_dlt_among_the_first_six_evaluable_triggers_nothing() -> None:
    """§8: 1 DLT among the first 6 evaluable is below the ≥ 2 limit."""
    findings = evaluate(outcomes("DL2", [0, 0, 1, 0, 0, 0]))

    assert triggered(findings, "dlts_exceeding_mtd") == []


def test_second_dlt_in_the_seventh_evaluable_triggers_nothing() -> None:
    """§8: only the first 6 evaluable count, in clinical time order: the 7th evaluable's
    DLT does not count even when its fact is read first."""
    facts = outcomes("DL2", [1, 0, 0, 0, 0, 0, 1])
    findings = evaluate(reversed(facts))

    assert triggered(findings, "dlts_exceeding_mtd") == []


def test_dlts_at_different_doses_do_not_add_up_for_the_first_six_rule() -> None:
    """§8: the 2-of-first-6 rule is per dose level: one DLT at DL1 and one at DL2 is 1 at
    each."""
    facts = outcomes("DL1", [1, 0, 0]) + outcomes("DL2", [1, 0, 0], start_hours=200)
    findings = evaluate(facts)

    assert triggered(findings, "dlts_exceeding_mtd") == []


# ---------------------------------------------------------------- pending outcomes


def accrual(findings: dict[str, Finding], hours: float) -> list[str]:
    return [f.data["decision"] for f in of_type(findings, "dose.decision") if f.at == at(hours)]


def test_half_of_the_windows_open_does_not_suspend_accrual() -> None:
    """§8 pending outcomes (TITE-BOIN): suspend when MORE than half are open. A's window
    is 1 of 1 open (> 0.5: suspend); A closes (0 of 1: accrual resumes); B infused makes 1
    of 2 open, 0.5 is not > 0.5: no suspension."""
    facts = [
        opened("A", "DL1", 0),
        closed("A", "DL1", 24 * 28, dlt=False),
        opened("B", "DL1", 24 * 29),
    ]
    findings, doses = evaluate_trial(facts, BOIN)

    assert accrual(findings, 0) == ["suspend_accrual"]
    assert "suspend_accrual" not in accrual(findings, 24 * 28)
    assert accrual(findings, 24 * 29) == []
    assert not doses["DL1"].suspended


def test_two_of_three_windows_open_suspend_accrual_and_closing_one_resumes() -> None:
    """§8 pending outcomes: 2 of 3 open (0.67 > 0.5) → suspend_accrual; when one closes
    (1 of 3) a dose.decision that is not suspend_accrual resumes accrual."""
    head = [
        opened("A", "DL1", 0),
        closed("A", "DL1", 24 * 28, dlt=False),
        opened("B", "DL1", 24 * 29),
    ]
    suspended = [*head, opened("C", "DL1", 24 * 30)]
    findings, doses = evaluate_trial(suspended, BOIN)

    assert accrual(findings, 24 * 30) == ["suspend_accrual"]
    assert doses["DL1"].suspended
    assert doses["DL1"].summary()["open_windows"] == 2

    resumed = [*suspended, closed("B", "DL1", 24 * 57, dlt=False)]
    findings, doses = evaluate_trial(resumed, BOIN)

    after = accrual(findings, 24 * 57)
    assert after
    assert "suspend_accrual" not in after
    assert not doses["DL1"].suspended


# ---------------------------------------------------------------- committee decisions


def deviations(findings: dict[str, Finding]) -> list[Finding]:
    return of_type(findings, "protocol.deviation")


def test_committee_resumes_enrolment_after_a_pause_rule() -> None:
    """§8: rules recommend; enrolment is resumed by a recorded committee decision."""
    findings = evaluate([related_death("P1", "DL1", 10), committee("resume_enrollment", 20)])

    [resumed] = of_type(findings, "enrollment.resumed")
    assert resumed.at == at(20)
    assert resumed.participant_id == "-"
    assert "src" in resumed.data["by"]
    assert resumed.data["reason"] == "src minutes, resume_enrollment"


def test_infusion_while_enrolment_is_paused_is_a_protocol_deviation() -> None:
    """§8: a pause by the grade 5 rule holds until the committee resumes; an infusion in
    the meantime is a protocol.deviation of that participant."""
    findings = evaluate([related_death("P1", "DL1", 10), opened("P2", "DL1", 20)])

    [deviation] = deviations(findings)
    assert deviation.participant_id == "P2"
    assert deviation.dose_level == "DL1"
    assert deviation.at == at(20)


def test_infusion_while_the_committee_paused_enrolment_is_a_protocol_deviation() -> None:
    """§8: the DSMB paused enrolment; an infusion before it resumes is a deviation."""
    findings = evaluate([committee("pause_enrollment", 10, by="dsmb"), opened("P2", "DL1", 20)])

    [paused] = of_type(findings, "enrollment.paused")
    assert "dsmb" in paused.data["by"]
    assert [f.participant_id for f in deviations(findings)] == ["P2"]


def test_infusion_after_the_committee_resumed_enrolment_is_no_deviation() -> None:
    """§8: once the committee resumed enrolment, infusing is allowed again."""
    findings = evaluate(
        [
            related_death("P1", "DL1", 10),
            committee("resume_enrollment", 20),
            opened("P2", "DL1", 30),
        ]
    )

    assert deviations(findings) == []


def test_infusion_at_a_closed_dose_level_is_a_deviation_until_it_is_reopened() -> None:
    """§8: the committee opens and closes dose levels; an infusion at DL2 while it is
    closed is a deviation, at DL1 meanwhile or at DL2 after it reopened is not."""
    findings = evaluate(
        [
            committee("close_dose_level", 10, dose="DL2"),
            opened("P2", "DL2", 20),
            opened("P3", "DL1", 25),
            committee("open_dose_level", 30, dose="DL2"),
            opened("P4", "DL2", 40),
        ]
    )

    [deviation] = deviations(findings)
    assert deviation.participant_id == "P2"
    assert deviation.dose_level == "DL2"


def test_stopped_trial_is_paused_for_good() -> None:
    """§8: stop_trial pauses enrolment (trial_stopped); a later resume decision cannot
    resume a stopped trial, and an infusion after it is still a deviation."""
    findings = evaluate(
        [
            committee("stop_trial", 10, by="dsmb"),
            committee("resume_enrollment", 20),
            opened("P2", "DL1", 30),
        ]
    )

    [paused] = of_type(findings, "enrollment.paused")
    assert paused.data["trial_stopped"] is True
    assert of_type(findings, "enrollment.resumed") == []
    assert [f.participant_id for f in deviations(findings)] == ["P2"]


# ---------------------------------------------------------------- continuous rules

P0 = Fraction(3, 10)
CUTOFF = Fraction(9, 10)
THETA0 = Fraction(1, 5)
ALPHA = Fraction(1, 10)
POCOCK_MAX_N = 20
BAYES = BayesianStoppingRule(rule_id="bayes", p0=0.3, cutoff=0.9, scope="trial")
POCOCK = PocockStoppingRule(rule_id="pocock", theta0=0.2, alpha=0.1, max_n=POCOCK_MAX_N)
CONTINUOUS = ProtocolParameters(stopping_rules=(BAYES, POCOCK))


def posterior_exceeds(y: int, n: int, p0: Fraction = P0, a: int = 1, b: int = 1) -> Fraction:
    """P(p > p0 | y of n), prior Beta(a, b), integer parameters: for X ~ Beta(α, β),
    P(X > p0) = P(Bin(α + β − 1, p0) ≤ α − 1)."""
    alpha, beta = a + y, b + n - y
    m = alpha + beta - 1
    return sum((comb(m, k) * p0**k * (1 - p0) ** (m - k) for k in range(alpha)), start=Fraction(0))


def bayes_boundary(n: int, min_n: int = 3) -> int | None:
    """Smallest y whose posterior exceeds the cutoff, strictly (§8)."""
    if n < min_n:
        return None
    return next((y for y in range(n + 1) if posterior_exceeds(y, n) > CUTOFF), None)


def binomial_tail(b: int, n: int, theta: Fraction = THETA0) -> Fraction:
    return sum(
        (comb(n, k) * theta**k * (1 - theta) ** (n - k) for k in range(b, n + 1)),
        start=Fraction(0),
    )


def pocock_bounds_for(c: Fraction) -> tuple[int | None, ...]:
    return tuple(
        next((b for b in range(1, n + 1) if binomial_tail(b, n) <= c), None)
        for n in range(1, POCOCK_MAX_N + 1)
    )


def stop_probability(bounds: Sequence[int | None], theta: Fraction = THETA0) -> Fraction:
    alive = {0: Fraction(1)}
    stopped = Fraction(0)
    for bound in bounds:
        step: dict[int, Fraction] = {}
        for y, mass in alive.items():
            step[y] = step.get(y, Fraction(0)) + mass * (1 - theta)
            step[y + 1] = step.get(y + 1, Fraction(0)) + mass * theta
        if bound is not None:
            stopped += sum((m for y, m in step.items() if y >= bound), start=Fraction(0))
            step = {y: m for y, m in step.items() if y < bound}
        alive = step
    return stopped


@cache
def pocock_bounds() -> tuple[int | None, ...]:
    """§8 Pocock-type: the same c at every n, the largest with overall stopping
    probability under θ0 ≤ α (exact; c ranges over the binomial tails)."""
    candidates = sorted(
        {
            binomial_tail(b, n)
            for n in range(1, POCOCK_MAX_N + 1)
            for b in range(1, n + 1)
            if binomial_tail(b, n) < 1
        }
    )
    low, high = 0, len(candidates)  # the stopping probability does not decrease with c
    while low < high:
        middle = (low + high) // 2
        if stop_probability(pocock_bounds_for(candidates[middle])) <= ALPHA:
            low = middle + 1
        else:
            high = middle
    return pocock_bounds_for(candidates[low - 1])


def first_crossing(
    pattern: Sequence[int], boundary: Any, max_n: int = 10**6
) -> tuple[int, int] | None:
    y = 0
    for n, dlt in enumerate(pattern, start=1):
        y += dlt
        bound = boundary(n) if n <= max_n else None
        if bound is not None and y >= bound:
            return n, y
    return None


# Two doses alternating: the trial-scope rules count every evaluable participant.
PATTERN = [0, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1]


def trial_outcomes(pattern: Sequence[int]) -> list[Fact]:
    return [
        closed(f"P{i + 1:02d}", "DL1" if i % 2 == 0 else "DL2", 24 * i, dlt=bool(dlt))
        for i, dlt in enumerate(pattern)
    ]


def test_bayesian_boundaries_match_exact_beta_binomial_computation() -> None:
    """§8 Bayesian: stop if P(p > 0.3 | y, n) > 0.9 under Beta(1, 1), strict ">"."""
    rows = bayesian_table(p0=0.3, cutoff=0.9, a=1, b=1, min_n=3, max_n=42)

    assert [row.stop_if_y_ge for row in rows] == [bayes_boundary(n) for n in range(1, 43)]


def test_bayesian_rule_triggers_exactly_at_the_first_crossing_and_once() -> None:
    """§8 Bayesian (p0 = 0.3, c = 0.9): with this sequence the boundary is first crossed
    at n = 8, y = 4 (b₈ = 4: P(p > 0.3 | 4/8) = 0.9012 > 0.9; at n = 7, y = 3 < b₇ = 4).
    One DLT earlier (the first 7 outcomes) triggers nothing; later DLTs do not trigger
    it again."""
    expected = first_crossing(PATTERN, bayes_boundary)
    assert expected == (8, 4)
    n, y = expected
    facts = trial_outcomes(PATTERN)

    assert triggered(evaluate(facts[: n - 1], CONTINUOUS), "bayes") == []
    [rule] = triggered(evaluate(facts, CONTINUOUS), "bayes")
    assert (rule.data["n"], rule.data["y"]) == (n, y)
    assert rule.data["boundary"] == bayes_boundary(n)
    assert rule.data["scope"] == "trial"
    assert rule.data["statistic"] == pytest.approx(float(posterior_exceeds(y, n)), rel=1e-9)
    assert rule.caused_by == (facts[n - 1].key,)
    assert rule.dose_level is None


def test_bayesian_rule_is_not_triggered_by_the_same_n_with_one_dlt_fewer() -> None:
    """§8 Bayesian: at n = 8 with y = 3 the posterior P(p > 0.3 | 3/8) = 0.73 ≤ 0.9."""
    pattern = [*PATTERN[:7], 0]
    assert first_crossing(pattern, bayes_boundary) is None

    assert triggered(evaluate(trial_outcomes(pattern), CONTINUOUS), "bayes") == []


def test_pocock_rule_triggers_exactly_at_the_first_crossing_and_once() -> None:
    """§8 Pocock-type (θ0 = 0.2, α = 0.1, N = 20): stop as soon as y ≥ bₙ; the exact
    boundaries give b₈ = b₉ = 5, so the sequence first crosses at n = 9, y = 5 (at n = 8,
    y = 4 < 5); later DLTs do not trigger it again."""
    bounds = pocock_bounds()
    expected = first_crossing(PATTERN, lambda n: bounds[n - 1], POCOCK_MAX_N)
    assert expected == (9, 5)
    n, y = expected
    facts = trial_outcomes(PATTERN)

    assert triggered(evaluate(facts[: n - 1], CONTINUOUS), "pocock") == []
    [rule] = triggered(evaluate(facts, CONTINUOUS), "pocock")
    assert (rule.data["n"], rule.data["y"]) == (n, y)
    assert rule.data["boundary"] == bounds[n - 1]
    assert rule.data["statistic"] == pytest.approx(float(binomial_tail(y, n)), rel=1e-9)
    assert rule.caused_by == (facts[n - 1].key,)


def test_pocock_rule_is_not_triggered_by_the_same_n_with_one_dlt_fewer() -> None:
    """§8 Pocock-type: at n = 9 with y = 4 < b₉ = 5 there is no stop."""
    pattern = [*PATTERN[:8], 0]
    bounds = pocock_bounds()
    assert first_crossing(pattern, lambda n: bounds[n - 1], POCOCK_MAX_N) is None

    assert triggered(evaluate(trial_outcomes(pattern), CONTINUOUS), "pocock") == []


# ---------------------------------------------------------------- determinism


def rich_history() -> list[Fact]:
    """Two doses, pending windows, a grade 4 CRS, a committee resume, a closed and
    reopened dose level, infusions while paused: every clinical time distinct."""
    facts: list[Fact] = []
    for i, dlt in enumerate([0, 0, 1, 0, 1, 1]):
        pid, dose = f"A{i}", "DL1" if i < 3 else "DL2"
        facts.append(opened(pid, dose, 10 * i))
        facts.append(closed(pid, dose, 10 * i + 672 + i, dlt=bool(dlt)))
    facts += [
        grade4("A4", "DL2", 700.5),
        opened("B1", "DL2", 701),
        committee("resume_enrollment", 720),
        committee("close_dose_level", 730, dose="DL2"),
        opened("B2", "DL2", 740),
        committee("open_dose_level", 750, dose="DL2"),
        related_death("A5", "DL2", 760),
        closed("B1", "DL2", 1373, dlt=False),
    ]
    return facts


def test_the_same_facts_in_any_order_give_the_same_findings() -> None:
    """Determinism (trial.py; the live monitor reads several partitions): the findings
    are a function of the facts swept in clinical time order, not of arrival order."""
    facts = rich_history()
    assert len({f.at for f in facts}) == len(facts)
    protocol = ProtocolParameters(stopping_rules=(BAYES, POCOCK))
    expected, expected_doses = evaluate_trial(facts, protocol)
    assert expected

    for seed in range(8):
        shuffled = list(facts)
        random.Random(seed).shuffle(shuffled)
        findings, doses = evaluate_trial(shuffled, protocol)
        assert findings == expected, seed
        assert {d: t.summary() for d, t in doses.items()} == {
            d: t.summary() for d, t in expected_doses.items()
        }


# ---------------------------------------------------------------- Trial aggregate


def safety_events(trial: Trial) -> list[TrialSafetyEvent]:
    return [e for e in trial.collect_events() if isinstance(e, TrialSafetyEvent)]


def test_trial_observes_each_fact_once() -> None:
    """Contract §1: a repeated key is ignored, whatever it carries."""
    trial = Trial.open(TRIAL_ID)
    first = closed("P1", "DL1", 100, dlt=False)
    again = closed("P1", "DL1", 200, dlt=True)

    assert trial.observe(first) is True
    assert trial.observe(again) is False
    assert trial.facts == [first]


def test_trial_publishes_only_new_or_changed_findings() -> None:
    """A second evaluation of the same facts publishes nothing; a new outcome publishes
    only what it adds (its decision; the selected MTD dose is unchanged)."""
    trial = Trial.open(TRIAL_ID)
    p1, p2 = outcomes("DL1", [0, 0])
    trial.observe(p1)
    trial.evaluate(BOIN)
    assert {e.to_contract().type for e in safety_events(trial)} == {
        "dose.decision",
        "mtd.estimated",
    }

    trial.evaluate(BOIN)
    assert safety_events(trial) == []

    trial.observe(p2)
    trial.evaluate(BOIN)
    new = safety_events(trial)
    # The MTD is still DL1: only the new decision.
    assert sorted(e.to_contract().type for e in new) == ["dose.decision"]
    assert all(e.caused_by == [p2.key] for e in new)
    assert all("revises" not in e.data for e in new)


def test_overturned_dlt_republishes_the_changed_decision_as_a_revision() -> None:
    """§7: the committee can overturn a DLT; the participant's window then re-closes
    without a DLT, and the latest closure counts. The decision for that outcome changes
    (1/1 de-escalate → 0/1 escalate, §8) and is published again with revises = true."""
    trial = Trial.open(TRIAL_ID)
    trial.observe(closed("P1", "DL1", 100, dlt=True, key="close-P1-dlt"))
    trial.evaluate(BOIN)
    [before] = [e for e in safety_events(trial) if e.to_contract().type == "dose.decision"]
    assert before.data["decision"] == "de_escalate"

    trial.observe(closed("P1", "DL1", 24 * 28, dlt=False, key="close-P1-overturned"))
    trial.evaluate(BOIN)
    [after] = [e for e in safety_events(trial) if e.to_contract().type == "dose.decision"]

    assert after.data["key"] == before.data["key"]
    assert after.data["decision"] == "escalate"
    assert (after.data["n"], after.data["y"]) == (1, 0)
    assert after.data["revises"] is True


def test_trial_events_have_contract_types_and_trial_level_participant() -> None:
    """Contract §3: trial-level events carry participant_id "-" and the trial id; the
    event id is deterministic (aggregate id and version)."""
    trial = Trial.open(TRIAL_ID)
    for fact in [
        *outcomes("DL1", [0, 1, 1]),
        related_death("DL1-02", "DL1", 100),
        committee("resume_enrollment", 120),
    ]:
        trial.observe(fact)
    trial.evaluate(BOIN)
    contract = [e.to_contract() for e in safety_events(trial)]

    assert {e.type for e in contract} == {
        "dose.decision",
        "mtd.estimated",
        "stopping_rule.triggered",
        "enrollment.paused",
        "enrollment.resumed",
    }
    assert {e.type for e in contract} <= TRIAL_EVENT_TYPES
    assert all(e.trial_id == TRIAL_ID and e.participant_id == "-" for e in contract)
    assert len({e.event_id for e in contract}) == len(contract)
    assert all(e.to_wire()["schema"] == "toxwatch.safety.v1" for e in contract)


def test_published_deviation_names_the_infused_participant() -> None:
    """Contract §3: a protocol.deviation is the participant's (participant_id = who was
    infused while enrolment was paused, §8)."""
    trial = Trial.open(TRIAL_ID)
    trial.observe(committee("pause_enrollment", 10))
    trial.observe(opened("P7", "DL1", 20))
    trial.evaluate(BOIN)
    [deviation] = [
        e.to_contract()
        for e in safety_events(trial)
        if e.to_contract().type == "protocol.deviation"
    ]

    assert deviation.participant_id == "P7"
    assert deviation.dose_level == "DL1"


def test_dose_level_aggregate_records_a_tally_only_when_it_changes() -> None:
    """The DSMB's per-dose view: a new tally is recorded only when a count changes."""
    dose = DoseLevel.open(TRIAL_ID, "DL1")
    tally = tallies(outcomes("DL1", [0, 1]))["DL1"]
    dose.update(tally)
    dose.update(tally)
    recorded = [e for e in dose.collect_events() if isinstance(e, DoseLevel.Tallied)]

    assert len(recorded) == 1
    assert dose.tally["evaluable"] == 2
    assert dose.tally["dlts"] == 1
