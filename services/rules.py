"""``toxwatch rules boundaries``: each configured rule's full decision table as CSV,
so a statistician can check it against the protocol (reference §8)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import TextIO

from domain.designs import bayesian_table, boin_table, pocock_design, three_plus_three_decision
from domain.protocol import (
    BayesianStoppingRule,
    BOINDesign,
    PocockStoppingRule,
    ProtocolParameters,
    ThreePlusThreeDesign,
)

Table = tuple[list[str], list[str], list[list[object]]]  # comments, header, rows


def _na(value: object) -> object:
    return "NA" if value is None else value


def boin_rows(design: BOINDesign, max_n: int) -> Table:
    table = boin_table(
        target=design.target,
        phi1=design.target * design.phi1_ratio,
        phi2=design.target * design.phi2_ratio,
        cutoff=design.elimination_cutoff,
        max_n=max_n,
    )
    comments = [
        f"BOIN target={table.target:g} phi1={table.phi1:g} phi2={table.phi2:g} "
        f"lambda_e={table.lambda_e:.6f} lambda_d={table.lambda_d:.6f}",
        f"eliminate: n>=3 and P(p>{table.target:g}|y,n)>{design.elimination_cutoff:g} "
        "(Beta(1,1) prior); NA = cannot happen at this n",
    ]
    rows: list[list[object]] = [
        [r.n, _na(r.escalate_if_y_le), _na(r.deescalate_if_y_ge), _na(r.eliminate_if_y_ge)]
        for r in table.rows
    ]
    return comments, ["n", "escalate_if_y_le", "deescalate_if_y_ge", "eliminate_if_y_ge"], rows


def three_plus_three_rows() -> Table:
    rows: list[list[object]] = [
        [n, y, three_plus_three_decision(y, n)] for n in (3, 6) for y in range(n + 1)
    ]
    return ["3+3 (reference §8)"], ["n", "y", "decision"], rows


def bayesian_rows(rule: BayesianStoppingRule) -> Table:
    table = bayesian_table(
        p0=rule.p0,
        cutoff=rule.cutoff,
        a=rule.prior_a,
        b=rule.prior_b,
        min_n=rule.min_evaluable,
        max_n=rule.max_n,
    )
    comments = [
        f"{rule.rule_id}: Bayesian beta-binomial, scope {rule.scope}: stop if "
        f"P(p>{rule.p0:g}|y,n) > {rule.cutoff:g}, prior Beta({rule.prior_a:g},{rule.prior_b:g}), "
        f"from n={rule.min_evaluable}"
    ]
    rows: list[list[object]] = [
        [
            r.n,
            _na(r.stop_if_y_ge),
            _na(None if r.statistic_at_boundary is None else f"{r.statistic_at_boundary:.8f}"),
        ]
        for r in table
    ]
    return comments, ["n", "stop_if_y_ge", "posterior_at_boundary"], rows


def pocock_rows(rule: PocockStoppingRule) -> Table:
    design = pocock_design(rule.theta0, rule.alpha, rule.max_n)
    comments = [
        f"{rule.rule_id}: Pocock-type, scope {rule.scope}: stop if y >= b_n, b_n = smallest b "
        f"with P(Bin(n,{rule.theta0:g})>=b) <= c",
        f"c={design.c:.10g}; overall stopping probability under theta0="
        f"{design.stopping_probability:.6f} (alpha={rule.alpha:g}, N={rule.max_n})",
    ]
    rows: list[list[object]] = [
        [
            r.n,
            _na(r.stop_if_y_ge),
            _na(None if r.statistic_at_boundary is None else f"{r.statistic_at_boundary:.8f}"),
        ]
        for r in design.rows()
    ]
    return comments, ["n", "stop_if_y_ge", "tail_probability_at_boundary"], rows


def protocol_tables(protocol: ProtocolParameters, max_n: int) -> Iterator[Table]:
    """The escalation design's table and one per stopping rule, then the fixed rules."""
    design = protocol.escalation
    if isinstance(design, BOINDesign):
        yield boin_rows(design, max_n)
    elif isinstance(design, ThreePlusThreeDesign):
        yield three_plus_three_rows()
    for rule in protocol.stopping_rules:
        yield bayesian_rows(rule) if isinstance(rule, BayesianStoppingRule) else pocock_rows(rule)
    pause = protocol.pause_rules
    y, n = pause.dlts_exceeding_mtd
    yield (
        ["fixed pause rules (reference §8)"],
        ["rule", "value"],
        [
            ["related_grade5_pauses", pause.related_grade5_pauses],
            ["grade4_crs_or_icans_pauses", pause.grade4_crs_or_icans_pauses],
            ["dlts_exceeding_mtd", f">= {y} DLTs among the first {n} evaluable at a dose"],
            ["suspend_when_pending_fraction_over", pause.suspend_when_pending_fraction_over],
        ],
    )


def write_tables(tables: Iterator[Table], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    for index, (comments, header, rows) in enumerate(tables):
        if index:
            out.write("\n")
        for comment in comments:
            out.write(f"# {comment}\n")
        writer.writerow(header)
        writer.writerows(rows)
