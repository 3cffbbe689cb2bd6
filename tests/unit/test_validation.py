"""Contract §4: every malformed message gets a clear, stable rejection code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from domain.contract import RejectionError, clinical_event_schema
from domain.validation import ValidationLimits, validate_message
from services.simulator import MALFORMED_KINDS, malformed_examples

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
EXPECTED_CODE = {
    "not_json": "not_json",
    "wrong_schema": "wrong_schema",
    "unknown_type": "unknown_type",
    "missing_field": "missing_field",
    "unknown_field": "unknown_field",
    "wrong_unit": "wrong_unit",
    "implausible_temperature": "out_of_range",
    "negative_count": "out_of_range",
    "future_occurred_at": "future_occurred_at",
    "oversized": "too_large",
    "wrong_types": "wrong_type",
    "empty_body": "empty_body",
    "bad_timestamp": "bad_timestamp",
    "trial_level_with_participant": "invalid_value",
}
EXAMPLES = {m.kind: m for m in malformed_examples("NCT07049081", "G79-001", NOW)}


def test_every_malformed_kind_has_an_expected_code():
    assert set(EXPECTED_CODE) == set(MALFORMED_KINDS)


@pytest.mark.parametrize("kind", sorted(EXPECTED_CODE))
def test_malformed_message_is_rejected_with_its_code(kind: str):
    result = validate_message(EXAMPLES[kind].value, now=NOW, limits=ValidationLimits())
    assert isinstance(result, RejectionError)
    assert result.code == EXPECTED_CODE[kind]
    assert result.message


def _vitals(**data: object) -> bytes:
    return json.dumps(
        {
            "schema": "toxwatch.clinical.v1",
            "event_id": "v-1",
            "type": "vitals.recorded",
            "trial_id": "NCT07049081",
            "site_id": "CN-001",
            "participant_id": "G79-001",
            "occurred_at": "2026-03-10T08:00:00+08:00",
            "data": data,
        }
    ).encode()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"temperature_c": 45.1}, "data.temperature_c"),
        ({"temperature_c": 24.9}, "data.temperature_c"),
        ({"spo2_pct": 100.5}, "data.spo2_pct"),
        ({"spo2_pct": -1}, "data.spo2_pct"),
    ],
)
def test_values_outside_physiological_range_name_the_field(data: dict[str, object], field: str):
    result = validate_message(_vitals(**data), now=NOW)
    assert isinstance(result, RejectionError)
    assert (result.code, result.field) == ("out_of_range", field)


def test_range_limits_themselves_are_accepted():
    for data in ({"temperature_c": 45}, {"temperature_c": 25}, {"spo2_pct": 100}):
        assert not isinstance(validate_message(_vitals(**data), now=NOW), RejectionError)


def test_small_clock_skew_is_tolerated_but_not_more():
    skew = ValidationLimits(future_skew=timedelta(minutes=5))
    at = datetime(2026, 3, 10, 8, 0, tzinfo=timezone(timedelta(hours=8)))
    assert not isinstance(
        validate_message(_vitals(temperature_c=37), now=at - timedelta(minutes=4), limits=skew),
        RejectionError,
    )
    late = validate_message(_vitals(temperature_c=37), now=at - timedelta(minutes=6), limits=skew)
    assert isinstance(late, RejectionError) and late.code == "future_occurred_at"


def test_vitals_without_a_measurement_are_rejected():
    result = validate_message(_vitals(temperature_route="oral"), now=NOW)
    assert isinstance(result, RejectionError)


def test_json_schema_is_a_discriminated_union_of_every_type():
    schema = clinical_event_schema()
    assert schema["discriminator"]["propertyName"] == "type"
    assert len(schema["oneOf"]) == 22
