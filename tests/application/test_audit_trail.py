"""The audit trail (issue 7, item 4): every human action with who, when, what and
why; a correction with its original and replacement side by side."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from domain.protocol import ProtocolParameters
from services.alerts import AlertDesk, acknowledge
from services.audit import audit_trail
from services.offline import in_memory_application, process_lines
from services.tokens import TokenService

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
TRIAL = "NCT07049081"


def event(event_id: str, kind: str, days: float, participant: str = "G79-301",
          recorded_by: str = "crc-cn001-01", **data: Any) -> bytes:  # fmt: skip
    return json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": event_id,
            "type": kind,
            "trial_id": TRIAL,
            "site_id": "CN-001",
            "participant_id": participant,
            "occurred_at": (D0 + timedelta(days=days)).isoformat(),
            "recorded_by": recorded_by,
            "data": data,
        }
    ).encode()


STREAM = [
    event("a-01", "participant.enrolled", -10, disease="SLE", dose_level="DL1"),
    event("a-02", "eligibility.confirmed", -9, confirmed_by="pi"),
    event("a-03", "infusion.administered", 0, dose_level="DL1", cells_per_kg=1.0e6),
    event("a-04", "vitals.recorded", 1, temperature_c=39.1),
    event("a-05", "oxygen.changed", 1.05, device="nasal_cannula", flow_l_min=2),
    event("a-06", "vitals.recorded", 1.1, temperature_c=38.8, spo2_pct=93),
    event("a-07", "vitals.recorded", 1.5, temperature_c=36.1),
    event("a-08", "record.corrected", 1.6, corrects_event_id="a-07",
          data={"temperature_c": 38.1}, reason="transcription error: 38.1 read as 36.1"),
    event("a-09", "record.voided", 1.7, voids_event_id="a-06",
          reason="entered for the wrong participant"),
    event("a-10", "adjudication.recorded", 5, recorded_by="src-secretary",
          target={"kind": "crs_episode", "id": "1"}, decision="confirm",
          adjudicator="SRC chair", reason="consistent with CRS"),
    event("a-11", "committee.decided", 6, participant="-", recorded_by="dsmb-secretary",
          committee="dsmb", decision="pause_enrollment", reason="review of CRS at DL1"),
]  # fmt: skip


@pytest.fixture(scope="module")
def trail() -> Any:
    app = in_memory_application()
    process_lines(STREAM, io.StringIO(), app=app, now=datetime(2026, 9, 1, tzinfo=UTC))
    AlertDesk(app).run_until_idle()
    alert_id = next(r for r in _alerts(app) if r["data"]["category"] == "crs")["data"]["alert_id"]
    acknowledge(app, alert_id, by="Dr Monitor (monitor)", at=datetime(2026, 3, 3, tzinfo=UTC),
                comment="tocilizumab given, PI informed")  # fmt: skip
    app.activate_protocol(
        ProtocolParameters(version="2"), activated_by="sponsor QA", reason="amendment 2",
        at=datetime(2026, 4, 1, tzinfo=UTC),
    )  # fmt: skip
    tokens = TokenService(app)
    issued = tokens.create("auditor", name="inspector", created_by="admin Ada",
                           reason="regulatory inspection", now=datetime.now(UTC))  # fmt: skip
    tokens.revoke(issued.token_id, by="admin Ada", reason="inspection over",
                  now=datetime.now(UTC))  # fmt: skip
    return audit_trail(app)


def _alerts(app: Any) -> list[dict[str, Any]]:
    return [e.to_wire() for e in app.iter_safety_events() if e.type == "alert.raised"]


def test_every_kind_of_human_action_is_listed_in_log_order(trail: Any) -> None:
    actions = [entry.action for entry in trail.entries]
    assert actions == [
        "record.corrected",
        "record.voided",
        "adjudication.recorded",
        "committee.decided",
        "alert.acknowledged",
        "protocol.activated",
        "token.issued",
        "token.revoked",
    ]
    positions = [entry.position for entry in trail.entries]
    assert positions == sorted(positions)


def test_a_correction_shows_the_original_and_the_replacement_side_by_side(trail: Any) -> None:
    [correction] = [e for e in trail.entries if e.action == "record.corrected"]
    assert correction.original == {"temperature_c": 36.1}
    assert correction.replacement == {"temperature_c": 38.1}
    assert (correction.who, correction.why) == (
        "crc-cn001-01", "transcription error: 38.1 read as 36.1",
    )  # fmt: skip
    [void] = [e for e in trail.entries if e.action == "record.voided"]
    assert void.original == {"temperature_c": 38.8, "spo2_pct": 93}


def test_each_entry_says_who_what_and_why(trail: Any) -> None:
    said = {e.action: (e.who, e.what, e.why) for e in trail.entries}
    assert said["adjudication.recorded"] == ("SRC chair", "confirm crs_episode 1",
                                             "consistent with CRS")  # fmt: skip
    assert said["committee.decided"][0].startswith("dsmb")
    assert said["alert.acknowledged"][0] == "Dr Monitor (monitor)"
    assert said["alert.acknowledged"][2] == "tocilizumab given, PI informed"
    assert said["protocol.activated"][:1] == ("sponsor QA",)
    assert "version 2" in said["protocol.activated"][1]
    assert said["token.issued"][0] == "admin Ada" and "role auditor" in said["token.issued"][1]
    assert said["token.revoked"][2] == "inspection over"


def test_the_trail_filters_by_participant_and_recording_time(trail: Any) -> None:
    mine = trail.select(participant_id="G79-301")
    assert {e.action for e in mine} == {
        "record.corrected", "record.voided", "adjudication.recorded", "alert.acknowledged",
    }  # fmt: skip
    last = trail.entries[-1]
    assert trail.select(since=last.recorded_at) == [last]
