"""Cellular kinetics and disease activity through the API (issue 6, item 5): the
reference's worked example recorded as ``pk.resulted`` events (reference §11) and a
SLEDAI-2K course (§12), read back per participant and per dose level."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.api import create_app
from services.offline import in_memory_application, process_lines
from services.tokens import TokenService

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)  # the infusion
TRIAL, WHO = "NCT07049081", "G79-201"
#: Reference §11's example: (day, transgene copies/ug gDNA), None = below LLOQ.
EXAMPLE = [(0, None), (1, 50), (4, 2000), (7, 15000), (10, 30000), (14, 12000), (21, 3000),
           (28, 800), (56, None), (84, None)]  # fmt: skip


def event(n: int, kind: str, days: float, **data: Any) -> bytes:
    return json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": f"kin-{n:03d}",
            "type": kind,
            "trial_id": TRIAL,
            "site_id": "CN-001",
            "participant_id": WHO,
            "occurred_at": (D0 + timedelta(days=days)).isoformat(),
            "data": data,
        }
    ).encode()


def stream() -> list[bytes]:
    records = [
        event(1, "participant.enrolled", -14, disease="SLE", dose_level="DL1"),
        event(2, "eligibility.confirmed", -13, confirmed_by="pi"),
        event(3, "disease.assessed", -7, instrument="SLEDAI-2K", score=12),
        event(4, "infusion.administered", 0, dose_level="DL1", cells_per_kg=1.0e6),
        event(5, "disease.assessed", 28, instrument="SLEDAI-2K", score=8),
        event(6, "disease.assessed", 84, instrument="SLEDAI-2K", score=4),
    ]
    for n, (day, value) in enumerate(EXAMPLE, start=10):
        pk = {"analyte": "transgene_copies_per_ug_gdna", "value": value or 0}
        if value is None:
            pk |= {"below_lloq": True, "lloq": 10}
        records.append(event(n, "pk.resulted", day, **pk))
    return records


@pytest.fixture(scope="module")
def client() -> Any:
    app = in_memory_application()
    process_lines(stream(), io.StringIO(), app=app, now=datetime(2026, 9, 1, tzinfo=UTC))
    token = (
        TokenService(app)
        .create("dsmb", name="dsmb statistician", created_by="test", now=datetime.now(UTC))
        .token
    )
    with TestClient(create_app(app, follow=False)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {token}"
        yield test_client
    app.close()


def test_the_reference_worked_example_gives_its_nca(client: Any) -> None:
    # §11: Cmax 30,000 at day 10, Tlast day 28 with Clast 800, AUC0-28 245,900.
    body = client.get(f"/participants/{TRIAL}/{WHO}/kinetics").json()
    result = body["pk"]["transgene_copies_per_ug_gdna"]
    assert (result["cmax"], result["tmax_day"]) == (30000, 10)
    assert (result["clast"], result["tlast_day"]) == (800, 28)
    assert result["auc_0_28"] == pytest.approx(245_900)
    assert result["auc_complete"] is True


def test_sledai_falling_from_12_to_4_by_week_12_is_low_disease_activity(client: Any) -> None:
    # §12: change from the last pre-infusion score; SLEDAI-2K <= 4 is low activity.
    body = client.get(f"/participants/{TRIAL}/{WHO}/kinetics").json()
    week12 = next(c for c in body["disease"] if c["week"] == 12)
    assert (week12["baseline_score"], week12["score"], week12["change"]) == (12, 4, -8)
    assert week12["improved"] is True and week12["rule_met"] is True


def test_the_dose_level_summary_carries_the_kinetics_and_the_response(client: Any) -> None:
    [dl1] = client.get(f"/trials/{TRIAL}/kinetics").json()
    pk = dl1["pk"]["transgene_copies_per_ug_gdna"]
    assert (dl1["dose_level"], dl1["infused"]) == ("DL1", 1)
    assert (pk["median_cmax"], pk["median_auc_0_28"]) == (30000, pytest.approx(245_900))
    assert dl1["disease_response"]["12"] == {
        "assessed": 1, "improved": 1, "rule_met": 1, "rule_assessed": 1,
    }  # fmt: skip
