"""CTCAE grading from labs and temperature: reference §0.2 and §3, and the packaged
lab specifications (domain/data/ctcae-lab-grading-v5.json, -v6.json).

Expected grades follow from the reference's v5.0 table and from the specifications'
GRADE_n_CODE for v6.0; each case names its term and version. Boundaries are tested on
both sides. Lymphodepletion at D-5 08:00, infusion D0 08:00 (+08:00).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from domain.contract import UNITS_BY_ANALYTE, LabResulted, VitalsRecorded
from domain.ctcae import (
    TERMS,
    Baseline,
    CTCAEVersion,
    derive_toxicities,
    grade_fever,
    grade_lab,
    lab_baselines,
)
from domain.timeline import TimelineEntry
from domain.units import UnitConversionError, convert

TZ = timezone(timedelta(hours=8))
D0 = datetime(2026, 3, 2, 8, 0, tzinfo=TZ)
LYMPHODEPLETION = D0 - timedelta(days=5)


def grade(
    analyte: str, value: float, unit: str = "10*9/L", version: CTCAEVersion = "5.0", **kw: Any
) -> int | None:
    graded = grade_lab(analyte, value, unit, version=version, **kw)
    return None if graded is None else graded.grade


# ---------------------------------------------------------------- v5.0 boundaries


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2.0, 0),  # at LLN: not < LLN
        (1.99, 1),  # < LLN - 1.5
        (1.5, 1),
        (1.49, 2),  # < 1.5 - 1.0
        (1.0, 2),
        (0.99, 3),  # < 1.0 - 0.5
        (0.5, 3),
        (0.49, 4),  # < 0.5
    ],
)
def test_v5_neutrophil_count_decreased_boundaries(value: float, expected: int) -> None:
    """CTCAE 5.0 Neutrophil count decreased, reference §3 (LLN 2.0 x10^9/L)."""
    assert grade("anc", value, reference_low=2.0) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(150, 0), (149, 1), (75, 1), (74.9, 2), (50, 2), (49.9, 3), (25, 3), (24.9, 4)],
)
def test_v5_platelet_count_decreased_boundaries(value: float, expected: int) -> None:
    """CTCAE 5.0 Platelet count decreased, reference §3 (LLN 150 x10^9/L)."""
    graded = grade_lab("platelets", value, "10*9/L", reference_low=150, version="5.0")
    assert graded is not None
    assert (graded.term, graded.grade) == ("Platelet count decreased", expected)


@pytest.mark.parametrize(
    ("value", "expected"), [(12.0, 0), (11.9, 1), (10.0, 1), (9.9, 2), (8.0, 2), (7.9, 3)]
)
def test_v5_anemia_boundaries_in_g_dl(value: float, expected: int) -> None:
    """CTCAE 5.0 Anemia, reference §3: < LLN-10.0 / < 10.0-8.0 / < 8.0 g/dL (LLN 12.0)."""
    assert grade("hemoglobin", value, "g/dL", reference_low=12.0) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1.0, 0), (0.8, 1), (0.79, 2), (0.5, 2), (0.49, 3), (0.2, 3), (0.19, 4)],
)
def test_v5_lymphocyte_count_decreased_boundaries(value: float, expected: int) -> None:
    """CTCAE 5.0 Lymphocyte count decreased, reference §3 (LLN 1.0 x10^9/L)."""
    assert grade("alc", value, reference_low=1.0) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(4.0, 0), (3.0, 1), (2.99, 2), (2.0, 2), (1.99, 3), (1.0, 3), (0.99, 4)],
)
def test_v5_white_blood_cell_decreased_boundaries(value: float, expected: int) -> None:
    """CTCAE 5.0 White blood cell decreased, reference §3 (LLN 4.0 x10^9/L)."""
    assert grade("wbc", value, reference_low=4.0) == expected


@pytest.mark.parametrize("analyte", ["alt", "ast"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [(40, 0), (41, 1), (120, 1), (121, 2), (200, 2), (201, 3), (800, 3), (801, 4)],
)
def test_v5_transaminases_with_normal_baseline_grade_by_uln(
    analyte: str, value: float, expected: int
) -> None:
    """CTCAE 5.0 ALT/AST increased, baseline normal, reference §3: > ULN-3 / > 3-5 /
    > 5-20 / > 20 x ULN (ULN 40 U/L; baseline 25 U/L)."""
    baseline = Baseline(25, "U/L", 7, 40)
    assert grade(analyte, value, "U/L", reference_high=40, baseline=baseline) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1.2, 0), (1.3, 1), (1.8, 1), (1.9, 2), (3.6, 2), (3.7, 3), (12.0, 3), (12.1, 4)],
)
def test_v5_blood_bilirubin_increased_with_normal_baseline(value: float, expected: int) -> None:
    """CTCAE 5.0 Blood bilirubin increased, baseline normal, reference §3: > ULN-1.5 /
    > 1.5-3 / > 3-10 / > 10 x ULN (ULN 1.2 mg/dL)."""
    assert grade("bilirubin_total", value, "mg/dL", reference_high=1.2) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1.0, 0), (1.1, 1), (1.5, 1), (1.6, 2), (3.0, 2), (3.1, 3), (6.0, 3), (6.1, 4)],
)
def test_v5_creatinine_increased_by_uln_without_baseline(value: float, expected: int) -> None:
    """CTCAE 5.0 Creatinine increased, reference §3: > ULN-1.5 / > 1.5-3 / > 3-6 / > 6 x ULN
    (ULN 1.0 mg/dL, no baseline)."""
    assert grade("creatinine", value, "mg/dL", reference_high=1.0) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2.0, 0), (1.9, 1), (1.5, 1), (1.4, 2), (1.0, 2), (0.9, 3), (0.5, 3), (0.49, 4)],
)
def test_v5_fibrinogen_decreased_boundaries(value: float, expected: int) -> None:
    """CTCAE 5.0 Fibrinogen decreased, reference §3: < 1.0-0.75 / < 0.75-0.5 / < 0.5-0.25
    x LLN / < 0.25 x LLN or < 50 mg/dL (LLN 2.0 g/L, no baseline)."""
    assert grade("fibrinogen", value, "g/L", reference_low=2.0) == expected


def test_v5_fibrinogen_below_50_mg_dl_is_grade_4_even_above_a_quarter_of_lln() -> None:
    """CTCAE 5.0 Fibrinogen decreased grade 4: absolute value < 50 mg/dL (LLN 150 mg/dL,
    0.25 x LLN = 37.5 mg/dL): 45 mg/dL is grade 4, 50 mg/dL grade 3."""
    graded = grade_lab("fibrinogen", 45, "mg/dL", reference_low=150, version="5.0")
    assert graded is not None
    assert (graded.grade, graded.value, graded.unit) == (4, 0.45, "g/L")
    assert graded.basis["threshold"] == "< 0.5 g/L"
    assert grade("fibrinogen", 50, "mg/dL", reference_low=150) == 3


def test_v5_fibrinogen_percent_decrease_from_baseline_can_raise_the_grade() -> None:
    """CTCAE 5.0 Fibrinogen decreased, v5 spec code: below LLN with a >= 50 % decrease
    from baseline is grade 3 (LLN 2.0, baseline 4.0, value 1.4: 0.7 x LLN alone is grade
    2). Reference §3's table has only the x LLN route."""
    graded = grade_lab(
        "fibrinogen", 1.4, "g/L", reference_low=2.0, baseline=Baseline(4.0, "g/L"), version="5.0"
    )
    assert graded is not None
    assert (graded.grade, graded.basis["route"], graded.basis["percent_change"]) == (
        3,
        "percent_change",
        -65.0,
    )
    assert grade("fibrinogen", 1.4, "g/L", reference_low=2.0) == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [(149, 0), (150, 1), (300, 1), (301, 2), (500, 2), (501, 3), (1000, 3), (1001, 4)],
)
def test_v5_hypertriglyceridemia_boundaries_in_mg_dl(value: float, expected: int) -> None:
    """CTCAE 5.0 Hypertriglyceridemia, reference §3: 150-300 / > 300-500 / > 500-1000 /
    > 1000 mg/dL (CTCAE's printed mg/dL figures, no conversion)."""
    assert grade("triglycerides", value, "mg/dL") == expected


@pytest.mark.parametrize(
    ("temperature_c", "hours", "expected"),
    [
        (37.9, 0, 0),
        (38.0, 0, 1),  # 38.0-39.0
        (39.0, 0, 1),
        (39.1, 0, 2),  # > 39.0-40.0
        (40.0, 30, 2),
        (40.1, 0, 3),  # > 40.0 for <= 24 h
        (40.1, 24, 3),
        (40.1, 24.5, 4),  # > 40.0 for > 24 h
    ],
)
def test_v5_fever_boundaries(temperature_c: float, hours: float, expected: int) -> None:
    """CTCAE 5.0 Fever, reference §3."""
    graded = grade_fever(temperature_c, hours)
    assert (graded.term, graded.grade, graded.criteria) == ("Fever", expected, "CTCAE-5.0")


# ---------------------------------------------------------------- v6.0 differences


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1.5, 0), (1.49, 1), (1.0, 1), (0.99, 2), (0.5, 2), (0.49, 3), (0.1, 3), (0.09, 4)],
)
def test_v6_neutrophil_count_decreased_is_absolute_and_grade_4_below_0_1(
    value: float, expected: int
) -> None:
    """CTCAE 6.0 Neutrophil count decreased (v6 spec): < 1.5-1.0 / < 1.0-0.5 / < 0.5-0.1 /
    < 0.1 x10^9/L, no LLN needed (reference §0.2: grade 4 < 100/mm3)."""
    graded = grade_lab("anc", value, "10*9/L", version="6.0")
    assert graded is not None
    assert (graded.grade, graded.criteria) == (expected, "CTCAE-6.0")


def test_anc_300_per_ul_is_grade_4_in_v5_but_grade_3_in_v6() -> None:
    """Reference §0.2: neutrophils grade 4 < 500/mm3 (v5.0) vs < 100/mm3 (v6.0)."""
    assert grade("anc", 300, "/uL", version="5.0") == 4
    assert grade("anc", 300, "/uL", version="6.0") == 3


@pytest.mark.parametrize(
    ("value", "expected"), [(75, 1), (74.9, 2), (50, 2), (49.9, 3), (10, 3), (9.9, 4)]
)
def test_v6_thrombocytopenia_grade_4_below_10(value: float, expected: int) -> None:
    """CTCAE 6.0 Thrombocytopenia (v6 spec, reference §0.2): < 50-10 is grade 3,
    < 10 x10^9/L grade 4 (LLN 150)."""
    graded = grade_lab("platelets", value, "10*9/L", reference_low=150, version="6.0")
    assert graded is not None
    assert (graded.term, graded.grade) == ("Thrombocytopenia", expected)


def test_platelets_20_000_per_mm3_is_grade_4_in_v5_and_grade_3_in_v6() -> None:
    """Reference §0.2: platelets grade 4 < 25,000 (v5.0) vs < 10,000/mm3 (v6.0)."""
    assert grade("platelets", 20_000, "/uL", version="5.0") == 4
    assert grade("platelets", 20_000, "/uL", version="6.0") == 3


def test_v6_has_no_lymphocyte_count_decreased_criterion() -> None:
    """The v6.0 specification has no 'Lymphocyte count decreased' term: not gradable."""
    assert grade_lab("alc", 0.1, "10*9/L", reference_low=1.0, version="6.0") is None
    assert grade("alc", 0.1, reference_low=1.0, version="5.0") == 4


@pytest.mark.parametrize(
    ("value", "v5", "v6"),
    [(99, 0, 0), (100, 0, 1), (150, 1, 1), (151, 1, 2), (201, 1, 3), (401, 2, 4), (501, 3, 4)],
)
def test_alt_with_abnormal_baseline_v5_and_v6(value: float, v5: int, v6: int) -> None:
    """ALT increased, baseline abnormal (100 U/L, ULN 40). CTCAE 5.0 (reference §3):
    1.5-3 / > 3-5 / > 5-20 / > 20 x baseline. CTCAE 6.0 (v6 spec): 1.0-1.5 / > 1.5-2 /
    > 2-4 / > 4 x baseline."""
    baseline = Baseline(100, "U/L", 7, 40)
    kw: dict[str, Any] = {"reference_high": 40, "baseline": baseline}
    assert grade("alt", value, "U/L", version="5.0", **kw) == v5
    assert grade("alt", value, "U/L", version="6.0", **kw) == v6


@pytest.mark.parametrize(("value", "v5", "v6"), [(5.0, 2, 2), (5.1, 2, 3), (6.1, 3, 3)])
def test_bilirubin_with_abnormal_baseline_grade_3_from_2_5_x_baseline_in_v6(
    value: float, v5: int, v6: int
) -> None:
    """Blood bilirubin increased, baseline abnormal (2.0 mg/dL, ULN 1.2): grade 3 from
    > 3.0 x baseline in CTCAE 5.0, > 2.5 x baseline in CTCAE 6.0 (specs)."""
    kw: dict[str, Any] = {"reference_high": 1.2, "baseline": Baseline(2.0, "mg/dL", 0.2, 1.2)}
    assert grade("bilirubin_total", value, "mg/dL", version="5.0", **kw) == v5
    assert grade("bilirubin_total", value, "mg/dL", version="6.0", **kw) == v6


def test_v6_creatinine_uses_the_baseline_route_only_for_a_baseline_below_lln() -> None:
    """Creatinine increased: CTCAE 5.0 grade 2 at > 1.5 x any baseline; CTCAE 6.0 only
    'if baseline is below LLN' (v6 spec). Baseline 0.8 mg/dL (range 0.6-1.2), value 1.3."""
    kw: dict[str, Any] = {"reference_high": 1.2, "baseline": Baseline(0.8, "mg/dL", 0.6, 1.2)}
    assert grade("creatinine", 1.3, "mg/dL", version="5.0", **kw) == 2
    assert grade("creatinine", 1.3, "mg/dL", version="6.0", **kw) == 1
    low: dict[str, Any] = {"reference_high": 1.2, "baseline": Baseline(0.5, "mg/dL", 0.6, 1.2)}
    graded = grade_lab("creatinine", 1.6, "mg/dL", version="6.0", **low)
    assert graded is not None
    assert (graded.grade, graded.basis["route"]) == (3, "baseline")


@pytest.mark.parametrize(
    ("analyte", "value", "unit", "kw", "expected"),
    [
        ("hemoglobin", 7.9, "g/dL", {"reference_low": 12.0}, 3),
        ("wbc", 0.9, "10*9/L", {"reference_low": 4.0}, 4),
        ("fibrinogen", 0.9, "g/L", {"reference_low": 2.0}, 3),
        ("triglycerides", 1001, "mg/dL", {}, 4),
    ],
)
def test_terms_unchanged_in_v6_grade_the_same(
    analyte: str, value: float, unit: str, kw: dict[str, Any], expected: int
) -> None:
    """Anemia, WBC decreased, Fibrinogen decreased, Hypertriglyceridemia: same criteria
    in the v5.0 and v6.0 specifications."""
    assert grade(analyte, value, unit, version="5.0", **kw) == expected
    assert grade(analyte, value, unit, version="6.0", **kw) == expected


def test_ldh_and_cpk_from_the_specifications() -> None:
    """Blood lactate dehydrogenase increased: > ULN is grade 1 (v5 and v6 specs); CPK
    increased: > 10 x ULN is grade 4 in the v5 spec, and has no v6 criteria."""
    assert grade("ldh", 251, "U/L", reference_high=250) == 1
    assert grade("ldh", 250, "U/L", reference_high=250, version="6.0") == 0
    assert grade("ck", 1710, "U/L", reference_high=170) == 4
    assert grade_lab("ck", 1710, "U/L", reference_high=170, version="6.0") is None


@pytest.mark.parametrize("version", ["5.0", "6.0"])
def test_every_term_of_both_versions_loads_from_the_packaged_criteria(
    version: CTCAEVersion,
) -> None:
    """Each analyte mapped to a term is graded with that term's packaged criteria."""
    for analyte, term in TERMS[version].items():
        unit = sorted(UNITS_BY_ANALYTE[analyte])[0]
        graded = grade_lab(
            analyte,
            1.0,
            unit,
            reference_low=0.5,
            reference_high=2.0,
            baseline=Baseline(1.0, unit, 0.5, 2.0),
            version=version,
        )
        assert graded is not None
        assert graded.term == term


# ---------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("per_ul", "per_litre", "expected"), [(499, 0.499, 4), (500, 0.5, 3), (1400, 1.4, 2)]
)
def test_anc_grades_the_same_from_per_ul_and_10_9_per_l(
    per_ul: float, per_litre: float, expected: int
) -> None:
    """CTCAE 5.0 Neutrophil count decreased; reference §3: 1.0 x10^9/L = 1000/mm3."""
    from_ul = grade_lab("anc", per_ul, "/uL", version="5.0")
    from_l = grade_lab("anc", per_litre, "10*9/L", version="5.0")
    assert from_ul is not None and from_l is not None
    assert from_ul.grade == from_l.grade == expected
    assert (from_ul.value, from_ul.unit) == (per_litre, "10*9/L")


@pytest.mark.parametrize(
    ("g_l", "g_dl", "expected"), [(100, 10.0, 1), (99, 9.9, 2), (80, 8.0, 2), (79, 7.9, 3)]
)
def test_hemoglobin_grades_the_same_in_g_l_and_g_dl(g_l: float, g_dl: float, expected: int) -> None:
    """CTCAE 5.0 Anemia; reference §3: Hb 10.0 g/dL = 100 g/L (LLN 120 g/L = 12.0 g/dL)."""
    assert grade("hemoglobin", g_l, "g/L", reference_low=120) == expected
    assert grade("hemoglobin", g_dl, "g/dL", reference_low=12.0) == expected


def test_hemoglobin_in_mmol_l_uses_ctcae_printed_mmol_l_figures() -> None:
    """CTCAE 5.0 Anemia: < LLN-6.2 / < 6.2-4.9 / < 4.9 mmol/L (spec GRADE_n text);
    6.2 mmol/L is grade 1 although it converts to 99.9 g/L."""
    graded = grade_lab("hemoglobin", 6.2, "mmol/L", reference_low=7.4, version="5.0")
    assert graded is not None
    assert (graded.grade, graded.unit) == (1, "mmol/L")
    assert grade("hemoglobin", 6.1, "mmol/L", reference_low=7.4) == 2
    assert grade("hemoglobin", 4.8, "mmol/L", reference_low=7.4) == 3


@pytest.mark.parametrize(
    ("mg_dl", "umol_l", "expected"), [(2.0, 176.84, 2), (1.1, 97.26, 1), (5.5, 486.31, 3)]
)
def test_creatinine_grades_the_same_in_umol_l_and_mg_dl(
    mg_dl: float, umol_l: float, expected: int
) -> None:
    """CTCAE 5.0 Creatinine increased by ULN (1.0 mg/dL = 88.42 umol/L)."""
    assert grade("creatinine", mg_dl, "mg/dL", reference_high=1.0) == expected
    assert grade("creatinine", umol_l, "umol/L", reference_high=88.42) == expected


def test_baseline_in_another_unit_is_converted() -> None:
    """CTCAE 5.0 Creatinine increased: baseline 0.6 mg/dL, value 200 umol/L (ULN 106):
    3.8 x baseline (grade 3) beats 1.9 x ULN (grade 2)."""
    graded = grade_lab(
        "creatinine",
        200,
        "umol/L",
        reference_high=106,
        baseline=Baseline(0.6, "mg/dL", 0.5, 1.2),
        version="5.0",
    )
    assert graded is not None
    assert (graded.grade, graded.unit, graded.basis["route"]) == (3, "umol/L", "baseline")
    assert graded.basis["baseline"] == pytest.approx(53.052)


def test_triglycerides_in_mmol_l_follow_the_specification_code() -> None:
    """CTCAE 5.0 Hypertriglyceridemia spec code: > 1.71 mmol/L is grade 1 (strict), so
    1.71 mmol/L is grade 0 while the printed range '1.71-3.42 mmol/L' includes it."""
    assert grade("triglycerides", 1.71, "mmol/L") == 0
    assert grade("triglycerides", 1.72, "mmol/L") == 1
    assert grade("triglycerides", 11.5, "mmol/L") == 4


@pytest.mark.parametrize(
    ("analyte", "value", "from_unit", "to_unit", "expected"),
    [
        ("anc", 1.0, "10*9/L", "/uL", 1000),
        ("hemoglobin", 10.0, "g/dL", "mmol/L", 6.206),
        ("hemoglobin", 100, "g/L", "g/dL", 10.0),
        ("creatinine", 1.0, "mg/dL", "umol/L", 88.42),
        ("bilirubin_total", 1.0, "mg/dL", "umol/L", 17.1),
        ("triglycerides", 100, "mg/dL", "mmol/L", 1.129),
        ("fibrinogen", 1.5, "g/L", "mg/dL", 150),
        ("crp", 1.0, "mg/dL", "mg/L", 10),
        ("igg", 10, "g/L", "mg/dL", 1000),
        ("troponin", 0.014, "ng/mL", "ng/L", 14),
        ("il6", 7, "pg/mL", "ng/L", 7),
    ],
)
def test_unit_conversion_factors(
    analyte: str, value: float, from_unit: str, to_unit: str, expected: float
) -> None:
    assert convert(analyte, value, from_unit, to_unit) == pytest.approx(expected)
    assert convert(analyte, expected, to_unit, from_unit) == pytest.approx(value)


def test_every_unit_the_contract_allows_is_convertible() -> None:
    """Contract §2: every (analyte, unit) pair a lab.resulted may carry converts."""
    for analyte, units in UNITS_BY_ANALYTE.items():
        for from_unit in units:
            for to_unit in units:
                assert convert(analyte, 1.0, from_unit, to_unit) > 0


def test_a_unit_that_does_not_fit_the_analyte_is_refused() -> None:
    with pytest.raises(UnitConversionError):
        convert("creatinine", 1.0, "g/L", "mg/dL")
    with pytest.raises(UnitConversionError):
        grade_lab("anc", 1.0, "mg/dL", version="5.0")


# ---------------------------------------------------------------- missing ranges


@pytest.mark.parametrize(
    ("analyte", "value", "unit"),
    [("anc", 1.6, "10*9/L"), ("platelets", 100, "10*9/L"), ("hemoglobin", 11.0, "g/dL")],
)
def test_no_grade_1_without_a_reference_range(analyte: str, value: float, unit: str) -> None:
    """Reference §3: grade 1 of cytopenias starts below the lab's LLN, so without a
    reference range the engine grades only from grade 2 (CTCAE 5.0)."""
    graded = grade_lab(analyte, value, unit, version="5.0")
    assert graded is not None
    assert graded.grade == 0
    assert graded.basis["grade_1"] == "not assessable without reference_low"


def test_grade_2_and_above_need_no_reference_range() -> None:
    """Reference §3: without a range, grades 2-4 of cytopenias are still derived."""
    assert grade("anc", 1.2) == 2
    assert grade("platelets", 20) == 4
    assert grade("hemoglobin", 9.0, "g/dL") == 2


def test_v6_neutrophils_grade_1_needs_no_reference_range() -> None:
    """CTCAE 6.0 Neutrophil count decreased grade 1 is < 1.5 x10^9/L, not < LLN."""
    assert grade("anc", 1.4, version="6.0") == 1


def test_limits_needed_by_higher_grades_make_a_result_ungradable() -> None:
    """CTCAE 5.0: ALT and bilirubin grades are multiples of ULN, fibrinogen grades 1-3
    multiples of LLN: without them there is no grade (fibrinogen < 50 mg/dL aside)."""
    assert grade_lab("alt", 500, "U/L", version="5.0") is None
    assert grade_lab("bilirubin_total", 5, "mg/dL", version="5.0") is None
    assert grade_lab("fibrinogen", 1.0, "g/L", version="5.0") is None
    assert grade("fibrinogen", 0.4, "g/L") == 4


def test_creatinine_without_uln_grades_by_baseline_only_when_a_grade_is_met() -> None:
    """CTCAE 5.0 Creatinine increased: > 1.5 x baseline is grade 2 without a ULN; below
    that, grade 0 and 1 cannot be told apart without the ULN."""
    baseline = Baseline(0.7, "mg/dL")
    assert grade("creatinine", 1.5, "mg/dL", baseline=baseline) == 2
    assert grade_lab("creatinine", 0.9, "mg/dL", baseline=baseline, version="5.0") is None


def test_analytes_without_a_ctcae_term_are_not_graded() -> None:
    assert grade_lab("crp", 150, "mg/L", version="5.0") is None
    assert grade_lab("ferritin", 5000, "ng/mL", version="5.0") is None


# ---------------------------------------------------------------- higher of two routes


def test_creatinine_takes_the_baseline_route_when_it_is_higher() -> None:
    """Reference §3: creatinine takes the higher of the ULN- and baseline-based grades.
    Baseline 0.5, ULN 1.2, value 1.6 mg/dL: 1.33 x ULN (grade 1), 3.2 x baseline (grade 3)."""
    graded = grade_lab(
        "creatinine",
        1.6,
        "mg/dL",
        reference_high=1.2,
        baseline=Baseline(0.5, "mg/dL", 0.5, 1.2),
        version="5.0",
    )
    assert graded is not None
    assert graded.grade == 3
    assert graded.basis == {
        "threshold": "> 3.0 x baseline",
        "route": "baseline",
        "ratio": 3.2,
        "reference_high": 1.2,
        "baseline": 0.5,
    }


def test_creatinine_takes_the_uln_route_when_it_is_higher() -> None:
    """Reference §3: baseline 1.0, ULN 1.2, value 7.5 mg/dL: 6.25 x ULN (grade 4) beats
    7.5 x baseline (grade 3: the baseline route stops at grade 3)."""
    graded = grade_lab(
        "creatinine",
        7.5,
        "mg/dL",
        reference_high=1.2,
        baseline=Baseline(1.0, "mg/dL", 0.5, 1.2),
        version="5.0",
    )
    assert graded is not None
    assert (graded.grade, graded.basis["route"], graded.basis["ratio"]) == (4, "ULN", 6.25)


def test_alt_with_abnormal_baseline_ignores_the_uln_route() -> None:
    """CTCAE 5.0 ALT increased, baseline abnormal (100 U/L, ULN 40): 149 U/L is 3.7 x ULN
    but 1.49 x baseline, below 1.5 x baseline: grade 0."""
    graded = grade_lab(
        "alt", 149, "U/L", reference_high=40, baseline=Baseline(100, "U/L", 7, 40), version="5.0"
    )
    assert graded is not None
    assert graded.grade == 0
    assert graded.basis["baseline_indicator"] == "HIGH"


def test_basis_names_the_absolute_threshold() -> None:
    """CTCAE 5.0 Neutrophil count decreased grade 4: < 0.5 x10^9/L."""
    graded = grade_lab("anc", 0.3, "10*9/L", reference_low=1.8, version="5.0")
    assert graded is not None
    assert graded.basis["threshold"] == "< 0.5 x10^9/L"
    assert graded.basis["route"] == "absolute"


# ---------------------------------------------------------------- the timeline


class Timeline:
    def __init__(self) -> None:
        self.entries: list[TimelineEntry] = []

    def _add(self, type_: str, at: datetime, data: Any) -> str:
        event_id = f"ev{len(self.entries) + 1:03d}"
        self.entries.append(TimelineEntry(event_id, type_, at, data, len(self.entries) + 1))
        return event_id

    def lab(self, at: datetime, analyte: str, value: float, unit: str, **kw: Any) -> str:
        return self._add(
            "lab.resulted", at, LabResulted(analyte=analyte, value=value, unit=unit, **kw)
        )

    def temperature(self, at: datetime, temperature_c: float) -> str:
        return self._add("vitals.recorded", at, VitalsRecorded(temperature_c=temperature_c))

    def derive(self, version: CTCAEVersion = "5.0", ld: datetime | None = LYMPHODEPLETION) -> Any:
        return derive_toxicities(self.entries, version=version, lymphodepletion_at=ld)


def at(days: float) -> datetime:
    return D0 + timedelta(days=days)


def test_baseline_is_the_last_value_before_lymphodepletion() -> None:
    """Reference §3 [parameter]: baseline = last value before lymphodepletion. ALT 30 then
    50 U/L (ULN 40) before, 130 after: baseline 50 is abnormal, 2.6 x baseline -> grade 1
    (CTCAE 5.0); with baseline 30 it would be 3.25 x ULN -> grade 2."""
    t = Timeline()
    t.lab(at(-10), "alt", 30, "U/L", reference_high=40)
    baseline_id = t.lab(at(-6), "alt", 50, "U/L", reference_high=40)
    t.lab(LYMPHODEPLETION, "alt", 45, "U/L", reference_high=40)  # at LD: not before it
    later_id = t.lab(at(3), "alt", 130, "U/L", reference_high=40)
    assert lab_baselines(t.entries, LYMPHODEPLETION)["alt"].value == 50
    (change,) = t.derive()
    assert (change.term, change.grade, change.previous_grade) == (
        "Alanine aminotransferase increased",
        1,
        0,
    )
    assert change.basis["route"] == "baseline"
    assert change.caused_by == (baseline_id, later_id)


def test_results_before_lymphodepletion_are_baseline_not_toxicity() -> None:
    """Reference §3: pre-lymphodepletion values are the baseline; only later ones grade."""
    t = Timeline()
    t.lab(at(-7), "platelets", 40, "10*9/L", reference_low=150)
    assert t.derive() == ()
    assert len(t.derive(ld=None)) == 1


def test_timeline_emits_only_when_the_grade_changes() -> None:
    """CTCAE 5.0 Neutrophil count decreased (LLN 1.8): 3.0, 1.6, 1.7, 0.8, 0.4, 0.45, 2.0
    -> grades 0, 1, 1, 3, 4, 4, 0: changes 0->1, 1->3, 3->4, 4->0."""
    t = Timeline()
    ids = [
        t.lab(at(day), "anc", value, "10*9/L", reference_low=1.8)
        for day, value in [(1, 3.0), (2, 1.6), (3, 1.7), (4, 0.8), (5, 0.4), (6, 0.45), (9, 2.0)]
    ]
    changes = t.derive()
    assert [(c.previous_grade, c.grade) for c in changes] == [(0, 1), (1, 3), (3, 4), (4, 0)]
    assert [c.caused_by for c in changes] == [(ids[1],), (ids[3],), (ids[4],), (ids[6],)]
    assert [c.at for c in changes] == [at(2), at(4), at(5), at(9)]
    assert all(c.criteria == "CTCAE-5.0" for c in changes)


def test_terms_are_tracked_separately_and_units_mixed_within_one_term() -> None:
    """CTCAE 5.0: platelets in /uL and 10*9/L form one term; ANC is another."""
    t = Timeline()
    t.lab(at(1), "platelets", 40_000, "/uL", reference_low=150)
    t.lab(at(1), "anc", 0.4, "10*9/L")
    t.lab(at(2), "platelets", 45, "10*9/L", reference_low=150)
    changes = t.derive()
    assert [(c.term, c.grade, c.value, c.unit) for c in changes] == [
        ("Platelet count decreased", 3, 40.0, "10*9/L"),
        ("Neutrophil count decreased", 4, 0.4, "10*9/L"),
    ]


def test_v6_timeline_uses_v6_terms_and_thresholds() -> None:
    """CTCAE 6.0: platelets 8 x10^9/L is Thrombocytopenia grade 4."""
    t = Timeline()
    t.lab(at(1), "platelets", 8, "10*9/L", reference_low=150)
    (change,) = t.derive(version="6.0")
    assert (change.term, change.grade, change.criteria) == ("Thrombocytopenia", 4, "CTCAE-6.0")


def test_an_ungradable_result_keeps_the_grade_in_force() -> None:
    """CTCAE 5.0 ALT: a result without ULN cannot be graded and changes nothing."""
    t = Timeline()
    t.lab(at(1), "alt", 250, "U/L", reference_high=40)
    t.lab(at(2), "alt", 30, "U/L")
    t.lab(at(3), "alt", 30, "U/L", reference_high=40)
    assert [(c.at, c.grade) for c in t.derive()] == [(at(1), 3), (at(3), 0)]


def test_fever_above_40_for_more_than_24_hours_becomes_grade_4() -> None:
    """CTCAE 5.0 Fever, reference §3: > 40.0 C is grade 3, for > 24 h grade 4."""
    t = Timeline()
    first = t.temperature(at(1), 40.5)
    t.temperature(at(1.5), 40.3)
    last = t.temperature(at(1) + timedelta(hours=25), 40.2)
    t.temperature(at(2.5), 39.5)
    changes = t.derive()
    assert [(c.term, c.grade) for c in changes] == [("Fever", 3), ("Fever", 4), ("Fever", 2)]
    assert changes[1].caused_by == (first, last)
    assert changes[1].unit == "Cel"


def test_a_reading_at_or_below_40_restarts_the_24_hour_count() -> None:
    """CTCAE 5.0 Fever: grade 4 needs > 40.0 C sustained > 24 h."""
    t = Timeline()
    t.temperature(at(1), 40.5)
    t.temperature(at(1.5), 39.8)
    t.temperature(at(1) + timedelta(hours=26), 40.4)
    assert [c.grade for c in t.derive()] == [3, 2, 3]
