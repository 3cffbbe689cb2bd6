"""The replay bench's store (``services.bench_store``): a simulated base replicated
under new trial ids is, trial by trial, the base again.

Each copy's read models are the base trial's under the copy's trial id: the same
participants at the same sites, the same safety metrics, the same audit trail, as many
alerts (under ids made from the new trial id, so none collides with the base's).
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

from projections.alerts import alert_id_for
from projections.views import Views
from services.api import fold_views
from services.bench_store import replicate, trial_id_of
from services.offline import in_memory_application, process_lines
from services.simulator import CohortSpec, simulate_cohort

NOW = datetime(2026, 9, 1, tzinfo=UTC)


def test_a_copy_is_the_base_trial_again_under_its_own_ids():
    app = in_memory_application()
    spec = CohortSpec(seed=5, participants=3, follow_up_days=20, malformed=False)
    process_lines([m.value for m in simulate_cohort(spec)], io.StringIO(), app=app, now=NOW)
    base = app.recorder.max_notification_id()

    stored = replicate(app, 2 * base + 10)  # two copies, the second cut short

    assert stored == 2 * base + 10
    views = Views()
    fold_views(app, views)
    first, copy, cut = trial_id_of(0), trial_id_of(1), trial_id_of(2)
    assert {first, copy} <= {trial for trial, _ in views.participants} <= {first, copy, cut}
    of = {trial: {p: s for (t, p), s in views.participants.items() if t == trial}
          for trial in (first, copy)}  # fmt: skip
    assert of[copy] == of[first]
    gauges = views.safety.gauges()
    for name, family in gauges.items():
        base_values = {k: v for k, v in family.items() if ("trial", first) in k}
        copy_values = {
            tuple((n, first if v == copy else v) for n, v in k): value
            for k, value in family.items()
            if ("trial", copy) in k
        }
        assert copy_values == base_values, name
    rows = {trial: [r for r in views.alerts.rows.values() if r.trial_id == trial]
            for trial in (first, copy)}  # fmt: skip
    assert rows[first] and len(rows[copy]) == len(rows[first])
    assert {r.alert_id for r in rows[copy]} == {
        alert_id_for(copy, r.category, situation)
        for r in rows[first]
        for situation in [_situation(app, r.alert_id)]
    }
    trail = [e for e in views.audit.entries if e.trial_id == copy]
    assert [(e.action, e.what) for e in trail] == [
        (e.action, e.what) for e in views.audit.entries if e.trial_id == first
    ]


def _situation(app, alert_id: str) -> str:
    from projections.alerts import Alert

    alert: Alert = app.repository.get(Alert.id_for(alert_id))
    return alert.situation
