"""Febrile neutropenia (CTCAE, reference §3) and IEC-HS screen (reference §5) vignettes.

Each test is a short course whose expected result follows from
/work/shared/clinical/reference.md; the section is cited in each docstring. Infusion at
D0 08:00 (+08:00); ``day(n, "hh:mm")`` is D+n.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from typing import Any

from domain.contract import DATA_MODELS
from domain.ctcae import Baseline
from domain.screens import (
    FNParameters,
    IECHSParameters,
    IECHSScreen,
    febrile_neutropenia,
    iechs_screen,
)
from domain.timeline import TimelineEntry

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)


def day(n: int, hhmm: str = "08:00") -> datetime:
    hours, minutes = (int(part) for part in hhmm.split(":"))
    return datetime.combine(D0.date() + timedelta(days=n), time(hours, minutes), tzinfo=TZ)


class Course:
    """One participant's observations, in arrival order; each returns its event id."""

    def __init__(self) -> None:
        self.entries: list[TimelineEntry] = []

    def record(self, type_: str, at: datetime, **data: Any) -> str:
        seq = len(self.entries) + 1
        event_id = f"ev{seq:03d}"
        self.entries.append(TimelineEntry(event_id, type_, at, DATA_MODELS[type_](**data), seq))
        return event_id

    def temperature(self, at: datetime, temperature_c: float) -> str:
        return self.record("vitals.recorded", at, temperature_c=temperature_c)

    def lab(self, at: datetime, analyte: str, value: float, unit: str, **ranges: float) -> str:
        return self.record("lab.resulted", at, analyte=analyte, value=value, unit=unit, **ranges)

    def anc(self, at: datetime, value: float, unit: str = "10*9/L") -> str:
        return self.lab(at, "anc", value, unit)

    def fn(self, **kwargs: Any) -> tuple[Any, ...]:
        kwargs.setdefault("version", "5.0")
        return febrile_neutropenia(self.entries, infusion_at=D0, **kwargs)


# ---------------------------------------------------------------- febrile neutropenia


def test_single_temperature_38_4_with_anc_0_5_is_febrile_neutropenia_grade_3():
    """Reference §3: ANC < 1.0 with a single T > 38.3 C -> febrile neutropenia grade 3."""
    course = Course()
    anc = course.anc(day(3, "06:00"), 0.5)
    fever = course.temperature(day(3, "10:00"), 38.4)
    (episode,) = course.fn()
    assert (episode.at, episode.grade, episode.term) == (day(3, "10:00"), 3, "Febrile neutropenia")
    assert episode.basis == "single_above_38_3"
    assert (episode.anc_10e9_l, episode.temperature_c) == (0.5, 38.4)
    assert episode.caused_by == (anc, fever)
    assert episode.criteria == "CTCAE-5.0"


def test_single_temperature_of_exactly_38_3_is_not_febrile_neutropenia():
    """Reference §3: the single-reading threshold is > 38.3 C, so 38.3 does not qualify."""
    course = Course()
    course.anc(day(3, "06:00"), 0.5)
    course.temperature(day(3, "10:00"), 38.3)
    assert course.fn() == ()


def test_38_0_sustained_61_minutes_is_febrile_neutropenia():
    """Reference §3: T >= 38.0 C sustained > 1 h (two readings 61 min apart)."""
    course = Course()
    anc = course.anc(day(3, "06:00"), 0.4)
    first = course.temperature(day(3, "10:00"), 38.0)
    second = course.temperature(day(3, "11:01"), 38.1)
    (episode,) = course.fn()
    assert episode.at == day(3, "11:01")
    assert episode.basis == "sustained_38_0_over_1h"
    assert episode.caused_by == (anc, first, second)


def test_38_0_sustained_59_minutes_is_not_febrile_neutropenia():
    """Reference §3: sustained means more than 1 h; 59 min is not."""
    course = Course()
    course.anc(day(3, "06:00"), 0.4)
    course.temperature(day(3, "10:00"), 38.0)
    course.temperature(day(3, "10:59"), 38.2)
    assert course.fn() == ()


def test_38_0_readings_exactly_one_hour_apart_are_not_sustained_over_1_h():
    """Reference §3: '> 1 h' is strict; two readings exactly 60 min apart do not qualify."""
    course = Course()
    course.anc(day(3, "06:00"), 0.4)
    course.temperature(day(3, "10:00"), 38.0)
    course.temperature(day(3, "11:00"), 38.0)
    assert course.fn() == ()


def test_a_normal_reading_between_two_febrile_readings_breaks_the_sustained_fever():
    """Reference §3: sustained fever needs no normal reading between the two >= 38.0 C."""
    course = Course()
    course.anc(day(3, "06:00"), 0.4)
    course.temperature(day(3, "10:00"), 38.1)
    course.temperature(day(3, "10:30"), 37.6)
    course.temperature(day(3, "11:30"), 38.1)
    assert course.fn() == ()


def test_anc_0_99_with_fever_is_febrile_neutropenia():
    """Reference §3: ANC < 1.0 x 10^9/L; 0.99 qualifies."""
    course = Course()
    course.anc(day(3, "06:00"), 0.99)
    course.temperature(day(3, "10:00"), 38.6)
    assert len(course.fn()) == 1


def test_anc_1_0_with_fever_is_not_febrile_neutropenia():
    """Reference §3: ANC < 1.0 x 10^9/L is strict; 1.0 does not qualify."""
    course = Course()
    course.anc(day(3, "06:00"), 1.0)
    course.temperature(day(3, "10:00"), 38.6)
    assert course.fn() == ()


def test_anc_990_per_ul_is_converted_and_qualifies():
    """Reference §3: 1.0 x 10^9/L = 1000/mm3; 990 /uL is 0.99 x 10^9/L."""
    course = Course()
    course.anc(day(3, "06:00"), 990, "/uL")
    course.temperature(day(3, "10:00"), 38.6)
    (episode,) = course.fn()
    assert episode.anc_10e9_l == 0.99


def test_anc_1000_per_ul_does_not_qualify():
    """Reference §3: 1000 /uL = 1.0 x 10^9/L, not below 1.0."""
    course = Course()
    course.anc(day(3, "06:00"), 1000, "/uL")
    course.temperature(day(3, "10:00"), 38.6)
    assert course.fn() == ()


def test_the_anc_in_force_is_the_last_result_before_the_fever():
    """Reference §3, §0.6: a recovered ANC (1.2) replaces the earlier 0.5."""
    course = Course()
    course.anc(day(3, "06:00"), 0.5)
    course.anc(day(3, "08:00"), 1.2)
    course.temperature(day(3, "10:00"), 38.6)
    assert course.fn() == ()


def test_an_anc_older_than_24_hours_does_not_pair_with_a_fever():
    """Reference §3 [parameter anc_max_age_hours = 24]: 24 h 1 min old is stale, 24 h is not."""
    course = Course()
    course.anc(day(2, "09:59"), 0.5)
    course.temperature(day(3, "10:00"), 38.6)
    assert course.fn() == ()
    course = Course()
    course.anc(day(2, "10:00"), 0.5)
    course.temperature(day(3, "10:00"), 38.6)
    assert len(course.fn()) == 1


def test_an_anc_drawn_after_the_fever_pairs_with_the_temperature_in_force():
    """Reference §3, §0.6: the 38.6 C reading is in force 2 h later when the ANC results."""
    course = Course()
    fever = course.temperature(day(3, "10:00"), 38.6)
    anc = course.anc(day(3, "12:00"), 0.3)
    (episode,) = course.fn()
    assert episode.at == day(3, "12:00")
    assert episode.caused_by == (anc, fever)


def test_an_anc_drawn_long_after_the_fever_does_not_pair():
    """Reference §3 [parameter temperature_max_age_hours = 4]: a 5 h old reading is stale."""
    course = Course()
    course.temperature(day(3, "10:00"), 38.6)
    course.anc(day(3, "15:00"), 0.3)
    assert course.fn() == ()


def test_fever_before_the_infusion_is_not_screened():
    """Reference §3 with the screen starting at infusion: a fever at D-1 is not counted."""
    course = Course()
    course.anc(day(-1, "06:00"), 0.5)
    course.temperature(day(-1, "10:00"), 38.9)
    assert course.fn() == ()


def test_repeated_fevers_during_one_neutropenia_are_one_episode_until_anc_recovers():
    """Reference §3: one febrile neutropenia episode; it resolves at ANC >= 1.0, and a
    later neutropenic fever is a new episode."""
    course = Course()
    course.anc(day(3, "06:00"), 0.3)
    course.temperature(day(3, "10:00"), 38.6)
    course.temperature(day(3, "14:00"), 38.9)
    course.anc(day(4, "06:00"), 0.4)
    course.temperature(day(4, "10:00"), 38.5)
    course.anc(day(6, "06:00"), 1.4)
    course.anc(day(9, "06:00"), 0.6)
    course.temperature(day(9, "10:00"), 38.7)
    first, second = course.fn()
    assert (first.at, first.resolved_at) == (day(3, "10:00"), day(6, "06:00"))
    assert (second.at, second.resolved_at) == (day(9, "10:00"), None)


def test_afebrile_for_24_hours_resolves_the_episode():
    """Reference §3 [parameter afebrile_hours_to_resolve = 24]: resolved at the start of
    24 h without fever; a fever within 24 h of a normal reading stays in the episode."""
    course = Course()
    course.anc(day(3, "06:00"), 0.3)
    course.temperature(day(3, "10:00"), 38.6)
    course.temperature(day(3, "16:00"), 37.2)
    course.temperature(day(4, "12:00"), 38.5)  # 20 h later: same episode
    course.temperature(day(4, "18:00"), 37.0)
    course.anc(day(5, "06:00"), 0.4)
    course.temperature(day(5, "20:00"), 38.8)  # 26 h later: a new episode
    first, second = course.fn()
    assert first.resolved_at == day(4, "18:00")
    assert second.at == day(5, "20:00")


def test_as_of_resolves_an_episode_after_24_hours_without_fever():
    """Reference §3, §0.4: clinical time passing (as_of) resolves an afebrile episode."""
    course = Course()
    course.anc(day(3, "06:00"), 0.3)
    course.temperature(day(3, "10:00"), 38.6)
    course.temperature(day(3, "16:00"), 37.2)
    (open_episode,) = course.fn(as_of=day(4, "15:59"))
    assert open_episode.resolved_at is None
    (closed,) = course.fn(as_of=day(4, "16:00"))
    assert closed.resolved_at == day(3, "16:00")


def test_ctcae_version_6_labels_the_criteria():
    """Reference §0.2: the version is a protocol parameter and is recorded."""
    course = Course()
    course.anc(day(3, "06:00"), 0.5)
    course.temperature(day(3, "10:00"), 38.6)
    (episode,) = course.fn(version="6.0", params=FNParameters())
    assert episode.criteria == "CTCAE-6.0"


# ---------------------------------------------------------------- IEC-HS screen

ONSET, RESOLVED = day(1, "08:00"), day(4, "08:00")
CRS = [(ONSET, RESOLVED)]
FERRITIN_ULN = 300.0
ALT_ULN = 40.0


def ferritin(course: Course, at: datetime, value: float, **ranges: float) -> str:
    ranges.setdefault("reference_high", FERRITIN_ULN)
    return course.lab(at, "ferritin", value, "ng/mL", **ranges)


def screen(
    course: Course,
    *,
    episodes: list[tuple[datetime, datetime | None]] | None = None,
    baseline: Baseline | None = None,
    params: IECHSParameters | None = None,
) -> tuple[IECHSScreen, ...]:
    return iechs_screen(
        course.entries,
        crs_episodes=CRS if episodes is None else episodes,
        baseline_ferritin=baseline,
        params=params or IECHSParameters(),
        version="5.0",
    )


def test_ferritin_above_2x_uln_and_rising_with_low_fibrinogen_is_screen_positive():
    """Reference §5: ferritin > 2 x ULN and rising, plus fibrinogen < 1.5 g/L."""
    course = Course()
    previous = ferritin(course, day(2), 450)
    current = ferritin(course, day(6), 601)
    fibrinogen = course.lab(day(6), "fibrinogen", 1.2, "g/L")
    (positive,) = screen(course)
    assert positive.at == day(6)
    assert positive.crs_episode == 1
    assert positive.criteria_met == (
        "ferritin_above_uln_multiple",
        "ferritin_rising",
        "fibrinogen_low",
    )
    assert positive.caused_by == (current, previous, fibrinogen)


def test_ferritin_of_exactly_2x_uln_is_not_enough():
    """Reference §5: ferritin must be > 2 x ULN; 600 with ULN 300 is not."""
    course = Course()
    ferritin(course, day(2), 450)
    ferritin(course, day(6), 600)
    course.lab(day(6), "fibrinogen", 1.2, "g/L")
    assert screen(course) == ()


def test_ferritin_above_2x_baseline_qualifies_without_a_reference_range():
    """Reference §5: ferritin > 2 x baseline (401 > 2 x 200) and rising vs the baseline."""
    course = Course()
    course.lab(day(6), "ferritin", 401, "ng/mL")
    course.lab(day(6), "fibrinogen", 1.2, "g/L")
    baseline = Baseline(200.0, "ng/mL", event_id="base-ferritin")
    (positive,) = screen(course, baseline=baseline)
    assert positive.criteria_met[:2] == ("ferritin_above_baseline_multiple", "ferritin_rising")
    assert "base-ferritin" in positive.caused_by


def test_ferritin_of_exactly_2x_baseline_is_not_enough():
    """Reference §5: > 2 x baseline is strict (400 = 2 x 200)."""
    course = Course()
    course.lab(day(6), "ferritin", 400, "ng/mL")
    course.lab(day(6), "fibrinogen", 1.2, "g/L")
    assert screen(course, baseline=Baseline(200.0, "ng/mL")) == ()


def test_high_but_falling_ferritin_is_negative():
    """Reference §5: ferritin must be rising; 2000 after 2500 is not."""
    course = Course()
    ferritin(course, day(2), 2500)
    ferritin(course, day(6), 2000)
    course.lab(day(6), "fibrinogen", 1.0, "g/L")
    assert screen(course) == ()


def test_a_single_ferritin_without_baseline_cannot_be_rising():
    """Reference §5: 'rising' needs an earlier ferritin (or a baseline) to compare with."""
    course = Course()
    ferritin(course, day(6), 5000)
    course.lab(day(6), "fibrinogen", 1.0, "g/L")
    assert screen(course) == ()


def test_high_rising_ferritin_alone_is_negative():
    """Reference §5: ferritin needs one of fibrinogen, transaminases or cytopenia."""
    course = Course()
    ferritin(course, day(2), 450)
    ferritin(course, day(6), 900)
    course.lab(day(6), "fibrinogen", 2.5, "g/L")
    course.lab(day(6), "alt", 60, "U/L", reference_high=ALT_ULN)
    assert screen(course) == ()


def test_fibrinogen_of_exactly_1_5_g_l_is_not_low_but_149_mg_dl_is():
    """Reference §5: fibrinogen < 1.5 g/L (1 g/L = 100 mg/dL, units.py)."""
    course = Course()
    ferritin(course, day(2), 450)
    ferritin(course, day(6), 900)
    course.lab(day(6), "fibrinogen", 1.5, "g/L")
    assert screen(course) == ()
    course.lab(day(7), "fibrinogen", 149, "mg/dL")
    (positive,) = screen(course)
    assert positive.at == day(7)
    assert "fibrinogen_low" in positive.criteria_met


def test_alt_above_5x_uln_qualifies_and_exactly_5x_does_not():
    """Reference §5: ALT > 5 x ULN (ULN 40: 200 no, 201 yes)."""
    course = Course()
    ferritin(course, day(2), 450)
    ferritin(course, day(6), 900)
    course.lab(day(6), "alt", 200, "U/L", reference_high=ALT_ULN)
    assert screen(course) == ()
    course.lab(day(7), "alt", 201, "U/L", reference_high=ALT_ULN)
    (positive,) = screen(course)
    assert positive.criteria_met == (
        "ferritin_above_uln_multiple",
        "ferritin_rising",
        "alt_above_uln_multiple",
    )


def test_ast_above_5x_uln_qualifies():
    """Reference §5: AST > 5 x ULN."""
    course = Course()
    ferritin(course, day(2), 450)
    ferritin(course, day(6), 900)
    course.lab(day(6), "ast", 260, "U/L", reference_high=50)
    (positive,) = screen(course)
    assert "ast_above_uln_multiple" in positive.criteria_met


def test_new_thrombocytopenia_worsening_by_a_ctcae_grade_qualifies():
    """Reference §5 new or worsening cytopenia [operational: CTCAE grade up by >= 1 from
    the best since before CRS onset]; platelets 120 (G1, LLN 150) -> 40 (G3)."""
    course = Course()
    before = course.lab(day(0), "platelets", 120, "10*9/L", reference_low=150)
    ferritin(course, day(2), 450)
    ferritin(course, day(6), 900)
    after = course.lab(day(6), "platelets", 40, "10*9/L", reference_low=150)
    (positive,) = screen(course)
    assert "cytopenia_platelets" in positive.criteria_met
    assert {before, after} <= set(positive.caused_by)


def test_biphasic_neutropenia_after_recovery_counts_as_worsening():
    """Reference §5 (IEC-HS cytopenia is often a second fall): ANC G4 at CRS onset,
    recovery to G2, then G3 again -> worsening from the best grade since onset."""
    course = Course()
    course.anc(day(0), 0.2)
    ferritin(course, day(2), 450)
    course.anc(day(5), 1.2)
    ferritin(course, day(9), 900)
    course.anc(day(9), 0.7)
    (positive,) = screen(course)
    assert "cytopenia_anc" in positive.criteria_met


def test_persisting_grade_4_neutropenia_is_not_new_or_worsening():
    """Reference §5: ANC grade 4 since lymphodepletion is neither new nor worsening."""
    course = Course()
    course.anc(day(0), 0.2)
    ferritin(course, day(2), 450)
    ferritin(course, day(6), 900)
    course.anc(day(6), 0.1)
    assert screen(course) == ()


def test_findings_before_the_crs_episode_are_negative():
    """Reference §5: only during or after a CRS episode."""
    course = Course()
    ferritin(course, day(0, "06:00"), 450)
    ferritin(course, day(1, "06:00"), 900)
    course.lab(day(1, "06:00"), "fibrinogen", 1.0, "g/L")
    assert screen(course) == ()
    assert screen(course, episodes=[]) == ()


def test_findings_after_the_crs_episode_resolved_are_screened():
    """Reference §5: 'during or after' a CRS episode (no limit by default)."""
    course = Course()
    ferritin(course, day(2), 450)
    ferritin(course, day(20), 900)
    course.lab(day(20), "fibrinogen", 1.0, "g/L")
    (positive,) = screen(course)
    assert positive.at == day(20)


def test_a_window_after_resolution_limits_the_screen_when_set():
    """Reference §5 [parameter window_days_after_crs_resolution]: 16 days after resolution
    is outside a 14-day window."""
    course = Course()
    ferritin(course, day(2), 450)
    ferritin(course, day(20), 900)
    course.lab(day(20), "fibrinogen", 1.0, "g/L")
    params = IECHSParameters(window_days_after_crs_resolution=14)
    assert screen(course, params=params) == ()


def test_the_screen_fires_when_the_last_condition_arrives_and_only_once_per_episode():
    """Reference §5: one screen per CRS episode, at the first instant all conditions hold."""
    course = Course()
    ferritin(course, day(2), 450)
    ferritin(course, day(5), 900)
    course.lab(day(5, "14:00"), "fibrinogen", 1.1, "g/L")
    ferritin(course, day(6), 1500)
    course.lab(day(6), "fibrinogen", 0.9, "g/L")
    (positive,) = screen(course)
    assert positive.at == day(5, "14:00")
    assert positive.ferritin_ng_ml == 900


def test_each_crs_episode_gets_its_own_screen():
    """Reference §5: a second CRS episode has its own screen window."""
    course = Course()
    ferritin(course, day(2), 450)
    ferritin(course, day(3), 900)
    course.lab(day(3), "fibrinogen", 1.0, "g/L")
    second_onset = day(10)
    ferritin(course, day(11), 1200)
    course.lab(day(11), "fibrinogen", 1.1, "g/L")
    first, second = screen(course, episodes=[(ONSET, RESOLVED), (second_onset, None)])
    assert (first.crs_episode, first.at) == (1, day(3))
    assert (second.crs_episode, second.at) == (2, day(11))
