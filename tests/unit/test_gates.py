"""Pre-infusion gate vignettes (reference §7 pre-infusion gate; §12 disease eligibility).

Each test is a short course whose expected deviations follow from
/work/shared/clinical/reference.md; the section is cited in each docstring. Infusion at
D0 08:00 (+08:00); lymphodepletion from D-5 08:00.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import JsonValue

from domain.contract import DATA_MODELS
from domain.gates import (
    DEFAULT_ELIGIBILITY_RULES,
    EligibilityRule,
    PreInfusionCheck,
    check_pre_infusion,
    pre_infusion_deviations,
)
from domain.protocol import PreInfusionParameters
from domain.timeline import TimelineEntry

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
LD = D0 - timedelta(days=5)


def before_infusion(hours: float) -> datetime:
    return D0 - timedelta(hours=hours)


class Course:
    """One participant's events, in arrival order; each returns its event id."""

    def __init__(self) -> None:
        self.entries: list[TimelineEntry] = []

    def record(self, type_: str, at: datetime, **data: Any) -> str:
        seq = len(self.entries) + 1
        event_id = f"ev{seq:03d}-{type_}"
        self.entries.append(TimelineEntry(event_id, type_, at, DATA_MODELS[type_](**data), seq))
        return event_id

    def enrol(self, disease: str = "SLE", eligibility: dict[str, JsonValue] | None = None) -> str:
        return self.record(
            "participant.enrolled",
            LD - timedelta(days=14),
            disease=disease,
            dose_level="DL1",
            eligibility=eligibility,
        )

    def confirm(self, at: datetime = LD - timedelta(days=7)) -> str:
        return self.record("eligibility.confirmed", at, confirmed_by="PI")

    def lymphodepletion(self, at: datetime = LD) -> str:
        return self.record("lymphodepletion.administered", at, agent="fludarabine", dose_mg_m2=25)

    def temperature(self, at: datetime, temperature_c: float) -> str:
        return self.record("vitals.recorded", at, temperature_c=temperature_c)

    def infuse(self, at: datetime = D0) -> str:
        return self.record("infusion.administered", at, dose_level="DL1", cells_per_kg=1.0e6)

    def check(self, **params: Any) -> PreInfusionCheck:
        return check_pre_infusion(self.entries, PreInfusionParameters(**params))

    def rules(self, **params: Any) -> list[str]:
        return [d.rule for d in self.check(**params).deviations]


def ready() -> Course:
    """Enrolled (SLE), eligibility confirmed, lymphodepleted: ready to infuse."""
    course = Course()
    course.enrol()
    course.confirm()
    course.lymphodepletion()
    return course


def test_a_clean_infusion_has_no_deviation():
    """Reference §7: confirmed eligibility and afebrile for 48 h -> no deviation."""
    course = ready()
    course.temperature(before_infusion(60), 38.5)
    course.temperature(before_infusion(6), 37.1)
    course.infuse()
    assert course.check() == PreInfusionCheck((), ())


def test_infusion_47_hours_after_a_fever_is_a_deviation():
    """Reference §7: fever after lymphodepletion postpones infusion until 48 h afebrile."""
    course = ready()
    fever = course.temperature(before_infusion(47), 38.2)
    infusion = course.infuse()
    (deviation,) = course.check().deviations
    assert deviation.rule == "infusion_within_48h_of_fever"
    assert deviation.at == D0
    assert fever in deviation.caused_by and infusion in deviation.caused_by
    assert "47.0 h" in deviation.detail


def test_infusion_49_hours_after_a_fever_is_not_a_deviation():
    """Reference §7: 49 h afebrile satisfies the 48 h gate."""
    course = ready()
    course.temperature(before_infusion(49), 38.2)
    course.infuse()
    assert course.rules() == []


def test_infusion_exactly_48_hours_after_a_fever_is_not_a_deviation():
    """Reference §7: 'until 48 h afebrile' is met at exactly 48 h."""
    course = ready()
    course.temperature(before_infusion(48), 38.2)
    course.infuse()
    assert course.rules() == []


def test_a_fever_charted_at_the_infusion_itself_is_a_deviation():
    """Reference §7: the 48 h afebrile before infusion run up to the infusion itself;
    a fever charted at that moment was not afebrile."""
    course = ready()
    course.temperature(D0, 38.3)
    course.infuse()
    (deviation,) = course.check().deviations
    assert deviation.rule == "infusion_within_48h_of_fever"
    assert "0.0 h" in deviation.detail


def test_fevers_after_the_infusion_do_not_count_however_many():
    """Reference §7 gates the infusion; fever after it is CRS (§1), not a deviation. A
    long record after the infusion (the gate is evaluated at every vital sign) does
    not change the finding: the 47 h fever before it is the one in the detail."""
    course = ready()
    course.temperature(before_infusion(47), 38.2)
    course.infuse()
    for hour in range(1, 200):
        course.temperature(D0 + timedelta(hours=hour), 38.0 + (hour % 3) / 2)
    (deviation,) = course.check().deviations
    assert deviation.rule == "infusion_within_48h_of_fever"
    assert "47.0 h" in deviation.detail and "38.2 C" in deviation.detail


def test_a_temperature_of_37_9_is_not_a_fever():
    """Reference §3/§7: fever is >= 38.0 C; 37.9 C one hour before infusion is not."""
    course = ready()
    course.temperature(before_infusion(1), 37.9)
    course.infuse()
    assert course.rules() == []


def test_fever_before_lymphodepletion_does_not_count():
    """Reference §7: only a fever after lymphodepletion postpones the infusion."""
    course = Course()
    course.enrol()
    course.confirm()
    course.temperature(before_infusion(30), 38.8)
    course.lymphodepletion(before_infusion(24))
    course.infuse()
    assert course.rules() == []


def test_fever_between_lymphodepletion_days_counts():
    """Reference §7: the gate starts at the first lymphodepletion dose."""
    course = Course()
    course.enrol()
    course.confirm()
    course.lymphodepletion(before_infusion(70))
    course.temperature(before_infusion(40), 38.1)
    course.lymphodepletion(before_infusion(22))
    course.infuse()
    assert course.rules() == ["infusion_within_48h_of_fever"]


def test_the_afebrile_window_is_a_protocol_parameter():
    """Reference §7 [parameter afebrile_hours_before_infusion]: 72 h makes 60 h too soon."""
    course = ready()
    course.temperature(before_infusion(60), 38.5)
    course.infuse()
    assert course.rules() == []
    assert course.rules(afebrile_hours_before_infusion=72) == ["infusion_within_48h_of_fever"]


def test_fever_without_a_recorded_lymphodepletion_still_counts():
    """Reference §7 (documented reading): with no lymphodepletion on record, every fever
    within 48 h of infusion counts."""
    course = Course()
    course.enrol()
    course.confirm()
    course.temperature(before_infusion(10), 38.4)
    course.infuse()
    (deviation,) = course.check().deviations
    assert "no lymphodepletion recorded" in deviation.detail


def test_infusion_without_eligibility_confirmation_is_a_deviation():
    """Reference §7: an infusion without confirmed eligibility is a protocol deviation."""
    course = Course()
    course.enrol()
    course.lymphodepletion()
    infusion = course.infuse()
    (deviation,) = course.check().deviations
    assert deviation.rule == "infusion_without_confirmed_eligibility"
    assert deviation.caused_by == (infusion,)


def test_eligibility_confirmed_after_the_infusion_is_still_a_deviation():
    """Reference §7: the confirmation must come before the infusion."""
    course = Course()
    course.enrol()
    course.lymphodepletion()
    course.infuse()
    course.confirm(D0 + timedelta(hours=2))
    assert course.rules() == ["infusion_without_confirmed_eligibility"]


def test_eligibility_confirmation_is_not_checked_when_the_protocol_does_not_require_it():
    """Reference §7 [parameter require_confirmed_eligibility]."""
    course = Course()
    course.enrol()
    course.lymphodepletion()
    course.infuse()
    assert course.rules(require_confirmed_eligibility=False) == []


def test_a_second_infusion_is_a_duplicate_infusion():
    """Contract §4 / reference §7: an infusion twice is accepted and flagged."""
    course = ready()
    first = course.infuse()
    second = course.infuse(D0 + timedelta(days=1))
    (deviation,) = course.check().deviations
    assert deviation.rule == "duplicate_infusion"
    assert deviation.at == D0 + timedelta(days=1)
    assert deviation.caused_by == (first, second)


def test_a_fever_before_a_second_infusion_only_flags_the_duplicate():
    """Reference §7 (documented reading): the fever gate applies to the first infusion."""
    course = ready()
    course.infuse()
    course.temperature(D0 + timedelta(hours=20), 38.9)
    course.infuse(D0 + timedelta(days=1))
    assert course.rules() == ["duplicate_infusion"]


def test_no_infusion_no_infusion_deviation():
    """Reference §7: the gate concerns an infusion; none recorded, none raised."""
    course = Course()
    course.enrol()
    course.lymphodepletion()
    course.temperature(LD + timedelta(hours=3), 39.0)
    assert course.check() == PreInfusionCheck((), ())


def test_ssc_with_mrss_10_is_not_eligible():
    """Reference §12: SSc eligibility requires mRSS > 10; 10 fails."""
    course = Course()
    enrolment = course.enrol("SSC", {"mrss": 10})
    (deviation,) = course.check().deviations
    assert deviation.rule == "eligibility_criterion_not_met"
    assert deviation.caused_by == (enrolment,)
    assert "mrss" in deviation.detail


def test_ssc_with_mrss_11_is_eligible():
    """Reference §12: mRSS 11 > 10."""
    course = Course()
    course.enrol("SSC", {"mrss": 11})
    assert course.check() == PreInfusionCheck((), ())


def test_ssc_without_mrss_in_the_enrolment_data_raises_a_question_not_a_deviation():
    """Reference §9, §12: a criterion absent from the data is a question, not a guess."""
    course = Course()
    enrolment = course.enrol("SSC", {"anca_positive": False})
    check = course.check()
    assert check.deviations == ()
    (question,) = check.questions
    assert question.target == {"kind": "event", "id": enrolment}
    assert "mrss > 10" in question.question


def test_ssc_with_a_non_numeric_mrss_raises_a_question():
    """Reference §9: a value the rule cannot compare ("14" as text) is asked about."""
    course = Course()
    course.enrol("SSC", {"mrss": "14"})
    check = course.check()
    assert check.deviations == ()
    assert len(check.questions) == 1


def test_diseases_without_a_reference_criterion_are_not_checked():
    """Reference §12 gives an eligibility threshold for SSc only."""
    assert {rule.disease for rule in DEFAULT_ELIGIBILITY_RULES} == {"SSC"}
    course = Course()
    course.enrol("SLE")
    assert course.check() == PreInfusionCheck((), ())


def test_a_protocol_rule_table_can_add_criteria():
    """Reference §12 rule table as data: a protocol rule 'anca_positive == true' for AAV."""
    rules = [
        *DEFAULT_ELIGIBILITY_RULES,
        EligibilityRule(
            disease="AAV",
            criterion="anca_positive",
            comparison="==",
            threshold=True,
            source="protocol",
        ),
    ]
    course = Course()
    course.enrol("AAV", {"anca_positive": False})
    deviations = pre_infusion_deviations(
        course.entries, PreInfusionParameters(), eligibility_rules=rules
    )
    assert [d.rule for d in deviations] == ["eligibility_criterion_not_met"]


def test_pre_infusion_deviations_lists_every_rule_in_clinical_order():
    """Reference §7, §12: ineligible, unconfirmed and febrile: all three deviations."""
    course = Course()
    course.enrol("SSC", {"mrss": 8})
    course.lymphodepletion()
    course.temperature(before_infusion(12), 38.3)
    course.infuse()
    deviations = pre_infusion_deviations(course.entries, PreInfusionParameters())
    assert [d.rule for d in deviations] == [
        "eligibility_criterion_not_met",
        "infusion_within_48h_of_fever",
        "infusion_without_confirmed_eligibility",
    ]
