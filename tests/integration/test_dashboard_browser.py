"""The dashboard in a real browser: headless Chromium, driven over the DevTools
protocol (``services.screenshots``), against the API served by uvicorn on 127.0.0.1.

The store holds a simulated cohort (nine participants at three sites, a DLT-heavy DL3,
40 days of follow-up). Each page is rendered with a dsmb token and checked against
the DSMB report computed independently (``projections.dsmb.dsmb_data`` over the whole
log); access is checked per role; the browser's NetLog shows that nothing left
127.0.0.1.
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from projections.dsmb import DSMBReport, dsmb_data
from services import dashboard, screenshots
from services.api import create_app
from services.application import SafetyMonitoring
from services.auth import Authenticator
from services.dashboard import dashboard_router
from services.offline import in_memory_application, process_lines
from services.screenshots import PNG_MAGIC, Browser, Page, PageNotShown, take_screenshots
from services.simulator import CohortSpec, simulate_cohort
from services.tokens import TokenService

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(screenshots.CHROMIUM).exists(), reason=f"no Chromium at {screenshots.CHROMIUM}"
    ),
]

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
TRIAL = "NCT07049081"
OWN_SITE = "CN-001"
DOSE_LEVELS = ("DL1", "DL2", "DL3")
HEADINGS = {
    "/dashboard": "Trial overview",
    "/dashboard/safety": "CRS and ICANS by dose level and disease",
    "/dashboard/swimmer": "Swimmer plot",
    "/dashboard/cytopenia": "Cytopenia: ANC and ICAHT",
    "/dashboard/kinetics": "Cellular kinetics",
    "/dashboard/disease": "Disease activity",
    "/dashboard/alerts": "Alerts",
    "/dashboard/optimal-dose": "Optimal dose",
}
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


# ---------------------------------------------------------------- the served app


@dataclass
class Served:
    app: SafetyMonitoring
    api: FastAPI
    base_url: str
    tokens: dict[str, str]
    report: DSMBReport
    sites: dict[str, str]  # participant -> site

    def url(self, path: str) -> str:
        return self.base_url + path


def expected_report(app: SafetyMonitoring) -> DSMBReport:
    """The DSMB report over the whole log, by ``dsmb_data`` (not the dashboard's fold)."""
    events = []
    after = 0
    while notifications := app.recorder.select_notifications(
        start=after, limit=1000, inclusive_of_start=False
    ):
        events.extend((n.id, app.mapper.to_domain_event(n)) for n in notifications)
        after = notifications[-1].id
    return dsmb_data(
        events, trial_id=TRIAL, as_of=None, planned_enrolment=42, dose_levels=DOSE_LEVELS
    )


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    app = in_memory_application()
    spec = CohortSpec(participants=9, follow_up_days=40, dlt_heavy_dose="DL3")
    process_lines([m.value for m in simulate_cohort(spec)], io.StringIO(), app=app, now=NOW)

    def clock() -> datetime:
        return NOW

    api = create_app(app, follow=False, clock=clock)
    if not any(getattr(route, "path", "").startswith("/dashboard") for route in api.routes):
        auth = Authenticator(TokenService(app), clock)
        api.include_router(dashboard_router(app, api.state.read_models, auth, clock))
    tokens = {}
    for role in ("dsmb", "monitor", "auditor", "site", "admin"):
        issued = TokenService(app).create(
            role,  # type: ignore[arg-type]
            name=f"{role} reviewer",
            site_id=OWN_SITE if role == "site" else None,
            expires_at=None,
            created_by="test",
            reason="dashboard browser test",
            now=NOW - timedelta(days=1),
        )
        tokens[role] = issued.token
    views = api.state.read_models
    views.refresh()
    sites = {pid: site for (trial, pid), site in views.participants.items() if trial == TRIAL}

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Served(app, api, f"http://127.0.0.1:{port}", tokens, expected_report(app), sites)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    tab = browser.new_page()
    tab.clear_cookies()
    yield tab
    tab.close()


def signed_in(page: Page, served: Served, role: str) -> Page:
    page.set_cookie(served.base_url, served.tokens[role])
    return page


# ---------------------------------------------------------------- reading HTML


class Document(HTMLParser):
    """The headings, tables (caption and rows of cell texts) and forms of a page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.h1 = ""
        self.tables: list[dict[str, Any]] = []
        self.forms: list[dict[str, Any]] = []
        self.links: list[str] = []
        self._stack: list[str] = []
        self._cell: list[str] | None = None
        self._caption: list[str] | None = None
        self._in_h1 = False
        self._in_svg = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "svg":
            self._in_svg += 1
        if self._in_svg:
            return
        if tag == "h1":
            self._in_h1 = True
        elif tag == "table":
            self.tables.append({"caption": "", "rows": [], "row_attrs": []})
        elif tag == "caption":
            self._caption = []
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
            self.tables[-1]["row_attrs"].append(attributes)
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "form":
            self.forms.append({"action": attributes.get("action"), "inputs": []})
        elif tag == "input" and self.forms:
            self.forms[-1]["inputs"].append(attributes)
        elif tag == "a" and attributes.get("href"):
            self.links.append(str(attributes["href"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._in_svg -= 1
        if self._in_svg:
            return
        if tag == "h1":
            self._in_h1 = False
        elif tag == "caption" and self._caption is not None:
            self.tables[-1]["caption"] = " ".join("".join(self._caption).split())
            self._caption = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in_svg:
            return
        if self._in_h1:
            self.h1 += data.strip()
        if self._cell is not None:
            self._cell.append(data)
        if self._caption is not None:
            self._caption.append(data)

    def table(self, caption_start: str) -> list[list[str]]:
        """The body rows of the first table whose caption starts so."""
        for table in self.tables:
            if table["caption"].startswith(caption_start):
                return [row for row in table["rows"][1:] if row]
        raise AssertionError(f"no table captioned {caption_start!r}: "
                             f"{[t['caption'] for t in self.tables]}")  # fmt: skip


def svgs(html: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", html, flags=re.S)


def svg_texts(svg: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", text) for text in re.findall(r"<text\b[^>]*>(.*?)</text>", svg)]


def show(page: Page, served: Served, path: str) -> tuple[screenshots.Shown, Document]:
    shown = page.show(served.url(path))
    return shown, Document(shown.html)


def text_of(html: str) -> str:
    """The page's text, tags dropped and white space collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def as_number(text: str) -> float:
    return float(text.replace(",", "").replace("%", "").strip())


# ---------------------------------------------------------------- pages


def test_every_page_has_its_heading_the_as_of_time_and_the_nav_bar(served, page):
    signed_in(page, served, "dsmb")
    for path, heading in HEADINGS.items():
        shown, document = show(page, served, path)
        assert shown.status == 200, path
        assert document.h1 == heading, path
        assert "as of 2026-06-01 09:00:00 UTC" in text_of(shown.html), path
        nav = [link for link in document.links if link in HEADINGS]
        assert set(nav) == set(HEADINGS), path


def test_the_overview_lists_each_dose_level_with_its_tally_decision_and_boundaries(served, page):
    shown, document = show(signed_in(page, served, "dsmb"), served, "/dashboard")
    rows = {row[0]: row for row in document.table("Infused, evaluable and DLTs per dose level")}
    assert list(rows) == list(DOSE_LEVELS)
    for expected in served.report.dlt_table:
        row = rows[expected.dose_level]
        infused, evaluable, dlts, open_windows = (int(cell) for cell in row[2:6])
        assert (infused, evaluable, dlts, open_windows) == (
            expected.infused, expected.evaluable, expected.dlts, expected.open_windows
        )  # fmt: skip
        assert expected.decision is not None
        assert row[6].startswith(expected.decision.decision.replace("_", " "))
    # BOIN target 0.30 (reference §8): at n = 3 escalate if y <= 0, de-escalate if
    # y >= 2, eliminate if y >= 3 (CRAN BOIN get.boundary).
    assert rows["DL3"][7:10] == ["0", "2", "3"]
    assert "eliminated" in rows["DL3"][10]
    status = served.report.study_status
    assert f"{status.enrolled} enrolled of 42 planned" in text_of(shown.html)
    assert "registry record NCT07049081" in shown.html
    assert "Enrolment open" in shown.html
    triggered = document.table("Stopping rules triggered")
    assert {row[0] for row in triggered} == {rule.rule_id for rule in status.stopping_rules}


def test_the_safety_page_stacks_crs_and_icans_grades_by_dose_level_and_disease(served, page):
    shown, document = show(signed_in(page, served, "dsmb"), served, "/dashboard/safety")
    charts = svgs(shown.html)
    assert len(charts) == 2
    assert "CRS: highest grade per participant" in charts[0]
    assert "ICANS: highest grade per participant" in charts[1]
    for kind, summary in (("CRS", served.report.crs_summary),
                          ("ICANS", served.report.icans_summary)):  # fmt: skip
        cells = document.table(f"{kind}: participants by highest grade, per dose level and disease")
        assert sum(int(row[2]) for row in cells) == 9
        for expected in summary:
            by_grade = [0] * 6
            for row in cells:
                if row[0] == expected.dose_level:
                    by_grade = [a + int(b) for a, b in zip(by_grade, row[3:9], strict=True)]
            assert tuple(by_grade) == expected.by_max_grade, (kind, expected.dose_level)


def test_the_swimmer_plot_has_one_lane_per_infused_participant(served, page):
    shown, document = show(signed_in(page, served, "dsmb"), served, "/dashboard/swimmer")
    (chart,) = svgs(shown.html)
    lanes = [t for t in svg_texts(chart) if re.fullmatch(r"DL\d \S+", t)]
    expected = [f"{row.dose_level} {row.participant_id}" for row in served.report.swimmer]
    assert lanes == expected
    assert len(lanes) == 9
    assert chart.count('fill="#f2f2f2"') == 9
    listed = [row[0] for row in document.table("Lanes")]
    assert listed == [row.participant_id for row in served.report.swimmer]
    markers = [t for t in svg_texts(chart) if t in ("D", "S", "†", "W")]
    assert len(markers) == sum(len(row.markers) for row in served.report.swimmer)


def test_the_cytopenia_page_plots_anc_per_dose_level_and_lists_nadirs(served, page):
    shown, document = show(signed_in(page, served, "dsmb"), served, "/dashboard/cytopenia")
    assert len(svgs(shown.html)) == len(DOSE_LEVELS)
    rows = {row[0]: row for row in document.table("ANC nadir, recovery and ICAHT grades")}
    for expected in served.report.cytopenia:
        row = rows[expected.participant_id]
        assert int(row[2]) == len(expected.anc)
        assert as_number(row[3]) == pytest.approx(expected.nadir_10e9_l, rel=0.01)


def test_the_kinetics_page_has_log_curves_and_a_cmax_table(served, page):
    shown, document = show(signed_in(page, served, "dsmb"), served, "/dashboard/kinetics")
    charts = svgs(shown.html)
    assert len(charts) == 2
    assert all("(log scale)" in chart for chart in charts)
    rows = document.table("Per participant and analyte")
    assert len(rows) == len(served.report.kinetics) == 18
    for row, expected in zip(rows, served.report.kinetics, strict=True):
        assert (row[0], row[2]) == (expected.participant_id, expected.analyte)
        assert as_number(row[3]) == pytest.approx(expected.cmax, rel=0.01)


def test_the_disease_page_charts_change_from_baseline_per_disease(served, page):
    shown, document = show(signed_in(page, served, "dsmb"), served, "/dashboard/disease")
    diseases = {row.disease for row in served.report.disease}
    assert len(svgs(shown.html)) == len({(r.disease, r.instrument) for r in served.report.disease})
    rows = document.table("Change from baseline by visit")
    assert {row[0] for row in rows} == diseases
    assert len(rows) == len(served.report.disease)


def test_the_alerts_page_groups_open_alerts_by_severity_and_links_each_detail(served, page):
    _, document = show(signed_in(page, served, "dsmb"), served, "/dashboard/alerts")
    counts = {row[0]: [int(c) for c in row[1:]] for row in document.table("Alerts by severity")}
    opened = served.report.alerts.open
    for severity in ("critical", "high", "medium", "info"):
        assert counts[severity][0] == sum(a.severity == severity for a in opened), severity
    details = [link for link in document.links if link.startswith("/dashboard/alerts/")]
    assert sorted(details) == sorted(f"/dashboard/alerts/{a.alert_id}" for a in opened)
    detail, detail_document = show(page, served, details[0])
    assert detail.status == 200
    assert detail_document.table("History")


def test_the_optimal_dose_page_gives_dlt_rates_with_posterior_intervals(served, page):
    _, document = show(signed_in(page, served, "dsmb"), served, "/dashboard/optimal-dose")
    rows = {row[0]: row for row in document.table("DLT rate and B-cell depletion")}
    assert list(rows) == list(DOSE_LEVELS)
    for expected in served.report.optimal_dose.rows:
        row = rows[expected.dose_level]
        assert row[1] == f"{expected.dlts}/{expected.evaluable}"
        low, high = (as_number(x) for x in row[3].split("–"))
        assert (low, high) == pytest.approx(expected.dlt_rate_interval, rel=0.01)
    assert document.table("Cellular kinetics per dose level")
    assert document.table("Disease response")


# ---------------------------------------------------------------- access


def test_without_a_token_every_page_answers_401_with_the_sign_in_form(served, page):
    for path in HEADINGS:
        shown, document = show(page, served, path)
        assert shown.status == 401, path
        assert document.h1 == "Sign in"
        (form,) = document.forms
        assert form["action"] == "/dashboard/login"
        assert any(i.get("name") == "token" for i in form["inputs"])


def test_signing_in_sets_an_httponly_strict_cookie_and_signing_out_clears_it(served, page):
    page.show(served.url("/dashboard/kinetics"))
    landed = page.submit_form({"token": served.tokens["dsmb"]})
    assert urlsplit(landed.url).path == "/dashboard/kinetics"
    assert Document(landed.html).h1 == "Cellular kinetics"
    (cookie,) = page.cookies()
    assert cookie["name"] == dashboard.COOKIE_NAME == screenshots.COOKIE_NAME
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    assert cookie["path"] == "/dashboard"
    assert page.evaluate("document.cookie") == ""
    signed_out = page.submit_form({})  # the nav bar's sign-out form comes first
    assert Document(signed_out.html).h1 == "Sign in"
    assert page.cookies() == []
    assert page.show(served.url("/dashboard")).status == 401


def test_a_refused_token_gets_the_sign_in_form_again_with_an_error(served, page):
    page.show(served.url("/dashboard/login"))
    refused = page.submit_form({"token": "tw_0123456789abcdef_" + "x" * 43})
    assert refused.status == 401
    assert "That token was not accepted." in refused.html
    assert page.cookies() == []


def test_an_admin_token_is_forbidden_on_every_page(served, page):
    signed_in(page, served, "admin")
    for path in HEADINGS:
        shown, document = show(page, served, path)
        assert shown.status == 403, path
        assert document.h1 == "Forbidden"


@pytest.mark.parametrize("role", ["monitor", "auditor"])
def test_the_other_clinical_roles_read_every_page(served, page, role):
    signed_in(page, served, role)
    assert all(page.show(served.url(path)).status == 200 for path in HEADINGS)


def test_a_site_token_sees_only_its_own_participants(served, page):
    signed_in(page, served, "site")
    own = sorted(pid for pid, site in served.sites.items() if site == OWN_SITE)
    assert 0 < len(own) < len(served.sites)
    shown, document = show(page, served, "/dashboard/swimmer")
    (chart,) = svgs(shown.html)
    lanes = sorted(t.split()[1] for t in svg_texts(chart) if re.fullmatch(r"DL\d \S+", t))
    assert lanes == own
    assert sorted(row[0] for row in document.table("Lanes")) == own
    for path, caption in (("/dashboard/cytopenia", "ANC nadir"),
                          ("/dashboard/kinetics", "Per participant and analyte"),
                          ("/dashboard/disease", "Change from baseline")):  # fmt: skip
        shown, document = show(page, served, path)
        column = 1 if path.endswith("disease") else 0
        assert {row[column] for row in document.table(caption)} <= set(own), path
    others = set(served.sites) - set(own)
    for path in HEADINGS:  # not even in a trial-level text (a pause reason, an alert title)
        shown = page.show(served.url(path))
        assert shown.status == 200, path
        assert not any(pid in shown.html for pid in others), path
    shown, document = show(page, served, "/dashboard/alerts")
    rows = served.api.state.read_models.alerts.rows
    for link in (x for x in document.links if x.startswith("/dashboard/alerts/")):
        assert rows[link.rsplit("/", 1)[1]].site_id in (None, OWN_SITE)
    elsewhere = next(a for a in rows.values() if a.site_id not in (None, OWN_SITE))
    shown, document = show(page, served, f"/dashboard/alerts/{elsewhere.alert_id}")
    assert (shown.status, document.h1) == (404, "Not found")
    assert elsewhere.title not in shown.html


def test_a_sign_in_posted_from_another_origin_is_refused(served):
    answer = httpx.post(
        served.url("/dashboard/login"),
        data={"token": served.tokens["dsmb"], "next": "/dashboard"},
        headers={"Origin": "http://attacker.invalid"},
    )
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers


def test_a_bearer_header_is_accepted_as_well_as_the_cookie(served):
    answer = httpx.get(served.url("/dashboard/safety"),
                       headers={"Authorization": f"Bearer {served.tokens['auditor']}"})  # fmt: skip
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"].startswith("default-src 'none'")


# ---------------------------------------------------------------- no network


def net_log_events(path: Path) -> list[dict[str, Any]]:
    """The NetLog's events, each with its type and source type by name."""
    text = path.read_text()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # cut short: close the event list
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    constants = log["constants"]
    types = {v: k for k, v in constants["logEventTypes"].items()}
    sources = {v: k for k, v in constants["logSourceType"].items()}
    return [
        {**event, "name": types[event["type"]], "source_type": sources[event["source"]["type"]]}
        for event in log["events"]
    ]


def host_of(address: str) -> str:
    """'127.0.0.1:8080', '[::1]:443', 'http://127.0.0.1:80' -> the host."""
    if "://" in address:
        return urlsplit(address).hostname or ""
    return address.rsplit(":", 1)[0].strip("[]")


@dataclass
class NetLogSummary:
    """What a NetLog says left the browser: the hosts it resolved, the peers of every
    socket that sent bytes, the URLs requested for pages (initiated by or isolated
    under 127.0.0.1) and the URLs of Chromium's own services."""

    resolved: set[str]
    tcp_peers: set[str]
    sending_peers: set[str]
    page_urls: set[str]
    own_urls: set[str]


def summarise(events: list[dict[str, Any]]) -> NetLogSummary:
    peers: dict[int, set[str]] = {}
    sending: set[int] = set()
    summary = NetLogSummary(set(), set(), set(), set(), set())
    for event in events:
        params, name, source = event.get("params") or {}, event["name"], event["source"]["id"]
        if name == "HOST_RESOLVER_MANAGER_REQUEST" and "host" in params:
            summary.resolved.add(host_of(params["host"]))
        if name in ("TCP_CONNECT_ATTEMPT", "TCP_CONNECT_JOB_CONNECTOR_CONNECT_START",
                    "TCP_CONNECT", "UDP_CONNECT", "SOCKET_CONNECT"):  # fmt: skip
            found = [params[k] for k in ("address", "remote_address") if k in params]
            found += params.get("address_list", [])
            peers.setdefault(source, set()).update(host_of(a) for a in found)
            if name.startswith("TCP_"):
                summary.tcp_peers.update(host_of(a) for a in found)
        if name in ("SOCKET_BYTES_SENT", "UDP_BYTES_SENT"):
            sending.add(source)
        if name == "URL_REQUEST_START_JOB" and "url" in params:
            by_page = str(params.get("initiator", "")).startswith("http://127.0.0.1") or (
                "127.0.0.1" in str(params.get("network_isolation_key", ""))
            )
            (summary.page_urls if by_page else summary.own_urls).add(params["url"])
    summary.sending_peers = {peer for source in sending for peer in peers.get(source, set())}
    return summary


def test_no_request_leaves_localhost(served, tmp_path):
    net_log = tmp_path / "netlog.json"
    requested: list[str] = []
    with Browser(net_log=net_log) as chromium:
        tab = chromium.new_page()
        requested += tab.show(served.url("/dashboard/login")).requested
        tab.set_cookie(served.base_url, served.tokens["dsmb"])
        for path in HEADINGS:
            requested += tab.show(served.url(path)).requested
    # What the pages asked for (CDP Network.requestWillBeSent): this origin only.
    assert requested
    assert {urlsplit(url).hostname for url in requested} == {"127.0.0.1"}
    summary = summarise(net_log_events(net_log))
    assert summary.page_urls
    assert {urlsplit(url).hostname for url in summary.page_urls} == {"127.0.0.1"}
    # Only 127.0.0.1 resolved (any other name is mapped to ~NOTFOUND), every TCP
    # connection went to it, and no socket sent a byte anywhere else. Chromium's own
    # services (``own_urls``: component updater, sign-in probe) name other hosts but
    # never got past name resolution; the resolver's IPv6 probe "connects" a UDP
    # socket to a public address without sending anything.
    assert summary.resolved <= {"127.0.0.1", "~notfound"}
    assert summary.tcp_peers == {"127.0.0.1"}
    assert summary.sending_peers == {"127.0.0.1"}


def test_the_served_html_references_no_other_host(served):
    headers = {"Authorization": f"Bearer {served.tokens['dsmb']}"}
    for path in [*HEADINGS, "/dashboard/login", "/dashboard/static/dashboard.css"]:
        body = httpx.get(served.url(path), headers=headers).text
        for url in re.findall(r"""(?:https?:)?//[^\s"'<>)]+""", body):
            assert url == SVG_NAMESPACE or urlsplit(url).hostname == "127.0.0.1", (path, url)
        assert "<script" not in body, path
        assert "@import" not in body and "url(" not in body, path


# ---------------------------------------------------------------- screenshots


def test_take_screenshots_writes_one_png_per_page(served, tmp_path):
    assert [path for path, _ in screenshots.PAGES] == [path for path, _ in dashboard.NAV]
    written = take_screenshots(served.base_url, served.tokens["dsmb"], tmp_path / "shots")
    assert [p.name for p in written] == [f"{name}.png" for _, name in screenshots.PAGES]
    for png in written:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC), png
        assert len(data) > 10_000, png


def test_take_screenshots_refuses_to_capture_a_page_the_token_may_not_read(served, tmp_path):
    with pytest.raises(PageNotShown, match="HTTP 403"):
        take_screenshots(served.base_url, served.tokens["admin"], tmp_path)
