"""Alert decisions over contract events (architecture decision 8).

Pure tests of :class:`projections.alerts.AlertBook`: hand-built derived safety events
(contract §3) and clinical wire records (contract §1-2) go in; alert commands come
out. The rules and routes are the ``ProtocolParameters()`` defaults (``alert_rules``,
``alert_routing``), equal to the shipped LUCAR-G79 file; each test cites the rule it
checks. Time is what ``clock.ticked`` says (decision 2): the book reads no clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from domain.contract import SafetyEvent
from domain.protocol import AlertRule, ProtocolParameters
from projections.alerts import (
    AlertBook,
    AlertCommand,
    EscalateAlert,
    RaiseAlert,
    ResolveAlert,
    alert_id_for,
    findings,
)
from services.bootstrap import load_protocol

SHIPPED = Path(__file__).resolve().parents[2] / "protocols" / "lucar-g79.toml"
PROTOCOL = ProtocolParameters()
TRIAL = "NCT07049081"
OTHER_TRIAL = "NCT99999999"
TZ = timezone(timedelta(hours=8))
T = datetime(2026, 3, 3, 9, 0, tzinfo=TZ)
_ids = itertools.count(1)


def minutes(n: float) -> datetime:
    return T + timedelta(minutes=n)


def safety(
    type_: str,
    data: dict[str, Any],
    *,
    at: datetime = T,
    participant_id: str = "G79-001",
    trial_id: str = TRIAL,
    caused_by: tuple[str, ...] = (),
    event_id: str | None = None,
) -> SafetyEvent:
    """A derived safety event (contract §3) as the participant or trial aggregate
    would publish it."""
    return SafetyEvent(
        event_id=event_id or f"derived-{next(_ids):04d}",
        type=type_,
        trial_id=trial_id,
        participant_id=participant_id,
        dose_level="DL1",
        effective_at=at,
        recorded_at=at,
        caused_by=list(caused_by),
        data=data,
    )


def clinical(
    type_: str,
    data: dict[str, Any],
    *,
    at: datetime = T,
    participant_id: str = "G79-001",
    trial_id: str = TRIAL,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A clinical event as its wire JSON object (contract §1)."""
    return {
        "schema": "toxwatch.clinical.v1",
        "event_id": event_id or f"edc-{next(_ids):04d}",
        "type": type_,
        "trial_id": trial_id,
        "site_id": "CN-001",
        "participant_id": participant_id,
        "occurred_at": at.isoformat(),
        "data": data,
    }


def crs(grade: int, episode: int = 1, *, at: datetime = T, **kwargs: Any) -> SafetyEvent:
    return safety("crs.graded", {"episode": episode, "grade": grade}, at=at, **kwargs)


def vitals(participant_id: str, at: datetime, event_id: str | None = None) -> dict[str, Any]:
    return clinical(
        "vitals.recorded",
        {"temperature_c": 37.0},
        at=at,
        participant_id=participant_id,
        event_id=event_id,
    )


def enrolled(participant_id: str, at: datetime, event_id: str | None = None) -> dict[str, Any]:
    return clinical(
        "participant.enrolled",
        {"disease": "SLE", "dose_level": "DL1"},
        at=at,
        participant_id=participant_id,
        event_id=event_id,
    )


def raised(commands: list[AlertCommand]) -> RaiseAlert:
    assert len(commands) == 1, commands
    command = commands[0]
    assert isinstance(command, RaiseAlert), command
    return command


def escalations(commands: list[AlertCommand]) -> list[tuple[str, int, datetime]]:
    assert all(isinstance(c, EscalateAlert) for c in commands), commands
    return [(c.to, c.level, c.at) for c in commands if isinstance(c, EscalateAlert)]


def raise_one(event: SafetyEvent, book: AlertBook | None = None) -> RaiseAlert:
    return raised((book or AlertBook()).on_safety_event(event, PROTOCOL))


@pytest.fixture
def book() -> AlertBook:
    return AlertBook()


# ---------------------------------------------------------------- default rules


def test_crs_grade_1_raises_no_alert(book: AlertBook) -> None:
    # alert_rules crs: min_grade 2 (grade 1 is fever only, managed on the ward).
    assert book.on_safety_event(crs(1), PROTOCOL) == []


def test_crs_grade_2_raises_a_high_alert() -> None:
    # alert_rules crs: severity_by_grade {2: high}; routing: high -> safety_monitor.
    command = raise_one(crs(2))
    assert (command.finding.category, command.finding.severity) == ("crs", "high")
    assert command.revision == 1
    assert command.previous_severity is None
    assert command.notify == ("safety_monitor",)
    assert command.acknowledge_within_minutes == 60.0


def test_crs_grade_3_raises_a_critical_alert() -> None:
    # alert_rules crs: severity_by_grade {3: critical}; routing: critical, 15 min.
    command = raise_one(crs(3))
    assert (command.finding.category, command.finding.severity) == ("crs", "critical")
    assert command.escalate_to == ("principal_investigator", "src_chair")
    assert command.acknowledge_within_minutes == 15.0


@pytest.mark.parametrize(("grade", "severity"), [(1, "high"), (2, "high"), (3, "critical")])
def test_any_icans_grade_raises_high_and_grade_3_critical(grade: int, severity: str) -> None:
    # alert_rules icans: min_grade 1, severity_by_grade {1: high, 3: critical}.
    command = raise_one(safety("icans.graded", {"episode": 1, "grade": grade}))
    assert (command.finding.category, command.finding.severity) == ("icans", severity)


def test_a_dlt_candidate_is_high_and_its_confirmation_revises_the_same_alert_to_critical(
    book: AlertBook,
) -> None:
    # alert_rules dlt: dlt.candidate high, dlt.confirmed critical, one situation per
    # candidate_id.
    detail = {"candidate_id": "DLT-crs-1", "rule": "crs_grade_3_not_improving", "grade": 3}
    candidate = raised(book.on_safety_event(safety("dlt.candidate", detail), PROTOCOL))
    confirmed = raised(
        book.on_safety_event(safety("dlt.confirmed", detail, at=minutes(60 * 72)), PROTOCOL)
    )
    assert (candidate.finding.category, candidate.finding.severity) == ("dlt", "high")
    assert confirmed.alert_id == candidate.alert_id
    assert (confirmed.revision, confirmed.finding.severity) == (2, "critical")
    assert confirmed.previous_severity == "high"


def test_a_crossed_stopping_boundary_is_critical() -> None:
    # alert_rules stopping_rule: stopping_rule.triggered critical.
    data = {"key": "stop:trial", "rule_id": "tox", "scope": "trial", "n": 6, "y": 3}
    command = raise_one(safety("stopping_rule.triggered", data, participant_id="-"))
    assert (command.finding.category, command.finding.severity) == ("stopping_rule", "critical")


def test_paused_enrolment_is_critical() -> None:
    # alert_rules stopping_rule: enrollment.paused critical.
    data = {"key": "pause:deaths", "by": "rule", "reason": "two deaths"}
    command = raise_one(safety("enrollment.paused", data, participant_id="-"))
    assert (command.finding.category, command.finding.severity) == ("stopping_rule", "critical")


def test_a_dose_level_eliminated_is_high(book: AlertBook) -> None:
    # alert_rules dose_decision: when decision = eliminate, high.
    data = {"dose_level": "DL2", "design": "BOIN", "decision": "eliminate", "n": 6, "y": 4}
    command = raised(book.on_safety_event(safety("dose.decision", data), PROTOCOL))
    assert (command.finding.category, command.finding.severity) == ("dose_decision", "high")


def test_a_dose_decision_to_stay_raises_no_alert(book: AlertBook) -> None:
    # alert_rules dose_decision: only decision = eliminate raises.
    data = {"dose_level": "DL2", "design": "BOIN", "decision": "stay", "n": 3, "y": 1}
    assert book.on_safety_event(safety("dose.decision", data), PROTOCOL) == []


def test_a_positive_iechs_screen_is_high() -> None:
    # alert_rules iechs: iechs.screen_positive high.
    data = {"key": "iechs:1", "criteria_met": ["ferritin", "alt"], "crs_episode": 1}
    command = raise_one(safety("iechs.screen_positive", data))
    assert (command.finding.category, command.finding.severity) == ("iechs", "high")


def test_an_sae_clock_is_medium_then_its_reminder_high_then_overdue_critical_on_one_alert(
    book: AlertBook,
) -> None:
    # alert_rules sae_deadline: clock started medium, reminder high, overdue critical;
    # one situation per ae_id and obligation (reference §10 reporting clocks).
    clock = {"ae_id": "AE-1", "obligation": "site_to_sponsor_24h", "deadline_at": "D"}
    commands = [
        raised(book.on_safety_event(safety("sae.clock_started", clock), PROTOCOL)),
        raised(
            book.on_safety_event(
                safety("sae.reminder_due", clock | {"overdue": False}, at=minutes(20 * 60)),
                PROTOCOL,
            )
        ),
        raised(
            book.on_safety_event(
                safety("sae.reminder_due", clock | {"overdue": True}, at=minutes(24 * 60)),
                PROTOCOL,
            )
        ),
    ]
    assert {c.alert_id for c in commands} == {commands[0].alert_id}
    assert [(c.revision, c.finding.severity) for c in commands] == [
        (1, "medium"),
        (2, "high"),
        (3, "critical"),
    ]
    assert {c.finding.category for c in commands} == {"sae_deadline"}
    assert "OVERDUE" in commands[2].finding.title


def test_a_protocol_deviation_is_high() -> None:
    # alert_rules protocol_deviation: high, unless the rule is duplicate_infusion.
    data = {"key": "deviation:fever_before_infusion", "rule": "fever_before_infusion"}
    command = raise_one(safety("protocol.deviation", data))
    assert (command.finding.category, command.finding.severity) == ("protocol_deviation", "high")


def test_a_duplicate_infusion_is_a_medium_data_quality_alert_and_not_a_deviation(
    book: AlertBook,
) -> None:
    # alert_rules data_quality: protocol.deviation when rule = duplicate_infusion,
    # medium; the protocol_deviation rule excludes it (contract §4: out of place).
    data = {"key": "deviation:duplicate_infusion", "rule": "duplicate_infusion"}
    command = raised(book.on_safety_event(safety("protocol.deviation", data), PROTOCOL))
    assert (command.finding.category, command.finding.severity) == ("data_quality", "medium")


def test_a_reported_death_is_critical(book: AlertBook) -> None:
    # alert_rules death: the clinical death.reported record, critical.
    death = clinical("death.reported", {"cause": "CRS", "attributed_to": "product"})
    command = raised(book.on_clinical_event(death, PROTOCOL))
    assert (command.finding.category, command.finding.severity) == ("death", "critical")
    assert command.evidence == (death["event_id"],)
    assert command.finding.effective_at == T


def test_evidence_is_the_event_then_the_clinical_events_it_was_derived_from() -> None:
    # findings(): evidence is the derived event followed by its caused_by.
    event = crs(2, event_id="crs-1", caused_by=("e3", "e4"))
    [finding] = findings(event.to_wire(), PROTOCOL.alert_rules.rules, site_id="CN-001")
    assert finding.evidence == ("crs-1", "e3", "e4")


# ---------------------------------------------------------------- one alert per situation


def test_a_crs_episode_rising_from_grade_2_to_3_revises_its_alert(book: AlertBook) -> None:
    # Decision 8: events of one category and situation share one alert whose severity
    # only rises; CRS situation = participant and episode.
    first = raised(book.on_safety_event(crs(2, event_id="g2", caused_by=("e3",)), PROTOCOL))
    second = raised(
        book.on_safety_event(crs(3, at=minutes(60), event_id="g3", caused_by=("e5",)), PROTOCOL)
    )
    assert second.alert_id == first.alert_id
    assert (second.revision, second.previous_severity) == (2, "high")
    assert second.finding.severity == "critical"
    assert second.evidence == ("g2", "e3", "g3", "e5")


def test_the_same_crs_grade_seen_again_gives_no_command(book: AlertBook) -> None:
    # Decision 8: the same situation at the same grade is not a new alert.
    book.on_safety_event(crs(3), PROTOCOL)
    assert book.on_safety_event(crs(3, at=minutes(30)), PROTOCOL) == []


def test_a_lower_crs_grade_in_the_same_episode_gives_no_command(book: AlertBook) -> None:
    # Decision 8: an alert's severity only rises.
    book.on_safety_event(crs(3), PROTOCOL)
    assert book.on_safety_event(crs(2, at=minutes(30)), PROTOCOL) == []


def test_a_second_crs_episode_raises_a_different_alert(book: AlertBook) -> None:
    # alert_rules crs: situation "{participant_id}:crs:{episode}".
    first = raised(book.on_safety_event(crs(2, episode=1), PROTOCOL))
    second = raised(book.on_safety_event(crs(2, episode=2, at=minutes(60 * 96)), PROTOCOL))
    assert second.alert_id != first.alert_id
    assert second.revision == 1


def test_a_crs_grade_revised_upwards_revises_the_alert_of_its_episode(book: AlertBook) -> None:
    # alert_rules crs on grade.revised (term CRS): late data raised the grade of a
    # moment already published (decision 2); same situation, so the same alert.
    first = raised(book.on_safety_event(crs(2), PROTOCOL))
    revised = safety(
        "grade.revised",
        {"term": "CRS", "from_grade": 2, "to_grade": 3, "because": "late_data", "episode": 1},
    )
    second = raised(book.on_safety_event(revised, PROTOCOL))
    assert second.alert_id == first.alert_id
    assert (second.revision, second.finding.severity, second.finding.grade) == (2, "critical", 3)


def test_a_grade_revised_of_another_term_raises_no_crs_alert(book: AlertBook) -> None:
    # alert_rules crs on grade.revised: when term = CRS.
    revised = safety(
        "grade.revised",
        {"term": "Neutrophil count decreased", "from_grade": 2, "to_grade": 4, "episode": 0},
    )
    assert book.on_safety_event(revised, PROTOCOL) == []


def test_a_trial_level_alert_belongs_to_no_site_even_after_a_clock_tick(
    book: AlertBook,
) -> None:
    # Decision 10 (domain.access.sees_site): trial-level data has site_id None so that
    # every site sees it; a tick's site_id is only where the scheduler sent it from.
    book.on_clinical_event(clinical("clock.ticked", {}, participant_id="-"), PROTOCOL)
    data = {"key": "stop:trial", "rule_id": "tox", "scope": "trial", "n": 6, "y": 3}
    command = raised(
        book.on_safety_event(safety("stopping_rule.triggered", data, participant_id="-"), PROTOCOL)
    )
    assert command.finding.site_id is None


# ---------------------------------------------------------------- deterministic ids


def test_the_alert_id_is_the_same_for_the_same_situation_in_a_fresh_book() -> None:
    # Decision 8: alert.raised with a deterministic id (replay gives the same ids).
    assert raise_one(crs(2)).alert_id == raise_one(crs(2)).alert_id


def test_the_alert_id_differs_by_trial() -> None:
    # Decision 8: the id derives from trial, category and situation.
    assert raise_one(crs(2)).alert_id != raise_one(crs(2, trial_id=OTHER_TRIAL)).alert_id


# ---------------------------------------------------------------- escalation by clock


def critical_at_t(book: AlertBook) -> RaiseAlert:
    """A critical alert raised at T (route: acknowledge within 15 min, then
    principal_investigator, then src_chair)."""
    return raised(book.on_safety_event(crs(3), PROTOCOL))


def test_an_unacknowledged_critical_alert_is_not_escalated_before_15_minutes(
    book: AlertBook,
) -> None:
    # alert_routing critical: acknowledge_within_minutes 15.
    critical_at_t(book)
    assert book.on_tick(TRIAL, minutes(14), PROTOCOL) == []


def test_an_unacknowledged_critical_alert_escalates_by_its_route_every_15_minutes(
    book: AlertBook,
) -> None:
    # alert_routing critical: escalate_to principal_investigator then src_chair, one
    # level per acknowledgement period; nothing once the route is exhausted.
    alert = critical_at_t(book)
    first = book.on_tick(TRIAL, minutes(15), PROTOCOL)
    second = book.on_tick(TRIAL, minutes(30), PROTOCOL)
    later = [book.on_tick(TRIAL, minutes(m), PROTOCOL) for m in (45, 60, 600)]
    assert escalations(first) == [("principal_investigator", 1, minutes(15))]
    assert escalations(second) == [("src_chair", 2, minutes(30))]
    assert {c.alert_id for c in [*first, *second]} == {alert.alert_id}
    assert later == [[], [], []]


def test_a_tick_jumping_past_both_deadlines_escalates_twice_in_order(book: AlertBook) -> None:
    # alert_routing critical: both levels are overdue at T+45 min.
    critical_at_t(book)
    assert book.on_tick(TRIAL, T, PROTOCOL) == []
    commands = book.on_tick(TRIAL, minutes(45), PROTOCOL)
    assert escalations(commands) == [
        ("principal_investigator", 1, minutes(45)),
        ("src_chair", 2, minutes(45)),
    ]
    assert [c.overdue_minutes for c in commands if isinstance(c, EscalateAlert)] == [30.0, 15.0]


def test_an_acknowledged_alert_is_not_escalated(book: AlertBook) -> None:
    # Decision 10: acknowledgement is the human action that stops escalation.
    alert = critical_at_t(book)
    book.on_tick(TRIAL, minutes(5), PROTOCOL)
    book.on_acknowledged(alert.alert_id, alert.revision)
    assert [book.on_tick(TRIAL, minutes(m), PROTOCOL) for m in (15, 30, 120)] == [[], [], []]


def test_a_revision_after_acknowledgement_reopens_the_alert_from_its_new_raise_clock(
    book: AlertBook,
) -> None:
    # Decision 8: a revision is a new fact nobody has acknowledged; its timer starts
    # when it is raised (the log's clock, or its clinical time if later).
    alert = critical_at_t(book)
    book.on_acknowledged(alert.alert_id, alert.revision)
    assert book.on_tick(TRIAL, minutes(16), PROTOCOL) == []
    revision = raised(book.on_safety_event(crs(4, at=minutes(18)), PROTOCOL))
    assert (revision.alert_id, revision.revision) == (alert.alert_id, 2)
    assert revision.raised_clock == minutes(18)
    assert book.on_tick(TRIAL, minutes(32), PROTOCOL) == []
    assert escalations(book.on_tick(TRIAL, minutes(33), PROTOCOL)) == [
        ("principal_investigator", 1, minutes(33))
    ]


def test_a_late_finding_starts_its_timer_at_the_log_clock_not_its_clinical_time(
    book: AlertBook,
) -> None:
    # Decision 2: time is what clock.ticked says; a record arriving late (clinical
    # time T) must still give people 15 minutes from when it reached the log.
    book.on_tick(TRIAL, minutes(120), PROTOCOL)
    alert = critical_at_t(book)
    assert alert.raised_clock == minutes(120)
    assert book.on_tick(TRIAL, minutes(134), PROTOCOL) == []
    assert escalations(book.on_tick(TRIAL, minutes(135), PROTOCOL)) == [
        ("principal_investigator", 1, minutes(135))
    ]


def test_a_medium_alert_never_escalates(book: AlertBook) -> None:
    # alert_routing medium: no acknowledge_within_minutes, no escalate_to.
    clock = {"ae_id": "AE-1", "obligation": "site_to_sponsor_24h", "deadline_at": "D"}
    command = raised(book.on_safety_event(safety("sae.clock_started", clock), PROTOCOL))
    assert command.finding.severity == "medium"
    assert [book.on_tick(TRIAL, minutes(m), PROTOCOL) for m in (15, 60, 60 * 24 * 30)] == [
        [],
        [],
        [],
    ]


def test_ticks_of_another_trial_do_not_escalate(book: AlertBook) -> None:
    # Decision 2: each trial's clock is its own ticks.
    critical_at_t(book)
    assert book.on_tick(OTHER_TRIAL, minutes(60), PROTOCOL) == []


# ---------------------------------------------------------------- data quality


def test_a_record_without_enrolment_raises_nothing_within_the_grace_period(
    book: AlertBook,
) -> None:
    # alert_rules unknown_participant_grace_hours 24: records may precede enrolment.
    assert book.on_clinical_event(vitals("G79-404", T), PROTOCOL) == []
    assert book.on_tick(TRIAL, T + timedelta(hours=23, minutes=59), PROTOCOL) == []


def test_a_record_without_enrolment_after_the_grace_period_is_a_data_quality_alert(
    book: AlertBook,
) -> None:
    # Contract §4 (valid but out of place: a data-quality alert) and alert_rules
    # unknown_participant_severity medium after 24 h.
    record = vitals("G79-404", T)
    book.on_clinical_event(record, PROTOCOL)
    command = raised(book.on_tick(TRIAL, T + timedelta(hours=24), PROTOCOL))
    assert (command.finding.category, command.finding.severity) == ("data_quality", "medium")
    assert command.finding.participant_id == "G79-404"
    assert command.evidence == (record["event_id"],)


def test_an_enrolment_within_the_grace_period_cancels_the_data_quality_alert(
    book: AlertBook,
) -> None:
    # alert_rules unknown_participant_grace_hours: enrolment arrived in time.
    book.on_clinical_event(vitals("G79-404", T), PROTOCOL)
    book.on_clinical_event(enrolled("G79-404", T - timedelta(days=1)), PROTOCOL)
    assert book.on_tick(TRIAL, T + timedelta(hours=30), PROTOCOL) == []


def test_an_unknown_participant_raises_one_alert_however_many_records(book: AlertBook) -> None:
    # Decision 8: one alert per situation (the participant's missing enrolment).
    book.on_clinical_event(vitals("G79-404", T), PROTOCOL)
    book.on_clinical_event(vitals("G79-404", T + timedelta(hours=1)), PROTOCOL)
    first = book.on_tick(TRIAL, T + timedelta(hours=25), PROTOCOL)
    book.on_clinical_event(vitals("G79-404", T + timedelta(hours=26)), PROTOCOL)
    later = book.on_tick(TRIAL, T + timedelta(hours=60), PROTOCOL)
    assert raised(first).finding.category == "data_quality"
    assert later == []


def reject(book: AlertBook, count: int, *, start: datetime, every: timedelta) -> list[Any]:
    return [
        command
        for i in range(count)
        for command in book.on_rejection(
            trial_id=TRIAL,
            received_at=start + i * every,
            reference=f"toxwatch.clinical.v1#0@{i}",
            code="invalid_json",
            protocol=PROTOCOL,
        )
    ]


BURST_START = datetime(2026, 3, 3, 1, 0, tzinfo=UTC)


def test_ten_rejections_within_15_minutes_raise_one_data_quality_alert(
    book: AlertBook,
) -> None:
    # alert_rules rejected_burst_count 10, rejected_burst_window_minutes 15, medium.
    commands = reject(book, 10, start=BURST_START, every=timedelta(seconds=60))
    command = raised(commands)
    assert (command.finding.category, command.finding.severity) == ("data_quality", "medium")
    assert command.finding.participant_id == "-"


def test_nine_rejections_within_15_minutes_raise_nothing(book: AlertBook) -> None:
    # alert_rules rejected_burst_count 10.
    assert reject(book, 9, start=BURST_START, every=timedelta(seconds=60)) == []


def test_twenty_rejections_in_one_window_still_raise_one_alert(book: AlertBook) -> None:
    # Decision 8: one alert per situation (the burst's window).
    commands = reject(book, 20, start=BURST_START, every=timedelta(seconds=30))
    assert len(commands) == 1


def test_ten_rejections_across_a_quarter_hour_boundary_are_one_burst(book: AlertBook) -> None:
    # The window slides: ten within 15 minutes, wherever they fall on the clock.
    start = BURST_START - timedelta(minutes=2)
    assert len(reject(book, 10, start=start, every=timedelta(seconds=20))) == 1


def test_rejections_spread_thinner_than_the_window_never_alert(book: AlertBook) -> None:
    # Ten within any 15 minutes is the burst; one every 2 minutes is seven per window.
    assert reject(book, 40, start=BURST_START, every=timedelta(minutes=2)) == []


def test_a_second_burst_after_the_window_raises_a_second_alert(book: AlertBook) -> None:
    first = reject(book, 10, start=BURST_START, every=timedelta(seconds=10))
    second = reject(book, 10, start=BURST_START + timedelta(hours=1), every=timedelta(seconds=10))
    assert len(first) == len(second) == 1
    assert first[0].alert_id != second[0].alert_id


# ---------------------------------------------------------------- resolution


def resolved(commands: list[AlertCommand]) -> ResolveAlert:
    assert len(commands) == 1, commands
    command = commands[0]
    assert isinstance(command, ResolveAlert), command
    return command


def test_a_resolved_crs_episode_resolves_its_alert_which_then_never_escalates(
    book: AlertBook,
) -> None:
    # alert_rules: crs.resolved resolves the episode's alert; decision 8: a situation
    # that is over is not escalated to the next role.
    alert = critical_at_t(book)
    done = safety("crs.resolved", {"episode": 1, "max_grade": 3}, at=minutes(10))
    command = resolved(book.on_safety_event(done, PROTOCOL))
    assert command.alert_id == alert.alert_id
    assert command.reason == "CRS episode 1 resolved (max grade 3)"
    assert book.on_tick(TRIAL, minutes(60), PROTOCOL) == []


def test_the_resolution_of_an_episode_without_an_alert_gives_no_command(
    book: AlertBook,
) -> None:
    # A grade 1 CRS raised no alert; its resolution has nothing to resolve.
    book.on_safety_event(crs(1), PROTOCOL)
    done = safety("crs.resolved", {"episode": 1, "max_grade": 1}, at=minutes(10))
    assert book.on_safety_event(done, PROTOCOL) == []


def test_a_dlt_candidate_ruled_out_resolves_its_alert(book: AlertBook) -> None:
    # alert_rules: dlt.ruled_out resolves the candidate's alert.
    candidate = {"candidate_id": "DLT-x", "rule": "crs_grade_3_over_72h", "grade": 3}
    alert = raise_one(safety("dlt.candidate", candidate), book)
    ruled_out = safety("dlt.ruled_out", {**candidate, "reason": "resolved in 30 h"})
    assert resolved(book.on_safety_event(ruled_out, PROTOCOL)).alert_id == alert.alert_id


def test_a_withdrawn_stopping_finding_resolves_its_alert_instead_of_raising(
    book: AlertBook,
) -> None:
    # The trial monitor republishes a finding the facts no longer imply with
    # ``withdrawn``: the boundary is no longer crossed.
    crossing = {"rule_id": "trial_dlt_rate_bayes", "scope": "trial", "n": 6, "y": 4}
    alert = raise_one(safety("stopping_rule.triggered", crossing, participant_id="-"), book)
    withdrawn = safety(
        "stopping_rule.triggered", {**crossing, "withdrawn": True}, participant_id="-"
    )
    assert resolved(book.on_safety_event(withdrawn, PROTOCOL)).alert_id == alert.alert_id


def test_a_higher_grade_after_resolution_reopens_the_alert(book: AlertBook) -> None:
    alert = raise_one(crs(2), book)
    book.on_safety_event(safety("crs.resolved", {"episode": 1, "max_grade": 2}), PROTOCOL)
    reopened = raised(book.on_safety_event(crs(3, at=minutes(5)), PROTOCOL))
    assert (reopened.alert_id, reopened.revision) == (alert.alert_id, 2)
    assert escalations(book.on_tick(TRIAL, minutes(20), PROTOCOL))


def test_resumed_enrolment_resolves_the_pause_alert_and_a_new_pause_reopens_it(
    book: AlertBook,
) -> None:
    # alert_rules: the trial's enrolment is one situation; a pause raises it
    # (critical), a resumption resolves it, and a pause after that is news again.
    pause = {"by": "pause rule grade4_crs_or_icans", "reason": "grade 4 CRS", "key": "p1"}
    first = raise_one(safety("enrollment.paused", pause, participant_id="-"), book)
    resumed = safety("enrollment.resumed", {"by": "src", "reason": "reviewed", "key": "r1"},
                     participant_id="-", at=minutes(60))  # fmt: skip
    assert resolved(book.on_safety_event(resumed, PROTOCOL)).alert_id == first.alert_id
    again = safety("enrollment.paused", {**pause, "key": "p2"}, participant_id="-",
                   at=minutes(120))  # fmt: skip
    second = raised(book.on_safety_event(again, PROTOCOL))
    assert (second.alert_id, second.revision, second.finding.severity) == (
        first.alert_id,
        2,
        "critical",
    )


def test_a_resolving_rule_has_no_severity() -> None:
    with pytest.raises(ValidationError, match="resolving rule"):
        AlertRule(
            category="crs", on=("crs.resolved",), situation="x", title="t",
            resolves=True, severity="high",
        )  # fmt: skip


# ---------------------------------------------------------------- rules as data


def test_the_shipped_protocol_file_has_the_default_alert_rules() -> None:
    # Decision 3: the protocol is data; the LUCAR-G79 file states the defaults.
    assert load_protocol(SHIPPED).alert_rules == ProtocolParameters().alert_rules
    assert load_protocol(SHIPPED).alert_routing == ProtocolParameters().alert_routing


@pytest.mark.parametrize(
    "severity",
    [
        {"severity": "high", "severity_by_grade": {2: "high"}},
        {},
    ],
    ids=["both", "neither"],
)
def test_an_alert_rule_needs_exactly_one_of_severity_and_severity_by_grade(
    severity: dict[str, Any],
) -> None:
    # AlertRule.check_one_severity: the severity of a finding must be unambiguous.
    with pytest.raises(ValidationError, match="give severity or severity_by_grade"):
        AlertRule(
            category="crs",
            on=("crs.graded",),
            situation="{participant_id}",
            title="CRS",
            **severity,
        )


# ---------------------------------------------------------------- replay


def acknowledge_crs_episode_1(book: AlertBook) -> list[AlertCommand]:
    book.on_acknowledged(alert_id_for(TRIAL, "crs", "G79-001:crs:1"), 1)
    return []


def fold(book: AlertBook) -> list[AlertCommand]:
    """One log: derived events, an acknowledgement, a death, an unknown participant,
    ticks and a burst of rejections."""
    death = clinical(
        "death.reported",
        {"cause": "CRS", "attributed_to": "product"},
        at=minutes(200),
        event_id="d1",
    )
    steps: list[Callable[[], list[AlertCommand]]] = [
        lambda: book.on_clinical_event(enrolled("G79-001", T - timedelta(days=14), "e1"), PROTOCOL),
        lambda: book.on_safety_event(crs(2, event_id="c1"), PROTOCOL),
        lambda: acknowledge_crs_episode_1(book),
        lambda: book.on_clinical_event(vitals("G79-404", T, "v1"), PROTOCOL),
        lambda: book.on_tick(TRIAL, minutes(10), PROTOCOL),
        lambda: book.on_safety_event(crs(3, at=minutes(20), event_id="c2"), PROTOCOL),
        lambda: book.on_tick(TRIAL, minutes(50), PROTOCOL),
        lambda: book.on_safety_event(
            safety("icans.graded", {"episode": 1, "grade": 1}, at=minutes(55), event_id="i1"),
            PROTOCOL,
        ),
        lambda: book.on_clinical_event(death, PROTOCOL),
        lambda: reject(book, 10, start=BURST_START, every=timedelta(seconds=1)),
        lambda: book.on_tick(TRIAL, T + timedelta(days=2), PROTOCOL),
    ]
    return [command for step in steps for command in step()]


def test_folding_the_same_log_twice_gives_identical_commands() -> None:
    # Decision 2: no clock inside; a replay reproduces every decision.
    first, second = fold(AlertBook()), fold(AlertBook())
    assert first == second
    kinds = {type(c).__name__ for c in first}
    assert kinds == {"RaiseAlert", "EscalateAlert"}
    assert len(first) > 6
