"""The built-in safety dashboard: server-rendered HTML pages under ``/dashboard``.

Eight pages (overview, safety, swimmer, cytopenia, kinetics, disease, alerts,
optimal dose) read the DSMB report of the trial (``projections.dsmb``), from the
API's read models (``services.api.ReadModels``: folded incrementally from the
notification log with the alerts inbox and the rest), and the alerts inbox. Charts are
inline SVG (``services.charts``); the stylesheet is served by the router itself.
There is no script and no request to another host: the Content-Security-Policy
allows nothing but this origin's stylesheet.

Access is the API's (architecture decision 10): monitor, dsmb, auditor and site
tokens read, admin tokens do not; a site token sees its own site's participants
only. A browser cannot send a bearer header by itself, so ``POST /dashboard/login``
verifies a token and keeps it in an HttpOnly, SameSite=Strict cookie scoped to
``/dashboard``; every page accepts that cookie or an ``Authorization: Bearer``
header. Without an accepted token a page answers 401 with the sign-in form.

No ``from __future__ import annotations``: FastAPI reads annotations at run time.
"""

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from domain.access import Permission, Principal
from domain.designs import bayesian_boundary, boin_table, pocock_design
from domain.protocol import (
    BayesianStoppingRule,
    BOINDesign,
    PocockStoppingRule,
    ProtocolParameters,
)
from projections.alerts import AlertRow
from projections.dsmb import DSMBReport
from services.application import SafetyMonitoring
from services.auth import Authenticator
from services.charts import GRADE_COLOURS, SwimmerLane, bar_chart, line_chart, swimmer

if TYPE_CHECKING:  # services.api mounts this router: no import cycle at run time
    from services.api import ReadModels

COOKIE_NAME = "toxwatch_dashboard"
#: The registry record of LUCAR-G79 (NCT07049081) plans about 42 participants; the
#: protocol file has no enrolment target, so this is used when it states none.
PLANNED_ENROLMENT = 42
PLANNED_ENROLMENT_SOURCE = "registry record NCT07049081 (about 42 adults)"
NAV: tuple[tuple[str, str], ...] = (
    ("/dashboard", "Overview"),
    ("/dashboard/safety", "CRS & ICANS"),
    ("/dashboard/swimmer", "Swimmer"),
    ("/dashboard/cytopenia", "Cytopenia"),
    ("/dashboard/kinetics", "Kinetics"),
    ("/dashboard/disease", "Disease"),
    ("/dashboard/alerts", "Alerts"),
    ("/dashboard/optimal-dose", "Optimal dose"),
)
SEVERITIES = ("critical", "high", "medium", "info")
ALERT_STATUSES = ("open", "acknowledged", "resolved")
_HERE = Path(__file__).resolve().parent
TEMPLATES = _HERE / "templates" / "dashboard"
STYLESHEET = _HERE / "static" / "dashboard.css"
_TRIAL_ID = r"^[A-Za-z0-9._-]{1,64}$"
_MAX_FORM_BYTES = 4096
#: Nothing but this origin's stylesheet and form posts; no script, frame or fetch.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# ---------------------------------------------------------------- the report


def planned_enrolment(protocol: ProtocolParameters) -> tuple[int, str]:
    """The planned enrolment and where the number comes from."""
    planned = getattr(protocol, "planned_enrolment", None)
    if isinstance(planned, int) and planned > 0:
        return planned, f"protocol {protocol.protocol_id} version {protocol.version}"
    return PLANNED_ENROLMENT, PLANNED_ENROLMENT_SOURCE


# ---------------------------------------------------------------- formatting


def _number(value: Any, digits: int = 3) -> str:
    """A number for a table: integers as they are, others to about ``digits``
    significant figures, large ones with thousands separators; None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude == 0:
        return "0"
    decimals = max(0, digits - 1 - int(f"{magnitude:e}".split("e")[1]))
    return f"{value:.{min(decimals, 4)}f}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} %"


def _when(value: datetime | None) -> str:
    if value is None:
        return "–"
    return value.isoformat(timespec="minutes")


def _utc(value: datetime | None) -> str:
    if value is None:
        return "–"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_number, pct=_percent, when=_when, utc=_utc)
    return env


# ---------------------------------------------------------------- page data


def _rate(y: int, n: int) -> str:
    return f"{y}/{n}" if n else "–"


def boin_boundaries(protocol: ProtocolParameters, evaluable: Iterable[int]) -> dict[str, Any]:
    """The escalation design's boundaries (reference §8, ``domain.designs``): BOIN's
    lambda_e/lambda_d and the table of y thresholds for n = 1..max(n)."""
    design = protocol.escalation
    if not isinstance(design, BOINDesign):
        return {"design": design.design, "rows": [], "lambda_e": None, "lambda_d": None}
    max_n = max([design.max_per_dose, *evaluable])
    table = boin_table(
        target=design.target,
        phi1=design.target * design.phi1_ratio,
        phi2=design.target * design.phi2_ratio,
        cutoff=design.elimination_cutoff,
        max_n=max_n,
    )
    return {
        "design": "BOIN",
        "target": design.target,
        "phi1": table.phi1,
        "phi2": table.phi2,
        "cutoff": design.elimination_cutoff,
        "lambda_e": table.lambda_e,
        "lambda_d": table.lambda_d,
        "rows": {row.n: row for row in table.rows},
    }


def configured_rules(protocol: ProtocolParameters, report: DSMBReport) -> list[dict[str, Any]]:
    """Each continuous stopping rule of the protocol with the DLTs among the evaluable
    in its scope and its boundary at that n (reference §8)."""
    by_dose = {row.dose_level: (row.dlts, row.evaluable) for row in report.dlt_table}
    total = (sum(y for y, _ in by_dose.values()), sum(n for _, n in by_dose.values()))
    states = []
    for rule in protocol.stopping_rules:
        scopes = {"trial": total} if rule.scope == "trial" else by_dose
        for scope, (y, n) in scopes.items():
            boundary = _boundary(rule, n)
            states.append(
                {
                    "rule_id": rule.rule_id,
                    "kind": rule.kind,
                    "scope": scope,
                    "y": y,
                    "n": n,
                    "boundary": boundary,
                    "crossed": boundary is not None and y >= boundary,
                    "parameters": _rule_parameters(rule),
                }
            )
    return states


def _boundary(rule: BayesianStoppingRule | PocockStoppingRule, n: int) -> int | None:
    if isinstance(rule, BayesianStoppingRule):
        if n < rule.min_evaluable or n > rule.max_n:
            return None
        return bayesian_boundary(n, p0=rule.p0, cutoff=rule.cutoff, a=rule.prior_a,
                                 b=rule.prior_b)  # fmt: skip
    if n < 1 or n > rule.max_n:
        return None
    return pocock_design(rule.theta0, rule.alpha, rule.max_n).boundaries[n - 1]


def _rule_parameters(rule: BayesianStoppingRule | PocockStoppingRule) -> str:
    if isinstance(rule, BayesianStoppingRule):
        return (f"P(p > {rule.p0:g} | y, n) > {rule.cutoff:g}, prior Beta({rule.prior_a:g}, "
                f"{rule.prior_b:g}), from n = {rule.min_evaluable}")  # fmt: skip
    return f"Pocock-type: θ0 = {rule.theta0:g}, α = {rule.alpha:g}, up to n = {rule.max_n}"


def overview(report: DSMBReport, protocol: ProtocolParameters, source: str) -> dict[str, Any]:
    status = report.study_status
    boin = boin_boundaries(protocol, [row.evaluable for row in report.dlt_table])
    doses = []
    cells = {level.id: level.cells_per_kg for level in protocol.dose_levels}
    for row in report.dlt_table:
        bounds = boin["rows"].get(row.evaluable) if boin["rows"] and row.evaluable else None
        doses.append({"row": row, "cells_per_kg": cells.get(row.dose_level), "bounds": bounds})
    planned = status.planned_enrolment or PLANNED_ENROLMENT
    diseases = sorted({cell.disease for cell in report.enrolment.cells})
    enrolment = {(cell.dose_level, cell.disease): cell for cell in report.enrolment.cells}
    return {
        "planned": planned,
        "planned_source": source,
        "enrolled_pct": 100 * status.enrolled / planned if planned else None,
        "doses": doses,
        "boin": boin,
        "boin_rows": [boin["rows"][n] for n in sorted(boin["rows"])] if boin["rows"] else [],
        "rules": configured_rules(protocol, report),
        "pause_rules": protocol.pause_rules,
        "exposure": report.exposure,
        "diseases": diseases,
        "dose_levels": [row.dose_level for row in report.dlt_table],
        "enrolment": enrolment,
    }


def _max_grades(report: DSMBReport, visible: Callable[[str], bool]) -> list[dict[str, Any]]:
    """Per infused participant the highest CRS and ICANS grade (the swimmer rows)."""
    rows = []
    for lane in report.swimmer:
        if not visible(lane.participant_id):
            continue
        grade = {
            kind: max((e.max_grade for e in lane.episodes if e.kind == kind), default=0)
            for kind in ("CRS", "ICANS")
        }
        rows.append({"dose_level": lane.dose_level, "disease": lane.disease, **grade})
    return rows


def safety(report: DSMBReport, visible: Callable[[str], bool]) -> dict[str, Any]:
    """CRS and ICANS highest grade by dose level x disease (stacked bars and a table)."""
    rows = _max_grades(report, visible)
    order = [row.dose_level for row in report.dlt_table]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["dose_level"], row["disease"])].append(row)
    keys = sorted(groups, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k))
    table = []
    charts = {}
    for kind in ("CRS", "ICANS"):
        counts = {key: [sum(r[kind] == g for r in groups[key]) for g in range(6)] for key in keys}
        series = {f"grade {g}": [counts[key][g] for key in keys] for g in range(6)}
        categories = [f"{dose} {disease}" for dose, disease in keys]
        charts[kind] = Markup(
            bar_chart(
                categories,
                series,
                title=f"{kind}: highest grade per participant, by dose level and disease",
                y_label="participants",
                colours=GRADE_COLOURS,
                width=min(1300, max(640, 220 + 70 * len(keys))),
            )
        )
        for key in keys:
            table.append({"kind": kind, "dose_level": key[0], "disease": key[1],
                          "infused": len(groups[key]), "by_grade": counts[key]})  # fmt: skip
    return {
        "charts": charts,
        "table": table,
        "crs": report.crs_summary,
        "icans": report.icans_summary,
        "participants": len(rows),
    }


def swimmer_page(report: DSMBReport, visible: Callable[[str], bool]) -> dict[str, Any]:
    rows = [lane for lane in report.swimmer if visible(lane.participant_id)]
    lanes = [
        SwimmerLane(
            label=lane.participant_id,
            group=lane.dose_level,
            end_day=lane.end_day,
            episodes=[(e.kind, e.start_day, e.end_day, e.max_grade) for e in lane.episodes],
            markers=[(m.kind, m.day) for m in lane.markers],
        )
        for lane in rows
    ]
    chart = swimmer(lanes, title="Days since infusion: CRS, ICANS, DLT, SAE, death, withdrawal",
                    width=1300)  # fmt: skip
    return {"rows": rows, "chart": Markup(chart)}


def cytopenia(report: DSMBReport, visible: Callable[[str], bool]) -> dict[str, Any]:
    rows = [row for row in report.cytopenia if visible(row.participant_id)]
    charts = []
    for dose_level in dict.fromkeys(row.dose_level for row in rows):
        series = {row.participant_id: list(row.anc) for row in rows if row.dose_level == dose_level}
        charts.append(
            Markup(
                line_chart(
                    series,
                    title=f"{dose_level}: ANC (10^9/L) by day since infusion",
                    x_label="days since infusion",
                    y_label="ANC 10^9/L",
                    width=900,
                    height=max(300, 60 + 16 * len(series)),
                )
            )
        )
    phases = sorted({phase for row in rows for phase, _ in row.icaht})
    return {
        "rows": rows,
        "charts": charts,
        "phases": phases,
        "icaht": {row.participant_id: dict(row.icaht) for row in rows},
    }


def kinetics(report: DSMBReport, visible: Callable[[str], bool]) -> dict[str, Any]:
    rows = [row for row in report.kinetics if visible(row.participant_id)]
    charts = []
    for analyte in sorted({row.analyte for row in rows}):
        series = {
            f"{row.dose_level} {row.participant_id}": [(d, v) for d, v in row.profile if v > 0]
            for row in rows
            if row.analyte == analyte
        }
        charts.append(
            Markup(
                line_chart(
                    series,
                    title=f"{analyte}: cellular kinetics (log scale)",
                    x_label="days since infusion",
                    y_label=analyte,
                    log_y=True,
                    width=900,
                    height=max(300, 60 + 16 * len(series)),
                )
            )
        )
    return {"rows": rows, "charts": charts, "by_dose": report.kinetics_by_dose_level}


def disease(report: DSMBReport, visible: Callable[[str], bool]) -> dict[str, Any]:
    """Change from baseline by visit week, one chart per disease and instrument
    (baseline plotted at week 0)."""
    rows = [row for row in report.disease if visible(row.participant_id)]
    groups: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = {}
    for row in rows:
        series = groups.setdefault((row.disease, row.instrument), {})
        points = series.setdefault(f"{row.dose_level} {row.participant_id}", [(0.0, 0.0)])
        points.append((float(row.week), row.change))
    charts = [
        {
            "disease": name,
            "instrument": instrument,
            "chart": Markup(
                line_chart(
                    series,
                    title=f"{name}: {instrument} change from baseline",
                    x_label="week",
                    y_label="change from baseline",
                    width=900,
                    height=max(300, 60 + 16 * len(series)),
                )
            ),
        }
        for (name, instrument), series in sorted(groups.items())
    ]
    return {"rows": rows, "charts": charts}


def optimal_dose(report: DSMBReport) -> dict[str, Any]:
    view = report.optimal_dose
    analytes = sorted({analyte for row in view.rows for analyte in row.pk})
    return {"view": view, "rows": view.rows, "analytes": analytes}


def alerts_page(rows: list[AlertRow]) -> dict[str, Any]:
    """Open alerts grouped by severity, most severe first, then newest; counts by
    severity and status."""
    open_rows = [row for row in rows if row.status == "open"]
    grouped = {s: [row for row in open_rows if row.severity == s] for s in SEVERITIES}
    counts = {
        severity: {status: sum(r.severity == severity and r.status == status for r in rows)
                   for status in ALERT_STATUSES}
        for severity in SEVERITIES
    }  # fmt: skip
    return {"grouped": grouped, "counts": counts, "open": len(open_rows), "total": len(rows)}


# ---------------------------------------------------------------- the router


class _Refused(Exception):
    """The caller is not signed in (401) or may not read this page (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Missing(Exception):
    """What the page shows does not exist, or the caller may not see it (404)."""


def _bearer(request: Request) -> str | None:
    """The token of ``Authorization: Bearer``, else of the dashboard cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE_NAME) or None


def redact(body: str, participants: Iterable[str]) -> str:
    """The page with each of ``participants`` named only as "participant of another
    site": trial-level texts (a pause reason, a stopping rule's detail, an
    alert title) may name them, and a site token sees its own participants only."""
    names = sorted(set(participants), key=len, reverse=True)
    if not names:
        return body
    pattern = re.compile(r"(?<![\w-])(?:" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    return pattern.sub("participant of another site", body)


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a dashboard path of this origin only."""
    if value and value.startswith("/dashboard") and "//" not in value and "\\" not in value:
        return value
    return "/dashboard"


def _same_origin(request: Request) -> bool:
    """A form post from a page of this origin (or a client that sends no Origin)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


def dashboard_router(
    app: SafetyMonitoring,
    views: "ReadModels",
    auth: Authenticator,
    clock: Callable[[], datetime] | None = None,
) -> APIRouter:
    """The dashboard's pages; mount with ``api.include_router(...)``. Its routes are
    left out of the OpenAPI document (they are HTML, not the API)."""
    now = clock or (lambda: datetime.now(UTC))
    env = environment()
    stylesheet = STYLESHEET.read_text()
    router = APIRouter(prefix="/dashboard", include_in_schema=False)

    def html(
        template: str, status_code: int = 200, *, hidden: Iterable[str] = (), **context: Any
    ) -> HTMLResponse:
        body = redact(env.get_template(template).render(nav=NAV, **context), hidden)
        return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)

    def message_page(
        status_code: int, title: str, message: str, who: Principal | None = None
    ) -> HTMLResponse:
        return html("message.html", status_code, who=who, active="", title=title,
                    message=message)  # fmt: skip

    def login_page(request: Request, status_code: int, error: str | None) -> HTMLResponse:
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = html(
            "login.html",
            status_code,
            error=error,
            next=_safe_next(request.query_params.get("next") or wanted),
            who=None,
            active="",
            title="Sign in",
        )
        if status_code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    def authenticate(request: Request, permission: Permission) -> Principal:
        token = _bearer(request)
        credentials = (
            HTTPAuthorizationCredentials(scheme="Bearer", credentials=token) if token else None
        )
        try:
            who = auth.principal(credentials)
        except HTTPException as refused:
            raise _Refused(refused.status_code, str(refused.detail)) from None
        if not who.can(permission):
            raise _Refused(403, "forbidden")
        return who

    def trial_of(trial: str | None) -> str:
        return trial or app.protocol.trial_id

    def hidden_participants(who: Principal, trial_id: str) -> set[str]:
        """The participants another site's token must not see named anywhere."""
        return {
            pid
            for (trial, pid), site in views.participants.copy().items()
            if trial == trial_id and not who.sees_site(site)
        }

    def site_filter(who: Principal, trial_id: str) -> Callable[[str], bool]:
        if who.role != "site":
            return lambda _: True
        known = views.participants.copy()  # the follower thread may be adding to it
        sites = {pid: site for (t, pid), site in known.items() if t == trial_id}
        return lambda participant_id: who.sees_site(sites.get(participant_id, "?"))

    def page(
        request: Request,
        permission: Permission,
        template: str,
        trial: str | None,
        build: Callable[[Principal, str, DSMBReport], Mapping[str, Any]],
        title: str,
    ) -> HTMLResponse:
        try:
            who = authenticate(request, permission)
        except _Refused as refused:
            if refused.status == 401:
                message = None if _bearer(request) is None else "That token was not accepted."
                return login_page(request, 401, message)
            return message_page(403, "Forbidden", "This token's role may not read this page.")
        views.refresh()
        trial_id = trial_of(trial)
        protocol = app.trial_protocol(trial_id)
        planned, source = planned_enrolment(protocol)
        as_of = now()
        report = views.dsmb_report(
            trial_id=trial_id,
            as_of=as_of,
            planned_enrolment=planned,
            dose_levels=[level.id for level in protocol.dose_levels],
        )
        query = "" if trial is None else "?" + urlencode({"trial": trial_id})
        try:
            content = build(who, trial_id, report)
        except _Missing as missing:
            return message_page(404, "Not found", str(missing), who=who)
        return html(
            template,
            hidden=hidden_participants(who, trial_id),
            who=who,
            active=request.url.path.rstrip("/") or "/dashboard",
            title=title,
            trial_id=trial_id,
            query=query,
            as_of=as_of,
            status=report.study_status,
            site_only=who.role == "site",
            source=source,
            **content,
        )

    Trial = Annotated[str | None, Query(pattern=_TRIAL_ID)]

    @router.get("/static/dashboard.css")
    def css() -> Response:
        return Response(stylesheet, media_type="text/css",
                        headers={"Cache-Control": "max-age=300"})  # fmt: skip

    @router.get("/login")
    def login_form(request: Request) -> HTMLResponse:
        return login_page(request, 200, None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        """Verify a token and keep it in the dashboard cookie (HttpOnly, SameSite=Strict,
        path /dashboard); a refused token gets the form again with 401."""
        if not _same_origin(request):
            return message_page(403, "Forbidden", "A sign-in from another site is refused.")
        body = await request.body()
        form = parse_qs(body[:_MAX_FORM_BYTES].decode(errors="replace"))
        token = (form.get("token") or [""])[0].strip()
        wanted = _safe_next((form.get("next") or [None])[0])
        try:
            auth.principal(HTTPAuthorizationCredentials(scheme="Bearer", credentials=token))
        except HTTPException:
            response = html("login.html", 401, error="That token was not accepted.",
                            next=wanted, who=None, active="", title="Sign in")  # fmt: skip
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        redirect = RedirectResponse(wanted, status_code=303, headers=SECURITY_HEADERS)
        redirect.set_cookie(
            COOKIE_NAME,
            token,
            path="/dashboard",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return redirect

    @router.post("/logout")
    def logout(request: Request) -> Response:
        if not _same_origin(request):
            return message_page(403, "Forbidden", "A sign-out from another site is refused.")
        redirect = RedirectResponse("/dashboard/login", status_code=303, headers=SECURITY_HEADERS)
        redirect.delete_cookie(
            COOKIE_NAME,
            path="/dashboard",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return redirect

    @router.get("")
    def overview_page(request: Request, trial: Trial = None) -> HTMLResponse:
        def build(who: Principal, trial_id: str, report: DSMBReport) -> dict[str, Any]:
            protocol = app.trial_protocol(trial_id)
            return overview(report, protocol, planned_enrolment(protocol)[1])

        return page(request, Permission.READ_TRIAL, "overview.html", trial, build,
                    "Trial overview")  # fmt: skip

    def site_filtered(
        permission: Permission,
        template: str,
        title: str,
        view: Callable[[DSMBReport, Any], dict[str, Any]],
    ) -> Callable[..., HTMLResponse]:
        """A page drawn by ``view`` from the report, for the caller's sites."""

        def route(request: Request, trial: Trial = None) -> HTMLResponse:
            def build(who: Principal, trial_id: str, report: DSMBReport) -> dict[str, Any]:
                return view(report, site_filter(who, trial_id))

            return page(request, permission, template, trial, build, title)

        return route

    for path, permission, template, title, view in (
        ("/safety", Permission.READ_TRIAL, "safety.html",
         "CRS and ICANS by dose level and disease", safety),
        ("/swimmer", Permission.READ_PARTICIPANTS, "swimmer.html", "Swimmer plot",
         swimmer_page),
        ("/cytopenia", Permission.READ_PARTICIPANTS, "cytopenia.html",
         "Cytopenia: ANC and ICAHT", cytopenia),
        ("/kinetics", Permission.READ_PARTICIPANTS, "kinetics.html", "Cellular kinetics",
         kinetics),
        ("/disease", Permission.READ_PARTICIPANTS, "disease.html", "Disease activity",
         disease),
    ):  # fmt: skip
        router.add_api_route(
            path,
            site_filtered(permission, template, title, view),
            methods=["GET"],
            response_class=HTMLResponse,
        )

    @router.get("/alerts")
    def alerts_route(request: Request, trial: Trial = None) -> HTMLResponse:
        def build(who: Principal, trial_id: str, report: DSMBReport) -> dict[str, Any]:
            rows = views.alerts.select(trial_id=trial_id)
            return alerts_page([row for row in rows if who.sees_site(row.site_id)])

        return page(request, Permission.READ_ALERTS, "alerts.html", trial, build,
                    "Alerts")  # fmt: skip

    @router.get("/alerts/{alert_id}")
    def alert_page(request: Request, alert_id: str, trial: Trial = None) -> HTMLResponse:
        def build(who: Principal, trial_id: str, report: DSMBReport) -> dict[str, Any]:
            row = views.alerts.rows.get(alert_id)
            if row is None or not who.sees_site(row.site_id):
                raise _Missing("No such alert.")
            return {"alert": row}

        return page(request, Permission.READ_ALERTS, "alert.html", trial, build, "Alert")

    @router.get("/optimal-dose")
    def optimal_dose_page(request: Request, trial: Trial = None) -> HTMLResponse:
        def build(who: Principal, trial_id: str, report: DSMBReport) -> dict[str, Any]:
            return optimal_dose(report)

        return page(request, Permission.READ_TRIAL, "optimal_dose.html", trial, build,
                    "Optimal dose")  # fmt: skip

    return router
