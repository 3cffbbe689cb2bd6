"""Validation of an inbound message against the contract (contract §4).

Pure: the receiver's clock is an argument. Every failure becomes a
``RejectionError`` with a stable ``code``, a message and the offending field, both of
bounded length whatever the message held.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ValidationError

from domain.contract import (
    CLINICAL_EVENT_ADAPTER,
    DATA_MODELS,
    TRIAL_LEVEL_TYPES,
    ClinicalEvent,
    RecordCorrected,
    RejectionError,
)

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


#: Longest rejection ``message`` and ``field``: a rejection travels as a Kafka header
#: beside the message it rejects, so it must not grow with what the sender chose.
MAX_REJECTION_MESSAGE_CHARS = 500
MAX_REJECTION_FIELD_CHARS = 200
#: The integers every consumer can read back: signed 64-bit (RFC 8259 §6 leaves
#: larger ones to the implementation; orjson, Java and Go stop there).
INTEROPERABLE_INTEGERS = range(-(2**63), 2**63)
#: The magnitudes a non-zero measurement can have: far beyond any clinical quantity in
#: the contract's units (cells/kg ~1e9, counts/uL ~1e6), and near enough to 1 that the
#: grading's ratios and unit conversions stay finite (a limit of 5e-324 made a ratio
#: of infinity; a value of 1.8e308 a grade with an infinite value).
MEASURABLE_MAGNITUDES = (1e-15, 1e15)
#: The data models a ``record.corrected`` can replace the data of.
CORRECTABLE_MODELS = tuple(
    model
    for name, model in DATA_MODELS.items()
    if name not in TRIAL_LEVEL_TYPES and name not in ("record.corrected", "record.voided")
)


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
    return (
        _value_rejection(event.occurred_at, "occurred_at")
        or _value_rejection(event.reported_at, "reported_at")
        or _value_rejection(event.data, "data")
        or _correction_rejection(event.data)
        or event
    )


def _correction_rejection(data: object) -> RejectionError | None:
    """A correction's replacement ``data`` is free-form on the wire; it must still be
    the data of some clinical event type, as strictly as that type's own events (JSON
    numbers, not strings such as ``"Infinity"``), with usable values. Whether it fits
    the type of the event it corrects is for the record to judge (it asks when not)."""
    if not isinstance(data, RecordCorrected):
        return None
    text = json.dumps(data.data)
    for model in CORRECTABLE_MODELS:
        try:
            replacement = model.model_validate_json(text)
        except ValidationError:
            continue
        return _value_rejection(replacement, "data.data")
    return _rejected(
        "invalid_value",
        "data.data",
        "the replacement data is not the data of any clinical event type",
    )


def _value_rejection(value: object, path: str) -> RejectionError | None:
    """A rejection for the first value that parses but cannot be used: a number no
    JSON consumer can read back (NaN or an infinity: ``NaN``, ``Infinity`` and
    ``1e309`` parse to them; an integer beyond 64 bits), a measurement of no
    measurable size, or a timestamp whose UTC time is outside years 1-9999
    (``0001-01-01T00:00:00+14:00``); in ``data`` at any depth."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        low, high = MEASURABLE_MAGNITUDES
        if not math.isfinite(value):
            return _rejected("out_of_range", path, "the number is not finite")
        if value and not low <= abs(value) <= high:
            return _rejected(
                "out_of_range", path, f"the number's size is outside {low:g} to {high:g}"
            )
        return None
    if isinstance(value, int) and value not in INTEROPERABLE_INTEGERS:
        return _rejected("out_of_range", path, "the integer is outside the signed 64-bit range")
    if isinstance(value, datetime):
        try:
            value.astimezone(UTC)
        except OverflowError:
            return _rejected("bad_timestamp", path, "the time in UTC is outside years 1-9999")
        return None
    children: list[tuple[str, object]] = []
    if isinstance(value, BaseModel):
        children = [(name, getattr(value, name)) for name in type(value).model_fields]
    elif isinstance(value, dict):
        children = [(str(name), item) for name, item in value.items()]
    elif isinstance(value, list):
        children = [(str(index), item) for index, item in enumerate(value)]
    for name, child in children:
        found = _value_rejection(child, f"{path}.{name}")
        if found is not None:
            return found
    return None


def _rejected(code: str, field: str, message: str) -> RejectionError:
    return RejectionError(
        code=code, message=message, field=_bounded(field, MAX_REJECTION_FIELD_CHARS)
    )


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        message = f"unknown event type {_bounded(str(first['ctx']['tag']), 80)!r}"
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
    return RejectionError(
        code=code,
        message=_bounded(message, MAX_REJECTION_MESSAGE_CHARS),
        field=None if field is None else _bounded(field, MAX_REJECTION_FIELD_CHARS),
    )
