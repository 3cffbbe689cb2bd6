"""The shipped protocol file is valid and states the reference's template values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from domain.protocol import ProtocolParameters
from services.bootstrap import load_protocol

SHIPPED = Path(__file__).resolve().parents[2] / "protocols" / "lucar-g79.toml"


def test_shipped_protocol_validates_with_the_reference_templates():
    protocol = load_protocol(SHIPPED)
    assert protocol.trial_id == "NCT07049081"
    assert protocol.ctcae_version == "5.0"  # reference §0.2 default
    assert protocol.crs.low_flow_max_l_min == 6.0  # ASTCT 2019: <= 6 L/min is low flow
    assert protocol.crs.resolution_hours == 24.0  # reference §1 default resolution
    assert protocol.dlt.window_days == 28  # reference §7 template
    assert protocol.dlt.crs_grade3_max_hours == 72.0
    assert protocol.pre_infusion.afebrile_hours_before_infusion == 48.0
    assert protocol.escalation.design == "BOIN"
    assert [d.id for d in protocol.dose_levels] == ["DL1", "DL2", "DL3"]


def test_protocol_check_rejects_an_unknown_parameter(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('version = "x"\n[crs]\nfever_threshold = 38\n')
    completed = subprocess.run(
        [sys.executable, "-m", "services.cli", "protocol", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 1
    assert "crs.fever_threshold" in completed.stderr


def test_defaults_equal_the_shipped_file_where_it_is_silent():
    assert ProtocolParameters().crs == load_protocol(SHIPPED).crs
