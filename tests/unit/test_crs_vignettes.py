"""CRS grading vignettes: ASTCT 2019 (Lee et al., BBMT 2019;25:625-638).

Each test is a short clinical course whose expected result follows from
/work/shared/clinical/reference.md §0-1 and vignettes.md; the criterion is cited in
each docstring. Infusion at D0 08:00 (+08:00); ``day(n, "hh:mm")`` is D+n.
"""

from __future__ import annotations

import pytest

from domain.protocol import CRSParameters
from tests.unit.clinical_course import Course, change_at, day, hours_at_or_above, questions

# ---------------------------------------------------------------- vignettes 1-9


def test_vignette_1_fever_of_exactly_38_0_with_normal_vitals_is_grade_1():
    """ASTCT 2019: fever >= 38.0 C, no hypotension, no hypoxia -> grade 1; vignette 1."""
    course = Course()
    course.vitals(
        day(1, "06:00"),
        temperature_c=38.0,
        temperature_route="oral",
        systolic_bp_mmhg=122,
        diastolic_bp_mmhg=76,
        spo2_pct=97,
    )
    derivation = course.derive()
    assert derivation.grade_at(day(1, "06:00")) == 1
    assert change_at(derivation, day(1, "06:00")).basis.fever_c == 38.0


def test_vignette_1_counterpart_37_9_is_not_fever_and_opens_no_episode():
    """ASTCT 2019: fever is >= 38.0 C, so 37.9 C is no CRS; vignette 1."""
    course = Course()
    course.vitals(day(1, "06:00"), temperature_c=37.9, systolic_bp_mmhg=122, spo2_pct=97)
    derivation = course.derive()
    assert derivation.grade_at(day(1, "06:00")) == 0
    assert derivation.episodes == ()


def test_vignette_2_fever_with_hypotension_treated_by_fluid_bolus_is_grade_2():
    """ASTCT 2019 grade 2: hypotension not requiring vasopressors; vignette 2."""
    course = Course()
    course.vitals(day(1, "22:00"), temperature_c=39.1, systolic_bp_mmhg=84)
    course.bolus(day(1, "22:05"), 1000)
    course.vitals(day(1, "22:40"), systolic_bp_mmhg=104)
    derivation = course.derive()
    assert derivation.grade_at(day(1, "22:05")) == 2
    assert change_at(derivation, day(1, "22:05")).basis.hypotension == "fluids_only"
    assert derivation.episodes[0].max_grade == 2


def test_vignette_3_fever_with_nasal_cannula_2_l_min_is_low_flow_grade_2():
    """ASTCT 2019 grade 2: low-flow nasal cannula <= 6 L/min; vignette 3."""
    course = Course()
    course.vitals(day(2, "03:00"), temperature_c=38.8, spo2_pct=90)
    course.oxygen(day(2, "03:00"), "nasal_cannula", 2)
    derivation = course.derive()
    assert derivation.grade_at(day(2, "03:00")) == 2
    assert change_at(derivation, day(2, "03:00")).basis.hypoxia == "low_flow"


def test_vignette_4_raising_nasal_cannula_from_6_to_7_l_min_is_grade_3_from_then():
    """ASTCT 2019: 6 L/min is low flow (grade 2), > 6 L/min high flow (grade 3); vignette 4."""
    course = Course()
    course.vitals(day(2, "10:00"), temperature_c=38.6)
    course.oxygen(day(2, "10:00"), "nasal_cannula", 6)
    course.oxygen(day(2, "10:40"), "nasal_cannula", 7)
    derivation = course.derive()
    assert derivation.grade_at(day(2, "10:39")) == 2
    assert derivation.grade_at(day(2, "10:40")) == 3


def test_vignette_5_simple_face_mask_at_5_l_min_is_grade_3():
    """ASTCT 2019 grade 3: facemask, whatever the flow; vignette 5."""
    course = Course()
    course.vitals(day(2, "14:00"), temperature_c=38.9)
    course.oxygen(day(2, "14:00"), "simple_face_mask", 5)
    assert course.grade_at(day(2, "14:00")) == 3


def test_vignette_6_norepinephrine_with_vasopressin_and_low_flow_is_grade_3():
    """ASTCT 2019 grade 3: a vasopressor with or without vasopressin; the less severe
    low-flow O2 does not change it; vignette 6."""
    course = Course()
    course.vitals(day(3, "02:00"), temperature_c=39.4, systolic_bp_mmhg=78)
    course.vasopressor(day(3, "02:00"), "norepinephrine")
    course.vasopressor(day(3, "02:00"), "vasopressin")
    course.oxygen(day(3, "02:00"), "nasal_cannula", 3)
    derivation = course.derive()
    assert derivation.grade_at(day(3, "02:00")) == 3
    basis = change_at(derivation, day(3, "02:00")).basis
    assert (basis.hypotension, basis.hypoxia) == ("single_vasopressor", "low_flow")


def test_vignette_7_phenylephrine_added_to_norepinephrine_is_grade_4_from_05_00():
    """ASTCT 2019 grade 4: multiple vasopressors (excluding vasopressin) at once; vignette 7."""
    course = Course()
    course.vitals(day(3, "02:00"), temperature_c=39.4, systolic_bp_mmhg=78)
    course.vasopressor(day(3, "02:00"), "norepinephrine")
    course.vasopressor(day(3, "02:00"), "vasopressin")
    course.oxygen(day(3, "02:00"), "nasal_cannula", 3)
    course.vasopressor(day(3, "05:00"), "phenylephrine")
    derivation = course.derive()
    assert derivation.grade_at(day(3, "04:59")) == 3
    assert derivation.grade_at(day(3, "05:00")) == 4
    assert change_at(derivation, day(3, "05:00")).basis.hypotension == "multiple_vasopressors"


def test_vignette_8_tocilizumab_inside_episode_waives_fever_for_later_vasopressor():
    """ASTCT 2019 fever waiver: in an episode, after anti-IL-6 grading is by
    hypotension/hypoxia; norepinephrine -> grade 3; vignette 8."""
    course = Course()
    course.vitals(day(1, "09:00"), temperature_c=38.6)
    course.medication(day(1, "12:00"), "tocilizumab", "anti_il6")
    course.vitals(day(2, "07:00"), temperature_c=37.1, systolic_bp_mmhg=84)
    course.bolus(day(2, "07:05"), 2000)
    course.vitals(day(2, "08:00"), systolic_bp_mmhg=82)
    course.vasopressor(day(2, "08:00"), "norepinephrine")
    derivation = course.derive()
    assert derivation.grade_at(day(1, "09:00")) == 1
    assert derivation.grade_at(day(2, "08:00")) == 3
    basis = change_at(derivation, day(2, "08:00")).basis
    assert (basis.fever_c, basis.fever_waived_by) == (None, "tocilizumab")
    assert len(derivation.episodes) == 1


def test_vignette_9_afebrile_support_after_premedication_is_not_graded_but_asks_masked():
    """ASTCT 2019: the fever waiver never starts an episode -> no grade, 'possible masked
    CRS' for adjudication; vignette 9."""
    course = Course()
    paracetamol = course.medication(day(0, "07:30"), "paracetamol", "antipyretic")
    course.vitals(day(2, "10:00"), temperature_c=37.6, systolic_bp_mmhg=85)
    course.bolus(day(2, "10:10"), 1000)
    course.oxygen(day(2, "10:30"), "nasal_cannula", 2)
    derivation = course.derive()
    assert derivation.episodes == ()
    assert derivation.grade_at(day(2, "10:30")) == 0
    assert questions(derivation, about="masked", evidence=paracetamol)


# ---------------------------------------------------------------- vignettes 21-22 (CRS part)


def _grade_3_course_until_low_flow_at(step_down_at):
    """Grade 3 from D+3 10:00 (fever + norepinephrine); norepinephrine stopped and
    nasal cannula 2 L/min at ``step_down_at`` with fever ongoing (grade 2)."""
    course = Course()
    course.vitals(day(3, "10:00"), temperature_c=38.9, systolic_bp_mmhg=82)
    course.vasopressor(day(3, "10:00"), "norepinephrine")
    course.vitals(day(4, "10:00"), temperature_c=38.7)
    course.vitals(step_down_at, temperature_c=38.4)
    course.vasopressor(step_down_at, "norepinephrine", "stop")
    course.oxygen(step_down_at, "nasal_cannula", 2)
    course.vitals(day(7, "10:00"), temperature_c=38.2)
    return course.derive()


def test_vignette_21_grade_3_for_60_hours_then_low_flow_grade_2():
    """Reference §7: grade 3 CRS from D+3 10:00 until D+5 22:00 = 60 h; vignette 21."""
    derivation = _grade_3_course_until_low_flow_at(day(5, "22:00"))
    assert derivation.grade_at(day(3, "10:00")) == 3
    assert derivation.grade_at(day(5, "22:00")) == 2
    assert hours_at_or_above(derivation, 3) == 60


def test_vignette_22_norepinephrine_stopped_d6_18_00_gives_80_hours_at_grade_3():
    """Reference §7: grade 3 CRS from D+3 10:00 until D+6 18:00 = 80 h; vignette 22."""
    derivation = _grade_3_course_until_low_flow_at(day(6, "18:00"))
    assert derivation.grade_at(day(6, "17:59")) == 3
    assert derivation.grade_at(day(6, "18:00")) == 2
    assert hours_at_or_above(derivation, 3) == 80


# ---------------------------------------------------------------- oxygen thresholds


def _febrile_with_oxygen(device, flow=None, reason="hypoxia"):
    course = Course()
    course.vitals(day(2, "10:00"), temperature_c=38.6)
    course.oxygen(day(2, "10:00"), device, flow, reason)
    return course


def test_exactly_6_l_min_nasal_cannula_is_low_flow_grade_2():
    """ASTCT 2019: low-flow nasal cannula is <= 6 L/min (exactly 6 is low)."""
    assert _febrile_with_oxygen("nasal_cannula", 6.0).grade_at(day(2, "10:00")) == 2


def test_6_1_l_min_nasal_cannula_is_high_flow_grade_3():
    """ASTCT 2019: high-flow nasal cannula is > 6 L/min."""
    assert _febrile_with_oxygen("nasal_cannula", 6.1).grade_at(day(2, "10:00")) == 3


def test_high_flow_nasal_cannula_device_at_6_l_min_is_low_flow_grade_2():
    """ASTCT 2019: classification is by flow (<= 6 L/min low), not by device name."""
    course = _febrile_with_oxygen("high_flow_nasal_cannula", 6)
    assert course.grade_at(day(2, "10:00")) == 2


def test_high_flow_nasal_cannula_at_7_l_min_is_grade_3():
    """ASTCT 2019 grade 3: high-flow nasal cannula > 6 L/min."""
    course = _febrile_with_oxygen("high_flow_nasal_cannula", 7)
    assert course.grade_at(day(2, "10:00")) == 3


def test_blow_by_oxygen_is_low_flow_grade_2():
    """ASTCT 2019 grade 2: low-flow nasal cannula or blow-by."""
    assert _febrile_with_oxygen("blow_by").grade_at(day(2, "10:00")) == 2


@pytest.mark.parametrize("flow", [2, 15])
@pytest.mark.parametrize("mask", ["simple_face_mask", "non_rebreather_mask", "venturi_mask"])
def test_every_mask_is_grade_3_whatever_the_flow(mask, flow):
    """ASTCT 2019 grade 3: facemask, non-rebreather or Venturi mask (device decides)."""
    assert _febrile_with_oxygen(mask, flow).grade_at(day(2, "10:00")) == 3


@pytest.mark.parametrize("device", ["cpap", "bipap", "mechanical_ventilation"])
def test_positive_pressure_ventilation_is_grade_4(device):
    """ASTCT 2019 grade 4: positive pressure (CPAP, BiPAP, intubation and ventilation)."""
    derivation = _febrile_with_oxygen(device).derive()
    assert derivation.grade_at(day(2, "10:00")) == 4
    assert change_at(derivation, day(2, "10:00")).basis.hypoxia == "positive_pressure"


# ---------------------------------------------------------------- hypotension thresholds


def _febrile_with_bp_and_bolus(indication="hypotension", bolus=True, **bp):
    course = Course()
    course.vitals(day(1, "22:00"), temperature_c=38.8, **bp)
    if bolus:
        course.bolus(day(1, "22:05"), 500, indication)
    return course.derive()


def test_sbp_89_treated_with_fluid_bolus_is_grade_2():
    """Reference §1 [parameter]: hypotension is SBP < 90 mmHg; treated with fluids -> grade 2."""
    derivation = _febrile_with_bp_and_bolus(systolic_bp_mmhg=89)
    assert derivation.grade_at(day(1, "22:05")) == 2


def test_sbp_90_is_not_hypotension_so_a_bolus_leaves_grade_1():
    """Reference §1 [parameter]: hypotension is strictly SBP < 90 mmHg."""
    derivation = _febrile_with_bp_and_bolus(systolic_bp_mmhg=90)
    assert derivation.grade_at(day(1, "22:05")) == 1


def test_map_64_treated_with_fluid_bolus_is_grade_2():
    """Reference §1 [parameter]: hypotension is MAP < 65 mmHg (SBP 95/48, MAP 64)."""
    derivation = _febrile_with_bp_and_bolus(
        systolic_bp_mmhg=95, diastolic_bp_mmhg=48, mean_arterial_pressure_mmhg=64
    )
    assert derivation.grade_at(day(1, "22:05")) == 2


def test_map_65_is_not_hypotension_so_a_bolus_leaves_grade_1():
    """Reference §1 [parameter]: hypotension is strictly MAP < 65 mmHg."""
    derivation = _febrile_with_bp_and_bolus(
        systolic_bp_mmhg=95, diastolic_bp_mmhg=50, mean_arterial_pressure_mmhg=65
    )
    assert derivation.grade_at(day(1, "22:05")) == 1


def test_hypotension_without_fluid_bolus_is_not_fluids_only_and_stays_grade_1():
    """Reference §1: grade 2 hypotension is a hypotension reading *treated with* a bolus."""
    derivation = _febrile_with_bp_and_bolus(bolus=False, systolic_bp_mmhg=82)
    assert derivation.grade_at(day(1, "23:00")) == 1
    assert change_at(derivation, day(1, "23:00")).basis.hypotension == "none"


def test_fluid_bolus_with_indication_other_does_not_count_as_treating_hypotension():
    """Reference §1: only a bolus treating hypotension makes 'not requiring vasopressors'."""
    derivation = _febrile_with_bp_and_bolus(indication="other", systolic_bp_mmhg=82)
    assert derivation.grade_at(day(1, "22:05")) == 1


# ---------------------------------------------------------------- vasopressors


def _febrile_course():
    course = Course()
    course.vitals(day(3, "02:00"), temperature_c=39.0, systolic_bp_mmhg=80)
    return course


def test_vasopressin_alone_is_grade_3():
    """ASTCT 2019 grade 3: requiring a vasopressor (vasopressin counts as one)."""
    course = _febrile_course()
    course.vasopressor(day(3, "02:10"), "vasopressin")
    assert course.grade_at(day(3, "02:10")) == 3


def test_norepinephrine_plus_vasopressin_is_grade_3_not_4():
    """ASTCT 2019: a vasopressor with vasopressin is grade 3; grade 4 excludes vasopressin."""
    course = _febrile_course()
    course.vasopressor(day(3, "02:10"), "norepinephrine")
    course.vasopressor(day(3, "03:00"), "vasopressin")
    derivation = course.derive()
    assert derivation.grade_at(day(3, "03:00")) == 3
    assert derivation.episodes[0].max_grade == 3


def test_two_non_vasopressin_agents_at_once_are_grade_4():
    """ASTCT 2019 grade 4: multiple vasopressors (excluding vasopressin) running together."""
    course = _febrile_course()
    course.vasopressor(day(3, "02:10"), "epinephrine")
    course.vasopressor(day(3, "02:10"), "dopamine")
    assert course.grade_at(day(3, "02:10")) == 4


def test_sequential_switch_norepinephrine_to_phenylephrine_is_grade_3_never_4():
    """Reference §1: a switch with no overlap is one agent -> grade 3."""
    course = _febrile_course()
    course.vasopressor(day(3, "02:10"), "norepinephrine")
    course.vasopressor(day(3, "06:00"), "norepinephrine", "stop")
    course.vasopressor(day(3, "06:00"), "phenylephrine")
    derivation = course.derive(as_of=day(3, "12:00"))
    assert derivation.grade_at(day(3, "06:00")) == 3
    assert max(change.grade for change in derivation.changes) == 3


def test_phenylephrine_started_while_norepinephrine_runs_is_grade_4_until_overlap_ends():
    """ASTCT 2019 grade 4 needs agents at the same time: from overlap start to its end."""
    course = _febrile_course()
    course.vasopressor(day(3, "02:10"), "norepinephrine")
    course.vasopressor(day(3, "05:00"), "phenylephrine")
    course.vasopressor(day(3, "08:00"), "norepinephrine", "stop")
    derivation = course.derive()
    assert derivation.grade_at(day(3, "04:59")) == 3
    assert derivation.grade_at(day(3, "05:00")) == 4
    assert derivation.grade_at(day(3, "08:00")) == 3


def test_a_vasopressor_started_and_stopped_at_one_instant_never_ran_alongside_another():
    """ASTCT 2019 grade 4 needs agents at the same time: phenylephrine charted as
    started and stopped at 05:00 while norepinephrine runs never ran together with
    it, so the course stays grade 3 (the zero-length run used to stop the
    derivation with an error)."""
    course = _febrile_course()
    course.vasopressor(day(3, "02:10"), "norepinephrine")
    course.vasopressor(day(3, "05:00"), "phenylephrine")
    course.vasopressor(day(3, "05:00"), "phenylephrine", "stop")
    derivation = course.derive(as_of=day(3, "12:00"))
    assert derivation.grade_at(day(3, "05:00")) == 3
    assert derivation.episodes[0].max_grade == 3


def _overlap(minutes, params):
    course = _febrile_course()
    course.vasopressor(day(3, "02:10"), "norepinephrine")
    course.vasopressor(day(3, "05:00"), "phenylephrine")
    course.vasopressor(day(3, f"05:{minutes:02d}"), "norepinephrine", "stop")
    return course.derive(as_of=day(3, "12:00"), params=params)


def test_overlap_of_10_min_under_a_30_min_threshold_is_a_switch_and_stays_grade_3():
    """Reference §1 [parameter: overlap threshold]: shorter overlap = one agent."""
    derivation = _overlap(10, CRSParameters(vasopressor_overlap_minutes=30))
    assert derivation.grade_at(day(3, "05:05")) == 3
    assert derivation.episodes[0].max_grade == 3


def test_overlap_of_45_min_over_a_30_min_threshold_is_grade_4():
    """Reference §1 [parameter: overlap threshold]: agents together >= 30 min -> grade 4."""
    derivation = _overlap(45, CRSParameters(vasopressor_overlap_minutes=30))
    assert derivation.grade_at(day(3, "05:40")) == 4
    assert derivation.grade_at(day(3, "05:45")) == 3


def test_running_overlap_below_threshold_is_not_yet_grade_4_and_wakes_at_threshold():
    """Reference §1 [parameter]: concurrency counts only once it has lasted the threshold."""
    course = _febrile_course()
    course.vasopressor(day(3, "02:10"), "norepinephrine")
    course.vasopressor(day(3, "05:00"), "phenylephrine")
    params = CRSParameters(vasopressor_overlap_minutes=30)
    early = course.derive(as_of=day(3, "05:10"), params=params)
    assert early.grade_at(day(3, "05:10")) == 3
    assert early.next_wake_at == day(3, "05:30")
    assert course.derive(as_of=day(3, "05:30"), params=params).grade_at(day(3, "05:30")) == 4


def test_brief_overlap_under_switch_review_minutes_raises_adjudication_question():
    """Reference §9: sequential vasopressors (cross-taper vs escalation) -> adjudicate."""
    course = _febrile_course()
    course.vasopressor(day(3, "02:10"), "norepinephrine")
    phenylephrine = course.vasopressor(day(3, "05:00"), "phenylephrine")
    course.vasopressor(day(3, "05:20"), "norepinephrine", "stop")
    derivation = course.derive()
    assert derivation.grade_at(day(3, "05:00")) == 4
    assert questions(derivation, evidence=phenylephrine)


def test_grade_4_from_a_brief_overlap_under_review_is_provisional():
    """Reference §9: the engine continues with the *provisional* result while it asks."""
    course = _febrile_course()
    course.vasopressor(day(3, "02:10"), "norepinephrine")
    course.vasopressor(day(3, "05:00"), "phenylephrine")
    course.vasopressor(day(3, "05:20"), "norepinephrine", "stop")
    change = change_at(course.derive(), day(3, "05:00"))
    assert change.grade == 4
    assert change.provisional


def test_long_overlap_is_an_escalation_and_raises_no_switch_question():
    """Reference §1 [parameter: vasopressor_switch_review_minutes = 60]: 3 h together is
    multiple vasopressors, not a cross-taper to review."""
    course = _febrile_course()
    course.vasopressor(day(3, "02:10"), "norepinephrine")
    phenylephrine = course.vasopressor(day(3, "05:00"), "phenylephrine")
    course.vasopressor(day(3, "08:00"), "norepinephrine", "stop")
    assert not questions(course.derive(), evidence=phenylephrine)


# ---------------------------------------------------------------- the more severe event decides


def test_fever_one_vasopressor_and_low_flow_oxygen_is_grade_3():
    """ASTCT 2019: the more severe of hypotension and hypoxia decides (39.5 C example)."""
    course = Course()
    course.vitals(day(2, "20:00"), temperature_c=39.5, systolic_bp_mmhg=80)
    course.vasopressor(day(2, "20:00"), "norepinephrine")
    course.oxygen(day(2, "20:00"), "nasal_cannula", 2)
    assert course.grade_at(day(2, "20:00")) == 3


def test_fever_fluids_and_high_flow_oxygen_is_grade_3():
    """ASTCT 2019: fluids-only hypotension (2) with high-flow O2 (3) -> grade 3."""
    course = Course()
    course.vitals(day(2, "20:00"), temperature_c=38.7, systolic_bp_mmhg=85)
    course.bolus(day(2, "20:00"), 1000)
    course.oxygen(day(2, "20:00"), "high_flow_nasal_cannula", 30)
    derivation = course.derive()
    assert derivation.grade_at(day(2, "20:00")) == 3
    basis = change_at(derivation, day(2, "20:00")).basis
    assert (basis.hypotension, basis.hypoxia) == ("fluids_only", "high_flow")


def test_fever_one_vasopressor_and_cpap_is_grade_4():
    """ASTCT 2019: single vasopressor (3) with positive pressure (4) -> grade 4."""
    course = Course()
    course.vitals(day(2, "20:00"), temperature_c=39.0, systolic_bp_mmhg=80)
    course.vasopressor(day(2, "20:00"), "norepinephrine")
    course.oxygen(day(2, "20:00"), "cpap")
    assert course.grade_at(day(2, "20:00")) == 4


# ---------------------------------------------------------------- why oxygen was given


def test_mechanical_ventilation_for_airway_protection_is_not_crs_hypoxia():
    """Reference §1: oxygen for airway protection (e.g. intubation for ICANS) is not CRS
    hypoxia -> fever alone, grade 1."""
    course = _febrile_with_oxygen("mechanical_ventilation", reason="airway_protection")
    assert course.grade_at(day(2, "10:00")) == 1


def test_oxygen_for_a_procedure_is_not_crs_hypoxia():
    """Reference §1: the feed says why oxygen was started; only hypoxia counts."""
    course = _febrile_with_oxygen("simple_face_mask", 5, reason="procedure")
    assert course.grade_at(day(2, "10:00")) == 1


def test_oxygen_for_reason_other_is_not_counted_and_raises_question():
    """Reference §0 / §9: where the reason is unclear the engine asks, not guesses."""
    course = Course()
    course.vitals(day(2, "10:00"), temperature_c=38.6)
    oxygen = course.oxygen(day(2, "10:00"), "nasal_cannula", 4, reason="other")
    derivation = course.derive()
    assert derivation.grade_at(day(2, "10:00")) == 1
    assert questions(derivation, evidence=oxygen)


# ---------------------------------------------------------------- fever waiver


@pytest.mark.parametrize(
    ("drug", "drug_class"),
    [
        ("paracetamol", "antipyretic"),
        ("tocilizumab", "anti_il6"),
        ("dexamethasone", "corticosteroid"),
        ("anakinra", "il1_blocker"),
    ],
)
def test_waiver_drug_given_inside_episode_keeps_afebrile_vasopressor_hypotension_grade_3(
    drug, drug_class
):
    """ASTCT 2019 fever waiver: after antipyretic / anti-cytokine therapy inside an
    episode, fever is no longer required."""
    course = Course()
    course.vitals(day(1, "09:00"), temperature_c=38.8)
    course.medication(day(1, "10:00"), drug, drug_class)
    course.vitals(day(1, "18:00"), temperature_c=37.2, systolic_bp_mmhg=80)
    course.vasopressor(day(1, "18:00"), "norepinephrine")
    derivation = course.derive()
    assert derivation.grade_at(day(1, "18:00")) == 3
    assert change_at(derivation, day(1, "18:00")).basis.fever_waived_by == drug


def test_tocilizumab_never_starts_an_episode_for_afebrile_vasopressor_use():
    """ASTCT 2019: the waiver never starts an episode -> no grade, 'masked CRS' question."""
    course = Course()
    tocilizumab = course.medication(day(1, "12:00"), "tocilizumab", "anti_il6")
    course.vitals(day(2, "08:00"), temperature_c=37.1, systolic_bp_mmhg=78)
    course.vasopressor(day(2, "08:00"), "norepinephrine")
    derivation = course.derive()
    assert derivation.episodes == ()
    assert derivation.grade_at(day(2, "08:00")) == 0
    assert questions(derivation, about="masked", evidence=tocilizumab)


def test_antipyretic_given_before_the_episode_does_not_waive_fever_inside_it():
    """ASTCT 2019: the waiver applies to a patient *already in* an episode who *then*
    receives the drug; afebrile support without it -> no grade, adjudicate."""
    course = Course()
    course.medication(day(0, "07:30"), "paracetamol", "antipyretic")
    course.vitals(day(1, "09:00"), temperature_c=38.5)
    course.vitals(day(2, "08:00"), temperature_c=37.0, systolic_bp_mmhg=80)
    norepinephrine = course.vasopressor(day(2, "08:00"), "norepinephrine")
    derivation = course.derive()
    assert derivation.grade_at(day(1, "09:00")) == 1
    assert derivation.grade_at(day(2, "08:00")) == 0
    assert questions(derivation, evidence=norepinephrine)


# ---------------------------------------------------------------- infusion


def test_fever_after_lymphodepletion_but_before_infusion_is_not_crs():
    """ASTCT 2019 CRS follows immune effector cell therapy; reference §7 pre-infusion gate."""
    course = Course()
    course.vitals(day(-2, "20:00"), temperature_c=38.6)
    course.vitals(day(-1, "20:00"), temperature_c=37.0)
    course.vitals(day(1, "08:00"), temperature_c=37.2)
    derivation = course.derive()
    assert derivation.episodes == ()
    assert derivation.grade_at(day(-2, "20:00")) == 0


def test_pre_infusion_fever_carried_forward_does_not_open_episode_after_infusion():
    """Reference §1 / brief: onset is the first qualifying fever *after* infusion; a fever
    recorded before infusion is not CRS, and a BP-only reading after it records no fever."""
    course = Course()
    course.vitals(day(-1, "20:00"), temperature_c=38.6)
    course.vitals(day(1, "10:00"), systolic_bp_mmhg=118)
    assert course.derive().episodes == ()


def test_without_recorded_infusion_there_is_no_crs():
    """ASTCT 2019 grades immune effector cell-associated CRS: no infusion, no CRS."""
    course = Course(infusion_at=None)
    course.vitals(day(1, "09:00"), temperature_c=39.0, systolic_bp_mmhg=80)
    course.vasopressor(day(1, "09:00"), "norepinephrine")
    derivation = course.derive()
    assert derivation.episodes == ()
    assert derivation.changes == ()


# ---------------------------------------------------------------- episodes and resolution


def test_episode_onset_is_the_first_qualifying_fever_after_infusion():
    """ASTCT 2019: fever >= 38.0 C is required; 37.8 C does not start the episode."""
    course = Course()
    course.vitals(day(1, "06:00"), temperature_c=37.8)
    onset_reading = course.vitals(day(1, "10:00"), temperature_c=38.2)
    course.vitals(day(1, "14:00"), temperature_c=38.9)
    episode = course.derive().episodes[0]
    assert episode.onset_at == day(1, "10:00")
    assert onset_reading in episode.onset_caused_by


def _fever_then_quiet_from_d2_09_00():
    course = Course()
    course.vitals(day(1, "09:00"), temperature_c=38.7)
    course.vitals(day(2, "09:00"), temperature_c=37.0, systolic_bp_mmhg=118)
    return course


def test_episode_is_not_resolved_before_24_quiet_hours_and_wakes_at_24_h():
    """Reference §1 [parameter]: resolved after 24 h afebrile, off pressors and oxygen."""
    derivation = _fever_then_quiet_from_d2_09_00().derive(as_of=day(3, "08:59"))
    assert derivation.episodes[0].resolved_at is None
    assert derivation.next_wake_at == day(3, "09:00")


def test_episode_resolves_at_the_start_of_24_quiet_hours():
    """Reference §1 [parameter]: resolution time is the start of the 24 h."""
    derivation = _fever_then_quiet_from_d2_09_00().derive(as_of=day(3, "09:00"))
    assert derivation.episodes[0].resolved_at == day(2, "09:00")


def test_fever_10_h_into_the_quiet_period_continues_the_same_episode():
    """Reference §1 [parameter]: the quiet 24 h were not completed -> same episode."""
    course = _fever_then_quiet_from_d2_09_00()
    course.vitals(day(2, "19:00"), temperature_c=38.3)
    derivation = course.derive(as_of=day(3, "12:00"))
    assert len(derivation.episodes) == 1
    assert derivation.episodes[0].resolved_at is None
    assert derivation.grade_at(day(2, "19:00")) == 1


def test_fever_30_h_after_the_quiet_period_began_starts_episode_2():
    """Reference §1 [parameter]: 24 quiet hours resolved episode 1; a new fever is episode 2."""
    course = _fever_then_quiet_from_d2_09_00()
    course.vitals(day(3, "15:00"), temperature_c=38.4)
    first, second = course.derive().episodes
    assert first.resolved_at == day(2, "09:00")
    assert (second.number, second.onset_at) == (2, day(3, "15:00"))


def test_afebrile_patient_still_on_oxygen_is_not_resolved():
    """Reference §1 [parameter]: resolution requires being off supplemental oxygen."""
    course = Course()
    course.vitals(day(1, "09:00"), temperature_c=38.7)
    course.oxygen(day(1, "09:00"), "nasal_cannula", 2)
    course.medication(day(1, "10:00"), "tocilizumab", "anti_il6")
    course.vitals(day(2, "09:00"), temperature_c=37.0)
    derivation = course.derive(as_of=day(4, "09:00"))
    assert derivation.episodes[0].resolved_at is None
    assert derivation.grade_at(day(3, "09:00")) == 2


def test_episode_max_grade_is_the_highest_grade_reached():
    """ASTCT 2019: an episode's grade is its worst grade (3 here, though it fell to 1)."""
    course = Course()
    course.vitals(day(1, "09:00"), temperature_c=38.7)
    course.oxygen(day(1, "12:00"), "non_rebreather_mask", 10)
    course.oxygen(day(1, "20:00"), "room_air")
    derivation = course.derive()
    assert derivation.grade_at(day(1, "20:00")) == 1
    assert derivation.episodes[0].max_grade == 3


# ---------------------------------------------------------------- grade 5


@pytest.mark.parametrize("cause", ["CRS", "cytokine release syndrome"])
def test_death_due_to_crs_is_grade_5(cause):
    """ASTCT 2019 grade 5: death due to CRS."""
    course = Course()
    course.vitals(day(2, "09:00"), temperature_c=39.5, systolic_bp_mmhg=70)
    course.vasopressor(day(2, "09:00"), "norepinephrine")
    course.vasopressor(day(2, "09:00"), "epinephrine")
    death = course.death(day(3, "04:00"), cause)
    derivation = course.derive()
    assert derivation.grade_at(day(3, "04:00")) == 5
    assert derivation.episodes[0].max_grade == 5
    assert death in change_at(derivation, day(3, "04:00")).caused_by


def test_death_from_another_cause_during_episode_is_not_grade_5_and_is_adjudicated():
    """ASTCT 2019 grade 5 only when CRS is the principal cause; reference §0.3 -> ask."""
    course = Course()
    course.vitals(day(2, "09:00"), temperature_c=39.0)
    course.oxygen(day(2, "09:00"), "nasal_cannula", 3)
    death = course.death(day(3, "04:00"), "septic shock", attributed_to="infection")
    derivation = course.derive()
    assert derivation.episodes[0].max_grade == 2
    assert derivation.grade_at(day(3, "04:00")) != 5
    assert questions(derivation, evidence=death)


# ---------------------------------------------------------------- agents outside ASTCT


def test_inotrope_raises_a_question_and_changes_no_grade():
    """Reference §1: inotropes (dobutamine, milrinone) are not in ASTCT -> adjudication."""
    course = Course()
    course.vitals(day(2, "09:00"), temperature_c=38.9, systolic_bp_mmhg=84)
    before = course.derive(as_of=day(2, "12:00"))
    dobutamine = course.medication(day(2, "09:30"), "dobutamine", "inotrope")
    after = course.derive(as_of=day(2, "12:00"))
    assert [(c.at, c.grade) for c in after.changes] == [(c.at, c.grade) for c in before.changes]
    assert after.grade_at(day(2, "09:30")) == 1
    assert questions(after, evidence=dobutamine)


def test_unknown_vasopressor_is_graded_as_one_vasopressor_provisionally_with_question():
    """Reference §9: an unknown drug -> adjudicate and continue with the provisional result
    (one vasopressor with fever -> grade 3)."""
    course = Course()
    course.vitals(day(2, "09:00"), temperature_c=38.9, systolic_bp_mmhg=80)
    other = course.vasopressor(day(2, "11:00"), "other")
    derivation = course.derive()
    change = change_at(derivation, day(2, "11:00"))
    assert (change.grade, change.basis.hypotension) == (3, "single_vasopressor")
    assert change.provisional
    assert questions(derivation, evidence=other)


def test_unknown_vasopressor_started_with_the_onset_fever_is_still_provisional():
    """Reference §9: grade 3 rests on an unidentified agent -> provisional, whenever it started."""
    course = Course()
    course.vitals(day(2, "09:00"), temperature_c=38.9, systolic_bp_mmhg=80)
    course.vasopressor(day(2, "09:00"), "other")
    change = change_at(course.derive(), day(2, "09:00"))
    assert change.grade == 3
    assert change.provisional


# ---------------------------------------------------------------- carry-forward (reference §0.6)


def test_fever_holds_until_a_normal_temperature_reading_ends_it():
    """Reference §0.6: carried forward until a new observation of that kind."""
    course = Course()
    course.vitals(day(1, "09:00"), temperature_c=38.5)
    course.vitals(day(1, "11:00"), systolic_bp_mmhg=120)
    course.vitals(day(1, "13:00"), temperature_c=37.2)
    derivation = course.derive()
    assert derivation.grade_at(day(1, "12:59")) == 1
    assert derivation.grade_at(day(1, "13:00")) == 0


def test_oxygen_changed_to_room_air_ends_hypoxia():
    """Reference §0.6 / contract: an oxygen device holds until the next oxygen.changed."""
    course = _febrile_with_oxygen("nasal_cannula", 2)
    course.oxygen(day(2, "16:00"), "room_air")
    derivation = course.derive()
    assert derivation.grade_at(day(2, "15:59")) == 2
    assert derivation.grade_at(day(2, "16:00")) == 1


def test_normal_bp_reading_ends_fluids_only_hypotension():
    """Reference §0.6: the hypotension holds until the next BP reading (vignette 2)."""
    course = Course()
    course.vitals(day(1, "22:00"), temperature_c=39.1, systolic_bp_mmhg=84)
    course.bolus(day(1, "22:05"), 1000)
    course.vitals(day(1, "22:40"), systolic_bp_mmhg=104)
    derivation = course.derive()
    assert derivation.grade_at(day(1, "22:39")) == 2
    assert derivation.grade_at(day(1, "22:40")) == 1


# ---------------------------------------------------------------- caused_by and late data


def test_caused_by_names_the_temperature_reading_and_the_vasopressor():
    """Contract §3: caused_by lists the clinical event ids that made the grade true."""
    course = Course()
    reading = course.vitals(day(3, "02:00"), temperature_c=39.4, systolic_bp_mmhg=78)
    norepinephrine = course.vasopressor(day(3, "02:00"), "norepinephrine")
    change = change_at(course.derive(), day(3, "02:00"))
    assert {reading, norepinephrine} <= set(change.caused_by)


def test_caused_by_names_the_hypotensive_reading_and_the_bolus_for_fluids_only():
    """Contract §3 / reference §1: grade 2 = fever + hypotension reading treated with a bolus."""
    course = Course()
    reading = course.vitals(day(1, "22:00"), temperature_c=39.1, systolic_bp_mmhg=84)
    bolus = course.bolus(day(1, "22:05"), 1000)
    change = change_at(course.derive(), day(1, "22:05"))
    assert change.grade == 2
    assert {reading, bolus} <= set(change.caused_by)


def test_late_back_charted_high_flow_raises_the_grade_in_the_past():
    """Reference §0.4: clinical time decides; a late record re-derives after its occurred_at
    (vignette 4 charted late: 7 L/min at 10:40 -> grade 3 from 10:40)."""
    course = Course()
    course.vitals(day(2, "10:00"), temperature_c=38.6)
    course.oxygen(day(2, "10:00"), "nasal_cannula", 6)
    course.vitals(day(2, "11:30"), temperature_c=38.4)
    before = course.derive()
    late = course.oxygen(day(2, "10:40"), "nasal_cannula", 7)
    after = course.derive()
    assert before.grade_at(day(2, "10:40")) == 2
    assert after.grade_at(day(2, "10:40")) == 3
    assert late in change_at(after, day(2, "10:40")).caused_by
