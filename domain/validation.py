"""Validation of an inbound message against the contract (contract §4).

Pure: the receiver's clock is an argument. Every failure becomes a
``RejectionError`` with a stable ``code``, a message and the offending field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import ValidationError

from domain.contract import CLINICAL_EVENT_ADAPTER, ClinicalEvent, RejectionError

_CODES = {
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "union_tag_invalid": "unknown_type",
    "union_tag_not_found": "missing_field",
    "json_invalid": "not_json",
    "json_type": "not_json",
    "model_type": "wrong_type",
    "model_attributes_type": "wrong_type",
    "dict_type": "wrong_type",
    "list_type": "wrong_type",
    "float_type": "wrong_type",
    "int_type": "wrong_type",
    "string_type": "wrong_type",
    "bool_type": "wrong_type",
    "int_from_float": "wrong_type",
    "datetime_type": "wrong_type",
    "datetime_parsing": "bad_timestamp",
    "datetime_from_date_parsing": "bad_timestamp",
    "timezone_aware": "bad_timestamp",
    "greater_than": "out_of_range",
    "greater_than_equal": "out_of_range",
    "less_than": "out_of_range",
    "less_than_equal": "out_of_range",
    "literal_error": "invalid_value",
    "enum": "invalid_value",
    "string_pattern_mismatch": "invalid_value",
    "string_too_short": "invalid_value",
    "string_too_long": "invalid_value",
    "value_error": "invalid_value",
    "wrong_unit": "wrong_unit",
    "future_occurred_at": "future_occurred_at",
    "participant_scope": "invalid_value",
}


@dataclass(frozen=True)
class ValidationLimits:
    max_bytes: int = 256 * 1024
    future_skew: timedelta = timedelta(minutes=5)


def validate_message(
    raw: bytes | None, *, now: datetime, limits: ValidationLimits = ValidationLimits()
) -> ClinicalEvent | RejectionError:
    """Parse and validate one message; never raises for bad input."""
    if not raw:
        return RejectionError(code="empty_body", message="the message has no body")
    if len(raw) > limits.max_bytes:
        return RejectionError(
            code="too_large",
            message=f"the message is {len(raw)} bytes, over the limit of {limits.max_bytes}",
        )
    try:
        event: ClinicalEvent = CLINICAL_EVENT_ADAPTER.validate_json(
            raw, context={"now": now, "future_skew": limits.future_skew}
        )
    except ValidationError as error:
        return _rejection(error)
    return event


def _rejection(error: ValidationError) -> RejectionError:
    first = error.errors(include_url=False)[0]
    kind = first["type"]
    location = [str(part) for part in first["loc"]]
    if location and "." in location[0]:  # the union tag: the event type
        location = location[1:]
    field = ".".join(location) or None
    code = _CODES.get(kind, "invalid")
    if field == "schema" and kind == "literal_error":
        code = "wrong_schema"
    message = first["msg"]
    if kind == "union_tag_not_found":
        field = "type"
    elif kind == "union_tag_invalid":
        field = "type"
        message = f"unknown event type {first['ctx']['tag']!r}"
    elif kind == "wrong_unit":
        field = "data.unit"
    elif kind == "participant_scope":
        field = "participant_id"
    elif code == "wrong_type" and not location:
        code = "not_object"
        message = "the message must be a JSON object"
    count = error.error_count()
    if count > 1:
        message += f" (and {count - 1} more error{'s' if count > 2 else ''})"
    return RejectionError(code=code, message=message, field=field)
