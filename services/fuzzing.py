"""Hostile input for the ingest path (issue 8): hypothesis strategies that make
hostile messages, and the invariants every batch must keep.

Shared by ``tests/fuzz`` (a derandomized CI run) and ``toxwatch fuzz run`` (longer,
seeded runs). A *plan* is a list of hostile messages (garbage bytes, and above all
mutations of valid simulator events) interleaved with a small valid *control* cohort
and applied with ``SafetyMonitoring.apply_batch`` in batches. For every batch:

- ``apply_batch`` returns (never raises);
- every message is accounted for once (accepted + rejected + duplicates +
  already applied = batch size), with the counts a model of the contract predicts
  (validation by ``validate_message``, a repeated ``event_id`` ignored per record);
- every rejected message is in the ingest ledger once, at its offset, with its
  exact key and bytes, their SHA-256, and a bounded ``{code, message, field}``;
- no valid message fails to apply (``processing_error`` is a defect found).

After every plan: the control cohort derived exactly what it derives alone (a clean
run), each record holds the first content sent under each ``event_id`` (a replayed id
with other content is not applied, contract §1), and a new valid message is still
accepted. Resident memory is sampled after every batch; ``flood`` checks that a
flood of hostile messages from one participant does not grow it without bound.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import hypothesis
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.contract import (
    DATA_MODELS,
    TRIAL_LEVEL_PARTICIPANT,
    TRIAL_LEVEL_TYPES,
    RejectionError,
)
from domain.participant import Participant, participant_aggregate_id
from domain.records import IngestLedger
from domain.validation import (
    MAX_REJECTION_FIELD_CHARS,
    MAX_REJECTION_MESSAGE_CHARS,
    ValidationLimits,
    validate_message,
)
from services.application import InboundMessage, SafetyMonitoring
from services.offline import in_memory_application
from services.simulator import CohortSpec, simulate_cohort

TOPIC = "toxwatch.clinical.v1"
#: The receiver's clock: after every simulated event, fixed so a run is reproducible.
NOW = datetime(2026, 6, 1, tzinfo=UTC)
CONTROL_SPEC = CohortSpec(
    seed=79, participants=2, follow_up_days=5, malformed=False, tick_every=timedelta(hours=12)
)
SOURCE_SPEC = CohortSpec(
    seed=8, participants=6, follow_up_days=21, malformed=False, tick_every=None
)
CONTROL_TRIAL = CONTROL_SPEC.trial_id
#: Trial-level hostile events (ticks, committee decisions) name this trial, so that a
#: valid one cannot legitimately change what the control participants derive.
HOSTILE_TRIAL = "FUZZ-TRIAL"
HOSTILE_PARTICIPANTS = tuple(f"FZ-{n:03d}" for n in range(6))
FLOOD_PARTICIPANT = "FZ-FLOOD"
SLOTS = 1000
BATCH_SIZES = (500, 128, 31, 7)
#: Hostile messages per plan (the CI run: examples x MIN_HOSTILE >= its target).
MIN_HOSTILE, MAX_HOSTILE = 100, 130
SENTINEL = "\x00@@fuzz@@"

# ---------------------------------------------------------------- valid material

_AT = "2025-02-01T10:00:00+08:00"
#: One valid ``data`` per contract type (contract §2), so that every type is mutated.
EXEMPLARS: dict[str, dict[str, Any]] = {
    "participant.enrolled": {
        "disease": "SLE",
        "dose_level": "DL1",
        "age_years": 34,
        "sex": "F",
        "weight_kg": 61.5,
        "eligibility": {"sledai": 12, "anti_dsdna_positive": True, "prior_lines": [1, 2]},
    },
    "eligibility.confirmed": {"confirmed_by": "pi-cn001", "criteria": {"sledai": 12}},
    "lymphodepletion.administered": {"agent": "fludarabine", "dose_mg_m2": 25},
    "infusion.administered": {"dose_level": "DL1", "cells_per_kg": 1.0e6, "product_lot": "L7"},
    "vitals.recorded": {
        "temperature_c": 38.6,
        "temperature_route": "oral",
        "systolic_bp_mmhg": 102,
        "diastolic_bp_mmhg": 61,
        "mean_arterial_pressure_mmhg": 75,
        "heart_rate_bpm": 112,
        "respiratory_rate_per_min": 22,
        "spo2_pct": 93,
    },
    "oxygen.changed": {"device": "nasal_cannula", "flow_l_min": 3, "fio2": 0.32},
    "vasopressor.changed": {
        "drug": "norepinephrine",
        "action": "start",
        "dose": 0.05,
        "dose_unit": "ug/kg/min",
    },
    "fluid.bolus": {"volume_ml": 500, "indication": "hypotension"},
    "medication.administered": {
        "drug": "tocilizumab",
        "drug_class": "anti_il6",
        "dose": 8,
        "dose_unit": "mg/kg",
        "route": "iv",
    },
    "neuro.assessed": {
        "ice_score": 8,
        "ice_items": {"orientation": 3, "naming": 3, "commands": 1, "writing": 0, "attention": 1},
        "consciousness": "awake",
        "seizure": "none",
        "motor_weakness": "none",
        "cerebral_edema": "none",
        "raised_icp_signs": ["papilledema"],
        "intracranial_hemorrhage": False,
        "sedated": False,
    },
    "lab.resulted": {
        "analyte": "anc",
        "value": 0.4,
        "unit": "10*9/L",
        "reference_low": 1.5,
        "reference_high": 7.5,
        "loinc": "751-8",
    },
    "adverse_event.reported": {
        "ae_id": "ae-1",
        "term": "Cytokine release syndrome",
        "grading_scale": "ASTCT-2019",
        "grade": 2,
        "serious": True,
        "seriousness": ["hospitalization"],
        "relatedness": "probable",
        "relatedness_lymphodepletion": "unlikely",
        "expected": True,
        "onset_at": _AT,
        "resolved_at": "2025-02-03T10:00:00+08:00",
        "outcome": "recovered",
        "meddra_pt_code": "10052015",
    },
    "encounter.changed": {"kind": "admission", "planned": True},
    "pk.resulted": {"analyte": "car_t_cells_per_ul", "value": 12.5, "below_lloq": False, "lloq": 1},
    "disease.assessed": {
        "instrument": "SLEDAI-2K",
        "score": 6,
        "visit": "W12",
        "components": {"arthritis": 4},
    },
    "adjudication.recorded": {
        "target": {"kind": "crs_episode", "id": "1"},
        "decision": "regrade",
        "grade": 1,
        "attributed_to": "product",
        "reason": "the fever was an infection",
        "adjudicator": "src",
    },
    "death.reported": {"cause": "Cytokine release syndrome", "attributed_to": "product"},
    "participant.withdrawn": {"reason": "consent withdrawn"},
    "record.corrected": {
        "corrects_event_id": "ex-4-vitals.recorded",
        "data": {"temperature_c": 37.2},
        "reason": "transcription error",
    },
    "record.voided": {"voids_event_id": "ex-10-lab.resulted", "reason": "wrong participant"},
    "committee.decided": {
        "committee": "dsmb",
        "decision": "pause_enrollment",
        "dose_level": "DL2",
        "reason": "review of grade 4 CRS",
    },
    "clock.ticked": {},
}


def envelope(
    type_: str,
    data: Mapping[str, Any],
    *,
    event_id: str,
    participant_id: str,
    trial_id: str = CONTROL_TRIAL,
    occurred_at: str = _AT,
) -> dict[str, Any]:
    """A clinical event as a JSON object (contract §1)."""
    return {
        "schema": "toxwatch.clinical.v1",
        "event_id": event_id,
        "type": type_,
        "trial_id": trial_id,
        "site_id": "CN-001",
        "participant_id": participant_id,
        "occurred_at": occurred_at,
        "reported_at": occurred_at,
        "source": {"system": "edc", "reference": "fuzz"},
        "data": dict(data),
    }


def exemplar_events() -> list[dict[str, Any]]:
    """One valid event per contract type (and results CTCAE grades as they rise),
    six hours apart: the course of hostile participant FZ-000 and two trial-level
    events of the hostile trial."""
    start = datetime(2025, 2, 1, 10, tzinfo=timezone(timedelta(hours=8)))
    types = [*EXEMPLARS.items(), *(("lab.resulted", lab) for lab in _INCREASED_LABS)]
    events = []
    for index, (type_, data) in enumerate(types):
        trial_level = type_ in TRIAL_LEVEL_TYPES
        events.append(
            envelope(
                type_,
                data,
                event_id=f"ex-{index}-{type_}",
                participant_id=TRIAL_LEVEL_PARTICIPANT if trial_level else "FZ-000",
                trial_id=HOSTILE_TRIAL if trial_level else CONTROL_TRIAL,
                occurred_at=(start + timedelta(hours=6 * index)).isoformat(),
            )
        )
    return events


#: Results CTCAE grades as they rise (so that a corrected value can raise a grade).
_INCREASED_LABS = (
    {"analyte": "alt", "value": 40, "unit": "U/L", "reference_low": 7, "reference_high": 40},
    {"analyte": "ast", "value": 30, "unit": "U/L", "reference_high": 35},
    {"analyte": "creatinine", "value": 70, "unit": "umol/L", "reference_high": 100},
)


def encode(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Corpus:
    """The valid material hostile messages are made from, and the clean baseline."""

    control: tuple[tuple[bytes | None, bytes], ...]
    #: (index in ``control``, document) of the control's participant-level events.
    control_events: tuple[tuple[int, dict[str, Any]], ...]
    control_participants: frozenset[tuple[str, str]]
    sources: tuple[dict[str, Any], ...]
    baseline: Mapping[str, tuple[dict[str, Any], ...]]


@functools.cache
def corpus() -> Corpus:
    control = tuple((m.key, m.value) for m in simulate_cohort(CONTROL_SPEC))
    documents = [json.loads(value) for _, value in control]
    control_events = tuple(
        (index, document)
        for index, document in enumerate(documents)
        if document["participant_id"] != TRIAL_LEVEL_PARTICIPANT
    )
    participants = frozenset((d["trial_id"], d["participant_id"]) for _, d in control_events)
    return Corpus(
        control=control,
        control_events=control_events,
        control_participants=participants,
        sources=tuple(_source_events()),
        baseline=_clean_run(control, participants),
    )


def _source_events() -> Iterator[dict[str, Any]]:
    """Valid simulator events rehomed to hostile participants, then the exemplars."""
    rename: dict[str, str] = {}
    for message in simulate_cohort(SOURCE_SPEC):
        document = json.loads(message.value)
        if document["participant_id"] == TRIAL_LEVEL_PARTICIPANT:
            document["trial_id"] = HOSTILE_TRIAL
        else:
            original = document["participant_id"]
            rename.setdefault(
                original, HOSTILE_PARTICIPANTS[len(rename) % len(HOSTILE_PARTICIPANTS)]
            )
            document["participant_id"] = rename[original]
        yield document
    yield from exemplar_events()


def _clean_run(
    control: Sequence[tuple[bytes | None, bytes]], participants: frozenset[tuple[str, str]]
) -> dict[str, tuple[dict[str, Any], ...]]:
    app = in_memory_application()
    messages = [InboundMessage(TOPIC, 0, i, k, v, NOW) for i, (k, v) in enumerate(control)]
    for start in range(0, len(messages), 100):
        app.apply_batch(messages[start : start + 100], now=NOW)
    return derived_by_participant(app, participants)


def derived_by_participant(
    app: SafetyMonitoring, participants: frozenset[tuple[str, str]]
) -> dict[str, tuple[dict[str, Any], ...]]:
    """The safety events derived for ``participants``, in log order, without
    ``recorded_at`` (when they were derived)."""
    found: dict[str, list[dict[str, Any]]] = {f"{t}/{p}": [] for t, p in sorted(participants)}
    for event in app.iter_safety_events():
        if (event.trial_id, event.participant_id) in participants:
            wire = event.to_wire()
            del wire["recorded_at"]
            found[f"{event.trial_id}/{event.participant_id}"].append(wire)
    return {name: tuple(events) for name, events in found.items()}


# ---------------------------------------------------------------- hostile messages


@dataclass(frozen=True, repr=False)
class Hostile:
    """One hostile message, with where it goes among the control stream.

    ``must`` is what the construction guarantees (``rejected`` or ``duplicate``);
    ``after`` is the index of a control message it must follow (a replay).
    """

    kind: str
    value: bytes | None
    key: bytes | None = None
    partition: int = 0
    slot: int = 0
    after: int = -1
    must: str | None = None
    note: str = ""

    def __repr__(self) -> str:
        if self.value is None:
            shown = "None"
        else:
            cut = self.value[:160]
            shown = repr(cut) + (
                f"…(+{len(self.value) - 160} bytes)" if len(self.value) > 160 else ""
            )
        return (
            f"Hostile({self.kind!r}, {self.note!r}, value={shown}, key={self.key!r}, "
            f"partition={self.partition}, slot={self.slot}, after={self.after}, "
            f"must={self.must!r})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How hypothesis prints a falsifying example: this ``repr``."""
        printer.text(repr(self))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path and list index of a JSON document."""
    found: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for name, item in value.items():
            found.append((*prefix, name))
            found.extend(_paths(item, (*prefix, name)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.append((*prefix, index))
            found.extend(_paths(item, (*prefix, index)))
    return found


def _parent(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        document = document[part]
    return document


def _set(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    _parent(changed, path)[path[-1]] = value
    return changed


def _splice(document: dict[str, Any], path: tuple[Any, ...], raw: bytes) -> bytes:
    """``document`` encoded with the value at ``path`` replaced by ``raw`` bytes."""
    encoded = encode(_set(document, path, SENTINEL))
    marker = encode(SENTINEL)
    return encoded.replace(marker, raw, 1)


def _key(document: dict[str, Any]) -> bytes:
    return str(document.get("participant_id", "")).encode()


def _pick(options: Sequence[Any], index: int) -> Any:
    return options[index % len(options)]


_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    _JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_OTHER_KINDS: tuple[Any, ...] = (None, True, 0, -1, 1.5, "", "x", [], {}, [1], {"a": 1}, "38.4")
_RETYPED_VALUES = st.sampled_from(_OTHER_KINDS) | JSON_VALUES
NUMBER_TOKENS = (
    b"NaN",
    b"-NaN",
    b"Infinity",
    b"-Infinity",
    b"1e309",
    b"-1e309",
    b"1e-400",
    b"-0",
    b"-0.0",
    b"1" + b"0" * 400,
    b"-" + b"9" * 4300,
    b"9" * 4301,
    b"9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"1.7976931348623157e308",
    b"5e-324",
    b"0x10",
    b"01",
    b"+1",
    b".5",
    b"1.",
    b"1e",
    b"38.4" + b"0" * 5000,
)
NESTING_DEPTHS = (1, 2, 10, 64, 127, 128, 199, 200, 201, 255, 256, 1000, 20_000, 120_000)
STRING_LENGTHS = (0, 1, 63, 64, 65, 127, 128, 129, 200, 201, 2000, 2001, 65_536, 262_000, 300_000)
STRING_CHARS = ("x", "é", "€", "😀", "\x00", "\\", '"', "\u202e", "\ufeff", " ")
BAD_STRING_BYTES = (
    b"\xff",
    b"\xfe\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xe2\x82",
    b"\xf4\x90\x80\x80",
    b"\x80",
    b"\\ud800",
    b"\\udc00",
    b"\\ud800\\ud800",
    b"\\udbff\\udfff",
    b"\\u0000",
    b"\\uZZZZ",
    b"\\x41",
    b"\x01",
    b"\t",
)
BAD_BYTES = (
    b"\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xe2\x82",
    b"\xf4\x90\x80\x80",
    b"\x80",
    b"\x00",
)
TIMESTAMPS = (
    "2025-02-01T10:00:00",
    "2025-02-01 10:00:00+08:00",
    "2025-02-01",
    "2025-02-01T10:00:00Z",
    "2025-02-01T10:00:00z",
    "2025-02-01t10:00:00+08:00",
    "2025-02-01T10:00:00+24:00",
    "2025-02-01T10:00:00+23:59",
    "2025-02-01T10:00:00-00:00",
    "2025-02-01T10:00:00.123456789123456789+08:00",
    "2025-02-01T10:00:60+08:00",
    "2025-02-30T10:00:00+08:00",
    "2025-W05-6T10:00:00+08:00",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-14:00",
    "0001-01-01T00:00:00Z",
    "0100-06-01T00:00:00+00:00",
    "1000-01-01T00:00:00+00:00",
    "1899-12-31T23:59:59+00:00",
    "1970-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59+14:00",
    "+10000-01-01T00:00:00Z",
    "2200-01-01T00:00:00+00:00",
    "1767225600",
    "",
    "now",
)


def _relative_timestamps() -> tuple[str, ...]:
    """Just inside and just outside the future skew of the receiver's clock."""
    skew = ValidationLimits().future_skew
    return tuple(
        (NOW + delta).isoformat()
        for delta in (skew - timedelta(seconds=1), skew, skew + timedelta(seconds=1))
    )


def _strict_objects(document: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Objects of a document that forbid unknown fields (free-form ones excluded)."""
    found: list[tuple[Any, ...]] = [(), ("data",)]
    if isinstance(document.get("source"), dict):
        found.append(("source",))
    data = document.get("data")
    if isinstance(data, dict):
        found.extend(("data", name) for name in ("ice_items", "target") if name in data)
    return found


def _one(draw: st.DrawFn, options: Sequence[Any]) -> Any:
    """One of ``options``, drawn by index (cheap for hypothesis; shrinks to the first)."""
    return options[draw(st.integers(0, len(options) - 1))]


def _source(draw: st.DrawFn) -> dict[str, Any]:
    """One valid source event."""
    return _one(draw, corpus().sources)


def _control_event(draw: st.DrawFn) -> tuple[int, dict[str, Any]]:
    return _one(draw, corpus().control_events)


_TYPES = tuple(sorted(DATA_MODELS))


def _other_type(draw: st.DrawFn, type_: str) -> str:
    """A contract type other than ``type_``."""
    return _one(draw, [name for name in _TYPES if name != type_])


@st.composite
def _source_and_path(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[Any, ...]]:
    document = _source(draw)
    paths = _paths(document)
    return document, _pick(paths, draw(st.integers(0, 10_000)))


@st.composite
def garbage(draw: st.DrawFn) -> Hostile:
    """Bytes or JSON that are no clinical event at all."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        value: bytes | None = draw(st.binary(max_size=300))
    elif choice == 1:
        value = json.dumps(draw(JSON_VALUES), allow_nan=True).encode()
    elif choice == 2:
        value = draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    else:
        value = draw(
            st.sampled_from(
                [
                    None,
                    b"",
                    b" ",
                    b"\n",
                    b"null",
                    b"{}",
                    b"[]",
                    b"0",
                    b'""',
                    b"{" * 100,
                    b"\xef\xbb\xbf",
                ]
            )
        )
    key = draw(st.none() | st.binary(max_size=16))
    return Hostile("garbage", value, key=key, must="rejected")


@st.composite
def encodings(draw: st.DrawFn) -> Hostile:
    """A valid event in another encoding or with a byte-order mark."""
    document = _source(draw)
    text = json.dumps(document, ensure_ascii=False)
    how = _one(draw, ["utf-16", "utf-32", "utf-8-sig", "latin-1-é", "cp1252"])
    if how == "latin-1-é":
        value = json.dumps(_set(document, ("site_id",), "CN-é"), ensure_ascii=False).encode(
            "latin-1"
        )
    else:
        value = text.encode(how)
    return Hostile("encoding", value, key=_key(document), note=how)


@st.composite
def truncations(draw: st.DrawFn) -> Hostile:
    """A valid event cut short (every proper prefix of a JSON object is invalid)."""
    document = _source(draw)
    value = encode(document)
    cut = draw(st.integers(0, len(value) - 1))
    return Hostile("truncate", value[:cut], key=_key(document), must="rejected", note=str(cut))


@st.composite
def byte_splices(draw: st.DrawFn) -> Hostile:
    """Bytes that are not UTF-8, or a raw NUL, inserted anywhere in a valid event."""
    document = _source(draw)
    value = encode(document)
    at = draw(st.integers(0, len(value)))
    bad = _one(draw, BAD_BYTES)
    return Hostile(
        "splice_bytes",
        value[:at] + bad + value[at:],
        key=_key(document),
        must="rejected",
        note=f"{bad!r}@{at}",
    )


@st.composite
def dropped_fields(draw: st.DrawFn) -> Hostile:
    document, path = draw(_source_and_path())
    changed = copy.deepcopy(document)
    parent = _parent(changed, path)
    del parent[path[-1]]
    return Hostile("drop_field", encode(changed), key=_key(document), note=_dotted(path))


@st.composite
def retyped_fields(draw: st.DrawFn) -> Hostile:
    document, path = draw(_source_and_path())
    value = draw(_RETYPED_VALUES)
    changed = _set(document, path, value)
    return Hostile(
        "retype_field",
        json.dumps(changed, allow_nan=True).encode(),
        key=_key(document),
        note=f"{_dotted(path)}={value!r}"[:200],
    )


@st.composite
def unknown_fields(draw: st.DrawFn) -> Hostile:
    """A field the contract does not know, in an object that forbids them."""
    document = _source(draw)
    where = _pick(_strict_objects(document), draw(st.integers(0, 100)))
    name = "zz_" + draw(st.text(max_size=12) | st.sampled_from(["x" * 300_000, "é" * 2000]))
    value = draw(JSON_VALUES)
    changed = copy.deepcopy(document)
    target: Any = changed
    for part in where:
        target = target[part]
    target[name] = value
    return Hostile(
        "unknown_field",
        json.dumps(changed, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass"),
        key=_key(document),
        must="rejected",
        note=f"{_dotted(where)}.{name[:40]}",
    )


@st.composite
def duplicate_keys(draw: st.DrawFn) -> Hostile:
    """A key given twice in one object, the second time with another value."""
    document = _source(draw)
    name = _one(draw, sorted(document))
    value = _one(draw, _OTHER_KINDS)
    raw = encode(document)
    extra = encode(name) + b":" + encode(value) + b","
    first = draw(st.booleans())
    spliced = b"{" + extra + raw[1:] if first else raw[:-1] + b"," + extra[:-1] + b"}"
    return Hostile("duplicate_key", spliced, key=_key(document), note=name)


@st.composite
def number_literals(draw: st.DrawFn) -> Hostile:
    """Huge, non-finite and malformed number literals where a value goes."""
    document, path = draw(_source_and_path())
    token = _one(draw, NUMBER_TOKENS)
    return Hostile(
        "number_literal",
        _splice(document, path, token),
        key=_key(document),
        note=f"{_dotted(path)}={token[:24]!r}",
    )


@st.composite
def deep_nesting(draw: st.DrawFn) -> Hostile:
    document, path = draw(_source_and_path())
    depth = _one(draw, NESTING_DEPTHS)
    shape = _one(draw, ["array", "object"])
    if shape == "array":
        raw = b"[" * depth + b"1" + b"]" * depth
    else:
        raw = b'{"a":' * depth + b"1" + b"}" * depth
    return Hostile(
        "deep_nesting",
        _splice(document, path, raw),
        key=_key(document),
        note=f"{_dotted(path)} {shape}x{depth}",
    )


@st.composite
def long_strings(draw: st.DrawFn) -> Hostile:
    """Strings of 0 bytes to megabytes, in values, in field names and in ids."""
    document = _source(draw)
    length = _one(draw, STRING_LENGTHS)
    char = _one(draw, STRING_CHARS)
    text = char * length
    in_name = draw(st.integers(0, 4)) == 0
    if in_name:
        changed = copy.deepcopy(document)
        changed["data"][text] = 1
        note = f"data.<name of {length} x {char!r}>"
    else:
        paths = _paths(document)
        path = _pick(paths, draw(st.integers(0, 10_000)))
        changed = _set(document, path, text)
        note = f"{_dotted(path)}={length} x {char!r}"
    return Hostile("long_string", encode(changed), key=_key(document), note=note)


@st.composite
def bad_strings(draw: st.DrawFn) -> Hostile:
    """Invalid UTF-8, lone surrogates and bad escapes inside a string value."""
    document, path = draw(_source_and_path())
    bad = _one(draw, BAD_STRING_BYTES)
    before = _one(draw, [b"", b"a", b"G79-"])
    raw = b'"' + before + bad + b'"'
    return Hostile(
        "bad_string", _splice(document, path, raw), key=_key(document), note=f"{_dotted(path)}"
    )


@st.composite
def wrong_types(draw: st.DrawFn) -> Hostile:
    """A valid event's ``data`` under another contract type."""
    document = _source(draw)
    other = _other_type(draw, document["type"])
    changed = dict(document, type=other)
    return Hostile(
        "wrong_type",
        encode(changed),
        key=_key(document),
        must="rejected",
        note=f"{document['type']} as {other}",
    )


@st.composite
def odd_type_names(draw: st.DrawFn) -> Hostile:
    document = _source(draw)
    name = document["type"]
    variant = draw(
        st.sampled_from(
            [name.upper(), name + " ", " " + name, name.replace(".", "_"), name + "\x00", "", "*"]
        )
    )
    return Hostile(
        "odd_type", encode(dict(document, type=variant)), key=_key(document), must="rejected"
    )


@st.composite
def timestamps(draw: st.DrawFn) -> Hostile:
    """Timestamps without offsets, malformed, far in the past or the future."""
    document = _source(draw)
    candidates: list[tuple[Any, ...]] = [("occurred_at",), ("reported_at",)]
    data = document.get("data", {})
    candidates.extend(("data", name) for name in ("onset_at", "resolved_at") if name in data)
    path = _one(draw, candidates)
    stamp = _one(draw, TIMESTAMPS + _relative_timestamps())
    return Hostile(
        "timestamp",
        encode(_set(document, path, stamp)),
        key=_key(document),
        note=f"{_dotted(path)}={stamp}",
    )


@st.composite
def unknown_participants(draw: st.DrawFn) -> Hostile:
    """A valid event for a participant never enrolled (accepted, contract §4)."""
    document = _source(draw)
    if document["participant_id"] == TRIAL_LEVEL_PARTICIPANT:
        document = dict(document, participant_id="FZ-000")
    number = draw(st.integers(0, 20))
    pid = _one(draw, [f"FZ-UNK-{number}", "-x", "." * 64, "A" * 64])
    changed = dict(document, participant_id=pid)
    return Hostile("unknown_participant", encode(changed), key=pid.encode(), note=pid)


@st.composite
def hostile_replays(draw: st.DrawFn) -> Hostile:
    """A valid event sent under the ``event_id`` of another (same participant)."""
    document = _source(draw)
    other = _source(draw)
    if document["participant_id"] == TRIAL_LEVEL_PARTICIPANT:
        return Hostile("replay", encode(document), key=b"-", note="trial-level")
    changed = dict(document, event_id=other["event_id"])
    return Hostile("replay", encode(changed), key=_key(document), note=other["event_id"])


@st.composite
def control_replays(draw: st.DrawFn) -> Hostile:
    """A control participant's ``event_id`` again, after it, with other valid content:
    a repeated id is ignored, whatever it carries (contract §1)."""
    events = corpus().control_events
    index, original = _one(draw, events)
    content = _source(draw)
    if content["participant_id"] == TRIAL_LEVEL_PARTICIPANT:
        content = next(s for s in corpus().sources if s["type"] == "vitals.recorded")
    changed = dict(content)
    for name in ("event_id", "trial_id", "site_id", "participant_id"):
        changed[name] = original[name]
    return Hostile(
        "replay_control",
        encode(changed),
        key=_key(original),
        after=index,
        must="duplicate",
        note=f"{original['event_id']} as {content['type']}",
    )


@st.composite
def cross_participant_replays(draw: st.DrawFn) -> Hostile:
    """A control participant's ``event_id`` on a hostile participant's valid event."""
    index, original = _control_event(draw)
    content = _source(draw)
    if content["participant_id"] == TRIAL_LEVEL_PARTICIPANT:
        content = next(s for s in corpus().sources if s["type"] == "vitals.recorded")
    changed = dict(content, event_id=original["event_id"])
    return Hostile(
        "replay_cross", encode(changed), key=_key(content), after=index, note=original["event_id"]
    )


@st.composite
def targeted(draw: st.DrawFn) -> Hostile:
    """An invalid-by-construction variant of a control participant's event."""
    _, original = _control_event(draw)
    raw = encode(original)
    how = draw(st.integers(0, 3))
    if how == 0:
        value = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how == 1:
        at = draw(st.integers(0, len(raw)))
        value = raw[:at] + _one(draw, BAD_BYTES) + raw[at:]
    elif how == 2:
        value = encode(dict(original, zz_unknown=True))
    else:
        other = _other_type(draw, original["type"])
        value = encode(dict(original, type=other))
    return Hostile("targeted", value, key=_key(original), must="rejected", note=str(how))


@st.composite
def clock_ticks(draw: st.DrawFn) -> Hostile:
    """Ticks of the hostile trial: odd times, replayed ids, with fields they must not
    have."""
    stamp = _one(draw, (*TIMESTAMPS, *_relative_timestamps(), "2025-03-01T00:00:00Z"))
    event_id = _one(draw, ["tick-a", "tick-b", f"tick-{stamp}"])
    document = envelope(
        "clock.ticked",
        {},
        event_id=event_id,
        participant_id=TRIAL_LEVEL_PARTICIPANT,
        trial_id=HOSTILE_TRIAL,
        occurred_at=stamp,
    )
    variant = draw(st.integers(0, 3))
    if variant == 1:
        document["participant_id"] = "FZ-000"
    elif variant == 2:
        document["data"] = {"now": stamp}
    return Hostile("tick", encode(document), key=b"-", note=f"{event_id} {stamp} v{variant}")


CORRECTION_VALUES: tuple[Any, ...] = (
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "2025-02-01T10:00:00",
    None,
    [],
    {},
    True,
    "",
    "x" * 300,
)
#: Strings a lenient validator would read as numbers, and numbers at the edges.
NUMERIC_CORRECTIONS: tuple[Any, ...] = (
    "Infinity",
    "1e309",
    "NaN",
    "-Infinity",
    "38.4",
    1e308,
    -1,
    2**62,
    True,
)


@st.composite
def corrections(draw: st.DrawFn) -> Hostile:
    """A correction or a void of a hostile participant's event (the prelude holds
    them) whose replacement ``data`` has one hostile value, mostly a number's: it is
    free-form at ingest and meets the target's model only in the record."""
    choice = draw(st.integers(0, 7))
    if choice == 0:
        target = _one(draw, [e for e in prelude_events() if e["type"] not in _UNCORRECTABLE])
        data: dict[str, Any] = {"voids_event_id": target["event_id"], "reason": "fuzz"}
        type_, note = "record.voided", f"void {target['event_id']}"
    else:
        numeric = choice > 2
        target, name = _one(draw, _correction_fields(numeric=numeric))
        value = _one(draw, NUMERIC_CORRECTIONS if numeric else CORRECTION_VALUES)
        replacement = dict(target["data"], **{name: value})
        data = {"corrects_event_id": target["event_id"], "data": replacement, "reason": "fuzz"}
        type_, note = "record.corrected", f"{target['event_id']}: {name}={value!r}"[:120]
    document = envelope(
        type_,
        data,
        event_id=f"fix-{draw(st.integers(0, 40))}",
        participant_id=target["participant_id"],
        occurred_at="2025-02-02T10:00:00+08:00",
    )
    return Hostile("correction", encode(document), key=_key(document), note=note)


@functools.cache
def _correction_fields(*, numeric: bool) -> tuple[tuple[dict[str, Any], str], ...]:
    """(target event, field of its data) pairs that a correction can change."""
    return tuple(
        (event, name)
        for event in prelude_events()
        if event["type"] not in _UNCORRECTABLE
        for name, value in event["data"].items()
        if not numeric or (isinstance(value, int | float) and not isinstance(value, bool))
    )


_UNCORRECTABLE = frozenset({"record.corrected", "record.voided", *TRIAL_LEVEL_TYPES})


@functools.cache
def prelude_events() -> tuple[dict[str, Any], ...]:
    """Valid events of every type for hostile participants, sent before each plan's
    stream so that corrections and voids have targets."""
    return tuple(exemplar_events())


@st.composite
def size_edges(draw: st.DrawFn) -> Hostile:
    """A valid event padded with whitespace to just under, at and over the limit."""
    document = _source(draw)
    raw = encode(document)
    limit = ValidationLimits().max_bytes
    target = limit + draw(st.integers(-2, 2))
    padded = raw[:-1] + b" " * max(0, target - len(raw)) + b"}"
    return Hostile("size_edge", padded, key=_key(document), note=str(len(padded)))


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in path)


OPERATORS: dict[str, Callable[[], st.SearchStrategy[Hostile]]] = {
    "garbage": garbage,
    "encoding": encodings,
    "truncate": truncations,
    "splice_bytes": byte_splices,
    "drop_field": dropped_fields,
    "retype_field": retyped_fields,
    "unknown_field": unknown_fields,
    "duplicate_key": duplicate_keys,
    "number_literal": number_literals,
    "deep_nesting": deep_nesting,
    "long_string": long_strings,
    "bad_string": bad_strings,
    "wrong_type": wrong_types,
    "odd_type": odd_type_names,
    "timestamp": timestamps,
    "unknown_participant": unknown_participants,
    "replay": hostile_replays,
    "replay_control": control_replays,
    "replay_cross": cross_participant_replays,
    "targeted": targeted,
    "tick": clock_ticks,
    "size_edge": size_edges,
    "correction": corrections,
}


@functools.cache
def _any_operator() -> st.SearchStrategy[Hostile]:
    return st.one_of([make() for make in OPERATORS.values()])


@st.composite
def hostile_messages(draw: st.DrawFn) -> Hostile:
    """Any hostile message, placed somewhere in the control stream, on partition 0
    (the control's) or 1."""
    message = draw(_any_operator())
    slot = draw(st.integers(0, SLOTS))
    partition = 0 if message.after >= 0 else _one(draw, [0, 1])
    return Hostile(
        message.kind,
        message.value,
        key=message.key,
        partition=partition,
        slot=slot,
        after=message.after,
        must=message.must,
        note=message.note,
    )


@dataclass(frozen=True, repr=False)
class Plan:
    """Hostile messages to interleave with the control cohort, and how to batch."""

    hostile: tuple[Hostile, ...]
    batch_size: int
    redeliver_first: bool

    def __repr__(self) -> str:
        """Runs of the same message shown once with their count (a shrunk plan keeps
        its minimum size with copies of the simplest message)."""
        lines: list[str] = []
        shown: list[tuple[str, int]] = []
        for message in self.hostile:
            text = repr(message)
            if shown and shown[-1][0] == text:
                shown[-1] = (text, shown[-1][1] + 1)
            else:
                shown.append((text, 1))
        lines.extend(f"  {count} x {text}" if count > 1 else f"  {text}" for text, count in shown)
        return (
            f"Plan(batch_size={self.batch_size}, redeliver_first={self.redeliver_first}, "
            "hostile=[\n" + ",\n".join(lines) + "])"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How hypothesis prints a falsifying example: this ``repr``."""
        printer.text(repr(self))


def plans(
    min_hostile: int = MIN_HOSTILE, max_hostile: int = MAX_HOSTILE
) -> st.SearchStrategy[Plan]:
    return st.builds(
        Plan,
        hostile=st.lists(hostile_messages(), min_size=min_hostile, max_size=max_hostile).map(tuple),
        batch_size=st.sampled_from(BATCH_SIZES),
        redeliver_first=st.booleans(),
    )


def interleave(plan: Plan) -> tuple[list[InboundMessage], list[Hostile | None]]:
    """The control stream with the hostile messages placed in it, with offsets; and
    the hostile message each inbound message is (None: a control message)."""
    control = corpus().control
    buckets: list[list[Hostile]] = [[] for _ in range(len(control) + 1)]
    for message in plan.hostile:
        position = max(message.slot * len(control) // SLOTS, message.after + 1)
        buckets[min(position, len(control))].append(message)
    placed: list[tuple[int, bytes | None, bytes | None, Hostile | None]] = [
        (0, _key(event), encode(event), None) for event in prelude_events()
    ]
    for index in range(len(control) + 1):
        placed.extend((m.partition, m.key, m.value, m) for m in buckets[index])
        if index < len(control):
            key, value = control[index]
            placed.append((0, key, value, None))
    offsets: Counter[int] = Counter()
    messages = []
    for partition, key, value, _ in placed:
        messages.append(InboundMessage(TOPIC, partition, offsets[partition], key, value, NOW))
        offsets[partition] += 1
    return messages, [origin for *_, origin in placed]


# ---------------------------------------------------------------- invariants


class InvariantViolation(AssertionError):
    """An ingest invariant did not hold (the message says which, and for what)."""


class IngestCrash(InvariantViolation):
    """``apply_batch`` raised: the worker would have stopped."""


@dataclass
class Stats:
    """What a fuzzing run did."""

    plans: int = 0
    batches: int = 0
    messages: int = 0
    hostile: int = 0
    accepted: int = 0
    rejected_by_code: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    already_applied: int = 0
    hostile_by_kind: Counter[str] = field(default_factory=Counter)
    cross_participant_replays_applied: int = 0
    crashes: int = 0
    violations: int = 0
    max_rss_bytes: int = 0
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_code.values())


def resident_bytes() -> int:
    """This process's resident set size now (``/proc/self/statm``)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return peak_resident_bytes()
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class _Expected:
    accepted_by_type: Counter[str] = field(default_factory=Counter)
    rejected: dict[tuple[int, int], str] = field(default_factory=dict)
    duplicates: int = 0
    already_applied: int = 0
    duplicate_offsets: set[tuple[int, int]] = field(default_factory=set)
    accepted_offsets: set[tuple[int, int]] = field(default_factory=set)
    not_strict_json: set[tuple[int, int]] = field(default_factory=set)


class IngestModel:
    """What the contract says each message must come to: rejected with
    ``validate_message``'s code, skipped at or below the tracked offset, ignored when
    its ``event_id`` was sent before in its trial (by anyone: contract §1), a tick
    when its id was delivered on its partition that UTC day, else accepted."""

    def __init__(self, limits: ValidationLimits) -> None:
        self.limits = limits
        self.records: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.trial_logs: dict[str, set[str]] = {}
        self.senders: dict[tuple[str, str], str] = {}
        self.ticks: set[tuple[str, int, str, str]] = set()
        self.next_offset: dict[int, int] = {}

    def expect(
        self, batch: Sequence[InboundMessage], processing_errors: set[tuple[int, int]]
    ) -> _Expected:
        expected = _Expected()
        for message in batch:
            position = (message.partition, message.offset)
            if message.offset < self.next_offset.get(message.partition, 0):
                expected.already_applied += 1
                continue
            if position in processing_errors:
                expected.rejected[position] = "processing_error"
                continue
            result = validate_message(message.value, now=NOW, limits=self.limits)
            if isinstance(result, RejectionError):
                expected.rejected[position] = result.code
                continue
            if not _is_strict_json(result.to_wire()):
                expected.not_strict_json.add(position)
            if self._apply(
                result.type, result.trial_id, result.participant_id, result, message.partition
            ):
                expected.accepted_by_type[result.type] += 1
                expected.accepted_offsets.add(position)
            else:
                expected.duplicates += 1
                expected.duplicate_offsets.add(position)
        for message in batch:
            current = self.next_offset.get(message.partition, 0)
            self.next_offset[message.partition] = max(current, message.offset + 1)
        return expected

    def _apply(
        self, type_: str, trial_id: str, participant_id: str, event: Any, partition: int
    ) -> bool:
        if type_ == "clock.ticked":
            day = event.occurred_at.astimezone(UTC).date().isoformat()
            tick = (trial_id, partition, day, event.event_id)
            if tick in self.ticks:
                return False
            self.ticks.add(tick)
            return True
        sender = self.senders.setdefault((trial_id, event.event_id), participant_id)
        if sender != participant_id:
            return False
        if participant_id == TRIAL_LEVEL_PARTICIPANT:
            seen = self.trial_logs.setdefault(trial_id, set())
            if event.event_id in seen:
                return False
            seen.add(event.event_id)
            return True
        record = self.records.setdefault((trial_id, participant_id), {})
        if event.event_id in record:
            return False
        record[event.event_id] = event.to_wire()
        return True


class FuzzRun:
    """One application fed batches, checked after each (module docstring)."""

    def __init__(self, stats: Stats, app: SafetyMonitoring | None = None) -> None:
        self.app = app or in_memory_application()
        self.stats = stats
        self.model = IngestModel(self.app.limits)
        self.ledger_versions: dict[int, int] = {}

    def apply(self, batch: Sequence[InboundMessage], sent: Sequence[Hostile | None] = ()) -> None:
        stats = self.stats
        try:
            outcome = self.app.apply_batch(batch, now=NOW)
        except Exception as error:
            stats.crashes += 1
            raise IngestCrash(
                f"apply_batch raised {type(error).__name__}: {str(error)[:300]}"
            ) from error
        stats.batches += 1
        stats.messages += len(batch)
        stats.accepted += outcome.accepted
        stats.rejected_by_code.update(outcome.rejected_by_code)
        stats.duplicates += outcome.duplicates
        stats.already_applied += outcome.already_applied
        stats.max_rss_bytes = max(stats.max_rss_bytes, resident_bytes())
        ledger = self._new_rejections(batch)
        processing = {p for p, e in ledger.items() if e.error.get("code") == "processing_error"}
        expected = self.model.expect(batch, processing)
        problems = []
        total = outcome.accepted + outcome.rejected + outcome.duplicates + outcome.already_applied
        if total != len(batch):
            problems.append(f"{total} messages accounted for in a batch of {len(batch)}")
        if processing:
            origin = dict(zip(((m.partition, m.offset) for m in batch), sent, strict=False))
            problems.extend(
                f"a valid message failed to apply (processing_error: "
                f"{ledger[p].error.get('message')}): {origin.get(p)!r}"
                for p in sorted(processing)
            )
        if outcome.accepted_by_type != expected.accepted_by_type:
            problems.append(
                f"accepted {dict(outcome.accepted_by_type)}, "
                f"expected {dict(expected.accepted_by_type)}"
            )
        if outcome.duplicates != expected.duplicates:
            problems.append(f"{outcome.duplicates} duplicates, expected {expected.duplicates}")
        if outcome.already_applied != expected.already_applied:
            problems.append(
                f"{outcome.already_applied} already applied, expected {expected.already_applied}"
            )
        # ``data`` as derived: ``to_wire`` would publish an infinity as null.
        unreadable = [
            f"{e.type} {e.data} caused by {e.caused_by}"[:600]
            for e in outcome.derived
            if not _is_strict_json(e.data)
        ]
        if unreadable:
            problems.append(f"derived events that are not interoperable JSON: {unreadable}")
        if expected.not_strict_json:
            problems.append(
                "accepted events that are not interoperable JSON (RFC 8259: finite numbers, "
                f"integers within 64 bits) at {sorted(expected.not_strict_json)}"
            )
        problems.extend(self._check_ledger(batch, ledger, expected.rejected))
        if sent:
            problems.extend(self._check_guarantees(batch, sent, expected))
        if problems:
            stats.violations += 1
            raise InvariantViolation("; ".join(problems))

    def _new_rejections(
        self, batch: Sequence[InboundMessage]
    ) -> dict[tuple[int, int], IngestLedger.MessageRejected]:
        found: dict[tuple[int, int], IngestLedger.MessageRejected] = {}
        for partition in sorted({m.partition for m in batch}):
            ledger_id = IngestLedger.id_for(TOPIC, partition)
            after = self.ledger_versions.get(partition)
            for event in self.app.events.get(ledger_id, gt=after):
                self.ledger_versions[partition] = event.originator_version
                if isinstance(event, IngestLedger.MessageRejected):
                    position = (event.partition, event.offset)
                    if position in found:
                        raise InvariantViolation(f"offset {position} rejected twice")
                    found[position] = event
        return found

    def _check_ledger(
        self,
        batch: Sequence[InboundMessage],
        ledger: Mapping[tuple[int, int], IngestLedger.MessageRejected],
        expected: Mapping[tuple[int, int], str],
    ) -> list[str]:
        problems = []
        if set(ledger) != set(expected):
            missing = sorted(set(expected) - set(ledger))
            extra = sorted(set(ledger) - set(expected))
            problems.append(f"ledger: rejected but not recorded {missing}; recorded {extra}")
        by_position = {(m.partition, m.offset): m for m in batch}
        for position in sorted(set(ledger) & set(expected)):
            problems.extend(
                f"ledger at {position}: {problem}"
                for problem in _ledger_problems(
                    ledger[position], by_position[position], expected[position]
                )
            )
        return problems

    def _check_guarantees(
        self, batch: Sequence[InboundMessage], sent: Sequence[Hostile | None], expected: _Expected
    ) -> list[str]:
        problems = []
        for message, hostile in zip(batch, sent, strict=True):
            if hostile is None:
                continue
            position = (message.partition, message.offset)
            if hostile.must == "rejected" and position not in expected.rejected:
                problems.append(f"{hostile!r} was not rejected")
            if hostile.must == "duplicate" and position not in expected.duplicate_offsets:
                problems.append(f"{hostile!r} was not ignored as a duplicate")
            if hostile.kind == "replay_cross" and position in expected.accepted_offsets:
                self.stats.cross_participant_replays_applied += 1
        return problems

    def check_records(self) -> None:
        """Each record holds, once, the first content sent under each ``event_id``."""
        for (trial_id, participant_id), wires in self.model.records.items():
            aggregate_id = participant_aggregate_id(trial_id, participant_id)
            recorded = [
                event.event
                for event in self.app.events.get(aggregate_id)
                if isinstance(event, Participant.ClinicalEventRecorded)
                and event.event["type"] != "clock.ticked"
            ]
            if recorded != list(wires.values()):
                ids = [w["event_id"] for w in recorded]
                self.stats.violations += 1
                raise InvariantViolation(
                    f"record {trial_id}/{participant_id} holds {ids[:20]}…, "
                    f"expected {list(wires)[:20]}…"
                )

    def check_control(self) -> None:
        expected = corpus().baseline
        actual = derived_by_participant(self.app, corpus().control_participants)
        if actual != expected:
            self.stats.violations += 1
            raise InvariantViolation(_difference(actual, expected))

    def check_alive(self, partition: int = 1) -> None:
        """A new valid message is still accepted after everything the run sent."""
        offset = self.model.next_offset.get(partition, 0)
        value = encode(
            envelope(
                "vitals.recorded",
                {"heart_rate_bpm": 80},
                event_id=f"alive-{offset}",
                participant_id="FZ-ALIVE",
            )
        )
        self.apply([InboundMessage(TOPIC, partition, offset, b"FZ-ALIVE", value, NOW)])


def _is_strict_json(document: Any) -> bool:
    """Whether consumers in any language can read ``document``: strict JSON
    (``json.dumps(allow_nan=False)``) that orjson (64-bit integers) also writes."""
    try:
        json.dumps(document, allow_nan=False)
        orjson.dumps(document)
    except (ValueError, TypeError):
        return False
    return True


def _ledger_problems(
    event: IngestLedger.MessageRejected, message: InboundMessage, code: str
) -> list[str]:
    problems = []
    value = None if event.value_b64 is None else base64.b64decode(event.value_b64)
    key = None if event.key_b64 is None else base64.b64decode(event.key_b64)
    if value != message.value:
        problems.append("the recorded bytes differ from the message")
    if key != message.key:
        problems.append(f"the recorded key {key!r} is not {message.key!r}")
    raw = message.value or b""
    if event.sha256 != hashlib.sha256(raw).hexdigest() or event.size != len(raw):
        problems.append("wrong SHA-256 or size")
    error = event.error
    if set(error) != {"code", "message", "field"}:
        problems.append(f"error is not {{code, message, field}}: {sorted(error)}")
    if error.get("code") != code:
        problems.append(f"code {error.get('code')!r}, expected {code!r}")
    message_text = error.get("message") or ""
    if not message_text or len(message_text) > MAX_REJECTION_MESSAGE_CHARS:
        problems.append(f"error message empty or of {len(message_text)} characters")
    field_name = error.get("field")
    if field_name is not None and len(field_name) > MAX_REJECTION_FIELD_CHARS:
        problems.append(f"error field of {len(field_name)} characters")
    return problems


def _difference(
    actual: Mapping[str, Sequence[dict[str, Any]]], expected: Mapping[str, Sequence[dict[str, Any]]]
) -> str:
    lines = ["the control cohort derived other safety events than alone:"]
    for name in sorted(set(actual) | set(expected)):
        got, want = list(actual.get(name, ())), list(expected.get(name, ()))
        if got == want:
            continue
        first = next(
            (i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w),
            min(len(got), len(want)),
        )
        lines.append(
            f"{name}: {len(got)} events, expected {len(want)}; first difference at {first}: "
            f"{got[first] if first < len(got) else None} vs "
            f"{want[first] if first < len(want) else None}"
        )
    return "\n".join(lines)


def run_plan(plan: Plan, stats: Stats) -> None:
    """Apply a plan on a fresh in-memory store and check every invariant."""
    started = time.perf_counter()
    run = FuzzRun(stats)
    messages, origins = interleave(plan)
    stats.plans += 1
    stats.hostile += len(plan.hostile)
    stats.hostile_by_kind.update(h.kind for h in plan.hostile)
    size = plan.batch_size
    try:
        for start in range(0, len(messages), size):
            batch = messages[start : start + size]
            run.apply(batch, origins[start : start + size])
            if plan.redeliver_first and start == 0:
                run.apply(batch)
        run.check_records()
        run.check_control()
        run.check_alive()
    finally:
        stats.seconds += time.perf_counter() - started


def fuzz(stats: Stats, messages: int, seed: int | None = None) -> None:
    """Run plans until at least ``messages`` hostile messages were sent (each plan
    sends at least ``MIN_HOSTILE``). Without a seed, derandomized: the same plans every
    run (the CI profile). Raises the first violation, shrunk to a minimal plan."""

    def apply(plan: Plan) -> None:
        run_plan(plan, stats)

    runner = settings(
        max_examples=max(1, -(-messages // MIN_HOSTILE)),
        derandomize=seed is None,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        print_blob=False,
    )(given(plans())(apply))
    if seed is not None:
        runner = hypothesis.seed(seed)(runner)
    runner()


# ---------------------------------------------------------------- flood


def flood_values(count: int, max_bytes: int) -> Iterator[bytes]:
    """``count`` messages from one participant: mostly over-size, near-size and deeply
    nested rejects and replays of one ``event_id`` with changing content, a few new
    valid events (each is kept: the record grows with them, by design)."""
    base = envelope(
        "vitals.recorded",
        {"heart_rate_bpm": 80},
        event_id="flood",
        participant_id=FLOOD_PARTICIPANT,
    )
    padding = max_bytes - len(encode(base)) - 64
    for n in range(count):
        kind = n % 10
        if kind == 0:
            yield encode(_set(base, ("source", "reference"), "x" * (max_bytes + 4096)))
        elif kind == 1:
            yield encode(dict(base, zz_padding="y" * padding))
        elif kind == 2:
            depth = padding // 2
            yield _splice(base, ("data", "heart_rate_bpm"), b"[" * depth + b"]" * depth)
        elif kind in (3, 4, 5):
            yield encode(_set(base, ("data", "heart_rate_bpm"), 60 + n % 100))
        elif kind == 6:
            yield encode(_set(base, ("data", "heart_rate_bpm"), 400 + n))
        elif kind == 7:
            yield b"\xff" * (n % 4096)
        elif kind == 8 and n % 100 == 8:
            yield encode(
                dict(
                    base,
                    event_id=f"flood-{n}",
                    occurred_at=(
                        datetime(2025, 2, 1, tzinfo=UTC) + timedelta(minutes=n)
                    ).isoformat(),
                )
            )
        else:
            yield encode(_set(base, ("occurred_at",), "2025-02-01T10:00:00"))


@dataclass
class FloodResult:
    messages: int
    rss_after_first_half: int
    rss_after_second_half: int
    seconds: float

    @property
    def growth(self) -> int:
        return self.rss_after_second_half - self.rss_after_first_half


def flood(app: SafetyMonitoring, stats: Stats, count: int, *, batch_size: int = 500) -> FloodResult:
    """A flood from one participant in two halves, the control cohort spread through
    the first; resident memory after each half; every invariant checked per batch."""
    started = time.perf_counter()
    run = FuzzRun(stats, app)
    values = list(flood_values(count, app.limits.max_bytes))
    first, second = values[: count // 2], values[count // 2 :]
    control = [value for _, value in corpus().control]
    step = max(1, len(first) // len(control))
    stream: list[tuple[bytes | None, bytes | None]] = []
    for index, value in enumerate(first):
        if index % step == 0 and index // step < len(control):
            stream.append(corpus().control[index // step])
        stream.append((FLOOD_PARTICIPANT.encode(), value))
    stream.extend(corpus().control[min(len(control), -(-len(first) // step)) :])
    halves = (stream, [(FLOOD_PARTICIPANT.encode(), value) for value in second])
    rss = []
    offset = 0
    for half in halves:
        messages = [
            InboundMessage(TOPIC, 0, offset + i, key, value, NOW)
            for i, (key, value) in enumerate(half)
        ]
        offset += len(messages)
        for start in range(0, len(messages), batch_size):
            run.apply(messages[start : start + batch_size])
        rss.append(resident_bytes())
    stats.hostile += count
    stats.hostile_by_kind["flood"] += count
    run.check_records()
    run.check_control()
    run.check_alive()
    return FloodResult(count, rss[0], rss[1], time.perf_counter() - started)


def sqlite_file_application(path: str) -> SafetyMonitoring:
    """The application on a SQLite file, as the worker runs it."""
    from infra.settings import Settings
    from services.bootstrap import build_application

    return build_application(Settings(store="sqlite", sqlite_file=path))
