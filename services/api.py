"""The HTTP API (FastAPI): alerts, participants, trial status, the derived event
stream, the contract's JSON Schema, health and readiness (architecture decision 10).

Every data endpoint needs a bearer token (``toxwatch token create``); roles grant
permissions (``domain.access.PERMISSIONS``) and a ``site`` token sees only its own
site's participants and alerts, plus trial-level ones. A participant or alert the
caller may not see is answered exactly like one that does not exist (404), so an
error never reveals another site's data.

The alerts inbox, the safety metrics, the kinetics, the participant registry, the
DSMB packet's data (the dashboard) and the audit trail are read models the API folds
from the event store's notification log, in one pass, in a background thread
(:class:`ReadModels`); the participant timeline and the trial status are read from
their aggregates, and the as-of views are folded per request (they depend on the
moment asked for). ``/ready``
is true only when those read models, the alerts process and the trial monitor have
caught up with the log.

No ``from __future__ import annotations``: FastAPI reads annotations at run time.
"""

import asyncio
import gc
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.utils import get_topic
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from domain.access import Permission, Principal, Role
from domain.contract import TRIAL_LEVEL_PARTICIPANT, SafetyEvent, clinical_event_schema
from domain.errors import AlertAlreadyAcknowledged, AlertRevisionChanged, NotFound
from domain.participant import Participant, SafetyEventRecorded, participant_aggregate_id
from domain.trial import DoseLevel, Trial, dose_level_aggregate_id, trial_aggregate_id
from projections.alerts import ALERT_EVENT_CLASSES, AlertRow, AlertsView
from projections.audit_trail import AuditEntry
from projections.dsmb import DSMBReport
from projections.kinetics import KineticsView
from projections.safety_metrics import SafetyPicture
from projections.views import Views
from services import alerts as alert_service
from services import monitor as monitor_service
from services.application import REJECTION_TOPIC, SAFETY_EVENT_TOPICS, SafetyMonitoring
from services.audit import participant_as_of, trial_as_of
from services.auth import Authenticator
from services.dashboard import dashboard_router
from services.following import follow_log
from services.relay import RELAY_NAME
from services.tokens import NoSuchToken, TokenService

log = logging.getLogger(__name__)
ALERT_TOPICS = tuple(get_topic(cls) for cls in ALERT_EVENT_CLASSES)
#: Lag counts stop here (a follower that far behind is simply far behind).
LAG_CAP = 10_000
NOT_FOUND = "not found"
#: The largest log position a store can hold (a signed 64-bit integer).
MAX_POSITION = 2**63 - 1


# ---------------------------------------------------------------- read models


#: One generation of the API's read models (``projections.views``).
_Views = Views


class ReadModels:
    """The API's read models, folded from the notification log in one pass
    (``projections.views``): alerts inbox, safety metrics, kinetics, participant
    registry, the DSMB packet's data (the dashboard) and the audit trail.

    ``rebuild`` folds a new generation from position zero beside the live one, while
    the live one keeps answering, compares the two at the same log position and, when
    asked, switches to the new one in one reference assignment (architecture
    decision 7)."""

    def __init__(self, app: SafetyMonitoring, *, batch_size: int = 1000) -> None:
        self.app = app
        self.batch_size = batch_size
        self._views = Views()
        self._lock = threading.Lock()

    @property
    def alerts(self) -> AlertsView:
        return self._views.alerts

    @property
    def safety(self) -> SafetyPicture:
        return self._views.safety

    @property
    def kinetics(self) -> KineticsView:
        return self._views.kinetics

    @property
    def participants(self) -> dict[tuple[str, str], str]:
        return self._views.participants

    @property
    def position(self) -> int:
        return self._views.position

    def refresh(self) -> int:
        """Fold what was stored since the last refresh; the number of entries read."""
        with self._lock:
            return self._fold(self._views)

    def dsmb_report(self, **parameters: Any) -> DSMBReport:
        """The DSMB packet's data of everything stored so far
        (``projections.dsmb.DSMBData.report``'s parameters)."""
        with self._lock:
            self._fold(self._views)
            return self._views.dsmb.report(**parameters)

    def audit_entries(
        self, *, participant_id: str | None = None, since: datetime | None = None
    ) -> list[AuditEntry]:
        """The audit trail of everything stored so far, in log order."""
        with self._lock:
            self._fold(self._views)
            return self._views.audit.select(participant_id=participant_id, since=since)

    def rebuild(self, *, switch: bool) -> dict[str, Any]:
        """Fold every read model afresh from position zero, compare it with the live
        one at the same position, and switch to it if ``switch``."""
        from services.replay import compare_snapshots, read_model_snapshots

        fresh = Views()
        self._fold(fresh)  # the bulk of the work, while the live views answer
        with self._lock:
            self._fold(self._views)
            self._fold(fresh, until=self._views.position)
            left = read_model_snapshots(self._views, self.app.trial_protocol)
            right = read_model_snapshots(fresh, self.app.trial_protocol)
            if switch:
                self._views = fresh
        verdicts, differences = compare_snapshots(left, right)
        return {
            "position": fresh.position,
            "views": verdicts,
            "differences": differences[:100],
            "differences_total": len(differences),
            "switched": switch,
        }

    def _fold(self, views: Views, until: int | None = None) -> int:
        return fold_views(self.app, views, until=until, batch_size=self.batch_size)

    def follow(self, stop: threading.Event, poll_seconds: float = 0.1) -> None:
        follow_log(self.refresh, stop, name="API read models", poll_seconds=poll_seconds)

    def lag(self) -> dict[str, bool]:
        """Which followers still have log entries to process (True: behind)."""
        return {
            "api_views": self._behind(self.position, ()),
            "alerts": self._behind(
                self.app.tracked(alert_service.ALERTS_TRACKING) or 0, alert_service.INPUT_TOPICS
            ),
            "trial_monitor": self._behind(
                self.app.tracked(monitor_service.MONITOR_TRACKING) or 0,
                monitor_service.INPUT_TOPICS,
            ),
        }

    def follower_lags(self, dispatch_endpoints: tuple[str, ...] = ()) -> dict[str, int]:
        """Log entries each follower has still to process (capped at ``LAG_CAP``)."""
        followers: dict[str, tuple[int, tuple[str, ...]]] = {
            "api_views": (self.position, ()),
            "alerts": (
                self.app.tracked(alert_service.ALERTS_TRACKING) or 0,
                alert_service.INPUT_TOPICS,
            ),
            "trial_monitor": (
                self.app.tracked(monitor_service.MONITOR_TRACKING) or 0,
                monitor_service.INPUT_TOPICS,
            ),
            "relay": (
                self.app.tracked(RELAY_NAME) or 0,
                (*SAFETY_EVENT_TOPICS, REJECTION_TOPIC),
            ),
        }
        for endpoint in dispatch_endpoints:
            tracked = self.app.tracked(f"dispatch:{endpoint}") or 0
            followers[f"dispatch:{endpoint}"] = (tracked, ALERT_TOPICS)
        return {
            name: len(
                self.app.recorder.select_notifications(
                    start=position, limit=LAG_CAP, topics=topics, inclusive_of_start=False
                )
            )
            for name, (position, topics) in followers.items()
        }

    def gauges(self, dispatch_endpoints: tuple[str, ...] = ()) -> dict[str, Any]:
        """The safety picture and the followers' lag, as metric families."""
        self.refresh()
        with self._lock:
            values: dict[str, Any] = dict(self.safety.gauges())
        values["toxwatch_follower_lag_events"] = {
            (("follower", name),): float(lag)
            for name, lag in self.follower_lags(dispatch_endpoints).items()
        }
        return values

    def _behind(self, position: int, topics: tuple[str, ...]) -> bool:
        return bool(
            self.app.recorder.select_notifications(
                start=position, limit=1, topics=topics, inclusive_of_start=False
            )
        )


def fold_views(
    app: SafetyMonitoring,
    views: Views,
    *,
    until: int | None = None,
    batch_size: int = 1000,
) -> int:
    """Fold ``app``'s stored events after ``views.position`` (up to ``until``) into
    ``views``: each read once, decoded once if some read model reads it, in one pass
    for every read model. The number of log entries read."""
    total = 0
    decode = app.mapper.to_domain_event
    with collector_paused():
        while True:
            notifications = app.recorder.select_notifications(
                start=views.position, limit=batch_size, stop=until, inclusive_of_start=False
            )
            if not notifications:
                return total
            views.fold(notifications, decode)
            total += len(notifications)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused (unless it already was): a fold from
    position zero keeps millions of containers alive, and every full collection
    would scan them all again (at a million stored events, over a third of the
    rebuild's time). What a fold allocates is kept, not cyclic garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# ---------------------------------------------------------------- schemas


class AlertOut(BaseModel):
    alert_id: str
    trial_id: str
    participant_id: str
    site_id: str | None
    dose_level: str | None
    category: str
    severity: Literal["critical", "high", "medium", "info"]
    title: str
    revision: int
    status: Literal["open", "acknowledged", "resolved"]
    effective_at: datetime
    raised_at: datetime
    evidence: list[str]
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    acknowledgement_comment: str | None
    escalated_to: list[str]
    resolution: str | None

    @classmethod
    def of(cls, row: AlertRow) -> "AlertOut":
        fields = asdict(row)
        fields.pop("history")
        return cls.model_validate(fields)


class EvidenceOut(BaseModel):
    event_id: str
    kind: Literal["clinical", "derived", "unresolved"]
    event: dict[str, Any] | None


class AlertDetail(AlertOut):
    history: list[dict[str, Any]]
    evidence_events: list[EvidenceOut]


class Acknowledgement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str = Field(min_length=1, max_length=2000)
    revision: int | None = Field(
        default=None, ge=1, description="the revision the user saw; 409 if it moved on"
    )


class ParticipantOut(BaseModel):
    trial_id: str
    participant_id: str
    site_id: str


class TimelineOut(BaseModel):
    trial_id: str
    participant_id: str
    site_id: str
    current_grades: dict[str, int]
    clinical_events: list[dict[str, Any]]
    derived_events: list[dict[str, Any]]


class DoseLevelOut(BaseModel):
    dose_level: str
    cells_per_kg: float | None
    tally: dict[str, int | bool]
    latest_decision: dict[str, Any] | None


class TrialStatusOut(BaseModel):
    trial_id: str
    protocol_version: str
    enrollment_paused: bool
    dose_levels: list[DoseLevelOut]
    stopping_rules: list[dict[str, Any]]
    mtd: dict[str, Any] | None
    events: list[dict[str, Any]]


class KineticsOut(BaseModel):
    trial_id: str
    participant_id: str
    dose_level: str | None
    infused_at: datetime | None
    pk: dict[str, dict[str, Any]]
    disease: list[dict[str, Any]]
    b_cells: list[dict[str, Any]]


class PositionedEvent(BaseModel):
    position: int
    event: dict[str, Any]


class EventPage(BaseModel):
    events: list[PositionedEvent]
    next_after: int


class AuditEntryOut(BaseModel):
    position: int
    recorded_at: datetime
    at: datetime
    who: str
    action: str
    what: str
    why: str
    trial_id: str | None
    participant_id: str | None
    original: dict[str, Any] | None
    replacement: dict[str, Any] | None


class ViewDifferenceOut(BaseModel):
    view: str
    item: str
    live: Any = None
    rebuilt: Any = None


class ViewRebuildOut(BaseModel):
    """A rebuild of the API's read models from position zero, compared with the live
    ones at the same log position."""

    position: int
    views: dict[str, Literal["identical", "differs"]]
    differences: list[ViewDifferenceOut]
    differences_total: int
    switched: bool


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    name: str = Field(min_length=1, max_length=200)
    site_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    expires_at: datetime | None = None
    reason: str = Field(default="", max_length=2000)


class TokenOut(BaseModel):
    token_id: str
    name: str
    role: str
    site_id: str | None
    expires_at: datetime | None
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class IssuedTokenOut(TokenOut):
    token: str = Field(description="shown once; only its hash is stored")


class Revocation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)


# ---------------------------------------------------------------- the app


def create_app(
    app: SafetyMonitoring,
    *,
    clock: Callable[[], datetime] | None = None,
    read_models: ReadModels | None = None,
    follow: bool = True,
) -> FastAPI:
    """The API over ``app``'s store. ``follow`` starts the read models' thread."""
    now = clock or (lambda: datetime.now(UTC))
    tokens = TokenService(app)
    auth = Authenticator(tokens, now)
    views = read_models or ReadModels(app)
    stop = threading.Event()

    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        thread = None
        if follow:
            thread = threading.Thread(target=views.follow, args=(stop,), daemon=True)
            thread.start()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=5)

    api = FastAPI(
        title="ToxWatch",
        version="1",
        description="Safety monitoring for CAR-T cell therapy trials: alerts, "
        "participants' grades, trial status and the derived event stream.",
        lifespan=lifespan,
    )

    def reader(permission: Permission) -> Any:
        return Depends(auth.require(permission))

    def visible_alert(alert_id: str, who: Principal) -> AlertRow:
        row = views.alerts.rows.get(alert_id)
        if row is None:
            views.refresh()
            row = views.alerts.rows.get(alert_id)
        if row is None or not who.sees_site(row.site_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
        return row

    def visible_participant(trial_id: str, participant_id: str, who: Principal) -> str:
        key = (trial_id, participant_id)
        if key not in views.participants:
            views.refresh()
        site = views.participants.get(key)
        if site is None or not who.sees_site(site):
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
        return site

    # ------------------------------------------------------------ public

    @api.get("/health", tags=["operations"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @api.get(
        "/ready",
        tags=["operations"],
        responses={503: {"description": "projections still catching up"}},
    )
    def ready() -> Any:
        """Readiness: the read models, the alerts process and the trial monitor have
        processed every stored event they follow."""
        behind = views.lag()
        body = {"ready": not any(behind.values()), "behind": behind}
        if any(behind.values()):
            from fastapi.responses import JSONResponse

            return JSONResponse(body, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
        return body

    @api.get("/schema/{kind}", tags=["contract"])
    def schema(kind: Literal["clinical", "safety"]) -> dict[str, Any]:
        """JSON Schema of the event contract: clinical events in, safety events out."""
        if kind == "clinical":
            return clinical_event_schema()
        return SafetyEvent.model_json_schema(by_alias=True)

    # ------------------------------------------------------------ alerts

    @api.get("/alerts", tags=["alerts"])
    def list_alerts(
        who: Annotated[Principal, reader(Permission.READ_ALERTS)],
        status_: Annotated[
            Literal["open", "acknowledged", "resolved"] | None, Query(alias="status")
        ] = None,
        severity: Literal["critical", "high", "medium", "info"] | None = None,
        category: Annotated[str | None, Query(max_length=64)] = None,
        trial_id: Annotated[str | None, Query(max_length=64)] = None,
        participant_id: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[AlertOut]:
        """Alerts, most severe first, then newest; filters combine."""
        rows = views.alerts.select(
            status=status_,
            severity=severity,
            category=category,
            trial_id=trial_id,
            participant_id=participant_id,
        )
        mask = _masker(who, views)
        return [
            AlertOut.model_validate(mask(AlertOut.of(r).model_dump(mode="json")))
            for r in rows
            if who.sees_site(r.site_id)
        ][:limit]

    @api.get(
        "/alerts/stream",
        tags=["alerts"],
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "SSE"}},
    )
    async def alert_stream(
        request: Request,
        who: Annotated[Principal, reader(Permission.READ_ALERTS)],
        after: Annotated[int | None, Query(ge=0, le=MAX_POSITION)] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> EventSourceResponse:
        """The live feed (server-sent events): alert events as they are stored. Each
        message's id is its log position; reconnect with ``Last-Event-ID`` (or
        ``after``) to resume without a gap. Without either, it starts from now."""
        start = after
        if start is None and last_event_id and last_event_id.isascii() and last_event_id.isdigit():
            start = min(int(last_event_id), MAX_POSITION)
        if start is None:
            start = app.recorder.max_notification_id() or 0

        mask = _masker(who, views)

        async def frames() -> AsyncIterator[dict[str, str]]:
            position = start
            while not await request.is_disconnected():
                notifications = await asyncio.to_thread(
                    app.recorder.select_notifications,
                    start=position,
                    limit=100,
                    topics=ALERT_TOPICS,
                    inclusive_of_start=False,
                )
                for notification in notifications:
                    event = app.mapper.to_domain_event(notification)
                    alert = event.to_contract()  # type: ignore[attr-defined]
                    position = notification.id
                    if not who.sees_site(alert.data.get("site_id")):
                        continue
                    if alert.type == "alert.raised" and "live_feed" not in (
                        alert.data.get("channels") or []
                    ):
                        continue
                    yield {
                        "id": str(notification.id),
                        "event": alert.type,
                        "data": json.dumps(mask(alert.to_wire()), separators=(",", ":")),
                    }
                if not notifications:
                    await asyncio.sleep(0.1)

        return EventSourceResponse(frames(), ping=15)

    @api.get("/alerts/{alert_id}", tags=["alerts"])
    def alert_detail(
        alert_id: str, who: Annotated[Principal, reader(Permission.READ_ALERTS)]
    ) -> AlertDetail:
        """One alert with its history and its evidence events."""
        row = visible_alert(alert_id, who)
        detail = AlertDetail(
            **AlertOut.of(row).model_dump(),
            history=row.history,
            evidence_events=[
                e.model_copy(update={"event": _redacted(who, e.event)}) if e.event else e
                for e in _evidence(app, row)
            ],
        )
        return AlertDetail.model_validate(_masker(who, views)(detail.model_dump(mode="json")))

    @api.post(
        "/alerts/{alert_id}/acknowledge",
        tags=["alerts"],
        responses={409: {"description": "already acknowledged, or the alert moved on"}},
    )
    def acknowledge(
        alert_id: str,
        body: Acknowledgement,
        who: Annotated[Principal, reader(Permission.ACKNOWLEDGE_ALERTS)],
    ) -> AlertOut:
        """Acknowledge the alert's current revision, with a comment."""
        visible_alert(alert_id, who)
        try:
            alert_service.acknowledge(
                app,
                alert_id,
                by=f"{who.name} ({who.role}, token {who.token_id})",
                at=now(),
                comment=body.comment,
                revision=body.revision,
            )
        except NotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND) from None
        except (AlertAlreadyAcknowledged, AlertRevisionChanged) as conflict:
            raise HTTPException(status.HTTP_409_CONFLICT, str(conflict)) from None
        views.refresh()
        return AlertOut.model_validate(
            _masker(who, views)(AlertOut.of(views.alerts.rows[alert_id]).model_dump(mode="json"))
        )

    # ------------------------------------------------------------ participants

    @api.get("/participants", tags=["participants"])
    def list_participants(
        who: Annotated[Principal, reader(Permission.READ_PARTICIPANTS)],
        trial_id: Annotated[str | None, Query(max_length=64)] = None,
    ) -> list[ParticipantOut]:
        views.refresh()
        return [
            ParticipantOut(trial_id=t, participant_id=p, site_id=s)
            for (t, p), s in sorted(views.participants.items())
            if (trial_id is None or t == trial_id) and who.sees_site(s)
        ]

    @api.get("/participants/{trial_id}/{participant_id}/timeline", tags=["participants"])
    def timeline(
        trial_id: str,
        participant_id: str,
        who: Annotated[Principal, reader(Permission.READ_PARTICIPANTS)],
    ) -> TimelineOut:
        """The participant's clinical events in clinical order and derived safety
        events in the order they were derived, with the current grade per term."""
        site = visible_participant(trial_id, participant_id, who)
        clinical, derived = _participant_events(app, trial_id, participant_id)
        grades: dict[str, int] = {}
        for event in derived:
            data = event["data"]
            if event["type"] in ("crs.graded", "icans.graded", "toxicity.graded"):
                term = data.get("term") or event["type"].split(".")[0].upper()
                grades[term] = data["grade"]
            elif event["type"] == "grade.revised":
                grades[data["term"]] = data["to_grade"]
        clinical.sort(key=lambda e: (e["occurred_at"], e["event_id"]))
        return TimelineOut(
            trial_id=trial_id,
            participant_id=participant_id,
            site_id=site,
            current_grades=grades,
            clinical_events=clinical,
            derived_events=derived,
        )

    @api.get("/participants/{trial_id}/{participant_id}/kinetics", tags=["participants"])
    def participant_kinetics(
        trial_id: str,
        participant_id: str,
        who: Annotated[Principal, reader(Permission.READ_PARTICIPANTS)],
    ) -> KineticsOut:
        """Cellular kinetics by non-compartmental analysis per analyte (reference §11:
        Cmax, Tmax, Clast, Tlast, AUC0-28 with the BLQ rules), disease activity change
        from baseline by visit (§12) and CD19 B-cell counts."""
        visible_participant(trial_id, participant_id, who)
        views.refresh()
        subject = views.kinetics.participants.get((trial_id, participant_id))
        if subject is None:
            return KineticsOut(
                trial_id=trial_id, participant_id=participant_id, dose_level=None,
                infused_at=None, pk={}, disease=[], b_cells=[],
            )  # fmt: skip
        return KineticsOut(
            trial_id=trial_id,
            participant_id=participant_id,
            dose_level=subject.dose_level,
            infused_at=subject.infused_at,
            pk={analyte: _nca_out(result) for analyte, result in subject.pk().items()},
            disease=[_change_out(change) for change in subject.disease_changes()],
            b_cells=[
                {"at": at.isoformat(), "value": value, "unit": unit}
                for at, value, unit in subject.b_cells()
            ],
        )

    @api.get("/trials/{trial_id}/kinetics", tags=["trial"])
    def trial_kinetics(
        trial_id: str, who: Annotated[Principal, reader(Permission.READ_TRIAL)]
    ) -> list[dict[str, Any]]:
        """Per dose level: median Cmax and AUC0-28 per analyte, and disease response
        at weeks 12 and 24 (for the optimal-dose view)."""
        views.refresh()
        return views.kinetics.dose_level_summary(trial_id)

    # ------------------------------------------------------------ trial

    @api.get("/trials/{trial_id}/status", tags=["trial"])
    def trial_status(
        trial_id: str, who: Annotated[Principal, reader(Permission.READ_TRIAL)]
    ) -> TrialStatusOut:
        """Dose levels with their tallies and latest decision, stopping rules, the
        MTD estimate and the trial-level events in order."""
        try:
            trial: Trial = app.repository.get(trial_aggregate_id(trial_id))
        except AggregateNotFoundError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND) from None
        protocol = app.trial_protocol(trial_id)
        mask = _masker(who, views)
        events = [
            mask(_redacted(who, e.to_contract().to_wire()))
            for e in app.repository.event_store.get(trial_aggregate_id(trial_id))
            if isinstance(e, SafetyEventRecorded)
        ]
        latest: dict[tuple[str, str | None], dict[str, Any]] = {}
        for event in events:
            latest[(event["type"], event["data"].get("dose_level"))] = event
        doses = []
        for level in protocol.dose_levels:
            try:
                aggregate: DoseLevel = app.repository.get(
                    dose_level_aggregate_id(trial_id, level.id)
                )
                tally = aggregate.tally
            except AggregateNotFoundError:
                tally = {}
            doses.append(
                DoseLevelOut(
                    dose_level=level.id,
                    cells_per_kg=level.cells_per_kg,
                    tally=tally,
                    latest_decision=latest.get(("dose.decision", level.id)),
                )
            )
        paused = resumed = ""
        for event in events:
            if event["type"] == "enrollment.paused":
                paused = event["effective_at"]
            elif event["type"] == "enrollment.resumed":
                resumed = event["effective_at"]
        return TrialStatusOut(
            trial_id=trial.trial_id,
            protocol_version=protocol.version,
            enrollment_paused=bool(paused) and paused > resumed,
            dose_levels=doses,
            stopping_rules=[e for e in events if e["type"] == "stopping_rule.triggered"],
            mtd=next((e for e in reversed(events) if e["type"] == "mtd.estimated"), None),
            events=events,
        )

    # ------------------------------------------------------------ event stream

    @api.get("/events", tags=["events"])
    def derived_events(
        who: Annotated[Principal, reader(Permission.READ_EVENTS)],
        after: Annotated[int, Query(ge=0, le=MAX_POSITION)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
        type_: Annotated[str | None, Query(alias="type", max_length=64)] = None,
    ) -> EventPage:
        """Derived safety events in log order after a position (page with
        ``next_after``)."""
        notifications = app.safety_notifications(after, limit)
        page: list[PositionedEvent] = []
        if who.role == "site":
            views.refresh()
        mask = _masker(who, views)
        for notification in notifications:
            event: Any = app.mapper.to_domain_event(notification)
            contract = event.to_contract()
            if type_ is not None and contract.type != type_:
                continue
            if not who.sees_site(_site_of(views, contract)):
                continue
            wire = mask(_redacted(who, contract.to_wire()))
            page.append(PositionedEvent(position=notification.id, event=wire))
        return EventPage(events=page, next_after=notifications[-1].id if notifications else after)

    # ------------------------------------------------------------ audit

    @api.get("/audit/trail", tags=["audit"])
    def audit_trail_endpoint(
        who: Annotated[Principal, reader(Permission.READ_AUDIT)],
        participant_id: Annotated[str | None, Query(max_length=64)] = None,
        since: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[AuditEntryOut]:
        """Every human action on the record, in log order: who, when, what and why;
        corrections and voids with the original (and replacement) data."""
        if since is not None and since.tzinfo is None:
            raise RequestValidationError(
                [{"type": "timezone", "loc": ("query", "since"), "msg": "needs an offset",
                  "input": str(since)}]
            )  # fmt: skip
        entries = views.audit_entries(participant_id=participant_id, since=since)
        return [AuditEntryOut.model_validate(asdict(e)) for e in entries[:limit]]

    @api.get("/audit/as-of/participants/{trial_id}/{participant_id}", tags=["audit"])
    def participant_as_of_endpoint(
        trial_id: str,
        participant_id: str,
        who: Annotated[Principal, reader(Permission.READ_AUDIT)],
        recorded_at: datetime | None = None,
        clinical_at: datetime | None = None,
    ) -> dict[str, Any]:
        """What ToxWatch knew as recorded up to ``recorded_at`` (derived events, alerts
        and their state then) and each term's grade in force at ``clinical_at``."""
        _need_offsets(recorded_at=recorded_at, clinical_at=clinical_at)
        visible_participant(trial_id, participant_id, who)
        return participant_as_of(
            app, trial_id, participant_id, recorded_at=recorded_at, clinical_at=clinical_at
        )

    @api.get("/audit/as-of/trials/{trial_id}", tags=["audit"])
    def trial_as_of_endpoint(
        trial_id: str,
        who: Annotated[Principal, reader(Permission.READ_AUDIT)],
        recorded_at: datetime | None = None,
        clinical_at: datetime | None = None,
    ) -> dict[str, Any]:
        """The trial as recorded up to ``recorded_at``: each participant's grades in
        force at ``clinical_at``, the dose levels' tallies, the trial monitor's
        findings, and the alerts that had fired with their state then."""
        _need_offsets(recorded_at=recorded_at, clinical_at=clinical_at)
        return trial_as_of(app, trial_id, recorded_at=recorded_at, clinical_at=clinical_at)

    # ------------------------------------------------------------ operations

    @api.post("/views/rebuild", tags=["operations"])
    def rebuild_views(
        who: Annotated[Principal, reader(Permission.REBUILD_VIEWS)], switch: bool = False
    ) -> ViewRebuildOut:
        """Fold the read models afresh from position zero beside the live ones (which
        keep answering), compare them at the same log position, and with ``switch``
        serve the rebuilt ones from now on (one atomic swap)."""
        result = views.rebuild(switch=switch)
        log.info(
            "read models rebuilt by %s at position %d: %s%s",
            who.name,
            result["position"],
            result["views"],
            ", switched" if switch else "",
        )
        return ViewRebuildOut.model_validate(result)

    # ------------------------------------------------------------ tokens

    @api.get("/tokens", tags=["tokens"])
    def list_tokens(who: Annotated[Principal, reader(Permission.READ_TOKENS)]) -> list[TokenOut]:
        return [_token_out(info) for info in tokens.list()]

    @api.post("/tokens", tags=["tokens"], status_code=status.HTTP_201_CREATED)
    def create_token(
        body: TokenRequest, who: Annotated[Principal, reader(Permission.MANAGE_TOKENS)]
    ) -> IssuedTokenOut:
        """Issue a token; its secret is in this response only."""
        from domain.access import AccessError

        try:
            issued = tokens.create(
                body.role,
                name=body.name,
                site_id=body.site_id,
                expires_at=body.expires_at,
                created_by=f"{who.name} (token {who.token_id})",
                reason=body.reason,
                now=now(),
            )
        except AccessError as error:
            raise RequestValidationError(
                [{"type": "invalid_grant", "loc": ("body",), "msg": str(error), "input": None}]
            ) from None
        return IssuedTokenOut(token=issued.token, **_token_out(issued.info).model_dump())

    @api.post("/tokens/{token_id}/revoke", tags=["tokens"])
    def revoke_token(
        token_id: str,
        body: Revocation,
        who: Annotated[Principal, reader(Permission.MANAGE_TOKENS)],
    ) -> TokenOut:
        from domain.access import AccessError

        try:
            info = tokens.revoke(
                token_id, by=f"{who.name} (token {who.token_id})", reason=body.reason, now=now()
            )
        except NoSuchToken:
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND) from None
        except AccessError as error:
            raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
        return _token_out(info)

    api.include_router(dashboard_router(app, views, auth, now))
    api.state.read_models = views
    api.state.stop = stop
    return api


OTHER_SITE = "participant of another site"


def _masker(who: Principal, views: ReadModels) -> Any:
    """For a site user: a function replacing, in any JSON value, every id of another
    site's participant (free texts of trial-level events and alerts name them); for
    anyone else: the identity."""
    if who.role != "site":
        return lambda value: value
    others = sorted(
        (p for (_, p), site in views.participants.items() if not who.sees_site(site)),
        key=len,
        reverse=True,
    )
    if not others:
        return lambda value: value
    pattern = re.compile("|".join(re.escape(p) for p in others))

    def mask(value: Any) -> Any:
        if isinstance(value, str):
            return pattern.sub(OTHER_SITE, value)
        if isinstance(value, dict):
            return {k: mask(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v) for v in value]
        return value

    return mask


def _redacted(who: Principal, event: dict[str, Any]) -> dict[str, Any]:
    """A trial-level event as a site user sees it: without the keys and causes that
    name other sites' participants (a site sees its own participants only)."""
    if who.role != "site" or event["participant_id"] != TRIAL_LEVEL_PARTICIPANT:
        return event
    data = {k: v for k, v in event["data"].items() if k not in ("key", "evidence")}
    return event | {"caused_by": [], "data": data}


def _nca_out(result: Any) -> dict[str, Any]:
    out = asdict(result)
    out["profile"] = [{"day": day, "value": value} for day, value in result.profile]
    return out


def _change_out(change: Any) -> dict[str, Any]:
    out = asdict(change)
    for key in ("assessed_at", "baseline_at"):
        if out.get(key) is not None:
            out[key] = out[key].isoformat()
    return out


def _token_out(info: Any) -> TokenOut:
    return TokenOut(
        token_id=info.token_id,
        name=info.name,
        role=info.role,
        site_id=info.site_id,
        expires_at=info.expires_at,
        created_by=info.created_by,
        created_at=info.created_at,
        revoked_at=info.revoked_at,
    )


def _site_of(views: ReadModels, event: SafetyEvent) -> str | None:
    if event.participant_id == TRIAL_LEVEL_PARTICIPANT:
        return None
    site = event.data.get("site_id") if event.type.startswith("alert.") else None
    if isinstance(site, str):
        return site
    return views.participants.get((event.trial_id, event.participant_id), "?")


def _participant_events(
    app: SafetyMonitoring, trial_id: str, participant_id: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    clinical: list[dict[str, Any]] = []
    derived: list[dict[str, Any]] = []
    for event in app.repository.event_store.get(participant_aggregate_id(trial_id, participant_id)):
        if isinstance(event, Participant.ClinicalEventRecorded):
            if event.event["type"] != "clock.ticked":
                clinical.append(event.event)
        elif isinstance(event, SafetyEventRecorded):
            derived.append(event.to_contract().to_wire())
    return clinical, derived


def _evidence(app: SafetyMonitoring, row: AlertRow) -> list[EvidenceOut]:
    """The evidence ids of an alert resolved to the stored events they name."""
    found: dict[str, EvidenceOut] = {}
    if row.participant_id == TRIAL_LEVEL_PARTICIPANT:
        originator: UUID = trial_aggregate_id(row.trial_id)
    else:
        originator = participant_aggregate_id(row.trial_id, row.participant_id)
    wanted = set(row.evidence)
    for event in app.repository.event_store.get(originator):
        if isinstance(event, Participant.ClinicalEventRecorded):
            if event.event["event_id"] in wanted:
                found[event.event["event_id"]] = EvidenceOut(
                    event_id=event.event["event_id"], kind="clinical", event=event.event
                )
        elif isinstance(event, SafetyEventRecorded):
            contract = event.to_contract()
            if contract.event_id in wanted:
                found[contract.event_id] = EvidenceOut(
                    event_id=contract.event_id, kind="derived", event=contract.to_wire()
                )
    return [
        found.get(event_id, EvidenceOut(event_id=event_id, kind="unresolved", event=None))
        for event_id in row.evidence
    ]


def _need_offsets(**moments: datetime | None) -> None:
    """A query time without a UTC offset is ambiguous: 422, as for any invalid query."""
    for name, moment in moments.items():
        if moment is not None and moment.tzinfo is None:
            raise RequestValidationError(
                [{"type": "timezone", "loc": ("query", name), "msg": "needs an offset",
                  "input": str(moment)}]
            )  # fmt: skip
