"""ICANS grading vignettes: ASTCT 2019, adults (Lee et al., BBMT 2019;25:625-638).

Each test is a short clinical course whose expected result follows from
/work/shared/clinical/reference.md §0 and §2 and vignettes.md 10-15; the criterion is
cited in each docstring. Infusion at D0 08:00 (+08:00); ``day(n, "hh:mm")`` is D+n.
"""

from __future__ import annotations

import pytest

from domain.icans import ICANSParameters
from tests.unit.clinical_course import day
from tests.unit.neuro_course import FULL_ICE_ITEMS, NeuroCourse, change_at, questions


def _grade_of(**fields):
    """Grade of one assessment at D+5 10:00 (no sedation, no other observation)."""
    course = NeuroCourse()
    course.neuro(day(5, "10:00"), **fields)
    return course.derive().grade_at(day(5, "10:00"))


# ---------------------------------------------------------------- vignettes 10-15


def test_vignette_10_ice_8_awakening_spontaneously_is_grade_1():
    """ASTCT 2019 grade 1: ICE 7-9; awakens spontaneously; vignette 10."""
    course = NeuroCourse()
    assessment = course.neuro(day(5, "10:00"), ice_score=8, consciousness="awake")
    derivation = course.derive()
    change = change_at(derivation, day(5, "10:00"))
    assert change.grade == 1
    assert change.basis.ice_score == 8
    assert change.caused_by == (assessment,)
    assert not change.provisional


def test_vignette_11_ice_5_awakening_to_voice_is_grade_2():
    """ASTCT 2019 grade 2: ICE 3-6; awakens to voice; vignette 11."""
    course = NeuroCourse()
    course.neuro(day(6, "10:00"), ice_score=5, consciousness="awakens_to_voice")
    change = change_at(course.derive(), day(6, "10:00"))
    assert change.grade == 2
    assert change.basis.domain_grades == {
        "ice": 2,
        "consciousness": 2,
        "seizure": 0,
        "motor_weakness": 0,
        "cerebral_edema": 0,
        "raised_icp": 0,
    }


def test_vignette_12_ice_2_while_awake_is_grade_3():
    """ASTCT 2019 grade 3: ICE 0-2; vignette 12."""
    course = NeuroCourse()
    course.neuro(day(6, "10:00"), ice_score=2, consciousness="awake")
    derivation = course.derive()
    assert derivation.grade_at(day(6, "10:00")) == 3
    assert "ICE 2/10" in change_at(derivation, day(6, "10:00")).basis.explain(3)


def test_vignette_13_ice_0_eyes_open_with_global_aphasia_is_grade_3():
    """ASTCT 2019: ICE 0 while awake with global aphasia -> grade 3, not 4; vignette 13."""
    course = NeuroCourse()
    course.neuro(
        day(7, "10:00"), ice_score=0, ice_unable_reason="global_aphasia", consciousness="awake"
    )
    change = change_at(course.derive(), day(7, "10:00"))
    assert change.grade == 3
    assert (change.basis.ice_score, change.basis.ice_unable_reason) == (0, "global_aphasia")


def test_vignette_14_unarousable_without_sedation_in_12_hours_is_grade_4():
    """ASTCT 2019 grade 4: ICE 0 because unarousable; unarousable needing vigorous
    stimuli; the last sedative 13 h earlier is outside the 12 h lookback; vignette 14."""
    course = NeuroCourse()
    course.sedative(day(6, "21:00"), "lorazepam")
    assessment = course.neuro(
        day(7, "10:00"), ice_unable_reason="unarousable", consciousness="unarousable"
    )
    derivation = course.derive()
    change = change_at(derivation, day(7, "10:00"))
    assert change.grade == 4
    assert change.basis.not_assessable == ()
    assert change.caused_by == (assessment,)
    assert derivation.questions == ()


def test_vignette_15_ice_9_with_rapidly_resolving_focal_seizure_is_grade_3():
    """ASTCT 2019: grade = the most severe domain; ICE 9 (grade 1) with a clinical seizure
    resolving rapidly (grade 3) -> grade 3; vignette 15."""
    course = NeuroCourse()
    course.neuro(day(6, "10:00"), ice_score=9, consciousness="awake", seizure="rapidly_resolving")
    change = change_at(course.derive(), day(6, "10:00"))
    assert change.grade == 3
    assert (change.basis.domain_grades["ice"], change.basis.domain_grades["seizure"]) == (1, 3)


# ---------------------------------------------------------------- ICE bands


@pytest.mark.parametrize(("ice", "grade"), [(10, 0), (9, 1)])
def test_ice_boundary_10_is_grade_0_and_9_is_grade_1(ice, grade):
    """ASTCT 2019: ICE 10 with no other finding -> grade 0; ICE 7-9 -> grade 1."""
    assert _grade_of(ice_score=ice, consciousness="awake") == grade


@pytest.mark.parametrize(("ice", "grade"), [(7, 1), (6, 2)])
def test_ice_boundary_7_is_grade_1_and_6_is_grade_2(ice, grade):
    """ASTCT 2019: ICE 7-9 -> grade 1; ICE 3-6 -> grade 2."""
    assert _grade_of(ice_score=ice, consciousness="awake") == grade


@pytest.mark.parametrize(("ice", "grade"), [(3, 2), (2, 3)])
def test_ice_boundary_3_is_grade_2_and_2_is_grade_3(ice, grade):
    """ASTCT 2019: ICE 3-6 -> grade 2; ICE 0-2 -> grade 3."""
    assert _grade_of(ice_score=ice, consciousness="awake") == grade


def test_ice_0_while_awake_is_grade_3():
    """ASTCT 2019: the ICE 0-2 band is grade 3 in an awake patient."""
    assert _grade_of(ice_score=0, consciousness="awake") == 3


def test_ice_0_because_unarousable_is_grade_4():
    """ASTCT 2019 grade 4 ICE: 0 (patient unarousable and unable to perform ICE)."""
    assert _grade_of(ice_score=0, consciousness="unarousable") == 4


def test_ice_10_awake_opens_no_episode():
    """Reference §2: ICE 10 with no other finding -> grade 0."""
    course = NeuroCourse()
    course.normal(day(5, "10:00"))
    derivation = course.derive()
    assert derivation.episodes == ()
    assert derivation.changes == ()


# ---------------------------------------------------------------- depressed consciousness


@pytest.mark.parametrize(
    ("consciousness", "grade"),
    [("awake", 0), ("awakens_to_voice", 2), ("awakens_to_tactile", 3)],
)
def test_consciousness_level_grades_alone_with_ice_10(consciousness, grade):
    """ASTCT 2019 depressed consciousness: awakens to voice 2, only to tactile stimulus 3.
    'awake' (alert) is no depressed consciousness: with ICE 10 it is grade 0 (reference
    §2 'ICE 10 with no other finding -> grade 0'; see domain/icans.py)."""
    assert _grade_of(ice_score=10, consciousness=consciousness) == grade


def test_unarousable_patient_without_ice_is_grade_4():
    """ASTCT 2019 grade 4: unarousable, or needing vigorous/repetitive tactile stimuli."""
    course = NeuroCourse()
    course.neuro(day(5, "10:00"), consciousness="unarousable")
    change = change_at(course.derive(), day(5, "10:00"))
    assert change.grade == 4
    assert change.basis.domain_grades["consciousness"] == 4


# ---------------------------------------------------------------- seizure, motor, oedema, ICP


@pytest.mark.parametrize(
    ("seizure", "grade"),
    [
        ("rapidly_resolving", 3),
        ("nonconvulsive_resolved_with_intervention", 3),
        ("prolonged_or_repetitive", 4),
    ],
)
def test_seizure_kinds(seizure, grade):
    """ASTCT 2019 seizure: clinical seizure resolving rapidly or non-convulsive on EEG
    resolving with intervention -> 3; prolonged (> 5 min) or repetitive without return to
    baseline -> 4."""
    assert _grade_of(ice_score=10, consciousness="awake", seizure=seizure) == grade


def test_deep_focal_motor_weakness_is_grade_4():
    """ASTCT 2019 motor findings grade 4: deep focal motor weakness (hemiparesis)."""
    assert _grade_of(ice_score=10, consciousness="awake", motor_weakness="deep_focal") == 4


@pytest.mark.parametrize(("edema", "grade"), [("none", 0), ("focal", 3), ("diffuse", 4)])
def test_cerebral_oedema_levels(edema, grade):
    """ASTCT 2019 cerebral oedema: focal/local on imaging -> 3; diffuse -> 4."""
    assert _grade_of(ice_score=10, consciousness="awake", cerebral_edema=edema) == grade


@pytest.mark.parametrize(
    "sign",
    [
        "decerebrate_posturing",
        "decorticate_posturing",
        "cn6_palsy",
        "papilledema",
        "cushings_triad",
    ],
)
def test_each_raised_icp_sign_is_grade_4(sign):
    """ASTCT 2019 raised ICP grade 4: decerebrate or decorticate posturing, cranial nerve
    VI palsy, papilloedema or Cushing's triad."""
    course = NeuroCourse()
    course.neuro(day(5, "10:00"), ice_score=10, consciousness="awake", raised_icp_signs=[sign])
    change = change_at(course.derive(), day(5, "10:00"))
    assert change.grade == 4
    assert change.basis.raised_icp_signs == (sign,)


def test_empty_raised_icp_list_is_no_finding():
    """ASTCT 2019: no ICP sign, ICE 10 -> grade 0."""
    assert _grade_of(ice_score=10, consciousness="awake", raised_icp_signs=[]) == 0


# ---------------------------------------------------------------- the most severe domain


def test_ice_5_with_focal_oedema_is_grade_3():
    """ASTCT 2019: most severe domain; ICE 3-6 (2) and focal oedema (3) -> 3."""
    assert _grade_of(ice_score=5, consciousness="awake", cerebral_edema="focal") == 3


def test_ice_8_tactile_and_prolonged_seizure_is_grade_4():
    """ASTCT 2019: ICE 8 (1), awakens only to tactile (3), prolonged seizure (4) -> 4."""
    grade = _grade_of(
        ice_score=8, consciousness="awakens_to_tactile", seizure="prolonged_or_repetitive"
    )
    assert grade == 4


def test_ice_9_with_awakening_to_voice_is_grade_2():
    """ASTCT 2019: ICE 9 (1) with depressed consciousness awakening to voice (2) -> 2."""
    assert _grade_of(ice_score=9, consciousness="awakens_to_voice") == 2


# ---------------------------------------------------------------- ICE items


def test_ice_items_totalling_7_are_grade_1_and_kept_in_the_basis():
    """Reference §2: ICE is 10 points (orientation 4, naming 3, commands 1, writing 1,
    attention 1); keep item-level results. 3+2+1+1+0 = 7 -> grade 1."""
    items = {"orientation": 3, "naming": 2, "commands": 1, "writing": 1, "attention": 0}
    course = NeuroCourse()
    course.neuro(day(5, "10:00"), ice_items=items, consciousness="awake")
    change = change_at(course.derive(), day(5, "10:00"))
    assert change.grade == 1
    assert change.basis.ice_score == 7
    assert change.basis.ice_items == items


def test_ice_items_totalling_6_are_grade_2():
    """ASTCT 2019 ICE 3-6 -> grade 2, from the item total 2+2+1+1+0 = 6."""
    items = {"orientation": 2, "naming": 2, "commands": 1, "writing": 1, "attention": 0}
    assert _grade_of(ice_items=items, consciousness="awake") == 2


def test_ice_items_with_matching_total_grade_like_the_total():
    """Reference §2: items and the total are the same score (full items = 10 -> grade 0;
    1+1+0+0+0 = 2 -> grade 3, as ice_score 2)."""
    two = {"orientation": 1, "naming": 1, "commands": 0, "writing": 0, "attention": 0}
    assert _grade_of(ice_items=FULL_ICE_ITEMS, ice_score=10, consciousness="awake") == 0
    assert _grade_of(ice_items=two, ice_score=2, consciousness="awake") == 3
    assert _grade_of(ice_items=two, consciousness="awake") == _grade_of(
        ice_score=2, consciousness="awake"
    )


def test_ice_score_only_has_no_items_in_the_basis():
    """Reference §2: keep item-level results *when the feed has them*."""
    course = NeuroCourse()
    course.neuro(day(5, "10:00"), ice_score=8, consciousness="awake")
    assert change_at(course.derive(), day(5, "10:00")).basis.ice_items is None


# ---------------------------------------------------------------- sedation


def test_sedated_flag_makes_depressed_consciousness_not_assessable_and_asks():
    """Reference §2: depressed consciousness under sedating medication is not graded
    ('not assessable'); reference §9: sedation -> adjudication."""
    course = NeuroCourse()
    assessment = course.neuro(
        day(5, "10:00"),
        ice_unable_reason="sedated",
        consciousness="awakens_to_tactile",
        sedated=True,
    )
    derivation = course.derive()
    assert derivation.grade_at(day(5, "10:00")) == 0
    assert derivation.episodes == ()
    assert questions(derivation, about="sedation", evidence=assessment)


def test_sedative_11_hours_before_makes_unarousable_not_assessable():
    """Reference §2 [parameter sedation_lookback_hours = 12]: a sedative 11 h before the
    assessment -> depressed consciousness not graded, question cites the sedative."""
    course = NeuroCourse()
    propofol = course.sedative(day(6, "23:00"), "propofol")
    course.neuro(day(7, "10:00"), ice_unable_reason="unarousable", consciousness="unarousable")
    derivation = course.derive()
    assert derivation.grade_at(day(7, "10:00")) == 0
    assert questions(derivation, about="sedation", evidence=propofol)


def test_sedative_exactly_12_hours_before_is_inside_the_lookback():
    """Reference §2 [parameter]: 'within 12 h' includes exactly 12 h (the safer reading:
    refer to an adjudicator rather than grade possibly drug-induced coma)."""
    course = NeuroCourse()
    course.sedative(day(6, "22:00"))
    course.neuro(day(7, "10:00"), ice_unable_reason="unarousable", consciousness="unarousable")
    derivation = course.derive()
    assert derivation.grade_at(day(7, "10:00")) == 0
    assert questions(derivation, about="not fully assessable")


def test_shorter_sedation_lookback_parameter_grades_unarousable_after_8_hours():
    """Reference §2 [parameter]: with a 6 h lookback, a sedative 8 h earlier does not
    excuse an unarousable patient -> grade 4."""
    course = NeuroCourse()
    course.sedative(day(7, "02:00"))
    course.neuro(day(7, "10:00"), ice_unable_reason="unarousable", consciousness="unarousable")
    derivation = course.derive(params=ICANSParameters(sedation_lookback_hours=6))
    assert derivation.grade_at(day(7, "10:00")) == 4


def test_non_sedative_medication_does_not_count_as_sedation():
    """Reference §2: only sedating medication ('sedative' drug class) excuses consciousness."""
    course = NeuroCourse()
    course.medication(day(7, "08:00"), "levetiracetam", "antiseizure")
    course.neuro(day(7, "10:00"), ice_unable_reason="unarousable", consciousness="unarousable")
    assert course.derive().grade_at(day(7, "10:00")) == 4


def test_awake_patient_with_ice_10_after_a_sedative_is_grade_0_without_question():
    """Reference §2: only *depressed* consciousness is not assessable under sedation."""
    course = NeuroCourse()
    course.sedative(day(5, "06:00"))
    course.normal(day(5, "10:00"))
    derivation = course.derive()
    assert derivation.grade_at(day(5, "10:00")) == 0
    assert derivation.questions == ()


def test_ice_scored_under_sedation_is_graded_provisionally_with_a_question():
    """Reference §0.3: attribution (sedation) is an input: the engine grades provisionally
    and asks; ICE 5 -> provisional grade 2."""
    course = NeuroCourse()
    lorazepam = course.sedative(day(5, "06:00"), "lorazepam")
    course.neuro(day(5, "10:00"), ice_score=5, consciousness="awake")
    derivation = course.derive()
    change = change_at(derivation, day(5, "10:00"))
    assert (change.grade, change.provisional) == (2, True)
    assert lorazepam in change.caused_by
    assert questions(derivation, about="under sedation", evidence=lorazepam)


def test_sedation_in_an_episode_keeps_grade_3_and_asks():
    """Reference §0.6: a not-assessable domain is no new observation -> its last grade is
    carried forward, so sedation does not turn grade 3 ICANS into grade 0 or resolve it."""
    course = NeuroCourse()
    course.neuro(day(5, "10:00"), ice_score=2, consciousness="awake")
    propofol = course.sedative(day(5, "12:00"), "propofol")
    course.neuro(
        day(5, "14:00"), ice_unable_reason="unarousable", consciousness="unarousable", sedated=True
    )
    derivation = course.derive(as_of=day(7, "14:00"))
    assert derivation.grade_at(day(5, "14:00")) == 3
    assert derivation.episodes[0].resolved_at is None
    assert questions(derivation, about="sedation", evidence=propofol)


def test_carried_forward_ice_grade_is_provisional_and_names_its_assessment():
    """Reference §0.6 / §9: grade 4 (prolonged seizure, ICE 2) -> sedated and unarousable,
    seizure over: ICE grade 3 carried forward, provisional -> grade 3 (not 0)."""
    course = NeuroCourse()
    first = course.neuro(
        day(5, "10:00"), ice_score=2, consciousness="awake", seizure="prolonged_or_repetitive"
    )
    course.sedative(day(5, "11:00"), "propofol")
    course.neuro(day(5, "14:00"), ice_unable_reason="unarousable", consciousness="unarousable")
    change = change_at(course.derive(), day(5, "14:00"))
    assert (change.grade, change.previous_grade, change.provisional) == (3, 4, True)
    assert change.basis.carried_forward == ("ice",)
    assert set(change.basis.not_assessable) == {"ice", "consciousness"}
    assert first in change.caused_by


# ---------------------------------------------------------------- ICE not performable


def test_intubated_awake_patient_has_no_ice_domain_and_raises_a_question():
    """Brief / reference §9: ICE not performable (intubated) -> ICE not assessable; with
    nothing else grading, ask rather than guess."""
    course = NeuroCourse()
    assessment = course.neuro(day(5, "10:00"), ice_unable_reason="intubated", consciousness="awake")
    derivation = course.derive()
    assert derivation.grade_at(day(5, "10:00")) == 0
    assert questions(derivation, about="not fully assessable", evidence=assessment)


def test_intubated_patient_with_prolonged_seizure_is_grade_4_without_ice_question():
    """ASTCT 2019: most severe domain; a prolonged seizure (4) is graded without ICE."""
    course = NeuroCourse()
    course.neuro(
        day(5, "10:00"),
        ice_unable_reason="intubated",
        consciousness="awake",
        seizure="prolonged_or_repetitive",
    )
    derivation = course.derive()
    assert derivation.grade_at(day(5, "10:00")) == 4
    assert change_at(derivation, day(5, "10:00")).basis.not_assessable == ("ice",)
    assert derivation.questions == ()


# ---------------------------------------------------------------- intracranial haemorrhage


def test_findings_with_intracranial_haemorrhage_are_not_graded_as_icans():
    """Reference §2: intracranial haemorrhage is excluded from ICANS (graded with CTCAE);
    the attribution of the findings goes to an adjudicator (§0.3, §9)."""
    course = NeuroCourse()
    assessment = course.neuro(
        day(8, "10:00"), ice_score=4, consciousness="awake", intracranial_hemorrhage=True
    )
    derivation = course.derive()
    assert derivation.grade_at(day(8, "10:00")) == 0
    assert derivation.episodes == ()
    assert questions(derivation, about="haemorrhage", evidence=assessment)


def test_haemorrhage_inside_an_episode_is_excluded_and_does_not_start_resolution():
    """Reference §2: excluded findings are not grade-0 ICANS recovery: no resolution clock."""
    course = NeuroCourse()
    course.neuro(day(5, "10:00"), ice_score=6, consciousness="awake")
    course.neuro(day(6, "10:00"), ice_score=3, consciousness="awake", intracranial_hemorrhage=True)
    derivation = course.derive(as_of=day(9, "10:00"))
    change = change_at(derivation, day(6, "10:00"))
    assert (change.grade, change.provisional) == (0, True)
    assert change.basis.excluded_by == "intracranial_hemorrhage"
    assert derivation.episodes[0].resolved_at is None
    assert derivation.next_wake_at is None


def test_haemorrhage_with_normal_examination_raises_no_icans_question():
    """Reference §2: ICE 10 with no other finding -> grade 0; nothing to attribute."""
    course = NeuroCourse()
    course.neuro(day(8, "10:00"), ice_score=10, consciousness="awake", intracranial_hemorrhage=True)
    assert course.derive().questions == ()


def test_haemorrhage_findings_graded_provisionally_when_the_protocol_says_so():
    """Reference §0.3 [parameter exclude_findings_with_intracranial_hemorrhage = false]:
    grade provisionally (ICE 4 -> 2) and still ask about the haemorrhage."""
    course = NeuroCourse()
    course.neuro(day(8, "10:00"), ice_score=4, consciousness="awake", intracranial_hemorrhage=True)
    params = ICANSParameters(exclude_findings_with_intracranial_hemorrhage=False)
    derivation = course.derive(params=params)
    change = change_at(derivation, day(8, "10:00"))
    assert (change.grade, change.provisional) == (2, True)
    assert questions(derivation, about="haemorrhage")


# ---------------------------------------------------------------- infusion


def test_findings_before_infusion_are_not_icans():
    """ASTCT 2019 grades *immune effector cell*-associated neurotoxicity: only after infusion."""
    course = NeuroCourse()
    course.neuro(day(-1, "10:00"), ice_score=3, consciousness="awakens_to_voice")
    course.normal(day(1, "10:00"))
    derivation = course.derive()
    assert derivation.episodes == ()
    assert derivation.grade_at(day(-1, "10:00")) == 0


def test_without_recorded_infusion_there_is_no_icans():
    """ASTCT 2019: no immune effector cell therapy, no ICANS."""
    course = NeuroCourse(infusion_at=None)
    course.neuro(day(5, "10:00"), ice_score=2, consciousness="awake")
    derivation = course.derive()
    assert (derivation.changes, derivation.episodes) == ((), ())


# ---------------------------------------------------------------- episodes and resolution


def test_episode_opens_at_the_first_grade_1_after_infusion_naming_the_assessment():
    """Brief / reference §2: onset = first assessment with grade >= 1 (ICE 10 is 0)."""
    course = NeuroCourse()
    course.normal(day(4, "10:00"))
    onset = course.neuro(day(5, "10:00"), ice_score=9, consciousness="awake")
    course.neuro(day(5, "16:00"), ice_score=6, consciousness="awake")
    episode = course.derive().episodes[0]
    assert (episode.number, episode.onset_at) == (1, day(5, "10:00"))
    assert episode.onset_caused_by == (onset,)


def test_grade_holds_until_the_next_assessment():
    """Reference §0.6: carried forward until a new observation of that kind."""
    course = NeuroCourse()
    course.neuro(day(5, "10:00"), ice_score=5, consciousness="awake")
    course.neuro(day(5, "18:00"), ice_score=8, consciousness="awake")
    derivation = course.derive()
    assert derivation.grade_at(day(5, "17:59")) == 2
    assert derivation.grade_at(day(5, "18:00")) == 1
    assert change_at(derivation, day(5, "18:00")).previous_grade == 2


def test_episode_max_grade_is_the_worst_grade_reached():
    """ASTCT 2019: an episode's grade is its worst (3, though it improved to 1)."""
    course = NeuroCourse()
    course.neuro(day(5, "10:00"), ice_score=8, consciousness="awake")
    course.neuro(day(6, "10:00"), ice_score=1, consciousness="awake")
    course.neuro(day(7, "10:00"), ice_score=8, consciousness="awake")
    assert course.derive().episodes[0].max_grade == 3


def _episode_then_normal_from_d6_10_00():
    course = NeuroCourse()
    course.neuro(day(5, "10:00"), ice_score=6, consciousness="awake")
    course.normal(day(6, "10:00"))
    return course


def test_episode_not_resolved_before_24_hours_at_grade_0_and_wakes_at_24_h():
    """Reference §2 [parameter resolution_hours = 24]."""
    derivation = _episode_then_normal_from_d6_10_00().derive(as_of=day(7, "09:59"))
    assert derivation.episodes[0].resolved_at is None
    assert derivation.next_wake_at == day(7, "10:00")


def test_episode_resolves_at_the_start_of_24_hours_at_grade_0():
    """Reference §2 [parameter]: resolution time is the start of the grade-0 period."""
    derivation = _episode_then_normal_from_d6_10_00().derive(as_of=day(7, "10:00"))
    assert derivation.episodes[0].resolved_at == day(6, "10:00")
    assert derivation.next_wake_at is None


def test_longer_resolution_parameter_delays_resolution():
    """Reference §2 [parameter resolution_hours]: 48 h -> not resolved after 24 h."""
    course = _episode_then_normal_from_d6_10_00()
    params = ICANSParameters(resolution_hours=48)
    assert course.derive(as_of=day(7, "10:00"), params=params).episodes[0].resolved_at is None
    resolved = course.derive(as_of=day(8, "10:00"), params=params).episodes[0].resolved_at
    assert resolved == day(6, "10:00")


def test_finding_during_the_grade_0_period_continues_the_same_episode():
    """Reference §2 [parameter]: 24 h at grade 0 not completed -> same episode."""
    course = _episode_then_normal_from_d6_10_00()
    course.neuro(day(6, "20:00"), ice_score=8, consciousness="awake")
    derivation = course.derive(as_of=day(8, "10:00"))
    assert len(derivation.episodes) == 1
    assert derivation.episodes[0].resolved_at is None
    assert derivation.grade_at(day(6, "20:00")) == 1


def test_finding_after_resolution_opens_episode_2():
    """Reference §2 [parameter]: 24 h at grade 0 resolved episode 1; a new finding is 2."""
    course = _episode_then_normal_from_d6_10_00()
    course.normal(day(7, "10:00"))
    second_onset = course.neuro(day(8, "10:00"), ice_score=9, consciousness="awake")
    first, second = course.derive().episodes
    assert first.resolved_at == day(6, "10:00")
    assert (second.number, second.onset_at, second.onset_caused_by) == (
        2,
        day(8, "10:00"),
        (second_onset,),
    )


def test_not_assessable_assessment_does_not_count_toward_resolution():
    """Reference §2 [parameter]: resolution needs ICE 10 with no other finding; an
    intubated assessment is not that."""
    course = _episode_then_normal_from_d6_10_00()
    course.neuro(day(6, "18:00"), ice_unable_reason="intubated", consciousness="awake")
    derivation = course.derive(as_of=day(7, "12:00"))
    assert derivation.episodes[0].resolved_at is None


# ---------------------------------------------------------------- grade 5


@pytest.mark.parametrize(
    "cause", ["ICANS", "immune effector cell-associated neurotoxicity", "cerebral oedema"]
)
def test_death_due_to_icans_is_grade_5(cause):
    """ASTCT 2019 grade 5: death due to ICANS."""
    course = NeuroCourse()
    course.neuro(day(7, "10:00"), ice_score=0, consciousness="unarousable")
    death = course.death(day(8, "03:00"), cause)
    derivation = course.derive()
    assert derivation.grade_at(day(8, "03:00")) == 5
    assert derivation.episodes[0].max_grade == 5
    assert change_at(derivation, day(8, "03:00")).caused_by == (death,)


def test_death_from_another_cause_during_episode_is_not_grade_5_and_is_adjudicated():
    """ASTCT 2019 grade 5 only for death due to ICANS; reference §0.3 -> ask."""
    course = NeuroCourse()
    course.neuro(day(7, "10:00"), ice_score=5, consciousness="awake")
    death = course.death(day(8, "03:00"), "septic shock", attributed_to="infection")
    derivation = course.derive()
    assert derivation.episodes[0].max_grade == 2
    assert derivation.grade_at(day(8, "03:00")) == 2
    assert questions(derivation, evidence=death)


# ---------------------------------------------------------------- caused_by, data quality


def test_caused_by_names_the_assessment_that_raised_the_grade():
    """Contract §3: caused_by lists the clinical event ids that made the grade true."""
    course = NeuroCourse()
    course.neuro(day(5, "10:00"), ice_score=8, consciousness="awake")
    worse = course.neuro(day(5, "22:00"), ice_score=4, consciousness="awakens_to_voice")
    assert change_at(course.derive(), day(5, "22:00")).caused_by == (worse,)


def test_late_charted_assessment_changes_the_grade_in_the_past():
    """Reference §0.4: clinical time decides; a late record re-derives after its time."""
    course = NeuroCourse()
    course.neuro(day(5, "10:00"), ice_score=8, consciousness="awake")
    course.neuro(day(5, "22:00"), ice_score=8, consciousness="awake")
    late = course.neuro(day(5, "16:00"), ice_score=2, consciousness="awake")
    derivation = course.derive()
    assert derivation.grade_at(day(5, "16:00")) == 3
    assert derivation.grade_at(day(5, "22:00")) == 1
    assert change_at(derivation, day(5, "16:00")).caused_by == (late,)


def test_unarousable_ice_reason_with_awake_consciousness_grades_4_and_asks():
    """Reference §0 / §9: contradictory fields -> the more severe reading, provisionally."""
    course = NeuroCourse()
    assessment = course.neuro(
        day(5, "10:00"), ice_unable_reason="unarousable", consciousness="awakens_to_voice"
    )
    derivation = course.derive()
    change = change_at(derivation, day(5, "10:00"))
    assert (change.grade, change.provisional) == (4, True)
    assert questions(derivation, about="inconsistent", evidence=assessment)
