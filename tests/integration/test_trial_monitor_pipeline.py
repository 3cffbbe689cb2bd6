"""The trial monitor end to end (issue 4): a simulated cohort whose highest dose level
is DLT-heavy, streamed through Kafka to the worker, with ``toxwatch monitor`` following
the store and the relay publishing, gives the trial-level events ``toxwatch process``
gives on the same input, including a restart of the monitor mid-stream.

The cohort (services/simulator.py, ``dlt_heavy_dose``): nine participants in three
cohorts of three; at DL3 the first has grade 4 CRS (two vasopressors at once, reference
§1) and the others a grade 3 LICATS flare (DLT rule 6, §7); the safety review committee
resumes enrolment seven days after the grade 4 CRS. Under the trial's protocol
(BOIN, target 0.3, §8): the grade 4 CRS pauses enrolment (fixed pause rule), DL3 is
de-escalated at 1/1 and 2/2, two DLTs among its first six evaluable exceed the MTD,
and 3/3 eliminates it (P(p > 0.3 | 3/3) = 0.992 > 0.95).

Trial events are compared by what they say, latest per key: the monitor publishes a
decision again (``revises``) when an outcome from another partition arrives after a
later one, so the live log may hold corrections the offline one does not; their
final content must agree.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from services.simulator import CohortSpec, simulate_cohort
from tests.conftest import Kafka, Services, Store, Topics, toxwatch_executable
from tests.integration import duplicated_ids, run_process_command, wait_until

pytestmark = pytest.mark.broker

PROTOCOL = Path(__file__).resolve().parents[2] / "protocols" / "lucar-g79.toml"
COHORT = CohortSpec(participants=9, follow_up_days=40, malformed=False, dlt_heavy_dose="DL3")
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def trial_state(events: list[dict[str, Any]]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """The trial monitor's events by key (trial-level, and its deviations, which name
    the infused participant), the latest of each, without ``revises``, less those
    withdrawn."""
    state = {}
    for event in events:
        if event["type"].startswith("alert."):
            continue  # only a running ``toxwatch alerts`` publishes them
        data = dict(event["data"])
        key = data.get("key", "")
        if event["participant_id"] != "-" and not key.startswith("trial-deviation:"):
            continue
        data.pop("revises", None)
        state[key] = (event["type"], event["effective_at"], data)
    # A finding withdrawn later (an outcome from another partition arrived after a later
    # one) is no longer what the monitor says.
    return {key: value for key, value in state.items() if not value[2].get("withdrawn")}


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_dlt_heavy_dose_is_de_escalated_eliminated_and_paused_the_same_live_and_offline(
    broker: Kafka, fresh_topics: Topics, store: Store, services: Services, tmp_path: Path
) -> None:
    messages = simulate_cohort(COHORT)
    offline = run_process_command(
        [m.value for m in messages],
        tmp_path,
        toxwatch_executable(),
        with_trial_level=True,
        args=("--protocol", str(PROTOCOL)),
    )
    expected = trial_state(offline)
    said = {
        (kind, data.get("decision"), data.get("rule_id")) for kind, _, data in expected.values()
    }
    # What reference §8 makes of this cohort (module docstring):
    assert ("dose.decision", "de_escalate", None) in said
    assert ("dose.decision", "eliminate", None) in said
    assert ("stopping_rule.triggered", None, "grade4_crs_or_icans") in said
    assert ("stopping_rule.triggered", None, "dlts_exceeding_mtd") in said
    assert ("enrollment.paused", None, None) in said
    assert ("enrollment.resumed", None, None) in said
    eliminated = [d for k, _, d in expected.values() if d.get("decision") == "eliminate"]
    assert [(d["dose_level"], d["n"], d["y"]) for d in eliminated] == [("DL3", 3, 3)]
    resumed = [d for k, _, d in expected.values() if k == "enrollment.resumed"]
    assert resumed[0]["by"].startswith("src")

    env = fresh_topics.env() | store.env | {"TOXWATCH_PROTOCOL_FILE": str(PROTOCOL)}
    store.initialise()
    services.start("worker", env)
    monitor = services.start("monitor", env)
    relay = services.start("relay", env)
    broker.produce_clinical(fresh_topics.clinical, [(m.key, m.value) for m in messages])

    with broker.reader(fresh_topics.safety) as safety:
        published: list[dict[str, Any]] = []

        def seen() -> dict[str, Any]:
            published[:] = [record.json() for record in safety.read_to_end(timeout=30)]
            return trial_state(published)

        # Restart the monitor once it has published part of the trial's events.
        assert wait_until(lambda: len(seen()) >= 3, timeout=300), services.logs()
        assert len(seen()) < len(expected), "the monitor should be stopped mid-stream"
        monitor.kill(signal.SIGKILL)
        monitor = services.start("monitor", env)
        assert wait_until(lambda: seen() == expected, timeout=400), (
            sorted(set(expected) ^ set(seen())),
            services.logs(),
        )
    assert monitor.alive() and relay.alive(), services.logs()
    assert duplicated_ids(published) == {}

    services.stop_all()
    application = store.open()
    try:
        stored = [event.to_wire() for event in application.iter_safety_events()]
    finally:
        application.close()
    trial_stored = [e for e in stored if e["participant_id"] == "-"]
    trial_published = [e for e in published if e["participant_id"] == "-"]
    assert duplicated_ids(stored) == {}
    assert len(trial_stored) == len(trial_published), "every stored trial event published once"
    assert trial_state(stored) == expected
