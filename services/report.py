"""``toxwatch report dsmb --as-of T``: the DSMB open-session safety packet.

The packet is rendered from :func:`projections.dsmb.dsmb_data` over the event store's
log as recorded up to ``as_of`` (all of it without), so a packet for a past moment is
reproducible: the same store and ``as_of`` give the same HTML, byte for byte, except
the one line that says when it was generated. Charts are inline SVG
(``services.charts``); the HTML fetches nothing. The PDF is printed from that HTML by
headless Chromium.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from projections.dsmb import DSMBReport, dsmb_data
from services.application import SafetyMonitoring
from services.charts import GRADE_COLOURS, SwimmerLane, bar_chart, line_chart, swimmer
from services.dashboard import planned_enrolment

TEMPLATES = Path(__file__).with_name("templates")


def build_report(app: SafetyMonitoring, *, trial_id: str, as_of: datetime | None) -> DSMBReport:
    """The packet's data from the whole log, as recorded up to ``as_of``."""
    protocol = app.trial_protocol(trial_id)
    notifications = app.recorder.select_notifications(
        start=0, limit=2**62, inclusive_of_start=False
    )
    events = ((n.id, app.mapper.to_domain_event(n)) for n in notifications)
    return dsmb_data(
        events,
        trial_id=trial_id,
        as_of=as_of,
        planned_enrolment=planned_enrolment(protocol)[0],
        dose_levels=[level.id for level in protocol.dose_levels],
    )


def charts(report: DSMBReport) -> dict[str, Markup]:
    """The packet's figures, as inline SVG."""
    data = report.to_dict()
    figures: dict[str, Markup] = {}
    for name, rows in (("crs", data["crs_summary"]), ("icans", data["icans_summary"])):
        figures[f"{name}_grades"] = Markup(
            bar_chart(
                [row["dose_level"] for row in rows],
                {f"grade {g}": [row["by_max_grade"][g] for row in rows] for g in range(1, 6)},
                title=f"{name.upper()}: participants by highest grade, by dose level",
                y_label="participants",
                colours=GRADE_COLOURS[1:],
            )
        )
    lanes = [
        SwimmerLane(
            label=row["participant_id"],
            group=row["dose_level"],
            end_day=row["end_day"],
            episodes=tuple(
                (e["kind"], e["start_day"], e["end_day"], e["max_grade"]) for e in row["episodes"]
            ),
            markers=tuple((m["kind"], m["day"]) for m in row["markers"]),
        )
        for row in data["swimmer"]
    ]
    figures["swimmer"] = Markup(swimmer(lanes, title="Swimmer plot: days since infusion"))
    for analyte in ("transgene_copies_per_ug_gdna", "car_t_cells_per_ul"):
        series = {
            f"{row['dose_level']} {row['participant_id']}": [tuple(p) for p in row["profile"]]
            for row in data["kinetics"]
            if row["analyte"] == analyte and row["profile"]
        }
        if series:
            figures[f"kinetics_{analyte}"] = Markup(
                line_chart(
                    series,
                    title=f"Cellular kinetics: {analyte.replace('_', ' ')} (log scale)",
                    x_label="days since infusion",
                    log_y=True,
                )
            )
    anc = {
        f"{row['dose_level']} {row['participant_id']}": [tuple(p) for p in row["anc"]]
        for row in data["cytopenia"]
        if row["anc"]
    }
    if anc:
        figures["anc"] = Markup(
            line_chart(anc, title="ANC (10^9/L) by day since infusion", x_label="days")
        )
    return figures


def render_html(report: DSMBReport, *, generated_at: datetime) -> str:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    template = environment.get_template("report/dsmb.html")
    return template.render(
        r=report.to_dict(),
        figures=charts(report),
        generated_at=generated_at.astimezone(UTC).isoformat(timespec="seconds"),
        fmt=_fmt,
    )


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def print_pdf(html_path: Path, pdf_path: Path, *, timeout_s: float = 120.0) -> None:
    """Print the HTML file to PDF with headless Chromium (no network: a local file)."""
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError("no Chromium to print the PDF with (Debian package chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--no-pdf-header-footer",
                f"--print-to-pdf={pdf_path}",
                html_path.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )


def write_packet(
    app: SafetyMonitoring,
    *,
    trial_id: str,
    as_of: datetime | None,
    out_dir: Path,
    pdf: bool = True,
    generated_at: datetime | None = None,
) -> tuple[Path, Path | None]:
    """Write ``dsmb-<trial>-<as_of>.html`` (and ``.pdf``) into ``out_dir``."""
    report = build_report(app, trial_id=trial_id, as_of=as_of)
    stamp = as_of.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") if as_of else "latest"
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / f"dsmb-{trial_id}-{stamp}.html"
    html_path.write_text(
        render_html(report, generated_at=generated_at or datetime.now(UTC)), encoding="utf-8"
    )
    pdf_path = None
    if pdf:
        pdf_path = html_path.with_suffix(".pdf")
        print_pdf(html_path, pdf_path)
    return html_path, pdf_path
