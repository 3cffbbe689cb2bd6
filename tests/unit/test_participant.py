"""The Participant aggregate: recording, idempotency, and revisions of past grades
(architecture decisions 1–2; reference §0.4, §1)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from domain.contract import CLINICAL_EVENT_ADAPTER
from domain.participant import Participant, SafetyEventRecorded
from domain.protocol import ProtocolParameters

TZ = timezone(timedelta(hours=8))
INFUSION = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
RECEIVED = datetime(2026, 11, 1, tzinfo=UTC)


def at(day: int, clock: str) -> datetime:
    hour, minute = map(int, clock.split(":"))
    return INFUSION.replace(hour=hour, minute=minute) + timedelta(days=day)


def clinical(event_id: str, type_: str, when: datetime, participant: str = "G79-001", **data: Any):
    return CLINICAL_EVENT_ADAPTER.validate_json(
        json.dumps(
            {
                "schema": "toxwatch.clinical.v1",
                "event_id": event_id,
                "type": type_,
                "trial_id": "NCT07049081",
                "site_id": "CN-001",
                "participant_id": participant,
                "occurred_at": when.isoformat(),
                "data": data,
            }
        )
    )


def opened(**params: Any) -> Participant:
    participant = Participant.open("NCT07049081", "G79-001", "CN-001", ProtocolParameters(**params))
    participant.record(
        clinical("enrol", "participant.enrolled", at(-7, "08:00"), disease="SLE", dose_level="DL2"),
        RECEIVED,
    )
    participant.record(
        clinical("infusion", "infusion.administered", INFUSION, dose_level="DL2", cells_per_kg=2e6),
        RECEIVED,
    )
    return participant


def derived(participant: Participant) -> list[dict[str, Any]]:
    events = [e for e in participant.collect_events() if isinstance(e, SafetyEventRecorded)]
    return [e.to_contract().to_wire() for e in events]


def of_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_]


def test_a_repeated_event_id_is_ignored_whatever_it_carries():
    participant = opened()
    assert participant.record(
        clinical("v1", "vitals.recorded", at(1, "06:00"), temperature_c=38.4), RECEIVED
    )
    version = participant.version
    again = clinical("v1", "vitals.recorded", at(1, "07:00"), temperature_c=40.5)
    assert participant.record(again, RECEIVED) is False
    assert participant.version == version


def test_crs_graded_carries_dose_level_basis_evidence_and_study_day():
    # ASTCT 2019: fever >= 38.0 C with no hypotension or hypoxia is grade 1 (vignette 1).
    participant = opened()
    participant.collect_events()
    participant.record(
        clinical("v1", "vitals.recorded", at(1, "06:00"), temperature_c=38.0), RECEIVED
    )
    (graded,) = of_type(derived(participant), "crs.graded")
    assert graded["dose_level"] == "DL2"
    assert graded["effective_at"] == at(1, "06:00").isoformat()
    assert graded["caused_by"] == ["v1"]
    assert graded["data"]["grade"] == 1
    assert graded["data"]["previous_grade"] == 0
    assert graded["data"]["basis"]["fever_c"] == 38.0
    assert graded["data"]["study_day"] == 1


def test_study_day_follows_the_protocols_day_numbering():
    # Reference §0.5: under the Day 1 convention the day after infusion is Day 2.
    participant = opened(day_zero_is_infusion_day=False)
    participant.collect_events()
    participant.record(
        clinical("v1", "vitals.recorded", at(1, "06:00"), temperature_c=38.2), RECEIVED
    )
    (graded,) = of_type(derived(participant), "crs.graded")
    assert graded["data"]["study_day"] == 2


def test_late_back_charted_oxygen_raises_a_past_grade_with_grade_revised():
    # Vignette 4 charted late: 6 L/min at 10:00 is grade 2; the 7 L/min at 10:40 arrives
    # after the 14:00 vitals, so the published grade for 10:40 changes from 2 to 3.
    participant = opened()
    participant.record(
        clinical("v1", "vitals.recorded", at(2, "10:00"), temperature_c=38.6), RECEIVED
    )
    participant.record(
        clinical("o1", "oxygen.changed", at(2, "10:00"), device="nasal_cannula", flow_l_min=6),
        RECEIVED,
    )
    participant.record(
        clinical("v2", "vitals.recorded", at(2, "14:00"), temperature_c=38.4), RECEIVED
    )
    participant.collect_events()
    participant.record(
        clinical("o2", "oxygen.changed", at(2, "10:40"), device="nasal_cannula", flow_l_min=7),
        RECEIVED,
    )
    events = derived(participant)
    (revised,) = of_type(events, "grade.revised")
    assert revised["effective_at"] == at(2, "10:40").isoformat()
    assert revised["data"] == {
        "term": "CRS",
        "from_grade": 2,
        "to_grade": 3,
        "because": "late_data",
        "episode": 1,
    }
    assert revised["caused_by"] == ["o2"]
    (graded,) = of_type(events, "crs.graded")
    assert (graded["data"]["grade"], graded["data"]["previous_grade"]) == (3, 2)


def test_in_order_data_never_revises():
    participant = opened()
    for i, (clock, temp) in enumerate([("06:00", 38.5), ("10:00", 39.2), ("14:00", 37.2)]):
        participant.record(
            clinical(f"v{i}", "vitals.recorded", at(1, clock), temperature_c=temp), RECEIVED
        )
    assert of_type(derived(participant), "grade.revised") == []


def test_a_corrected_temperature_revises_the_grade_because_of_correction():
    # A typo 38.6 corrected to 36.8: there never was a fever, so grade 1 becomes 0.
    participant = opened()
    participant.record(
        clinical("v1", "vitals.recorded", at(1, "06:00"), temperature_c=38.6), RECEIVED
    )
    participant.record(
        clinical("v2", "vitals.recorded", at(1, "10:00"), temperature_c=37.0), RECEIVED
    )
    participant.collect_events()
    participant.record(
        clinical(
            "c1",
            "record.corrected",
            at(1, "12:00"),
            corrects_event_id="v1",
            data={"temperature_c": 36.8},
            reason="transcription error",
        ),
        RECEIVED,
    )
    revised_terms = {e["data"]["term"]: e for e in of_type(derived(participant), "grade.revised")}
    assert set(revised_terms) == {"CRS", "Fever"}  # ASTCT CRS and CTCAE Fever both change
    revised = revised_terms["CRS"]
    assert revised["data"]["because"] == "correction"
    assert (revised["data"]["from_grade"], revised["data"]["to_grade"]) == (1, 0)


def test_a_voided_vasopressor_revises_grade_3_down_because_of_void():
    participant = opened()
    participant.record(
        clinical("v1", "vitals.recorded", at(2, "02:00"), temperature_c=39.0), RECEIVED
    )
    participant.record(
        clinical(
            "n1", "vasopressor.changed", at(2, "03:00"), drug="norepinephrine", action="start"
        ),
        RECEIVED,
    )
    participant.record(
        clinical("n2", "vasopressor.changed", at(2, "05:00"), drug="norepinephrine", action="stop"),
        RECEIVED,
    )
    participant.collect_events()
    participant.record(
        clinical(
            "x1", "record.voided", at(2, "06:00"), voids_event_id="n1", reason="wrong patient"
        ),
        RECEIVED,
    )
    (revised,) = of_type(derived(participant), "grade.revised")
    assert revised["effective_at"] == at(2, "03:00").isoformat()
    assert revised["data"]["because"] == "void"
    assert (revised["data"]["from_grade"], revised["data"]["to_grade"]) == (3, 1)


def test_a_correction_naming_an_unknown_event_asks_for_adjudication():
    participant = opened()
    participant.collect_events()
    participant.record(
        clinical(
            "c1",
            "record.corrected",
            at(1, "12:00"),
            corrects_event_id="nope",
            data={"temperature_c": 36.8},
            reason="typo",
        ),
        RECEIVED,
    )
    (question,) = of_type(derived(participant), "adjudication.requested")
    assert question["data"]["target"] == {"kind": "event", "id": "nope"}


def test_a_clock_tick_resolves_an_episode_24_h_after_it_went_quiet():
    # Reference §1 default resolution rule: afebrile, off vasopressors and oxygen for 24 h;
    # resolution time is the start of that period; a tick makes time pass deterministically.
    participant = opened()
    participant.record(
        clinical("v1", "vitals.recorded", at(1, "06:00"), temperature_c=38.9), RECEIVED
    )
    participant.record(
        clinical("v2", "vitals.recorded", at(1, "18:00"), temperature_c=37.1), RECEIVED
    )
    early = clinical("t1", "clock.ticked", at(2, "17:00"), participant="-")
    assert participant.record(early, RECEIVED) is False  # nothing waits for 17:00
    participant.collect_events()
    participant.record(clinical("t2", "clock.ticked", at(2, "18:00"), participant="-"), RECEIVED)
    (resolved,) = of_type(derived(participant), "crs.resolved")
    assert resolved["data"]["resolved_at"] == at(1, "18:00").isoformat()
    assert resolved["data"]["max_grade"] == 1
    assert resolved["data"]["duration_hours"] == 12.0
    assert resolved["caused_by"] == ["v1"]


def test_derived_events_do_not_depend_on_how_the_record_is_rebuilt():
    # Event ids are derived from the aggregate id and version, so a replay yields the same.
    first, second = opened(), opened()
    for participant in (first, second):
        participant.record(
            clinical("v1", "vitals.recorded", at(1, "06:00"), temperature_c=39.5), RECEIVED
        )
    ids_first = [e["event_id"] for e in derived(first)]
    ids_second = [e["event_id"] for e in derived(second)]
    assert ids_first == ids_second
    assert len(set(ids_first)) == len(ids_first)


def test_icans_grade_and_resolution_are_published():
    # Vignette 11: ICE 5/10, awakens to voice -> ICANS grade 2 (reference §2); resolved
    # 24 h after ICE 10 with no other finding (the template's resolution rule).
    participant = opened()
    participant.collect_events()
    participant.record(
        clinical(
            "n1", "neuro.assessed", at(6, "09:00"), ice_score=5, consciousness="awakens_to_voice"
        ),
        RECEIVED,
    )
    participant.record(
        clinical("n2", "neuro.assessed", at(7, "09:00"), ice_score=10, consciousness="awake"),
        RECEIVED,
    )
    participant.record(clinical("t1", "clock.ticked", at(8, "09:00"), participant="-"), RECEIVED)
    events = derived(participant)
    grades = [
        (e["data"]["grade"], e["data"]["previous_grade"]) for e in of_type(events, "icans.graded")
    ]
    assert grades == [(2, 0), (0, 2)]
    first = of_type(events, "icans.graded")[0]
    assert first["data"]["basis"]["ice_score"] == 5
    assert first["caused_by"] == ["n1"]
    (resolved,) = of_type(events, "icans.resolved")
    assert resolved["data"]["resolved_at"] == at(7, "09:00").isoformat()
    assert resolved["data"]["max_grade"] == 2


def test_early_icaht_is_published_with_its_durations():
    # Vignette 16: ANC <= 0.5 from D+2 to D+10 (9 days), stable > 0.5 from D+11
    # -> early ICAHT grade 2 (reference §4: 7-13 days at <= 0.5).
    participant = opened()
    participant.collect_events()
    values = {d: 0.3 for d in range(2, 11)} | {d: 1.2 for d in range(11, 15)} | {1: 1.8}
    for d, anc in sorted(values.items()):
        participant.record(
            clinical(
                f"anc{d}",
                "lab.resulted",
                at(d, "07:00"),
                analyte="anc",
                value=anc,
                unit="10*9/L",
                reference_low=1.8,
                reference_high=7.7,
            ),
            RECEIVED,
        )
    graded = of_type(derived(participant), "icaht.graded")
    assert [(e["data"]["phase"], e["data"]["grade"]) for e in graded] == [
        ("early", 1),
        ("early", 2),
    ]
    assert graded[-1]["data"]["days_anc_le_0_5"] == 7
    assert graded[-1]["data"]["criteria"] == "ICAHT-2023"


def _with_lymphodepletion() -> Participant:
    participant = Participant.open("NCT07049081", "G79-001", "CN-001", ProtocolParameters())
    participant.record(
        clinical(
            "ld",
            "lymphodepletion.administered",
            at(-5, "09:00"),
            agent="fludarabine",
            dose_mg_m2=25,
        ),
        RECEIVED,
    )
    participant.record(
        clinical("inf", "infusion.administered", INFUSION, dose_level="DL1", cells_per_kg=1e6),
        RECEIVED,
    )
    return participant


def platelets(event_id: str, when: datetime, value: float):
    return clinical(
        event_id,
        "lab.resulted",
        when,
        analyte="platelets",
        value=value,
        unit="10*9/L",
        reference_low=150,
        reference_high=400,
    )


def test_a_lab_resulted_after_later_vitals_is_not_a_revision():
    # Lab results arrive hours after sampling; a term's past is what it was derived
    # from (its own analyte), not other observations charted meanwhile.
    participant = _with_lymphodepletion()
    participant.record(
        clinical("v1", "vitals.recorded", at(3, "10:00"), heart_rate_bpm=80), RECEIVED
    )
    participant.collect_events()
    participant.record(platelets("p1", at(3, "06:00"), 60), RECEIVED)
    events = derived(participant)
    assert of_type(events, "grade.revised") == []
    (graded,) = of_type(events, "toxicity.graded")
    # CTCAE v5.0 Platelet count decreased: < 75-50 x10^9/L is grade 2 (reference §3).
    assert (graded["data"]["term"], graded["data"]["grade"]) == ("Platelet count decreased", 2)


def test_a_late_lab_before_a_later_result_of_its_analyte_revises_the_past():
    participant = _with_lymphodepletion()
    participant.record(platelets("p1", at(2, "06:00"), 160), RECEIVED)
    participant.record(platelets("p3", at(4, "06:00"), 160), RECEIVED)
    participant.collect_events()
    participant.record(platelets("p2", at(3, "06:00"), 40), RECEIVED)  # back-charted
    events = derived(participant)
    (revised,) = of_type(events, "grade.revised")
    # < 50-25 x10^9/L is grade 3; the day-3 grade was published as 0.
    assert revised["data"]["term"] == "Platelet count decreased"
    assert (revised["data"]["from_grade"], revised["data"]["to_grade"]) == (0, 3)
    assert revised["effective_at"] == at(3, "06:00").isoformat()


def test_results_before_lymphodepletion_are_baseline_not_toxicity():
    # Reference §3: baseline = last value before lymphodepletion [parameter].
    participant = Participant.open("NCT07049081", "G79-001", "CN-001", ProtocolParameters())
    participant.record(platelets("p0", at(-7, "06:00"), 60), RECEIVED)
    participant.record(
        clinical(
            "ld",
            "lymphodepletion.administered",
            at(-5, "09:00"),
            agent="fludarabine",
            dose_mg_m2=25,
        ),
        RECEIVED,
    )
    assert of_type(derived(participant), "toxicity.graded") == []


def test_a_fever_before_the_infusion_delivered_after_it_is_a_deviation():
    """Reference §7: an infusion within 48 h of a fever is a protocol deviation (with
    no lymphodepletion on record, every fever in the window counts). The vital sign of
    the night before arrives after the infusion and later vital signs: the gate still
    reads it."""
    participant = opened()
    participant.record(
        clinical("v1", "vitals.recorded", at(1, "06:00"), temperature_c=37.0), RECEIVED
    )
    participant.collect_events()

    late = clinical("v0", "vitals.recorded", INFUSION - timedelta(hours=10), temperature_c=38.4)
    participant.record(late, RECEIVED)

    deviations = of_type(derived(participant), "protocol.deviation")
    assert [d["data"]["rule"] for d in deviations] == ["infusion_within_48h_of_fever"]
    assert "v0" in deviations[0]["caused_by"]


def test_a_fever_after_the_infusion_is_no_pre_infusion_deviation():
    """Reference §7: the gate's window ends at the infusion; a fever on D+1 is CRS
    (ASTCT 2019: grade 1, fever only), not a deviation."""
    participant = opened()
    participant.collect_events()

    participant.record(
        clinical("v1", "vitals.recorded", at(1, "06:00"), temperature_c=38.9), RECEIVED
    )

    events = derived(participant)
    assert of_type(events, "protocol.deviation") == []
    assert [e["data"]["grade"] for e in of_type(events, "crs.graded")] == [1]
