"""As-of queries on two time axes (issue 7, item 2).

A participant has a fever on D+1 (CRS grade 1, ASTCT 2019). Hours later the site
back-charts that she was on 3 L/min nasal cannula for hypoxia from D+1 09:00: hypoxia
on low-flow oxygen with fever is CRS grade 2, which raises a high CRS alert. As
recorded before that record arrived, ToxWatch knew grade 1 and no alert; as recorded
after, the alert is there; and the clinically true grade at D+1 10:00, given
everything known now, is 2.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from services.alerts import AlertDesk
from services.audit import participant_as_of, trial_as_of
from services.offline import in_memory_application, process_lines

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
TRIAL, WHO = "NCT07049081", "G79-401"


def event(event_id: str, kind: str, at: datetime, **data: Any) -> bytes:
    return json.dumps(
        {"schema": "toxwatch.clinical.v1", "event_id": event_id, "type": kind,
         "trial_id": TRIAL, "site_id": "CN-001", "participant_id": WHO,
         "occurred_at": at.isoformat(), "data": data}
    ).encode()  # fmt: skip


ON_TIME = [
    event("o-1", "participant.enrolled", D0 - timedelta(days=10), disease="SLE",
          dose_level="DL1"),
    event("o-2", "eligibility.confirmed", D0 - timedelta(days=9), confirmed_by="pi"),
    event("o-3", "infusion.administered", D0, dose_level="DL1", cells_per_kg=1.0e6),
    event("o-4", "vitals.recorded", D0 + timedelta(days=1), temperature_c=38.7),
    event("o-5", "vitals.recorded", D0 + timedelta(days=1, hours=4), temperature_c=38.4),
]  # fmt: skip
BACK_CHARTED = event(
    "late-1", "oxygen.changed", D0 + timedelta(days=1, hours=1),
    device="nasal_cannula", flow_l_min=3, reason="hypoxia",
)  # fmt: skip
CLINICAL_MOMENT = D0 + timedelta(days=1, hours=2)


@pytest.fixture(scope="module")
def app_and_moment() -> tuple[Any, datetime]:
    app = in_memory_application()
    now = datetime(2026, 9, 1, tzinfo=UTC)
    process_lines(ON_TIME, io.StringIO(), app=app, now=now)
    AlertDesk(app).run_until_idle()
    time.sleep(0.05)
    between = datetime.now(UTC)
    time.sleep(0.05)
    process_lines([*ON_TIME, BACK_CHARTED], io.StringIO(), app=app, now=now)
    AlertDesk(app).run_until_idle()
    return app, between


def crs_alerts(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in result["alerts"] if a["category"] == "crs"]


def test_as_recorded_before_the_late_record_there_was_grade_1_and_no_alert(app_and_moment):
    app, between = app_and_moment
    then = participant_as_of(app, TRIAL, WHO, recorded_at=between, clinical_at=CLINICAL_MOMENT)
    assert then["grades"]["CRS"] == 1
    assert crs_alerts(then) == []


def test_as_recorded_after_it_the_crs_alert_has_fired(app_and_moment):
    app, _ = app_and_moment
    now = participant_as_of(app, TRIAL, WHO, recorded_at=None, clinical_at=CLINICAL_MOMENT)
    [alert] = crs_alerts(now)
    assert (alert["severity"], alert["status"]) == ("high", "open")
    assert "CRS grade 2" in alert["title"] or "revised to grade 2" in alert["title"]


def test_the_clinically_true_grade_at_that_time_includes_the_late_record(app_and_moment):
    app, _ = app_and_moment
    now = participant_as_of(app, TRIAL, WHO, recorded_at=None, clinical_at=CLINICAL_MOMENT)
    assert now["grades"]["CRS"] == 2
    # Before the oxygen started, it was grade 1 then too.
    earlier = participant_as_of(
        app, TRIAL, WHO, recorded_at=None, clinical_at=D0 + timedelta(days=1, minutes=30)
    )
    assert earlier["grades"]["CRS"] == 1


# ------------------------------------------------------------ the trial


def test_the_trial_as_recorded_before_the_late_record_had_grade_1_and_no_crs_alert(
    app_and_moment,
):
    app, between = app_and_moment
    then = trial_as_of(app, TRIAL, recorded_at=between, clinical_at=CLINICAL_MOMENT)
    # CTCAE v5 also grades the fever itself: 38.0-39.0 C is grade 1.
    assert then["participants"][WHO] == {"dose_level": "DL1", "grades": {"CRS": 1, "Fever": 1}}
    assert crs_alerts(then) == []
    assert then["recorded_at"] == between.isoformat()


def test_the_trial_as_recorded_now_has_the_alert_and_the_clinically_true_grade_2(
    app_and_moment,
):
    app, _ = app_and_moment
    now = trial_as_of(app, TRIAL, recorded_at=None, clinical_at=CLINICAL_MOMENT)
    assert now["participants"][WHO]["grades"]["CRS"] == 2
    [alert] = crs_alerts(now)
    assert (alert["severity"], alert["status"]) == ("high", "open")
    assert now["open_alerts"] >= 1
    # The trial's view of the participant agrees with the participant's own.
    own = participant_as_of(app, TRIAL, WHO, recorded_at=None, clinical_at=CLINICAL_MOMENT)
    assert now["participants"][WHO]["grades"] == own["grades"]


def test_a_moment_before_anything_was_recorded_knows_nothing(app_and_moment):
    app, _ = app_and_moment
    nothing = trial_as_of(app, TRIAL, recorded_at=datetime(2020, 1, 1, tzinfo=UTC),
                          clinical_at=None)  # fmt: skip
    assert (nothing["participants"], nothing["alerts"], nothing["derived_events_known"]) == (
        {},
        [],
        0,
    )
