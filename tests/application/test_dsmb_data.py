"""The DSMB report's data (issue 6), folded from an in-memory store.

A small trial (infusion on 2026-03-02 08:00 +08:00 = study day 0, the default
day-zero convention; reference §0.5), whose expected values follow from the events:

- G79-301 (SLE, DL1), infused day 0: fever 38.9 C at day 1 + 2 h, then 2 L/min nasal
  cannula: CRS grade 2 (ASTCT 2019, low-flow oxygen; reference §1), onset study day 1;
  tocilizumab at day 1 + 4 h; afebrile on room air from day 2: resolved after 24 h
  quiet (``resolution_hours``), at day 2, so the episode lasted 22 h. Nausea ``A-AE1``
  grade 2 at day 2 + 1 h, then restated grade 1 at day 3 + 2 h: its course's worst grade
  is 2 (``domain.adverse_events``). ANC 3.0 (day -1), 400 /uL (day 3), 0.8 (day 7),
  1200 /uL (day 10) x 10^9/L: nadir 0.4 on day 3 (CTCAE v5 neutrophil count decreased
  grade 4, < 0.5), back >= 0.5 on day 7. Its lab on day 10 is the data cut-off.
- G79-302 (SSC, DL1), infused day 0: nausea ``B-AE2`` grade 3; pneumonia ``B-AE1``
  grade 3, serious (hospitalisation), unlikely related, onset day 4, reported at day
  4 + 6 h: a 24 h site-to-sponsor clock from that awareness (reference §10).
- G79-303 (AAV, DL2), infused day 0, died of sepsis (not related) at day 5 + 4 h.
- G79-304 (IIM, DL2): enrolled, never infused.
- G79-305 (SLE, DL2), infused day 2, withdrawn day 6.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from scipy.stats import beta

from projections.dsmb import AERow, DSMBReport, dsmb_data, posterior_interval
from services.offline import in_memory_application, process_lines
from services.simulator import CohortSpec, simulate_cohort

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
TRIAL = "NCT07049081"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
DOSE_LEVELS = ("DL1", "DL2", "DL3")


def t(days: float, hours: float = 0) -> datetime:
    return D0 + timedelta(days=days, hours=hours)


def event(n: int, participant: str, kind: str, when: datetime, **data: Any) -> bytes:
    reported_at = data.pop("reported_at", None)
    wire = {
        "schema": "toxwatch.clinical.v1",
        "event_id": f"dsmb-{participant}-{n:02d}",
        "type": kind,
        "trial_id": TRIAL,
        "site_id": "CN-001",
        "participant_id": participant,
        "occurred_at": when.isoformat(),
        "data": data,
    }
    if reported_at is not None:
        wire["reported_at"] = reported_at.isoformat()
    return json.dumps(wire).encode()


def infused(participant: str, disease: str, dose: str, day: float = 0) -> list[bytes]:
    return [
        event(1, participant, "participant.enrolled", t(-10), disease=disease, dose_level=dose),
        event(2, participant, "eligibility.confirmed", t(-9), confirmed_by="pi"),
        event(3, participant, "lymphodepletion.administered", t(day - 5), agent="fludarabine",
              dose_mg_m2=25),
        event(4, participant, "infusion.administered", t(day), dose_level=dose,
              cells_per_kg=1.0e6),
    ]  # fmt: skip


def ae(n: int, participant: str, when: datetime, ae_id: str, term: str, grade: int,
       **extra: Any) -> bytes:  # fmt: skip
    return event(
        n, participant, "adverse_event.reported", when, ae_id=ae_id, term=term,
        grading_scale="CTCAE-5.0", grade=grade, serious=extra.pop("serious", False),
        seriousness=extra.pop("seriousness", []), relatedness=extra.pop("relatedness",
        "possible"), **extra,
    )  # fmt: skip


def anc(n: int, participant: str, when: datetime, value: float, unit: str) -> bytes:
    return event(n, participant, "lab.resulted", when, analyte="anc", value=value, unit=unit)


def stream() -> list[bytes]:
    a, b, c, e = "G79-301", "G79-302", "G79-303", "G79-305"
    return [
        *infused(a, "SLE", "DL1"),
        anc(5, a, t(-1), 3.0, "10*9/L"),
        event(6, a, "vitals.recorded", t(1, 2), temperature_c=38.9),
        event(7, a, "oxygen.changed", t(1, 3), device="nasal_cannula", flow_l_min=2),
        event(8, a, "vitals.recorded", t(1, 3.5), temperature_c=38.7, spo2_pct=94),
        event(9, a, "medication.administered", t(1, 4), drug="tocilizumab",
              drug_class="anti_il6"),
        event(10, a, "vitals.recorded", t(2), temperature_c=37.0, spo2_pct=97),
        event(11, a, "oxygen.changed", t(2), device="room_air"),
        ae(12, a, t(2, 1), "A-AE1", "Nausea", 2),
        anc(13, a, t(3), 400, "/uL"),
        ae(14, a, t(3, 2), "A-AE1", "Nausea", 1),
        anc(15, a, t(7), 0.8, "10*9/L"),
        anc(16, a, t(10), 1200, "/uL"),
        *infused(b, "SSC", "DL1"),
        ae(5, b, t(1), "B-AE2", "nausea", 3),
        ae(6, b, t(4, 6), "B-AE1", "Pneumonia", 3, serious=True,
           seriousness=["hospitalization"], relatedness="unlikely", expected=False,
           onset_at=t(4).isoformat(), reported_at=t(4, 6)),
        *infused(c, "AAV", "DL2"),
        event(5, c, "death.reported", t(5, 4), cause="Sepsis", attributed_to="infection",
              related="not_related"),
        event(1, "G79-304", "participant.enrolled", t(-2), disease="IIM", dose_level="DL2"),
        *infused(e, "SLE", "DL2", day=2),
        event(5, e, "participant.withdrawn", t(6), reason="consent withdrawn"),
    ]  # fmt: skip


LATE = [ae(17, "G79-301", t(8), "A-AE2", "Headache", 1)]


def events_of(app: Any) -> list[tuple[int, Any]]:
    notifications = app.recorder.select_notifications(
        start=0, limit=10**7, inclusive_of_start=False
    )
    return [(n.id, app.mapper.to_domain_event(n)) for n in notifications]


def report_of(events: list[tuple[int, Any]], as_of: datetime | None = None) -> DSMBReport:
    return dsmb_data(
        events, trial_id=TRIAL, as_of=as_of, planned_enrolment=12, dose_levels=DOSE_LEVELS
    )


@pytest.fixture(scope="module")
def recorded() -> tuple[list[tuple[int, Any]], datetime]:
    """The trial's log, with the headache recorded after a pause; the moment between."""
    app = in_memory_application()
    process_lines(stream(), io.StringIO(), app=app, now=NOW)
    time.sleep(0.05)
    between = datetime.now(UTC)
    time.sleep(0.05)
    # The same JSONL again with one more line: offsets already applied are skipped.
    process_lines([*stream(), *LATE], io.StringIO(), app=app, now=NOW)
    return events_of(app), between


@pytest.fixture(scope="module")
def report(recorded: tuple[list[tuple[int, Any]], datetime]) -> DSMBReport:
    return report_of(recorded[0])


def ae_row(report: DSMBReport, term: str, dose_level: str) -> AERow | None:
    rows = [r for r in report.adverse_events if r.term == term and r.dose_level == dose_level]
    return rows[0] if rows else None


# ---------------------------------------------------------------- study status


def test_participants_are_counted_as_enrolled_infused_withdrawn_and_died(
    report: DSMBReport,
) -> None:
    status = report.study_status
    assert (status.enrolled, status.infused, status.withdrawn, status.died) == (5, 4, 1, 1)
    assert status.planned_enrolment == 12
    assert status.data_cutoff == t(10)
    # An unrelated death triggers no pause rule (reference §8: a related grade 5 does).
    assert not status.enrolment_paused
    assert status.stopping_rules == ()


def test_enrolment_is_counted_by_dose_level_and_disease(report: DSMBReport) -> None:
    cells = {(c.dose_level, c.disease): (c.enrolled, c.infused) for c in report.enrolment.cells}
    assert cells[("DL1", "SLE")] == (1, 1)
    assert cells[("DL1", "SSC")] == (1, 1)
    assert cells[("DL2", "IIM")] == (1, 0)
    assert cells[("DL2", "AAV")] == (1, 1)
    assert cells[("DL3", "SLE")] == (0, 0)
    assert report.enrolment.first_infusion_at == t(0)
    assert report.enrolment.last_infusion_at == t(2)


def test_follow_up_runs_from_infusion_to_cut_off_death_or_withdrawal(
    report: DSMBReport,
) -> None:
    rows = {r.dose_level: r for r in report.exposure}
    # DL1: two participants followed to the day-10 cut-off.
    assert (rows["DL1"].infused, rows["DL1"].follow_up_days) == (2, 20.0)
    # DL2: death at day 5 + 4 h (5.167 days), withdrawal 4 days after a day-2 infusion.
    assert (rows["DL2"].infused, rows["DL2"].follow_up_days) == (2, 9.167)
    assert rows["DL2"].median_follow_up_days == 4.583
    assert (rows["DL3"].infused, rows["DL3"].follow_up_days) == (0, 0.0)


# ---------------------------------------------------------------- adverse events


def test_each_participant_counts_once_per_term_at_the_maximum_grade(
    report: DSMBReport,
) -> None:
    # "Nausea" and "nausea" are one term; G79-301's course peaked at grade 2 before it
    # was restated as grade 1, G79-302's is grade 3.
    nausea = ae_row(report, "Nausea", "DL1")
    assert nausea is not None
    assert (nausea.participants, nausea.by_max_grade) == (2, (0, 1, 1, 0, 0))
    crs = ae_row(report, "Cytokine release syndrome", "DL1")
    assert crs is not None and crs.by_max_grade == (0, 1, 0, 0, 0)
    # ANC 0.4 x 10^9/L is grade 4 (CTCAE v5: < 0.5), the highest of the course.
    neutrophils = ae_row(report, "Neutrophil count decreased", "DL1")
    assert neutrophils is not None and neutrophils.by_max_grade == (0, 0, 0, 1, 0)
    # Fever 38.9 C is grade 1 (CTCAE v5: 38.0-39.0).
    fever = ae_row(report, "Fever", "DL1")
    assert fever is not None and fever.by_max_grade == (1, 0, 0, 0, 0)


def test_a_serious_ae_is_listed_with_its_reporting_clock(report: DSMBReport) -> None:
    (sae,) = report.sae_listing
    assert (sae.participant_id, sae.dose_level, sae.ae_id) == ("G79-302", "DL1", "B-AE1")
    assert (sae.term, sae.grade, sae.seriousness, sae.relatedness) == (
        "Pneumonia", 3, ("hospitalization",), "unlikely",
    )  # fmt: skip
    assert (sae.onset_at, sae.onset_study_day) == (t(4), 4)
    (clock,) = sae.clocks
    # Awareness is the source's reported_at (earlier than arrival); deadline 24 h later.
    assert clock.obligation == "site_to_sponsor_24h"
    assert (clock.awareness_at, clock.deadline_at) == (t(4, 6), t(5, 6))
    assert not clock.overdue


def test_a_death_is_listed_with_its_study_day(report: DSMBReport) -> None:
    (death,) = report.death_listing
    assert (death.participant_id, death.dose_level) == ("G79-303", "DL2")
    assert (death.died_at, death.study_day) == (t(5, 4), 5)
    assert (death.cause, death.attributed_to, death.related) == (
        "Sepsis", "infection", "not_related",
    )  # fmt: skip


# ---------------------------------------------------------------- CRS, ICANS, DLT


def test_crs_incidence_onset_duration_and_tocilizumab_by_dose_level(
    report: DSMBReport,
) -> None:
    dl1, dl2, dl3 = report.crs_summary
    assert (dl1.infused, dl1.with_any_grade, dl1.incidence_pct) == (2, 1, 50.0)
    assert dl1.by_max_grade == (1, 0, 1, 0, 0, 0)
    assert (dl1.onset_study_day.median, dl1.onset_study_day.n) == (1.0, 1)
    assert (dl1.duration_hours.median, dl1.ongoing_episodes) == (22.0, 0)
    assert (dl1.anti_il6, dl1.corticosteroid) == (1, 0)
    assert (dl2.infused, dl2.with_any_grade, dl2.incidence_pct) == (2, 0, 0.0)
    assert (dl3.infused, dl3.incidence_pct) == (0, None)
    assert all(row.with_any_grade == 0 for row in report.icans_summary)


def test_the_dlt_table_reads_the_monitors_tallies(report: DSMBReport) -> None:
    rows = {r.dose_level: r for r in report.dlt_table}
    assert (rows["DL1"].infused, rows["DL2"].infused, rows["DL3"].infused) == (2, 2, 0)
    assert rows["DL3"].decision is None


def test_the_swimmer_plot_has_a_lane_per_infused_participant_in_days(
    report: DSMBReport,
) -> None:
    lanes = {lane.participant_id: lane for lane in report.swimmer}
    assert list(lanes) == ["G79-301", "G79-302", "G79-303", "G79-305"]
    (crs,) = lanes["G79-301"].episodes
    assert (crs.kind, crs.start_day, crs.end_day, crs.max_grade) == ("CRS", 1.083, 2.0, 2)
    assert lanes["G79-301"].end_day == 10.0
    assert [(m.kind, m.day, m.label) for m in lanes["G79-302"].markers] == [
        ("sae", 4.0, "Pneumonia")
    ]
    assert [(m.kind, m.day) for m in lanes["G79-303"].markers] == [("death", 5.167)]
    assert lanes["G79-303"].end_day == 5.167
    assert [(m.kind, m.day) for m in lanes["G79-305"].markers] == [("withdrawal", 4.0)]


def test_anc_is_reported_in_10e9_per_litre_with_nadir_and_recovery(
    report: DSMBReport,
) -> None:
    row = next(r for r in report.cytopenia if r.participant_id == "G79-301")
    assert row.anc == ((-1.0, 3.0), (3.0, 0.4), (7.0, 0.8), (10.0, 1.2))
    assert (row.nadir_10e9_l, row.nadir_day, row.recovered_day) == (0.4, 3.0, 7.0)


def test_the_death_is_an_open_critical_alert(report: DSMBReport) -> None:
    deaths = [a for a in report.alerts.open if a.category == "death"]
    assert [(a.severity, a.participant_id, a.title) for a in deaths] == [
        ("critical", "G79-303", "Death reported: Sepsis")
    ]
    counts = {(c.category, c.severity): c for c in report.alerts.counts}
    assert (counts[("death", "critical")].total, counts[("death", "critical")].open) == (1, 1)


# ---------------------------------------------------------------- optimal dose


def test_the_dlt_rate_interval_is_the_beta_1_1_posterior() -> None:
    # 1 DLT in 3: posterior Beta(2, 3); 2.5 % and 97.5 % quantiles 0.0676 and 0.8059.
    assert posterior_interval(1, 3) == (0.0676, 0.8059)
    assert posterior_interval(1, 3) == (
        round(float(beta.ppf(0.025, 2, 3)), 4),
        round(float(beta.ppf(0.975, 2, 3)), 4),
    )
    # No evaluable participant: the Beta(1, 1) prior's own interval.
    assert posterior_interval(0, 0) == (0.025, 0.975)


# ---------------------------------------------------------------- as of


def test_a_report_as_of_a_past_moment_leaves_out_what_was_recorded_later(
    recorded: tuple[list[tuple[int, Any]], datetime],
) -> None:
    events, between = recorded
    before, after = report_of(events, as_of=between), report_of(events, as_of=datetime.now(UTC))
    assert ae_row(before, "Headache", "DL1") is None
    headache = ae_row(after, "Headache", "DL1")
    assert headache is not None and headache.by_max_grade == (1, 0, 0, 0, 0)
    assert before.study_status.as_of == between
    assert before.study_status.log_position < after.study_status.log_position
    # The earlier report is the same whenever it is asked for.
    assert report_of(events, as_of=between).to_dict() == before.to_dict()


def test_a_report_before_anything_was_recorded_is_empty(
    recorded: tuple[list[tuple[int, Any]], datetime],
) -> None:
    empty = report_of(recorded[0], as_of=datetime(2000, 1, 1, tzinfo=UTC))
    assert (empty.study_status.enrolled, empty.swimmer, empty.adverse_events) == (0, (), ())


def test_as_of_must_carry_a_utc_offset(
    recorded: tuple[list[tuple[int, Any]], datetime],
) -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        report_of(recorded[0], as_of=datetime(2026, 1, 1))


# ---------------------------------------------------------------- simulated cohort


@pytest.fixture(scope="module")
def cohort() -> DSMBReport:
    messages = simulate_cohort(CohortSpec(participants=9, follow_up_days=40, dlt_heavy_dose="DL3"))
    app = in_memory_application()
    now = max(m.deliver_at for m in messages)
    process_lines([m.value for m in messages], io.StringIO(), app=app, now=now)
    events = events_of(app)
    first = report_of(events)
    assert report_of(events).to_dict() == first.to_dict()  # deterministic
    return first


def test_the_simulated_cohort_report_is_consistent_and_serialisable(cohort: DSMBReport) -> None:
    assert (cohort.study_status.enrolled, cohort.study_status.infused) == (9, 9)
    text = json.dumps(cohort.to_dict(), sort_keys=True)
    assert json.loads(text)["study_status"]["trial_id"] == TRIAL
    lanes = [(DOSE_LEVELS.index(r.dose_level), r.participant_id) for r in cohort.swimmer]
    assert lanes == sorted(lanes) and len(lanes) == 9
    for row in cohort.dlt_table:
        # Each DLT the monitor tallied is a confirmed DLT in a participant's record.
        assert len(row.confirmed) == row.dlts
    for dose in cohort.optimal_dose.rows:
        assert dose.dlt_rate_interval == posterior_interval(dose.dlts, dose.evaluable)


def test_the_dlt_heavy_dose_crosses_a_stopping_rule(cohort: DSMBReport) -> None:
    dl3 = next(r for r in cohort.dlt_table if r.dose_level == "DL3")
    assert dl3.dlts >= 2
    assert "DL3" in {rule.scope for rule in cohort.study_status.stopping_rules}


def test_a_pause_the_committee_lifted_is_reported_as_the_last_pause(cohort: DSMBReport) -> None:
    # The simulated grade 4 CRS pauses enrolment (reference §8); the SRC resumes it.
    status = cohort.study_status
    assert status.last_pause_by == "pause rule grade4_crs_or_icans"
    assert not status.enrolment_paused
