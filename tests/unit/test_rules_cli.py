"""``toxwatch rules boundaries`` (issue 4): the decision tables a statistician checks
against the protocol, as CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from typer.testing import CliRunner

from services.cli import app

PROTOCOL = Path(__file__).resolve().parents[2] / "protocols" / "lucar-g79.toml"
#: ../shared/clinical/data/boin-phi0.30.csv (CRAN BOIN get.boundary), n = 1..18.
BOIN_030 = [
    (1, "0", "1", "NA"), (2, "0", "1", "NA"), (3, "0", "2", "3"), (4, "0", "2", "3"),
    (5, "1", "2", "4"), (6, "1", "3", "4"), (7, "1", "3", "5"), (8, "1", "3", "5"),
    (9, "2", "4", "5"), (10, "2", "4", "6"), (11, "2", "4", "6"), (12, "2", "5", "7"),
    (13, "3", "5", "7"), (14, "3", "6", "8"), (15, "3", "6", "8"), (16, "3", "6", "8"),
    (17, "4", "7", "9"), (18, "4", "7", "9"),
]  # fmt: skip


def _tables(output: str) -> list[list[list[str]]]:
    """The CSV tables of the output (comment lines dropped), split at blank lines."""
    tables = []
    for block in output.strip().split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith("#")]
        tables.append(list(csv.reader(io.StringIO("\n".join(lines)))))
    return tables


def test_boin_design_table_without_a_protocol_equals_the_published_table():
    result = CliRunner().invoke(app, ["rules", "boundaries", "--design", "boin", "--target", "0.3"])
    assert result.exit_code == 0, result.output
    [table] = _tables(result.output)
    assert table[0] == ["n", "escalate_if_y_le", "deescalate_if_y_ge", "eliminate_if_y_ge"]
    assert [tuple([int(r[0]), *r[1:]]) for r in table[1:]] == BOIN_030
    assert "lambda_e=0.236491 lambda_d=0.358519" in result.output


def test_protocol_file_prints_the_design_every_stopping_rule_and_the_fixed_rules():
    result = CliRunner().invoke(app, ["rules", "boundaries", "--protocol", str(PROTOCOL)])
    assert result.exit_code == 0, result.output
    tables = _tables(result.output)
    # BOIN, the Bayesian and the Pocock-type rule of the protocol file, the fixed rules.
    assert len(tables) == 4
    assert "trial_dlt_rate_bayes" in result.output and "trial_dlt_rate_pocock" in result.output
    assert "overall stopping probability under theta0=" in result.output
    assert len(tables[1]) == 1 + 42 and len(tables[2]) == 1 + 42  # n = 1..42


def test_an_unknown_design_is_a_clear_error():
    result = CliRunner().invoke(app, ["rules", "boundaries", "--design", "crm"])
    assert result.exit_code == 2
