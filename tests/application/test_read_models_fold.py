"""The API's read models folded in one pass (``projections.views``) are exactly the
read models folded each on its own, over a realistic store.

The store: two simulated cohorts in two trials (the simulator's corrections, voids,
late records, committee decisions and malformed messages included; one cohort with a
DLT at every DL3 infusion, so the trial monitor decides and alerts escalate), an
acknowledged alert and an issued API token (the audit trail's human actions).

Each view on its own is folded as it was before the one-pass fold: the alerts inbox
from the alert events, the safety picture and the kinetics from every event, the
registry from the registrations, the DSMB packet of each trial by
``services.report.build_report`` (its own pass, its own alerts and kinetics) and the
audit trail by ``services.audit.audit_trail`` (its own topic-filtered pass).
"""

from __future__ import annotations

import io
from dataclasses import asdict
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from domain.participant import Participant
from projections.alerts import ALERT_EVENT_CLASSES, AlertsView
from projections.kinetics import KineticsView
from projections.safety_metrics import SafetyPicture
from projections.views import Views
from services.alerts import acknowledge
from services.api import ReadModels, fold_views
from services.audit import audit_trail
from services.dashboard import planned_enrolment
from services.offline import in_memory_application, process_lines
from services.replay import read_model_snapshots, view_snapshots
from services.report import build_report
from services.simulator import CohortSpec, simulate_cohort
from services.tokens import TokenService

TRIALS = ("NCT07049081", "NCT90000001")
NOW = datetime(2026, 9, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def store() -> Any:
    app = in_memory_application()
    specs = (
        CohortSpec(seed=3, participants=6, follow_up_days=40, trial_id=TRIALS[0]),
        CohortSpec(
            seed=4, participants=5, follow_up_days=30, trial_id=TRIALS[1], dlt_heavy_dose="DL3"
        ),
    )
    lines = [m.value for spec in specs for m in simulate_cohort(spec)]  # one stream
    process_lines(lines, io.StringIO(), app=app, now=NOW)
    raised = next(e for e in app.iter_safety_events() if e.type == "alert.raised")
    acknowledge(app, raised.data["alert_id"], by="monitor:ana", at=NOW, comment="seen")
    TokenService(app).create("auditor", name="audit", created_by="test", now=NOW)
    yield app
    app.close()


def separately(app: Any) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Each read model folded on its own, and the DSMB packets (by trial)."""
    alerts, safety, kinetics = AlertsView(), SafetyPicture(), KineticsView()
    participants: dict[tuple[str, str], str] = {}
    after = 0
    while page := app.recorder.select_notifications(
        start=after, limit=500, inclusive_of_start=False
    ):
        for notification in page:
            event: Any = app.mapper.to_domain_event(notification)
            if isinstance(event, ALERT_EVENT_CLASSES):
                alerts.apply(event.to_contract(), notification.id)
            safety.apply(event)
            if isinstance(event, Participant.ClinicalEventRecorded):
                kinetics.apply_clinical(event.event)
            if isinstance(event, Participant.Registered):
                participants[(event.trial_id, event.participant_id)] = event.site_id
        after = page[-1].id
    views = SimpleNamespace(
        alerts=alerts,
        safety=safety,
        kinetics=kinetics,
        participants=participants,
        audit=audit_trail(app),
    )
    packets = {}
    for trial_id in sorted({trial for trial, _ in participants}):
        protocol = app.trial_protocol(trial_id)
        packets[trial_id] = build_report(app, trial_id=trial_id, as_of=None).to_dict()
        assert planned_enrolment(protocol)[0] > 0
    return views, packets


def test_the_store_has_what_every_view_reads(store):
    views = Views()
    fold_views(store, views)
    assert {trial for trial, _ in views.participants} == set(TRIALS)
    assert {row.status for row in views.alerts.rows.values()} >= {"acknowledged", "open"}
    assert any(row.escalated_to for row in views.alerts.rows.values())
    actions = {entry.action for entry in views.audit.entries}
    assert {"alert.acknowledged", "token.issued", "record.corrected"} <= actions
    assert views.safety.decisions and views.safety.tallies
    assert any(subject.pk() for subject in views.kinetics.participants.values())


def test_one_pass_yields_the_views_each_fold_yields_on_its_own(store):
    alone, packets = separately(store)
    views = Views()
    fold_views(store, views, batch_size=97)  # pages that end anywhere

    assert read_model_snapshots(views, store.trial_protocol) == (
        read_model_snapshots(alone)
        | {
            "DSMB packet data": {
                f"{trial} {section}": value
                for trial, packet in packets.items()
                for section, value in read_model_snapshots.__globals__["_normalise"](packet).items()
            }
        }
    )
    # and exactly, log positions and write times included
    assert {k: asdict(v) for k, v in views.alerts.rows.items()} == {
        k: asdict(v) for k, v in alone.alerts.rows.items()
    }
    assert views.audit.entries == alone.audit.entries
    assert views.safety.gauges() == alone.safety.gauges()
    assert views.participants == alone.participants
    assert {k: asdict(v) for k, v in views.kinetics.participants.items()} == {
        k: asdict(v) for k, v in alone.kinetics.participants.items()
    }
    for trial_id, packet in packets.items():
        protocol = store.trial_protocol(trial_id)
        report = views.dsmb.report(
            trial_id=trial_id,
            as_of=None,
            planned_enrolment=planned_enrolment(protocol)[0],
            dose_levels=[level.id for level in protocol.dose_levels],
        )
        assert report.to_dict() == packet
    assert views.position == store.recorder.max_notification_id()


def test_folding_in_steps_is_folding_at_once(store):
    """The API's follower folds what was stored since its last refresh."""
    top = store.recorder.max_notification_id()
    stepped = Views()
    for until in (1, top // 3, top // 3 + 1, 2 * top // 3, top):
        fold_views(store, stepped, until=until)
    assert read_model_snapshots(stepped, store.trial_protocol) == view_snapshots(store)


def test_the_api_serves_the_dashboard_and_the_audit_trail_from_its_generation(store):
    models = ReadModels(store)
    trail = models.audit_entries()
    assert trail == audit_trail(store).entries
    protocol = store.trial_protocol(TRIALS[1])
    report = models.dsmb_report(
        trial_id=TRIALS[1],
        as_of=None,
        planned_enrolment=planned_enrolment(protocol)[0],
        dose_levels=[level.id for level in protocol.dose_levels],
    )
    assert report.to_dict() == build_report(store, trial_id=TRIALS[1], as_of=None).to_dict()
