"""The simulated LUCAR-G79 cohort: deterministic, contract-valid, clinically plausible."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import time
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from domain.contract import CLINICAL_EVENT_ADAPTER, RejectionError
from domain.validation import validate_message
from services import simulator
from services.simulator import (
    MALFORMED_KINDS,
    CohortSpec,
    SimulatedMessage,
    malformed_examples,
    simulate_cohort,
    write_jsonl,
)

SMALL = CohortSpec(participants=6, follow_up_days=28)
DLT_HEAVY = CohortSpec(participants=9, dlt_heavy_dose="DL3", follow_up_days=40, malformed=False)
#: SHA-256 of the default cohort (``_digest``). Change it only for a deliberate change of
#: the simulation, like the golden derivation; options left at their defaults keep it.
DEFAULT_COHORT_SHA256 = "10059b01dc18ed87cc490f77ae5580e3c9f348ce8809182d011b18c609affc41"
REQUIRED_MALFORMED_KINDS = {
    "not_json",
    "wrong_schema",
    "unknown_type",
    "missing_field",
    "unknown_field",
    "wrong_unit",
    "implausible_temperature",
    "negative_count",
    "future_occurred_at",
    "oversized",
    "wrong_types",
    "empty_body",
    "bad_timestamp",
    "trial_level_with_participant",
}


@pytest.fixture(scope="module")
def cohort() -> list[SimulatedMessage]:
    return simulate_cohort(CohortSpec())


@pytest.fixture(scope="module")
def events(cohort: list[SimulatedMessage]) -> list[tuple[SimulatedMessage, dict[str, Any]]]:
    return [(m, json.loads(m.value)) for m in cohort if m.kind == "valid"]


def _of_type(
    events: list[tuple[SimulatedMessage, dict[str, Any]]], type_: str
) -> list[dict[str, Any]]:
    return [e for _, e in events if e["type"] == type_]


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _study_day(events: list[tuple[SimulatedMessage, dict[str, Any]]], event: dict[str, Any]) -> int:
    """Day of ``event`` with the infusion on day 0."""
    (infusion,) = [
        e
        for e in _of_type(events, "infusion.administered")
        if e["participant_id"] == event["participant_id"]
    ]
    return (_at(event["occurred_at"]).date() - _at(infusion["occurred_at"]).date()).days


def _encounters(
    events: list[tuple[SimulatedMessage, dict[str, Any]]], participant_id: str, kind: str
) -> list[dict[str, Any]]:
    return [
        e
        for e in _of_type(events, "encounter.changed")
        if e["participant_id"] == participant_id and e["data"]["kind"] == kind
    ]


def _crs_reports(events: list[tuple[SimulatedMessage, dict[str, Any]]]) -> list[dict[str, Any]]:
    """CRS adverse event reports, in the order they were reported."""
    reports = [
        e
        for e in _of_type(events, "adverse_event.reported")
        if e["data"]["term"] == "Cytokine release syndrome"
    ]
    return sorted(reports, key=lambda e: _at(e["reported_at"]))


def _first_with_crs_grade(
    events: list[tuple[SimulatedMessage, dict[str, Any]]], grades: set[int]
) -> str:
    who: list[str] = [
        e["participant_id"] for e in _crs_reports(events) if e["data"]["grade"] in grades
    ]
    return min(who)


def _adjudication_of(
    events: list[tuple[SimulatedMessage, dict[str, Any]]], target_kind: str
) -> dict[str, Any]:
    (adjudication,) = [
        e
        for e in _of_type(events, "adjudication.recorded")
        if e["data"]["target"]["kind"] == target_kind
    ]
    return adjudication


def _digest(messages: list[SimulatedMessage]) -> str:
    digest = hashlib.sha256()
    for m in messages:
        digest.update(repr((m.key, m.value, m.deliver_at.isoformat(), m.kind)).encode())
    return digest.hexdigest()


# -- determinism and size


def test_same_seed_gives_byte_identical_messages() -> None:
    assert simulate_cohort(SMALL) == simulate_cohort(SMALL)


def test_a_different_seed_gives_a_different_cohort() -> None:
    other = CohortSpec(seed=80, participants=6, follow_up_days=28)
    assert [m.value for m in simulate_cohort(SMALL)] != [m.value for m in simulate_cohort(other)]


def test_default_cohort_is_sized_for_a_demo_and_fast_to_generate() -> None:
    started = time.perf_counter()
    messages = simulate_cohort(CohortSpec())
    elapsed = time.perf_counter() - started
    assert 15_000 <= len(messages) <= 30_000
    assert elapsed < 5.0


def test_messages_are_sorted_by_delivery_time(cohort: list[SimulatedMessage]) -> None:
    times = [m.deliver_at for m in cohort]
    assert times == sorted(times)


# -- the contract


def test_every_valid_message_passes_the_contract(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    for message, event in events:
        parsed = CLINICAL_EVENT_ADAPTER.validate_json(
            message.value, context={"now": message.deliver_at}
        )
        assert parsed.schema_ == "toxwatch.clinical.v1"
        assert message.key == event["participant_id"].encode()
        assert parsed.occurred_at <= parsed.reported_at <= message.deliver_at
        assert event["source"]["system"] and event["source"]["reference"]
        assert event["occurred_at"].endswith("+08:00")


def test_every_valid_message_passes_the_workers_validation(
    cohort: list[SimulatedMessage],
) -> None:
    for message in cohort:
        if message.kind == "valid":
            result = validate_message(message.value, now=message.deliver_at)
            assert not isinstance(result, RejectionError), (result, message.value[:200])


def test_event_ids_are_unique_across_valid_and_malformed_messages(
    cohort: list[SimulatedMessage],
) -> None:
    ids = []
    for message in cohort:
        try:
            ids.append(json.loads(message.value)["event_id"])
        except (ValueError, KeyError):
            continue
    assert len(ids) == len(set(ids))


def test_examples_cover_every_required_malformed_kind() -> None:
    at = datetime.fromisoformat("2026-02-01T10:00:00+08:00")
    kinds = [m.kind for m in malformed_examples("NCT07049081", "G79-001", at)]
    assert set(kinds) >= REQUIRED_MALFORMED_KINDS
    assert len(kinds) == len(set(kinds)) == len(MALFORMED_KINDS)


@pytest.mark.parametrize("kind", sorted(REQUIRED_MALFORMED_KINDS))
def test_each_malformed_kind_is_rejected_by_the_contract(kind: str) -> None:
    at = datetime.fromisoformat("2026-02-01T10:00:00+08:00")
    (message,) = [m for m in malformed_examples("NCT07049081", "G79-001", at) if m.kind == kind]
    assert message.deliver_at == at
    if kind == "empty_body":
        assert message.value == b""
        return
    with pytest.raises(ValidationError):
        CLINICAL_EVENT_ADAPTER.validate_json(message.value, context={"now": at})


def test_oversized_message_is_over_the_worker_limit_and_under_kafkas() -> None:
    at = datetime.fromisoformat("2026-02-01T10:00:00+08:00")
    (message,) = [
        m for m in malformed_examples("NCT07049081", "G79-001", at) if m.kind == "oversized"
    ]
    assert 256 * 1024 < len(message.value) < 1024 * 1024
    json.loads(message.value)


def test_future_occurred_at_is_only_rejected_against_the_receiver_clock() -> None:
    at = datetime.fromisoformat("2026-02-01T10:00:00+08:00")
    (message,) = [
        m
        for m in malformed_examples("NCT07049081", "G79-001", at)
        if m.kind == "future_occurred_at"
    ]
    CLINICAL_EVENT_ADAPTER.validate_json(message.value)


def test_cohort_includes_malformed_messages_only_when_asked(
    cohort: list[SimulatedMessage],
) -> None:
    assert {m.kind for m in cohort} - {"valid"} == set(MALFORMED_KINDS)
    clean = simulate_cohort(CohortSpec(participants=6, follow_up_days=28, malformed=False))
    assert {m.kind for m in clean} == {"valid"}


# -- cohort composition


def test_cohort_has_42_participants_over_six_diseases_and_three_dose_levels(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    enrolled = _of_type(events, "participant.enrolled")
    assert [e["participant_id"] for e in enrolled] == [f"G79-{i:03d}" for i in range(1, 43)]
    assert Counter(e["data"]["disease"] for e in enrolled) == {
        d: 7 for d in ("SLE", "SSC", "AAV", "IIM", "TAK", "IGG4RD")
    }
    assert {e["site_id"] for e in enrolled} == {"CN-001", "CN-002", "CN-003"}
    levels = [e["data"]["dose_level"] for e in enrolled]
    assert levels[:9] == ["DL1"] * 3 + ["DL2"] * 3 + ["DL3"] * 3
    assert set(levels) == {"DL1", "DL2", "DL3"}
    gaps = [_at(b["occurred_at"]) - _at(a["occurred_at"]) for a, b in itertools.pairwise(enrolled)]
    assert all(timedelta(days=4) <= gap <= timedelta(days=11) for gap in gaps)


def test_every_participant_is_infused_on_day_0_at_8_after_lymphodepletion(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    infusions = {e["participant_id"]: e for e in _of_type(events, "infusion.administered")}
    assert len(infusions) == 42
    for event in _of_type(events, "lymphodepletion.administered"):
        infused = _at(infusions[event["participant_id"]]["occurred_at"])
        assert infused.hour == 8
        assert (infused.date() - _at(event["occurred_at"]).date()).days in (3, 4, 5)


def test_most_participants_have_crs_and_a_few_have_icans(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    febrile = {
        e["participant_id"]
        for e in _of_type(events, "vitals.recorded")
        if e["data"].get("temperature_c", 0) >= 38.0
    }
    assert 0.65 * 42 <= len(febrile) <= 0.95 * 42
    tocilizumab = {
        e["participant_id"]
        for e in _of_type(events, "medication.administered")
        if e["data"]["drug_class"] == "anti_il6"
    }
    assert tocilizumab and tocilizumab <= febrile
    impaired = {
        e["participant_id"]
        for e in _of_type(events, "neuro.assessed")
        if e["data"].get("ice_score", 10) < 10
        or sum(e["data"].get("ice_items", {"all": 10}).values()) < 10
    }
    assert 2 <= len(impaired) <= 4


def test_every_episode_of_support_ends(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    last_oxygen: dict[str, str] = {}
    running: dict[str, int] = defaultdict(int)
    for event in sorted(events, key=lambda pair: _at(pair[1]["occurred_at"])):
        data, who = event[1]["data"], event[1]["participant_id"]
        if event[1]["type"] == "oxygen.changed":
            last_oxygen[who] = data["device"]
        elif event[1]["type"] == "vasopressor.changed":
            running[who] += {"start": 1, "stop": -1}.get(data["action"], 0)
    assert last_oxygen and set(last_oxygen.values()) == {"room_air"}
    assert all(count == 0 for count in running.values())


def test_some_records_arrive_hours_late(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    bedside_late = [
        e
        for m, e in events
        if e["source"]["system"] in ("bedside", "manual")
        and m.deliver_at - _at(e["occurred_at"]) > timedelta(hours=2)
    ]
    assert len(bedside_late) >= 3


def test_corrections_and_voids_target_earlier_events_of_the_same_participant(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    by_id = {e["event_id"]: (m, e) for m, e in events}
    amendments = _of_type(events, "record.corrected") + _of_type(events, "record.voided")
    assert len(_of_type(events, "record.corrected")) >= 2
    assert len(_of_type(events, "record.voided")) >= 1
    for amendment in amendments:
        data = amendment["data"]
        target_message, target = by_id[data.get("corrects_event_id") or data["voids_event_id"]]
        assert target["participant_id"] == amendment["participant_id"]
        assert target_message.deliver_at < by_id[amendment["event_id"]][0].deliver_at
        assert data["reason"]
        if amendment["type"] == "record.corrected":
            assert set(data["data"]) == set(target["data"])
            assert data["data"] != target["data"]


# -- stories: investigator reports and committee decisions

LICATS = "Local immune effector cell-associated toxicity syndrome"


def test_a_licats_flare_readmits_a_lupus_participant_inside_the_dlt_window(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    # reference §6: LICATS grade 3 = hospitalisation; §7 rule 6: grade >= 3 LICATS is a DLT
    reports = [e for e in _of_type(events, "adverse_event.reported") if e["data"]["term"] == LICATS]
    first, update = sorted(reports, key=lambda e: _at(e["reported_at"]))
    who = first["participant_id"]
    (enrolment,) = [
        e for e in _of_type(events, "participant.enrolled") if e["participant_id"] == who
    ]
    assert enrolment["data"]["disease"] == "SLE"
    assert all(e["data"]["grade"] <= 2 for e in _crs_reports(events) if e["participant_id"] == who)
    assert first["data"] == {
        "ae_id": first["data"]["ae_id"],
        "term": LICATS,
        "grading_scale": "LICATS-2025",
        "grade": 3,
        "serious": True,
        "seriousness": ["hospitalization"],
        "relatedness": "probable",
        "relatedness_lymphodepletion": "unlikely",
        "expected": True,
        "onset_at": first["occurred_at"],
        "outcome": "recovering",
    }
    onset = _at(first["data"]["onset_at"])
    assert timedelta(hours=1) <= _at(first["reported_at"]) - onset <= timedelta(hours=8)
    (planned_discharge,) = [
        e for e in _encounters(events, who, "discharge") if e["data"]["planned"]
    ]
    assert _at(planned_discharge["occurred_at"]) < onset
    assert 14 < _study_day(events, first) <= 28
    (admission,) = [e for e in _encounters(events, who, "admission") if not e["data"]["planned"]]
    assert _at(admission["occurred_at"]) == onset
    assert update["participant_id"] == who
    assert update["data"] == first["data"] | {
        "resolved_at": update["data"]["resolved_at"],
        "outcome": "recovered",
    }
    (discharge,) = [e for e in _encounters(events, who, "discharge") if not e["data"]["planned"]]
    home = _at(discharge["occurred_at"])
    assert onset < _at(update["data"]["resolved_at"]) < home < _at(update["reported_at"])
    assert timedelta(days=5) <= home - onset <= timedelta(days=7)


def test_a_late_unexpected_serious_ae_is_a_susar_after_the_dlt_window(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    # reference §10: serious, at least possibly related and unexpected = SUSAR
    (report,) = [
        e for e in _of_type(events, "adverse_event.reported") if e["data"]["term"] == "Parkinsonism"
    ]
    data, who = report["data"], report["participant_id"]
    assert (data["grading_scale"], data["grade"]) == ("CTCAE-5.0", 3)
    assert data["serious"] is True and data["seriousness"] == ["hospitalization"]
    assert (data["relatedness"], data["expected"]) == ("possible", False)
    assert "resolved_at" not in data
    assert _study_day(events, report) == 44
    assert (_at(report["reported_at"]).date() - _at(data["onset_at"]).date()).days == 1
    licats = [e for e in _of_type(events, "adverse_event.reported") if e["data"]["term"] == LICATS]
    assert who not in {e["participant_id"] for e in licats}
    (admission,) = [e for e in _encounters(events, who, "admission") if not e["data"]["planned"]]
    assert _at(data["onset_at"]) < _at(admission["occurred_at"]) < _at(report["reported_at"])


def test_the_committee_confirms_a_serious_crs_reported_during_the_planned_stay(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    adjudication = _adjudication_of(events, "event")
    who = adjudication["participant_id"]
    serious = [
        e for e in _crs_reports(events) if e["participant_id"] == who and e["data"]["serious"]
    ]
    target = serious[0]
    assert adjudication["data"]["target"] == {"kind": "event", "id": target["event_id"]}
    assert (target["data"]["grade"], target["data"]["seriousness"]) == (3, ["hospitalization"])
    (admission,) = [e for e in _encounters(events, who, "admission") if e["data"]["planned"]]
    (discharge,) = [e for e in _encounters(events, who, "discharge") if e["data"]["planned"]]
    assert (
        _at(admission["occurred_at"])
        <= _at(target["data"]["onset_at"])
        < _at(discharge["occurred_at"])
    )
    assert any(e["participant_id"] == who for e in _of_type(events, "vasopressor.changed"))
    since_report = _at(adjudication["occurred_at"]) - _at(target["reported_at"])
    assert timedelta(hours=40) <= since_report <= timedelta(hours=56)
    assert adjudication["data"] == {
        "target": {"kind": "event", "id": target["event_id"]},
        "decision": "confirm",
        "reason": "Stay prolonged by grade 3 CRS requiring vasopressors",
        "adjudicator": "SRC",
    }


def test_the_committee_regrades_the_first_grade_2_crs_episode_to_grade_1(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    adjudication = _adjudication_of(events, "crs_episode")
    who = adjudication["participant_id"]
    assert who == _first_with_crs_grade(events, {2})
    assert adjudication["data"] == {
        "target": {"kind": "crs_episode", "id": "1"},
        "decision": "regrade",
        "grade": 1,
        "reason": "Hypotension/hypoxia reading was a charting artefact; "
        "repeat measurement normal within 10 min",
        "adjudicator": "SRC",
    }
    (ended,) = [
        _at(e["data"]["resolved_at"])
        for e in _crs_reports(events)
        if e["participant_id"] == who and "resolved_at" in e["data"]
    ]
    since_end = _at(adjudication["occurred_at"]) - ended
    assert timedelta(hours=64) <= since_end <= timedelta(hours=80)


def test_the_committee_rejects_the_iechs_screen_of_the_first_crs_of_grade_2_or_more(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    adjudication = _adjudication_of(events, "iechs_screen")
    who = adjudication["participant_id"]
    assert who == _first_with_crs_grade(events, {2, 3, 4})
    assert adjudication["data"] == {
        "target": {"kind": "iechs_screen", "id": "iechs:1"},
        "decision": "reject",
        "reason": "Ferritin rise explained by CRS; no new cytopenia, coagulopathy or "
        "hepatic dysfunction",
        "adjudicator": "SRC",
    }
    onset = _at(next(e for e in _crs_reports(events) if e["participant_id"] == who)["occurred_at"])
    since_onset = _at(adjudication["occurred_at"]) - onset
    assert timedelta(hours=40) <= since_onset <= timedelta(hours=56)


def test_committee_decisions_arrive_through_the_edc(
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    adjudications = _of_type(events, "adjudication.recorded")
    assert len(adjudications) == 3
    assert all(e["source"]["system"] == "edc" for e in adjudications)
    assert all(e["data"]["adjudicator"] == "SRC" for e in adjudications)


def test_stories_change_no_other_message(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = CohortSpec(participants=9, follow_up_days=56)
    with_stories = {(m.value, m.deliver_at) for m in simulate_cohort(spec)}
    monkeypatch.setattr(simulator, "_with_stories", lambda plans: plans)
    without = {(m.value, m.deliver_at) for m in simulate_cohort(spec)}
    added = [json.loads(value) for value, _ in with_stories - without]
    assert without < with_stories
    assert {e["type"] for e in added} == {
        "adverse_event.reported",
        "adjudication.recorded",
        "encounter.changed",
    }


def test_stories_after_the_follow_up_are_left_out() -> None:
    messages = [json.loads(m.value) for m in simulate_cohort(SMALL) if m.kind == "valid"]
    terms = {e["data"]["term"] for e in messages if e["type"] == "adverse_event.reported"}
    assert LICATS in terms
    assert "Parkinsonism" not in terms


# -- ticks


def test_ticks_are_trial_level_hourly_and_span_the_whole_cohort(
    cohort: list[SimulatedMessage],
    events: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    ticks = [(m, e) for m, e in events if e["type"] == "clock.ticked"]
    assert all(m.key == b"-" and e["participant_id"] == "-" for m, e in ticks)
    assert all(e["data"] == {} and e["event_id"] == f"tick-{e['occurred_at']}" for _, e in ticks)
    assert all(m.deliver_at == _at(e["occurred_at"]) for m, e in ticks)
    times = [m.deliver_at for m, _ in ticks]
    assert times[0] == CohortSpec().start
    assert {b - a for a, b in itertools.pairwise(times)} == {timedelta(hours=1)}
    assert times[-1] >= cohort[-1].deliver_at


def test_no_ticks_without_a_cadence() -> None:
    messages = simulate_cohort(CohortSpec(participants=3, follow_up_days=14, tick_every=None))
    assert not [m for m in messages if m.key == b"-"]


# -- JSONL


def test_jsonl_has_one_message_per_line(tmp_path: Any) -> None:
    at = datetime.fromisoformat("2026-02-01T10:00:00+08:00")
    messages = simulate_cohort(CohortSpec(participants=2, follow_up_days=7))
    messages += malformed_examples("NCT07049081", "G79-001", at)
    messages.append(SimulatedMessage(b"G79-001", b'{"a":\n1}', at, "not_json"))
    path = tmp_path / "cohort.jsonl"
    write_jsonl(messages, path)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == len(messages)
    assert lines[: len(messages) - 15] == [m.value for m in messages[: len(messages) - 15]]
    text = io.StringIO()
    write_jsonl(messages[:5], text)
    assert text.getvalue().splitlines() == [m.value.decode() for m in messages[:5]]


# -- a dose level where every participant has a DLT (reference section 7)

CRS = "Cytokine release syndrome"


@pytest.fixture(scope="module")
def dlt_heavy() -> list[tuple[SimulatedMessage, dict[str, Any]]]:
    return [(m, json.loads(m.value)) for m in simulate_cohort(DLT_HEAVY)]


def _at_dose(events: list[tuple[SimulatedMessage, dict[str, Any]]], dose_level: str) -> list[str]:
    return [
        e["participant_id"]
        for e in _of_type(events, "participant.enrolled")
        if e["data"]["dose_level"] == dose_level
    ]


def _reports_of(
    events: list[tuple[SimulatedMessage, dict[str, Any]]], participant_id: str, term: str
) -> list[dict[str, Any]]:
    """``participant_id``'s reports of ``term``, in the order they were reported."""
    reports = [
        e
        for e in _of_type(events, "adverse_event.reported")
        if e["participant_id"] == participant_id and e["data"]["term"] == term
    ]
    return sorted(reports, key=lambda e: _at(e["reported_at"]))


def _vasopressor_runs(
    events: list[tuple[SimulatedMessage, dict[str, Any]]], participant_id: str
) -> dict[str, tuple[datetime, datetime]]:
    changes = [
        e for e in _of_type(events, "vasopressor.changed") if e["participant_id"] == participant_id
    ]
    starts = {
        e["data"]["drug"]: _at(e["occurred_at"]) for e in changes if e["data"]["action"] == "start"
    }
    stops = {
        e["data"]["drug"]: _at(e["occurred_at"]) for e in changes if e["data"]["action"] == "stop"
    }
    assert set(starts) == set(stops)
    return {drug: (starts[drug], stops[drug]) for drug in starts}


def test_the_default_cohort_is_unchanged_by_the_dlt_heavy_option(
    cohort: list[SimulatedMessage],
) -> None:
    assert _digest(cohort) == DEFAULT_COHORT_SHA256
    assert _digest(simulate_cohort(CohortSpec(dlt_heavy_dose=None))) == DEFAULT_COHORT_SHA256


def test_a_dlt_heavy_cohort_is_deterministic_and_every_message_validates(
    dlt_heavy: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    assert [m for m, _ in dlt_heavy] == simulate_cohort(DLT_HEAVY)
    for message, _ in dlt_heavy:
        result = validate_message(message.value, now=message.deliver_at)
        assert not isinstance(result, RejectionError), (result, message.value[:200])


def test_the_dlt_heavy_option_changes_only_the_participants_at_that_dose(
    dlt_heavy: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    plain = [json.loads(m.value) for m in simulate_cohort(replace(DLT_HEAVY, dlt_heavy_dose=None))]
    at_dose = set(_at_dose(dlt_heavy, "DL3")) | {"-"}
    assert [e for e in plain if e["participant_id"] not in at_dose] == [
        e for _, e in dlt_heavy if e["participant_id"] not in at_dose
    ]


def test_the_first_participant_at_the_dlt_heavy_dose_has_grade_4_crs_on_two_vasopressors(
    dlt_heavy: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    # reference section 1: two non-vasopressin vasopressors at the same time = grade 4;
    # section 7 rule 2: grade 4 CRS is a DLT
    assert _at_dose(dlt_heavy, "DL3") == ["G79-007", "G79-008", "G79-009"]
    who = "G79-007"
    first, update = _reports_of(dlt_heavy, who, CRS)
    assert first["data"] == {
        "ae_id": f"{who}-AE01",
        "term": CRS,
        "grading_scale": "ASTCT-2019",
        "grade": 4,
        "serious": True,
        "seriousness": ["life_threatening"],
        "relatedness": "definite",
        "relatedness_lymphodepletion": "unlikely",
        "expected": True,
        "onset_at": first["occurred_at"],
        "outcome": "recovering",
    }
    resolved = _at(update["data"]["resolved_at"])
    assert update["data"] == first["data"] | {
        "resolved_at": resolved.isoformat(),
        "outcome": "recovered",
    }
    onset = _at(first["data"]["onset_at"])
    assert 2 <= _study_day(dlt_heavy, first) <= 4
    runs = _vasopressor_runs(dlt_heavy, who)
    assert set(runs) == {"norepinephrine", "phenylephrine"}
    together = min(end for _, end in runs.values()) - max(start for start, _ in runs.values())
    assert together >= timedelta(hours=4)
    assert onset < runs["phenylephrine"][0] < _at(first["reported_at"])
    (icu_in,) = _encounters(dlt_heavy, who, "icu_admission")
    (icu_out,) = _encounters(dlt_heavy, who, "icu_discharge")
    assert not icu_in["data"]["planned"] and not icu_out["data"]["planned"]
    assert _at(icu_in["occurred_at"]) < runs["phenylephrine"][0]
    assert runs["norepinephrine"][1] < _at(icu_out["occurred_at"])
    assert max(end for _, end in runs.values()) <= resolved <= onset + timedelta(days=4)


def test_the_committee_resumes_enrolment_a_week_after_the_grade_4_crs(
    dlt_heavy: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    ((message, decision),) = [(m, e) for m, e in dlt_heavy if e["type"] == "committee.decided"]
    assert message.key == b"-"
    assert (decision["participant_id"], decision["site_id"]) == ("-", "CN-001")
    assert decision["source"]["system"] == "edc"
    assert decision["data"] == {
        "committee": "src",
        "decision": "resume_enrollment",
        "reason": "SRC reviewed the grade 4 CRS at DL3: resume enrolment at lower dose levels",
    }
    crs, _ = _reports_of(dlt_heavy, "G79-007", CRS)
    onset, decided = _at(crs["data"]["onset_at"]), _at(decision["occurred_at"])
    assert decided > _at(crs["reported_at"]) > onset
    assert (decided.date() - onset.date()).days == 7


def test_every_other_participant_at_the_dlt_heavy_dose_has_a_licats_grade_3_flare(
    dlt_heavy: list[tuple[SimulatedMessage, dict[str, Any]]],
) -> None:
    # reference section 6: LICATS grade 3 = hospitalisation; section 7 rule 6: a DLT
    for who in ("G79-008", "G79-009"):
        first, update = _reports_of(dlt_heavy, who, LICATS)
        assert first["data"] == {
            "ae_id": first["data"]["ae_id"],
            "term": LICATS,
            "grading_scale": "LICATS-2025",
            "grade": 3,
            "serious": True,
            "seriousness": ["hospitalization"],
            "relatedness": "probable",
            "relatedness_lymphodepletion": "unlikely",
            "expected": True,
            "onset_at": first["occurred_at"],
            "outcome": "recovering",
        }
        assert 8 <= _study_day(dlt_heavy, first) <= 14
        onset = _at(first["data"]["onset_at"])
        (admission,) = [
            e for e in _encounters(dlt_heavy, who, "admission") if not e["data"]["planned"]
        ]
        (discharge,) = [
            e for e in _encounters(dlt_heavy, who, "discharge") if not e["data"]["planned"]
        ]
        assert _at(admission["occurred_at"]) == onset
        assert update["data"] == first["data"] | {
            "resolved_at": update["data"]["resolved_at"],
            "outcome": "recovered",
        }
        home = _at(discharge["occurred_at"])
        assert onset < _at(update["data"]["resolved_at"]) < home < _at(update["reported_at"])
    assert not _reports_of(dlt_heavy, "G79-007", LICATS)


def test_a_participant_with_the_licats_story_at_the_dlt_heavy_dose_has_one_flare() -> None:
    spec = CohortSpec(participants=12, dlt_heavy_dose="DL1", follow_up_days=28, malformed=False)
    events = [(m, json.loads(m.value)) for m in simulate_cohort(spec)]
    first, *others = _at_dose(events, "DL1")
    assert _reports_of(events, first, CRS)[0]["data"]["grade"] == 4
    for who in others:
        reports = _reports_of(events, who, LICATS)
        assert len(reports) == 2 and len({e["data"]["ae_id"] for e in reports}) == 1
    assert any(_study_day(events, _reports_of(events, who, LICATS)[0]) > 14 for who in others)


def test_an_unknown_dlt_heavy_dose_is_refused() -> None:
    with pytest.raises(ValueError, match="dlt_heavy_dose"):
        simulate_cohort(CohortSpec(participants=3, dlt_heavy_dose="DL4"))
