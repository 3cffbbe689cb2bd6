"""UCUM unit conversion for the analytes of the event contract (contract §2).

Each analyte has a canonical unit; every other unit the contract allows for it is a
fixed multiple of it. Conversion factors (per analyte, since mg/dL <-> umol/L depends
on the molar mass):

=================  ==========================================================
analyte            conversion
=================  ==========================================================
cell counts        1.0 10*9/L = 1000 /uL (= 1000/mm3; reference §3)
hemoglobin         1 g/dL = 10 g/L = 0.6206 mmol/L
creatinine         1 mg/dL = 88.42 umol/L
bilirubin_total    1 mg/dL = 17.1 umol/L
triglycerides      1 mg/dL = 0.01129 mmol/L
fibrinogen         1 g/L = 100 mg/dL
igg                1 g/L = 100 mg/dL
crp                1 mg/dL = 10 mg/L
troponin           1 ng/mL = 1000 ng/L
il6                1 pg/mL = 1 ng/L
=================  ==========================================================

A factor is kept as a fraction (numerator, denominator) so that exact decimal
conversions such as 500 /uL -> 0.5 10*9/L are computed by division, not by
multiplying with an inexact binary ``0.001``.
"""

from __future__ import annotations

from typing import Final


class UnitConversionError(ValueError):
    """A value cannot be converted: unknown analyte, or a unit that does not fit it."""


_COUNTS: Final[dict[str, tuple[float, float]]] = {"10*9/L": (1.0, 1.0), "/uL": (1.0, 1000.0)}

#: Per analyte: unit -> (numerator, denominator) such that
#: ``value_in_canonical = value * numerator / denominator``. The canonical unit has (1, 1).
_TO_CANONICAL: Final[dict[str, dict[str, tuple[float, float]]]] = {
    "anc": _COUNTS,
    "alc": _COUNTS,
    "wbc": _COUNTS,
    "platelets": _COUNTS,
    "cd19_b_cells": _COUNTS,
    "hemoglobin": {"g/dL": (1.0, 1.0), "g/L": (1.0, 10.0), "mmol/L": (1.0, 0.6206)},
    "creatinine": {"mg/dL": (1.0, 1.0), "umol/L": (1.0, 88.42)},
    "bilirubin_total": {"mg/dL": (1.0, 1.0), "umol/L": (1.0, 17.1)},
    "triglycerides": {"mg/dL": (1.0, 1.0), "mmol/L": (1.0, 0.01129)},
    "fibrinogen": {"g/L": (1.0, 1.0), "mg/dL": (1.0, 100.0)},
    "igg": {"g/L": (1.0, 1.0), "mg/dL": (1.0, 100.0)},
    "crp": {"mg/L": (1.0, 1.0), "mg/dL": (10.0, 1.0)},
    "troponin": {"ng/L": (1.0, 1.0), "ng/mL": (1000.0, 1.0)},
    "il6": {"pg/mL": (1.0, 1.0), "ng/L": (1.0, 1.0)},
    "ferritin": {"ng/mL": (1.0, 1.0)},
    "ldh": {"U/L": (1.0, 1.0)},
    "alt": {"U/L": (1.0, 1.0)},
    "ast": {"U/L": (1.0, 1.0)},
    "ck": {"U/L": (1.0, 1.0)},
}


def units_for(analyte: str) -> frozenset[str]:
    """The UCUM units this module can convert between for ``analyte``."""
    return frozenset(_factors(analyte))


def can_convert(analyte: str, from_unit: str, to_unit: str) -> bool:
    factors = _TO_CANONICAL.get(analyte, {})
    return from_unit in factors and to_unit in factors


def convert(analyte: str, value: float, from_unit: str, to_unit: str) -> float:
    """``value`` of ``analyte`` in ``from_unit``, expressed in ``to_unit``.

    Raises :class:`UnitConversionError` for an unknown analyte or a unit that does not
    fit it (e.g. creatinine in g/L).
    """
    factors = _factors(analyte)
    if from_unit not in factors or to_unit not in factors:
        unknown = from_unit if from_unit not in factors else to_unit
        raise UnitConversionError(
            f"unit {unknown} does not fit analyte {analyte} "
            f"(expected one of {', '.join(sorted(factors))})"
        )
    if from_unit == to_unit:
        return value
    from_num, from_den = factors[from_unit]
    to_num, to_den = factors[to_unit]
    return value * from_num * to_den / (from_den * to_num)


def _factors(analyte: str) -> dict[str, tuple[float, float]]:
    try:
        return _TO_CANONICAL[analyte]
    except KeyError:
        raise UnitConversionError(f"no unit conversions known for analyte {analyte}") from None
