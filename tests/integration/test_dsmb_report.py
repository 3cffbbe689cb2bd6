"""``toxwatch report dsmb --as-of T`` (issue 6): the HTML packet of a fixed store and
as_of is byte-stable apart from its generation line; a packet for a past moment stays
the same after more data arrives; the PDF renders and its DLT table says what the
projection says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.settings import Settings
from projections.dsmb import DSMBReport
from services.bootstrap import build_application
from services.offline import process_lines
from services.report import build_report, chromium_binary
from services.simulator import CohortSpec, simulate_cohort

pytestmark = pytest.mark.slow
TRIAL = "NCT07049081"
GENERATED = re.compile(r'^<p class="meta generated">.*$', re.MULTILINE)


def late_death() -> bytes:
    return json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": "late-death-1",
            "type": "death.reported",
            "trial_id": TRIAL,
            "site_id": "CN-001",
            "participant_id": "G79-004",
            "occurred_at": "2025-03-20T10:00:00+08:00",
            "data": {"cause": "Pneumonia", "attributed_to": "infection", "related": "unlikely"},
        }
    ).encode()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, datetime]:
    """A SQLite store with a simulated cohort, then (later) one back-charted death."""
    folder = tmp_path_factory.mktemp("store")
    settings = Settings(store="sqlite", data_dir=folder)
    app = build_application(settings)
    lines = [m.value for m in simulate_cohort(CohortSpec(participants=9, follow_up_days=60))]
    now = datetime(2026, 9, 1, tzinfo=UTC)
    process_lines(lines, _sink(), app=app, now=now)
    time.sleep(0.05)
    between = datetime.now(UTC)
    time.sleep(0.05)
    process_lines([*lines, late_death()], _sink(), app=app, now=now)  # offsets continue
    app.close()
    return settings, between


def _sink():  # type: ignore[no-untyped-def]
    import io

    return io.StringIO()


def report_command(settings: Settings, out: Path, *args: str) -> list[Path]:
    env = os.environ | {"TOXWATCH_STORE": "sqlite", "TOXWATCH_DATA_DIR": str(settings.data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "report", "dsmb", "--out", str(out), *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [Path(line) for line in done.stdout.split()]


def test_the_html_packet_is_byte_stable_apart_from_its_generation_line(store, tmp_path):
    settings, between = store
    first = report_command(settings, tmp_path / "a", "--as-of", between.isoformat(), "--no-pdf")
    second = report_command(settings, tmp_path / "b", "--as-of", between.isoformat(), "--no-pdf")
    one, two = first[0].read_text(), second[0].read_text()
    assert (GENERATED.search(one) and one != two) or one == two  # generated to the second
    assert GENERATED.sub("", one) == GENERATED.sub("", two)


def test_a_packet_for_a_past_moment_leaves_out_what_was_recorded_later(store, tmp_path):
    # As recorded: the death back-charted after ``between`` is not in that packet.
    settings, between = store
    [before] = report_command(settings, tmp_path / "a", "--as-of", between.isoformat(), "--no-pdf")
    [latest] = report_command(settings, tmp_path / "b", "--no-pdf")
    assert "Pneumonia" not in before.read_text()
    assert "Pneumonia" in latest.read_text()


def test_the_pdf_renders_and_its_dlt_table_matches_the_projection(store, tmp_path):
    if chromium_binary() is None or not _has("pdftoppm") or not _has("pdftotext"):
        pytest.skip("needs chromium and poppler-utils (scripts/ensure-report-tools)")
    settings, _ = store
    _html, pdf = report_command(settings, tmp_path)
    pages = subprocess.run(
        ["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert pages.returncode == 0
    images = sorted(tmp_path.glob("page*.png"))
    assert len(images) >= 3
    assert all(image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    app = build_application(settings)
    try:
        report: DSMBReport = build_report(app, trial_id=TRIAL, as_of=None)
    finally:
        app.close()
    lines = text.splitlines()
    for row in report.dlt_table:
        # One line of the PDF's DLT table: dose level, infused, evaluable, DLTs.
        pattern = re.compile(
            rf"^\s*{row.dose_level}\s+{row.infused}\s+{row.evaluable}\s+{row.dlts}\s+"
        )
        assert any(pattern.search(line) for line in lines), (row, text[:3000])
    for death in report.death_listing:
        assert death.participant_id in text and death.cause in text


def _has(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None
