"""A seeded, deterministic simulation of a LUCAR-G79 cohort as contract v1 clinical events.

``simulate_cohort`` returns what the trial's sources (EDC, bedside charting, the
laboratory system, a scheduler) would send, each message with the simulated wall time
at which it is sent, ready to be replayed into Kafka or written as JSONL. It is pure:
randomness comes from ``random.Random`` seeded by the spec, time from the spec's start;
the same spec gives byte-identical messages.

Per participant: enrolment and eligibility, Flu/Cy lymphodepletion on days -5..-3,
infusion on day 0 at 08:00, inpatient monitoring to day 14 (vitals every 4 h, ICE twice
daily, daily labs in week 1), then weekly labs and visits on days 21, 28, 42, 56 and 90.
Most participants have CRS (ASTCT 2019 grade 1-3, more often and more severe at DL3,
reference.md section 1), a few have ICANS (section 2); every episode resolves. A few
records are back-charted or delivered late, corrected (full replacement ``data``) or
voided. The ``occurred_at`` of a correction or a void is when it was made; it applies
to its target retroactively.

Five stories, each given to the first participant of the plan that fits it
(``_with_stories``), exercise investigator reports and committee decisions:

- ``licats_flare``: a LICATS grade 3 flare (reference section 6) with an unplanned
  readmission inside the DLT window (section 7 rule 6), reported serious, then resolved;
- ``late_susar``: an unexpected, possibly related serious AE after the DLT window, a
  SUSAR (section 10);
- ``src_confirms_crs_admission``: the safety review committee confirms that a grade 3
  CRS reported serious by hospitalisation during the protocol-mandated stay was an SAE;
- ``src_regrades_crs``: the committee regrades a grade 2 CRS episode to grade 1;
- ``src_rejects_iechs``: the committee rejects the IEC-HS screen of a grade >= 2 CRS.

Adjudications are recorded in the EDC like other investigator data (section 9).

``CohortSpec.dlt_heavy_dose`` names a dose level at which every participant has a DLT
inside the 28-day window (section 7), so that a dose-finding design sees y = n there:

- ``dlt_crs_grade_4``: the first participant at that dose has grade 4 CRS from day 2-4,
  norepinephrine and phenylephrine running together (section 1, rule 2 of section 7),
  with an ICU stay; seven days after its onset the safety review committee decides, in a
  trial-level ``committee.decided``, to resume enrolment at lower dose levels;
- ``dlt_licats``: every other participant there has a LICATS grade 3 flare (rule 6) from
  day 8-14, told as ``licats_flare`` but earlier: its unplanned admission falls inside
  the protocol-mandated stay (to day 15 or later). One who already has ``licats_flare``
  keeps it and has no second flare.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import IO, Any

from domain.contract import CLINICAL_SCHEMA, TRIAL_LEVEL_PARTICIPANT

DISEASES = ("SLE", "SSC", "AAV", "IIM", "TAK", "IGG4RD")
SITES = ("CN-001", "CN-002", "CN-003")
DOSE_LEVELS = ("DL1", "DL2", "DL3")
CELLS_PER_KG = {"DL1": 1.0e6, "DL2": 2.0e6, "DL3": 3.0e6}
VISIT_DAYS = (21, 28, 42, 56, 90)
TICK_SITE = SITES[0]

MALFORMED_KINDS = (
    "not_json",
    "wrong_schema",
    "unknown_type",
    "missing_field",
    "unknown_field",
    "wrong_unit",
    "implausible_temperature",
    "negative_count",
    "future_occurred_at",
    "oversized",
    "wrong_types",
    "empty_body",
    "bad_timestamp",
    "trial_level_with_participant",
)
#: Over the worker's 256 KiB limit, under Kafka's default 1 MiB message size.
OVERSIZED_BYTES = 300 * 1024
_KEYLESS = frozenset({"not_json", "empty_body"})


@dataclass(frozen=True)
class SimulatedMessage:
    """One message as a source sends it, at simulated wall time ``deliver_at``."""

    key: bytes | None
    value: bytes
    deliver_at: datetime
    kind: str


@dataclass(frozen=True)
class CohortSpec:
    """What to simulate. ``start`` is the first enrolment and must carry a UTC offset.

    ``dlt_heavy_dose``: a dose level (``DOSE_LEVELS``) at which every participant has a
    DLT (module docstring); None leaves the cohort as drawn.
    """

    seed: int = 79
    participants: int = 42
    start: datetime = datetime(2025, 1, 6, 8, 0, tzinfo=timezone(timedelta(hours=8)))
    trial_id: str = "NCT07049081"
    follow_up_days: int = 90
    malformed: bool = True
    tick_every: timedelta | None = timedelta(hours=1)
    dlt_heavy_dose: str | None = None


# ---------------------------------------------------------------- public API


def simulate_cohort(spec: CohortSpec = CohortSpec()) -> list[SimulatedMessage]:
    """All messages of the simulated cohort, sorted by ``deliver_at`` (stable)."""
    _check_spec(spec)
    rng = random.Random(spec.seed)
    tag = f"{rng.getrandbits(32):08x}"
    plans = _plan_cohort(spec, rng)
    if spec.dlt_heavy_dose is not None:
        plans = _with_dlt_heavy_dose(plans, spec.dlt_heavy_dose, spec.seed)
    plans = _with_stories(plans)
    messages: list[SimulatedMessage] = []
    for plan in plans:
        course = _Course(plan, spec, tag)
        events = course.build()
        horizon = _midnight(plan.infusion_at) + timedelta(days=spec.follow_up_days + 1)
        messages.extend(_message(spec.trial_id, plan, e) for e in _before(events, horizon))
        if "dlt_crs_grade_4" in plan.stories and course.crs_onset is not None:
            decision = _src_resumes_enrolment(spec, tag, plan.dose_level, course.crs_onset)
            if decision.deliver_at < horizon:
                messages.append(decision)
    if spec.malformed:
        for index in sorted({0, len(plans) // 2, len(plans) - 1}):
            plan = plans[index]
            at = plan.infusion_at + timedelta(
                days=rng.randint(1, min(10, spec.follow_up_days)), minutes=rng.randint(0, 1439)
            )
            messages.extend(
                malformed_examples(spec.trial_id, plan.participant_id, at, site_id=plan.site_id)
            )
    if spec.tick_every is not None:
        until = max(m.deliver_at for m in messages)
        messages.extend(_ticks(spec.trial_id, spec.start, spec.tick_every, until))
    messages.sort(key=lambda m: m.deliver_at)
    return messages


def malformed_examples(
    trial_id: str, participant_id: str, at: datetime, *, site_id: str = SITES[0]
) -> list[SimulatedMessage]:
    """One message of each kind in ``MALFORMED_KINDS``, all sent at ``at``.

    Each fails ``CLINICAL_EVENT_ADAPTER.validate_json`` with ``context={"now": at}``
    (``future_occurred_at`` only with that context), or is not JSON, or is empty.
    """
    stamp = at.strftime("%Y%m%dT%H%M%S")

    def event(kind: str, **changes: Any) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "schema": CLINICAL_SCHEMA,
            "event_id": f"bad-{kind}-{participant_id}-{stamp}",
            "type": "vitals.recorded",
            "trial_id": trial_id,
            "site_id": site_id,
            "participant_id": participant_id,
            "occurred_at": at.isoformat(),
            "reported_at": at.isoformat(),
            "source": {"system": "bedside", "reference": "monitor-99"},
            "data": {"temperature_c": 38.4, "temperature_route": "oral", "heart_rate_bpm": 104},
        }
        obj.update(changes)
        return obj

    def lab(analyte: str, value: Any, unit: str) -> dict[str, Any]:
        return {"type": "lab.resulted", "data": {"analyte": analyte, "value": value, "unit": unit}}

    missing = event("missing_field")
    del missing["occurred_at"]
    future = at.replace(year=2099, day=min(at.day, 28)).isoformat()
    truncated = _encode(event("not_json"))[:-9]
    oversized_source = {"system": "bedside", "reference": "x" * OVERSIZED_BYTES}
    bodies: list[tuple[str, bytes]] = [
        ("not_json", truncated),
        ("wrong_schema", _encode(event("wrong_schema", schema="toxwatch.clinical.v0"))),
        ("unknown_type", _encode(event("unknown_type", type="vitals.measured"))),
        ("missing_field", _encode(missing)),
        (
            "unknown_field",
            _encode(event("unknown_field", data={"temperature_f": 101.1, "heart_rate_bpm": 104})),
        ),
        ("wrong_unit", _encode(event("wrong_unit", **lab("creatinine", 88, "U/L")))),
        (
            "implausible_temperature",
            _encode(event("implausible_temperature", data={"temperature_c": 80})),
        ),
        ("negative_count", _encode(event("negative_count", **lab("anc", -1.2, "10*9/L")))),
        (
            "future_occurred_at",
            _encode(event("future_occurred_at", occurred_at=future, reported_at=future)),
        ),
        ("oversized", _encode(event("oversized", source=oversized_source))),
        ("wrong_types", _encode(event("wrong_types", data={"temperature_c": "38.4"}))),
        ("empty_body", b""),
        (
            "bad_timestamp",
            _encode(event("bad_timestamp", occurred_at=at.replace(tzinfo=None).isoformat())),
        ),
        (
            "trial_level_with_participant",
            _encode(event("trial_level_with_participant", type="clock.ticked", data={})),
        ),
    ]
    key = participant_id.encode()
    return [
        SimulatedMessage(None if kind in _KEYLESS else key, value, at, kind)
        for kind, value in bodies
    ]


def write_jsonl(
    messages: Iterable[SimulatedMessage], path_or_file: str | os.PathLike[str] | IO[Any]
) -> None:
    """Write one message value per line, malformed ones included.

    Values are written as sent, except that line breaks inside a value become spaces so
    every message stays on one line. ``path_or_file`` is a path or an open binary or
    text file.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "wb") as handle:
            _write_lines(messages, handle)
    else:
        _write_lines(messages, path_or_file)


# ---------------------------------------------------------------- cohort plan


@dataclass(frozen=True)
class _Plan:
    number: int
    participant_id: str
    site_id: str
    disease: str
    dose_level: str
    enrolled_at: datetime
    infusion_at: datetime
    crs_grade: int
    crs_path: str
    crs_onset_day: int
    icans: bool
    extras: frozenset[str]
    stories: frozenset[str] = frozenset()


#: Per dose level: P(CRS), P(grade 3 | CRS), P(grade 2 | CRS).
_CRS_RISK = {"DL1": (0.70, 0.00, 0.15), "DL2": (0.80, 0.06, 0.25), "DL3": (0.90, 0.20, 0.30)}
_GRADE_3_RANGE = (2, 4)
_DATA_QUALITY = (
    ("typo_vitals", 2),
    ("platelet_clump", 1),
    ("wrong_chart", 1),
    ("duplicate_med", 1),
    ("late_vitals", 2),
    ("lis_outage", 1),
)


def _check_spec(spec: CohortSpec) -> None:
    if spec.participants < 1:
        raise ValueError("participants must be at least 1")
    if spec.follow_up_days < 1:
        raise ValueError("follow_up_days must be at least 1")
    if spec.start.tzinfo is None or spec.start.utcoffset() is None:
        raise ValueError("start must carry a UTC offset")
    if spec.tick_every is not None and spec.tick_every <= timedelta(0):
        raise ValueError("tick_every must be positive")
    if spec.dlt_heavy_dose is not None and spec.dlt_heavy_dose not in DOSE_LEVELS:
        raise ValueError(f"dlt_heavy_dose must be one of {', '.join(DOSE_LEVELS)}")


def _plan_cohort(spec: CohortSpec, rng: random.Random) -> list[_Plan]:
    n = spec.participants
    diseases = [DISEASES[i % len(DISEASES)] for i in range(n)]
    rng.shuffle(diseases)
    sites = [SITES[i % len(SITES)] for i in range(n)]
    rng.shuffle(sites)
    dose_levels = _dose_levels(n, rng)
    enrolled = _enrolment_times(spec.start, n, rng)
    infusions = [
        (e + timedelta(days=rng.randint(12, 15))).replace(hour=8, minute=0, second=0, microsecond=0)
        for e in enrolled
    ]
    grades, severity = _crs_grades(dose_levels, rng)
    paths = _crs_paths(grades, rng)
    onset_days = [rng.randint(1, 3) if g >= 2 else rng.randint(1, 4) for g in grades]
    icans = _icans_participants(grades, severity, rng)
    extras = _data_quality_extras(grades, paths, rng)
    return [
        _Plan(
            number=i + 1,
            participant_id=f"G79-{i + 1:03d}",
            site_id=sites[i],
            disease=diseases[i],
            dose_level=dose_levels[i],
            enrolled_at=enrolled[i],
            infusion_at=infusions[i],
            crs_grade=grades[i],
            crs_path=paths[i],
            crs_onset_day=onset_days[i],
            icans=i in icans,
            extras=frozenset(extras[i]),
        )
        for i in range(n)
    ]


def _dose_levels(n: int, rng: random.Random) -> list[str]:
    """Cohorts of three: DL1, DL2, DL3 in turn, then expansion cohorts spread over all."""
    cohorts = -(-n // 3)
    expansion = [DOSE_LEVELS[(2 - i) % 3] for i in range(max(0, cohorts - 3))]
    rng.shuffle(expansion)
    order = list(DOSE_LEVELS[:cohorts]) + expansion
    return [order[i // 3] for i in range(n)]


def _enrolment_times(start: datetime, n: int, rng: random.Random) -> list[datetime]:
    times, day = [start], 0
    for _ in range(1, n):
        day += rng.randint(5, 10)
        times.append(start + timedelta(days=day, minutes=5 * rng.randint(0, 96)))
    return times


def _crs_grades(dose_levels: list[str], rng: random.Random) -> tuple[list[int], list[float]]:
    grades, severity = [], []
    for level in dose_levels:
        p_crs, p3, p2 = _CRS_RISK[level]
        u, v = rng.random(), rng.random()
        grades.append(0 if u >= p_crs else 3 if v < p3 else 2 if v < p3 + p2 else 1)
        severity.append(DOSE_LEVELS.index(level) + 1.0 - v)
    if len(dose_levels) >= 9:
        low, high = _GRADE_3_RANGE
        ranked = sorted((i for i, g in enumerate(grades) if g), key=lambda i: -severity[i])
        while sum(g == 3 for g in grades) < low and any(grades[i] < 3 for i in ranked):
            grades[next(i for i in ranked if grades[i] < 3)] = 3
        while sum(g == 3 for g in grades) > high:
            grades[next(i for i in reversed(ranked) if grades[i] == 3)] = 2
    return grades, severity


def _crs_paths(grades: list[int], rng: random.Random) -> list[str]:
    """Grade 2/3 escalation routes, alternating so each cohort has both kinds."""
    routes = {1: ("fever", "fever"), 2: ("hypotension", "hypoxia"), 3: ("vasopressor", "high_flow")}
    turn = {2: rng.randint(0, 1), 3: rng.randint(0, 1)}
    paths = []
    for grade in grades:
        if grade in turn:
            paths.append(routes[grade][turn[grade] % 2])
            turn[grade] += 1
        else:
            paths.append(routes[1][0] if grade == 1 else "none")
    return paths


def _icans_participants(grades: list[int], severity: list[float], rng: random.Random) -> set[int]:
    with_crs = [i for i, g in enumerate(grades) if g]
    count = min(rng.randint(2, 4), len(with_crs))
    risk = {i: grades[i] + severity[i] + 2 * rng.random() for i in with_crs}
    return set(sorted(with_crs, key=lambda i: -risk[i])[:count])


def _with_stories(plans: list[_Plan]) -> list[_Plan]:
    """Give each story of the module docstring to the first participant that fits it.

    Chosen from the plan alone, without random draws, so no other data change. Where
    two conditions are given, the first is preferred: the committee confirms a stay
    prolonged by vasopressors, the LICATS flare is a lupus flare.
    """

    def first(*fits: Callable[[_Plan], bool], besides: Iterable[str | None] = ()) -> str | None:
        excluded = set(besides)
        for condition in fits:
            for plan in plans:
                if plan.participant_id not in excluded and condition(plan):
                    return plan.participant_id
        return None

    chosen = {
        "src_confirms_crs_admission": first(
            lambda p: p.crs_grade == 3 and p.crs_path == "vasopressor", lambda p: p.crs_grade == 3
        ),
        "src_regrades_crs": first(lambda p: p.crs_grade == 2),
        "src_rejects_iechs": first(lambda p: p.crs_grade >= 2),
        "licats_flare": first(
            lambda p: p.crs_grade <= 2 and p.disease == "SLE", lambda p: p.crs_grade <= 2
        ),
    }
    chosen["late_susar"] = first(lambda p: True, besides=chosen.values())
    return [
        replace(
            plan,
            stories=plan.stories
            | frozenset(s for s, who in chosen.items() if who == plan.participant_id),
        )
        for plan in plans
    ]


#: Study days on which the grade 4 CRS of ``dlt_crs_grade_4`` starts, and the LICATS
#: flare of ``dlt_licats`` (median onset day 10, reference section 6).
_DLT_CRS_ONSET_DAYS = (2, 4)
_DLT_LICATS_DAYS = (8, 14)
#: The committee meets on the seventh day after the grade 4 CRS onset, at this hour.
_SRC_DAYS_AFTER_ONSET = 7
_SRC_MEETING_HOUR = 16


def _with_dlt_heavy_dose(plans: list[_Plan], dose_level: str, seed: int) -> list[_Plan]:
    """Give every participant at ``dose_level`` a DLT story (module docstring).

    The first by enrolment has grade 4 CRS whatever grade was drawn; its onset day comes
    from a generator of its own, so the cohort's draws are unchanged.
    """
    at_dose = [plan for plan in plans if plan.dose_level == dose_level]
    if not at_dose:
        return plans
    first = at_dose[0].participant_id
    onset_day = random.Random(f"{seed}:dlt:{dose_level}").randint(*_DLT_CRS_ONSET_DAYS)
    return [
        replace(
            plan,
            crs_grade=4,
            crs_path="multiple_vasopressors",
            crs_onset_day=onset_day,
            stories=plan.stories | {"dlt_crs_grade_4"},
        )
        if plan.participant_id == first
        else replace(plan, stories=plan.stories | {"dlt_licats"})
        if plan.dose_level == dose_level
        else plan
        for plan in plans
    ]


def _data_quality_extras(grades: list[int], paths: list[str], rng: random.Random) -> list[set[str]]:
    n = len(grades)
    extras: list[set[str]] = [set() for _ in range(n)]
    escalated = [i for i in range(n) if grades[i] >= 2]
    rng.shuffle(escalated)
    escalated.sort(key=lambda i: paths[i] not in ("hypoxia", "high_flow"))
    for i in escalated[:2]:
        extras[i].add("backchart")
    for name, count in _DATA_QUALITY:
        for i in rng.sample(range(n), min(count, n)):
            extras[i].add(name)
    return extras


# ---------------------------------------------------------------- clinical profiles


@dataclass(frozen=True)
class _DiseaseProfile:
    female: float
    age: tuple[int, int]
    instrument: str
    criterion: str
    baseline: tuple[int, int]
    marker: str
    higher_is_worse: bool = True


_DISEASE_PROFILES = {
    "SLE": _DiseaseProfile(0.9, (18, 50), "SLEDAI-2K", "sledai_2k", (8, 20), "anti_dsdna_positive"),
    "SSC": _DiseaseProfile(0.8, (25, 65), "MRSS", "mrss", (15, 35), "anti_scl70_positive"),
    "AAV": _DiseaseProfile(0.5, (30, 70), "BVAS-V3", "bvas_v3", (12, 24), "anca_positive"),
    "IIM": _DiseaseProfile(
        0.65, (25, 65), "MMT-8", "mmt8", (80, 120), "msa_positive", higher_is_worse=False
    ),
    "TAK": _DiseaseProfile(0.85, (18, 45), "ITAS2010", "itas2010", (6, 16), "active_on_imaging"),
    "IGG4RD": _DiseaseProfile(
        0.35, (35, 70), "IGG4-RD-RI", "igg4_rd_ri", (9, 18), "elevated_serum_igg4"
    ),
}
_TEMPERATURE_ROUTE = {"CN-001": "tympanic", "CN-002": "oral", "CN-003": "axillary"}
_ICE_STYLE = {"CN-001": "score", "CN-002": "items", "CN-003": "both"}
_FULL_ICE = {"orientation": 4, "naming": 3, "commands": 1, "writing": 1, "attention": 1}
_FEVER_PEAK = {1: (38.3, 39.3), 2: (38.6, 39.8), 3: (39.0, 40.3), 4: (39.4, 40.6)}
_VITAL_HOURS = (2, 6, 10, 14, 18, 22)
_ICE_HOURS = (9, 21)

_LAB_UNITS = {
    "wbc": "10*9/L",
    "anc": "10*9/L",
    "alc": "10*9/L",
    "platelets": "10*9/L",
    "hemoglobin": "g/dL",
    "crp": "mg/L",
    "ferritin": "ng/mL",
    "il6": "pg/mL",
    "alt": "U/L",
    "ast": "U/L",
    "creatinine": "umol/L",
    "bilirubin_total": "umol/L",
    "ldh": "U/L",
    "cd19_b_cells": "/uL",
    "igg": "g/L",
}
_LOINC = {
    "wbc": "6690-2",
    "anc": "751-8",
    "alc": "731-0",
    "platelets": "777-3",
    "hemoglobin": "718-7",
    "crp": "1988-5",
    "ferritin": "2276-4",
    "il6": "26881-3",
    "alt": "1742-6",
    "ast": "1920-8",
    "creatinine": "14682-9",
    "bilirubin_total": "14631-6",
    "ldh": "2532-0",
    "igg": "2465-3",
}
_REFERENCE: dict[str, tuple[float, float] | dict[str, tuple[float, float]]] = {
    "wbc": (3.5, 9.5),
    "anc": (1.8, 6.3),
    "alc": (1.1, 3.2),
    "platelets": (125, 350),
    "hemoglobin": {"F": (11.5, 15.0), "M": (13.0, 17.5)},
    "crp": (0, 5),
    "ferritin": {"F": (15, 150), "M": (30, 400)},
    "il6": (0, 7),
    "alt": {"F": (7, 40), "M": (9, 50)},
    "ast": {"F": (13, 35), "M": (15, 40)},
    "creatinine": {"F": (41, 73), "M": (57, 111)},
    "bilirubin_total": (3.4, 20.5),
    "ldh": (120, 250),
    "cd19_b_cells": (90, 560),
    "igg": (7.0, 16.0),
}
_DECIMALS = {
    "wbc": 2,
    "anc": 2,
    "alc": 2,
    "platelets": 0,
    "hemoglobin": 1,
    "crp": 1,
    "ferritin": 0,
    "il6": 1,
    "alt": 0,
    "ast": 0,
    "creatinine": 0,
    "bilirubin_total": 1,
    "ldh": 0,
    "cd19_b_cells": 1,
    "igg": 1,
}
_CBC = ("wbc", "anc", "alc", "platelets", "hemoglobin")
_CHEMISTRY = ("crp", "ferritin", "alt", "ast", "creatinine", "bilirubin_total", "ldh")
_FOLLOW_UP_CHEMISTRY = ("crp", "alt", "creatinine")
_CD19_DAYS = frozenset({-6, 7, 14, 28, 56, 90})
_IGG_DAYS = frozenset({-6, 28, 90})
_PK_DAYS = (7, 14, 28, 90)
#: Peak of CRP (mg/L), ferritin (ng/mL), IL-6 (pg/mL) and the relative ALT rise by CRS grade.
_INFLAMMATION = {
    1: {"crp": (25, 80), "ferritin": (150, 800), "il6": (15, 80), "alt": (0.2, 0.7)},
    2: {"crp": (70, 160), "ferritin": (500, 2000), "il6": (60, 400), "alt": (0.6, 1.5)},
    3: {"crp": (140, 260), "ferritin": (1500, 5000), "il6": (300, 2000), "alt": (1.2, 2.6)},
    4: {"crp": (220, 340), "ferritin": (4000, 12000), "il6": (1500, 8000), "alt": (2.0, 4.0)},
}


# ---------------------------------------------------------------- one participant


@dataclass(frozen=True)
class _Event:
    event_id: str
    type: str
    occurred_at: datetime
    reported_at: datetime
    deliver_at: datetime
    data: dict[str, Any]
    source: dict[str, str]
    recorded_by: str | None


@dataclass(frozen=True)
class _Baseline:
    temperature_c: float
    sbp: int
    dbp: int
    hr: int
    rr: int
    spo2: int


Interval = tuple[datetime, datetime]


class _Course:
    """One participant's course, from enrolment to the end of follow-up."""

    def __init__(self, plan: _Plan, spec: CohortSpec, tag: str) -> None:
        self.plan = plan
        self.tag = tag
        self.rng = rng = random.Random(f"{spec.seed}:{plan.participant_id}")
        self.day0 = plan.infusion_at
        self.midnight0 = _midnight(plan.infusion_at)
        self.events: list[_Event] = []
        self._seq = 0
        profile = _DISEASE_PROFILES[plan.disease]
        self.profile = profile
        self.baseline_score = rng.randint(*profile.baseline)
        self.sex = "F" if rng.random() < profile.female else "M"
        self.age = rng.randint(*profile.age)
        low, high = (45.0, 72.0) if self.sex == "F" else (58.0, 92.0)
        self.weight_kg = round(rng.uniform(low, high), 1)
        self.bed = rng.randint(1, 24)
        self.route = _TEMPERATURE_ROUTE.get(plan.site_id, "oral")
        self.site_code = plan.site_id.lower().replace("-", "")
        self.base = _Baseline(
            temperature_c=rng.uniform(36.4, 36.9),
            sbp=rng.randint(108, 132),
            dbp=rng.randint(64, 80),
            hr=rng.randint(64, 84),
            rr=rng.randint(13, 16),
            spo2=rng.randint(96, 98),
        )
        self.fevers: list[tuple[datetime, datetime, float]] = []
        self.oxygen: list[Interval] = []
        self.pressors: list[Interval] = []
        self.soft_bp: list[Interval] = []
        self.crs_onset: datetime | None = None
        self.crs_end: datetime | None = None
        self.tocilizumab_at: datetime | None = None
        self.icans_window: Interval | None = None
        self.premedication: _Event | None = None
        self.serious_crs_report: tuple[str, datetime] | None = None
        self.discharge_at: datetime | None = None
        self.ae_count = 0

    def build(self) -> list[_Event]:
        self._enrolment()
        self._lymphodepletion_and_infusion()
        self._crs()
        self._icans()
        self._routine_vitals()
        self._routine_neuro()
        self._labs()
        self._pharmacokinetics()
        self._visits()
        self._charting_errors()
        self._stories()
        return self.events

    # -- primitives

    def at(self, day: int, hour: int, minute: int = 0) -> datetime:
        return self.midnight0 + timedelta(days=day, hours=hour, minutes=minute)

    def minutes(self, low: int, high: int) -> timedelta:
        return timedelta(seconds=60 * self.rng.randint(low, high))

    def hours(self, low: float, high: float) -> timedelta:
        return timedelta(minutes=self.rng.randint(int(low * 60), int(high * 60)))

    def emit(
        self,
        type_: str,
        occurred_at: datetime,
        data: dict[str, Any],
        *,
        system: str,
        reference: str,
        report_after: timedelta,
        deliver_after: timedelta | None = None,
        recorded_by: str | None = None,
    ) -> str:
        self._seq += 1
        event_id = f"{system}-{self.tag}-{self.plan.number:03d}-{self._seq:04d}"
        reported_at = occurred_at + report_after
        if deliver_after is None:
            deliver_after = timedelta(seconds=self.rng.randint(1, 20))
        self.events.append(
            _Event(
                event_id,
                type_,
                occurred_at,
                reported_at,
                reported_at + deliver_after,
                data,
                {"system": system, "reference": reference},
                recorded_by,
            )
        )
        return event_id

    def edc(self, type_: str, occurred_at: datetime, data: dict[str, Any], form: str) -> str:
        return self.emit(
            type_,
            occurred_at,
            data,
            system="edc",
            reference=f"{self.plan.participant_id}/{form}",
            report_after=self.minutes(10, 240),
            recorded_by=f"crc-{self.site_code}-01",
        )

    def nurse(self) -> str:
        return f"rn-{self.site_code}-{self.rng.randint(1, 8):02d}"

    # -- enrolment to infusion

    def _enrolment(self) -> None:
        plan, rng, profile = self.plan, self.rng, self.profile
        eligibility = {
            profile.criterion: self.baseline_score,
            profile.marker: True,
            "refractory_to_standard_therapy": True,
        }
        self.edc(
            "participant.enrolled",
            plan.enrolled_at,
            {
                "disease": plan.disease,
                "dose_level": plan.dose_level,
                "age_years": self.age,
                "sex": self.sex,
                "weight_kg": self.weight_kg,
                "eligibility": eligibility,
            },
            "ENR",
        )
        self._disease_assessment(plan.enrolled_at + self.minutes(30, 120), "screening")
        confirmed = (plan.enrolled_at + timedelta(days=rng.randint(1, 3))).replace(
            hour=rng.randint(10, 16), minute=5 * rng.randint(0, 11)
        )
        self.edc(
            "eligibility.confirmed",
            confirmed,
            {
                "confirmed_by": f"pi-{self.site_code}",
                "criteria": {"inclusion_criteria_met": True, "exclusion_criteria_met": False},
            },
            "ELIG",
        )

    def _lymphodepletion_and_infusion(self) -> None:
        plan, rng = self.plan, self.rng
        for day in (-5, -4, -3):
            for agent, dose, hour in (("fludarabine", 25, 9), ("cyclophosphamide", 250, 10)):
                self.edc(
                    "lymphodepletion.administered",
                    self.at(day, hour, 5 * rng.randint(0, 6)),
                    {"agent": agent, "dose_mg_m2": dose},
                    f"LD{-day}",
                )
        self.edc(
            "encounter.changed",
            self.at(-1, 15, 5 * rng.randint(0, 11)),
            {"kind": "admission", "planned": True},
            "ADM",
        )
        premed_at = self.at(0, 7, 30)
        self.medication(premed_at, "paracetamol", "antipyretic", 1000, "mg", "oral")
        self.premedication = self.events[-1]
        self.medication(premed_at, "diphenhydramine", "other", 25, "mg", "IV")
        self.edc(
            "infusion.administered",
            self.day0,
            {
                "dose_level": plan.dose_level,
                "cells_per_kg": CELLS_PER_KG.get(plan.dose_level, 1.0e6),
                "product_lot": f"G79-{self.day0:%y}{plan.number:03d}-{rng.randint(1, 9)}",
            },
            "INF",
        )

    # -- interventions

    def medication(
        self, at: datetime, drug: str, drug_class: str, dose: float, unit: str, route: str
    ) -> str:
        return self.emit(
            "medication.administered",
            at,
            {
                "drug": drug,
                "drug_class": drug_class,
                "dose": dose,
                "dose_unit": unit,
                "route": route,
            },
            system="bedside",
            reference="emar",
            report_after=self.minutes(1, 8),
            recorded_by=self.nurse(),
        )

    def bedside(
        self, type_: str, at: datetime, data: dict[str, Any], reference: str, *, late: bool = False
    ) -> str:
        delay = self.hours(3, 6) if late else self.minutes(2, 15)
        return self.emit(
            type_,
            at,
            data,
            system="bedside",
            reference=reference,
            report_after=delay,
            recorded_by=self.nurse(),
        )

    def oxygen_change(self, at: datetime, data: dict[str, Any], *, late: bool = False) -> str:
        return self.bedside("oxygen.changed", at, data, "resp-chart", late=late)

    def extra_vitals(self, at: datetime, **override: float) -> str:
        return self.emit(
            "vitals.recorded",
            at,
            self.vital_signs(at, **override),
            system="bedside",
            reference=f"monitor-{self.bed:02d}",
            report_after=self.minutes(1, 5),
        )

    def tocilizumab(self, at: datetime) -> None:
        self.tocilizumab_at = at
        dose = min(800, round(8 * self.weight_kg))
        self.medication(at, "tocilizumab", "anti_il6", dose, "mg", "IV")

    def dexamethasone(self, at: datetime) -> None:
        self.medication(at, "dexamethasone", "corticosteroid", 10, "mg", "IV")

    def vasopressor(self, drug: str, at: datetime, action: str, dose: float | None) -> None:
        data: dict[str, Any] = {"drug": drug, "action": action}
        if dose is not None:
            data |= {"dose": dose, "dose_unit": "ug/kg/min"}
        self.bedside("vasopressor.changed", at, data, "infusion-pump")

    def icu(self, kind: str, at: datetime) -> None:
        self.edc("encounter.changed", at, {"kind": kind, "planned": False}, "ICU")

    def unplanned_stay(self, kind: str, at: datetime) -> None:
        """An admission or discharge the protocol did not mandate (contract ``planned``)."""
        form = {"admission": "READM", "discharge": "READM/DIS"}[kind]
        self.edc("encounter.changed", at, {"kind": kind, "planned": False}, form)

    # -- CRS (reference section 1)

    def _crs(self) -> None:
        plan, rng = self.plan, self.rng
        if plan.crs_grade == 0:
            return
        onset = self.at(plan.crs_onset_day, rng.randint(0, 23), 5 * rng.randint(0, 11))
        self.crs_onset = onset
        peak = rng.uniform(*_FEVER_PEAK[plan.crs_grade])
        if plan.crs_grade == 1:
            fever_end = onset + self.hours(12, 54)
            self.fevers.append((onset, fever_end, peak))
            self.extra_vitals(onset)
            self._antipyretics(onset, fever_end)
            self._crs_finished(onset, fever_end, 1, None)
            return
        escalation = onset + self.hours(4, 18)
        toci = escalation + self.minutes(30, 60)
        fever_end = toci + (self.hours(3, 10) if plan.crs_grade == 2 else self.hours(6, 14))
        self.fevers.append((onset, fever_end, peak))
        self.extra_vitals(onset)
        self._antipyretics(onset, escalation)
        self.tocilizumab(toci)
        late = "backchart" in plan.extras
        route = {
            "hypotension": self._hypotension_fluids,
            "hypoxia": self._hypoxia_low_flow,
            "vasopressor": self._hypotension_vasopressor,
            "high_flow": self._hypoxia_high_flow,
            "multiple_vasopressors": self._hypotension_two_vasopressors,
        }[plan.crs_path]
        support_end, grade_3_at = route(escalation, late)
        self._crs_finished(onset, max(fever_end, support_end), plan.crs_grade, grade_3_at)

    def _antipyretics(self, start: datetime, until: datetime) -> None:
        at = start + self.minutes(15, 30)
        for _ in range(4):
            if at >= until:
                break
            self.medication(at, "paracetamol", "antipyretic", 1000, "mg", "oral")
            at += self.hours(6, 8)

    def _hypotension_fluids(self, at: datetime, late: bool) -> tuple[datetime, None]:
        rng = self.rng
        settled = at + self.hours(8, 16)
        self.soft_bp.append((at, settled))
        self.extra_vitals(
            at,
            systolic_bp_mmhg=rng.randint(78, 88),
            diastolic_bp_mmhg=rng.randint(42, 54),
            heart_rate_bpm=rng.randint(112, 128),
        )
        self.bedside(
            "fluid.bolus",
            at + timedelta(minutes=10),
            {"volume_ml": rng.choice((500, 1000)), "indication": "hypotension"},
            "fluid-chart",
            late=late,
        )
        self.extra_vitals(at + timedelta(minutes=70))
        return settled, None

    def _hypoxia_low_flow(self, at: datetime, late: bool) -> tuple[datetime, None]:
        rng = self.rng
        on, off = at + timedelta(minutes=5), at + self.hours(18, 42)
        self.oxygen.append((on, off))
        self.extra_vitals(
            at, spo2_pct=rng.randint(88, 91), respiratory_rate_per_min=rng.randint(22, 28)
        )
        flow = rng.choice((2, 3, 4))
        self.oxygen_change(
            on, {"device": "nasal_cannula", "flow_l_min": flow, "reason": "hypoxia"}, late=late
        )
        self.extra_vitals(at + timedelta(minutes=60))
        self.oxygen_change(off, {"device": "room_air"})
        self.extra_vitals(off + timedelta(minutes=60))
        return off, None

    def _fluids_for_hypotension(
        self,
        at: datetime,
        late: bool,
        *,
        sbp: tuple[int, int],
        dbp: tuple[int, int],
        hr: tuple[int, int],
    ) -> None:
        """Two hypotensive readings, each followed by a bolus (1000 then 500 mL)."""
        rng = self.rng
        for offset, late_bolus in ((0, late), (70, False)):
            self.extra_vitals(
                at + timedelta(minutes=offset),
                systolic_bp_mmhg=rng.randint(*sbp),
                diastolic_bp_mmhg=rng.randint(*dbp),
                heart_rate_bpm=rng.randint(*hr),
            )
            self.bedside(
                "fluid.bolus",
                at + timedelta(minutes=offset + 10),
                {"volume_ml": 1000 if offset == 0 else 500, "indication": "hypotension"},
                "fluid-chart",
                late=late_bolus,
            )

    def _hypotension_vasopressor(self, at: datetime, late: bool) -> tuple[datetime, datetime]:
        rng = self.rng
        start = at + timedelta(hours=2)
        stop = start + self.hours(10, 40)
        settled = stop + self.hours(6, 10)
        self.pressors.append((start, stop))
        self.soft_bp.append((at, start))
        self.soft_bp.append((stop, settled))
        self._fluids_for_hypotension(at, late, sbp=(76, 86), dbp=(40, 50), hr=(118, 135))

        def norepinephrine(when: datetime, action: str, dose: float | None) -> None:
            self.vasopressor("norepinephrine", when, action, dose)

        norepinephrine(start, "start", rng.choice((0.05, 0.06, 0.08)))
        norepinephrine(start + self.hours(2, 4), "rate_change", rng.choice((0.1, 0.12, 0.15)))
        norepinephrine(stop - self.hours(3, 5), "rate_change", rng.choice((0.03, 0.04, 0.05)))
        norepinephrine(stop, "stop", None)
        self.icu("icu_admission", start + timedelta(minutes=15))
        self.dexamethasone(start + timedelta(minutes=30))
        check = start + timedelta(hours=1)
        while check < stop:
            self.extra_vitals(check)
            check += timedelta(hours=2)
        self.extra_vitals(stop + timedelta(minutes=60))
        self.icu("icu_discharge", stop + self.hours(12, 24))
        return settled, start

    def _hypotension_two_vasopressors(self, at: datetime, late: bool) -> tuple[datetime, datetime]:
        """Grade 4 hypotension (reference section 1): phenylephrine added to norepinephrine,
        both running for hours, then weaned one after the other, with an ICU stay."""
        rng = self.rng
        start = at + timedelta(hours=2)
        added = start + self.hours(1, 3)
        added_stop = added + self.hours(6, 10)
        stop = added_stop + self.hours(8, 16)
        settled = stop + self.hours(6, 10)
        self.pressors.append((start, stop))
        self.soft_bp.append((at, start))
        self.soft_bp.append((stop, settled))
        self._fluids_for_hypotension(at, late, sbp=(72, 84), dbp=(38, 48), hr=(122, 140))
        self.vasopressor("norepinephrine", start, "start", rng.choice((0.08, 0.1, 0.12)))
        self.icu("icu_admission", start + timedelta(minutes=15))
        for k in range(4):
            self.dexamethasone(start + timedelta(hours=6 * k, minutes=30))
        self.vasopressor("norepinephrine", added - timedelta(minutes=40), "rate_change", 0.25)
        self.extra_vitals(
            added - timedelta(minutes=10),
            systolic_bp_mmhg=rng.randint(74, 84),
            diastolic_bp_mmhg=rng.randint(38, 46),
            heart_rate_bpm=rng.randint(124, 142),
        )
        self.vasopressor("phenylephrine", added, "start", rng.choice((0.5, 0.75, 1.0)))
        self.vasopressor("phenylephrine", added_stop - self.hours(2, 3), "rate_change", 0.25)
        self.vasopressor("phenylephrine", added_stop, "stop", None)
        self.vasopressor("norepinephrine", added_stop + self.hours(1, 2), "rate_change", 0.1)
        self.vasopressor("norepinephrine", stop - self.hours(3, 5), "rate_change", 0.04)
        self.vasopressor("norepinephrine", stop, "stop", None)
        check = start + timedelta(hours=1)
        while check < stop:
            self.extra_vitals(check)
            check += timedelta(hours=1 if added <= check < added_stop else 2)
        self.extra_vitals(stop + timedelta(minutes=60))
        self.icu("icu_discharge", stop + self.hours(18, 30))
        return settled, start

    def _hypoxia_high_flow(self, at: datetime, late: bool) -> tuple[datetime, datetime]:
        rng = self.rng
        on = at + timedelta(minutes=5)
        escalation = at + self.hours(3, 8)
        step_down = escalation + self.hours(12, 36)
        off = step_down + self.hours(12, 24)
        self.oxygen.append((on, off))
        self.extra_vitals(
            at, spo2_pct=rng.randint(88, 91), respiratory_rate_per_min=rng.randint(22, 28)
        )
        self.oxygen_change(on, {"device": "nasal_cannula", "flow_l_min": 4, "reason": "hypoxia"})
        self.extra_vitals(
            escalation, spo2_pct=rng.randint(87, 90), respiratory_rate_per_min=rng.randint(26, 32)
        )
        high_flow = rng.random() < 0.6
        device: dict[str, Any] = (
            {
                "device": "high_flow_nasal_cannula",
                "flow_l_min": rng.choice((30, 40, 50)),
                "fio2": rng.choice((0.4, 0.5, 0.6)),
                "reason": "hypoxia",
            }
            if high_flow
            else {
                "device": "simple_face_mask",
                "flow_l_min": rng.choice((8, 10)),
                "reason": "hypoxia",
            }
        )
        raised = escalation + timedelta(minutes=5)
        self.oxygen_change(raised, device, late=late)
        self.dexamethasone(escalation + timedelta(minutes=20))
        if high_flow:
            self.icu("icu_admission", escalation + timedelta(minutes=30))
            self.icu("icu_discharge", step_down + self.hours(6, 12))
        self.extra_vitals(escalation + timedelta(minutes=60))
        self.oxygen_change(
            step_down,
            {"device": "nasal_cannula", "flow_l_min": rng.choice((2, 3)), "reason": "hypoxia"},
        )
        self.oxygen_change(off, {"device": "room_air"})
        self.extra_vitals(off + timedelta(minutes=60))
        return off, raised

    def _crs_finished(
        self, onset: datetime, end: datetime, grade: int, grade_3_at: datetime | None
    ) -> None:
        """Report the CRS adverse event: a serious one within 24 h, then its follow-up.
        Grade 4 is life-threatening (ICH E2A)."""
        self.crs_end = end
        ae_id, term = self.next_ae_id(), "Cytokine release syndrome"
        how: dict[str, Any] = (
            {"seriousness": ["life_threatening"], "relatedness": "definite"} if grade >= 4 else {}
        )
        if grade_3_at is not None:
            reported = grade_3_at + self.hours(2, 20)
            event_id = self._adverse_event(
                ae_id, term, grade, onset, None, reported, serious=True, **how
            )
            self.serious_crs_report = (event_id, reported)
        report = end + self.hours(24, 72)
        self._adverse_event(ae_id, term, grade, onset, end, report, serious=grade >= 3, **how)

    def next_ae_id(self) -> str:
        self.ae_count += 1
        return f"{self.plan.participant_id}-AE{self.ae_count:02d}"

    def _adverse_event(
        self,
        ae_id: str,
        term: str,
        grade: int,
        onset: datetime,
        resolved: datetime | None,
        reported: datetime,
        *,
        serious: bool,
        seriousness: Sequence[str] | None = None,
        grading_scale: str = "ASTCT-2019",
        relatedness: str = "probable",
        expected: bool = True,
        outcome: str = "recovering",
    ) -> str:
        """An investigator's report, sent at ``reported``; ``occurred_at`` is the onset.
        A serious one is serious by hospitalisation unless ``seriousness`` says otherwise."""
        if seriousness is None:
            seriousness = ["hospitalization"] if serious else []
        data: dict[str, Any] = {
            "ae_id": ae_id,
            "term": term,
            "grading_scale": grading_scale,
            "grade": grade,
            "serious": serious,
            "seriousness": list(seriousness),
            "relatedness": relatedness,
            "relatedness_lymphodepletion": "unlikely",
            "expected": expected,
            "onset_at": onset.isoformat(),
            "outcome": outcome,
        }
        if resolved is not None:
            data |= {"resolved_at": resolved.isoformat(), "outcome": "recovered"}
        return self.emit(
            "adverse_event.reported",
            onset,
            data,
            system="edc",
            reference=f"{self.plan.participant_id}/AE",
            report_after=reported - onset,
            recorded_by=f"pi-{self.site_code}",
        )

    # -- ICANS (reference section 2)

    def _icans(self) -> None:
        plan, rng = self.plan, self.rng
        if not plan.icans:
            return
        day = min(plan.crs_onset_day + rng.randint(1, 3), 9)
        start = self.at(day, rng.choice((3, 9, 15, 21)))
        if self.crs_onset is not None and start < self.crs_onset + timedelta(hours=12):
            start += timedelta(days=1)
        count = rng.randint(4, 12)
        nadir_index = rng.randint(1, max(1, count // 2))
        scores: list[int] = []
        for k in range(count):
            if k < nadir_index:
                scores.append(rng.randint(7, 8))
            elif k == nadir_index:
                scores.append(rng.randint(5, 6))
            else:
                scores.append(min(8, scores[-1] + rng.randint(0, 1)))
        for k, score in enumerate(scores):
            consciousness = "awakens_to_voice" if score <= 6 else "awake"
            self._neuro(start + timedelta(hours=6 * k), score, consciousness, seizure="none")
        end = start + timedelta(hours=6 * count)
        self._neuro(end, 10, "awake")
        self.icans_window = (start, end)
        nadir_at = start + timedelta(hours=6 * nadir_index)
        if min(scores) <= 6:
            for k in range(rng.randint(2, 4)):
                self.dexamethasone(nadir_at + timedelta(hours=6 * k, minutes=20))
        grade = 2 if min(scores) <= 6 else 1
        self._adverse_event(
            self.next_ae_id(),
            "Immune effector cell-associated neurotoxicity syndrome",
            grade,
            start,
            end,
            end + self.hours(24, 72),
            serious=False,
        )

    def _neuro(self, at: datetime, score: int, consciousness: str, **extra: str) -> None:
        style = _ICE_STYLE.get(self.plan.site_id, "score")
        data: dict[str, Any] = {"consciousness": consciousness, **extra}
        if style in ("score", "both"):
            data["ice_score"] = score
        if style in ("items", "both"):
            data["ice_items"] = self._ice_items(score)
        self.emit(
            "neuro.assessed",
            at,
            data,
            system="bedside",
            reference="ice-form",
            report_after=self.minutes(2, 10),
            recorded_by=self.nurse(),
        )

    def _ice_items(self, score: int) -> dict[str, int]:
        items = dict(_FULL_ICE)
        for _ in range(10 - score):
            item = self.rng.choice([name for name, points in items.items() if points > 0])
            items[item] -= 1
        return items

    def _routine_neuro(self) -> None:
        for day in range(0, 15):
            for hour in _ICE_HOURS:
                at = self.at(day, hour, self.rng.randint(0, 15))
                window = self.icans_window
                if window is not None and window[0] - timedelta(hours=3) <= at <= window[
                    1
                ] + timedelta(hours=3):
                    continue
                self._neuro(at, 10, "awake")

    # -- vitals

    def vital_signs(self, at: datetime, **override: float) -> dict[str, Any]:
        rng, base = self.rng, self.base
        fever = next((f for f in self.fevers if f[0] <= at < f[1]), None)
        on_oxygen = any(s <= at < e for s, e in self.oxygen)
        on_pressor = any(s <= at < e for s, e in self.pressors)
        soft = any(s <= at < e for s, e in self.soft_bp)
        if fever is not None:
            temperature = rng.uniform(38.0, fever[2])
            if at - fever[0] >= timedelta(hours=4) and rng.random() < 0.12:
                temperature = rng.uniform(37.5, 37.9)
        else:
            temperature = min(37.6, max(35.9, rng.gauss(base.temperature_c, 0.2)))
        if on_pressor:
            sbp, dbp, hr = rng.randint(94, 106), rng.randint(52, 62), rng.randint(100, 118)
        elif soft:
            sbp, dbp, hr = rng.randint(96, 108), rng.randint(54, 66), rng.randint(92, 108)
        else:
            sbp, dbp = base.sbp + rng.randint(-8, 10), base.dbp + rng.randint(-6, 6)
            hr = base.hr + (rng.randint(18, 34) if fever else rng.randint(-6, 8))
        if on_oxygen:
            rr, spo2 = rng.randint(20, 25), rng.randint(93, 97)
        else:
            rr = rng.randint(18, 22) if fever else base.rr + rng.randint(-1, 2)
            spo2 = min(100, base.spo2 + rng.randint(-1, 1))
        data: dict[str, Any] = {
            "temperature_c": round(temperature, 1),
            "temperature_route": self.route,
            "systolic_bp_mmhg": sbp,
            "diastolic_bp_mmhg": dbp,
            "heart_rate_bpm": hr,
            "respiratory_rate_per_min": rr,
            "spo2_pct": spo2,
        }
        data.update(override)
        if on_pressor or soft or "systolic_bp_mmhg" in override:
            systolic, diastolic = data["systolic_bp_mmhg"], data["diastolic_bp_mmhg"]
            data["mean_arterial_pressure_mmhg"] = round((systolic + 2 * diastolic) / 3)
        return data

    def _routine_vitals(self) -> None:
        plan, rng = self.plan, self.rng
        typo_slot = (rng.randint(10, 13), 14) if "typo_vitals" in plan.extras else None
        late_slot = (
            (rng.randint(2, 12), rng.choice(_VITAL_HOURS)) if "late_vitals" in plan.extras else None
        )
        for day in range(0, 15):
            for hour in _VITAL_HOURS:
                if day == 0 and hour < 6:
                    continue
                at = self.at(day, hour, rng.randint(0, 9))
                if (day, hour) == typo_slot:
                    self._mistyped_vitals(at)
                elif (day, hour) == late_slot:
                    self.emit(
                        "vitals.recorded",
                        at,
                        self.vital_signs(at),
                        system="bedside",
                        reference=f"monitor-{self.bed:02d}",
                        report_after=self.hours(3, 6),
                        recorded_by=self.nurse(),
                    )
                else:
                    self.extra_vitals(at)
        for minutes in (15, 30, 60):
            self.extra_vitals(self.day0 + timedelta(minutes=minutes))

    def _mistyped_vitals(self, at: datetime) -> None:
        """A manually charted temperature with transposed digits, corrected later."""
        true_c, typed_c = self.rng.choice(((36.8, 38.6), (36.9, 39.6), (37.8, 38.7)))
        data = self.vital_signs(at)
        target = self.emit(
            "vitals.recorded",
            at,
            data | {"temperature_c": typed_c},
            system="manual",
            reference="nursing-flowsheet",
            report_after=self.minutes(5, 30),
            recorded_by=self.nurse(),
        )
        corrected_at = at + self.hours(2, 10)
        self.emit(
            "record.corrected",
            corrected_at,
            {
                "corrects_event_id": target,
                "data": data | {"temperature_c": true_c},
                "reason": f"Transcription error: temperature {true_c} charted as {typed_c}.",
            },
            system="edc",
            reference=f"{self.plan.participant_id}/CORR",
            report_after=self.minutes(1, 10),
            recorded_by=f"crc-{self.site_code}-01",
        )

    def _visits(self) -> None:
        for day in VISIT_DAYS:
            at = self.at(day, 10, self.rng.randint(0, 30))
            data = self.vital_signs(at) | {"temperature_route": "oral"}
            self.edc("vitals.recorded", at, data, f"D{day}/VS")
            if day in (28, 90):
                self._disease_assessment(at + self.minutes(20, 60), f"D{day}")
        discharge_day = 15
        if self.crs_end is not None:
            discharge_day = max(discharge_day, (self.crs_end - self.midnight0).days + 2)
        if self.icans_window is not None:
            discharge_day = max(discharge_day, (self.icans_window[1] - self.midnight0).days + 2)
        self.discharge_at = self.at(discharge_day, 10, 5 * self.rng.randint(0, 11))
        self.edc(
            "encounter.changed", self.discharge_at, {"kind": "discharge", "planned": True}, "DIS"
        )

    def _disease_assessment(self, at: datetime, visit: str) -> None:
        profile, rng, base = self.profile, self.rng, self.baseline_score
        if visit == "screening":
            score = base
        else:
            fraction = rng.uniform(0.35, 0.7) if visit == "D28" else rng.uniform(0.05, 0.35)
            score = (
                round(base * fraction)
                if profile.higher_is_worse
                else round(150 - (150 - base) * fraction)
            )
        self.edc(
            "disease.assessed",
            at,
            {"instrument": profile.instrument, "score": score, "visit": visit},
            f"{visit}/DA",
        )

    # -- laboratory

    def _labs(self) -> None:
        plan, rng = self.plan, self.rng
        model = _LabModel(self)
        weekly = [d for d in range(14, 85, 7)] + [90]
        draws = [(-6, 7, 30)] + [(d, 6, 0) for d in range(0, 8)] + [(d, 7, 30) for d in weekly]
        clump_day = rng.randint(2, 6) if "platelet_clump" in plan.extras else None
        outage_day = rng.randint(1, 5) if "lis_outage" in plan.extras else None
        for number, (day, hour, minute) in enumerate(draws, start=1):
            at = self.at(day, hour, minute + rng.randint(0, 10))
            values = model.values(day)
            analytes = list(_CBC) + list(_CHEMISTRY if day <= 28 else _FOLLOW_UP_CHEMISTRY)
            if day <= 7:
                analytes.append("il6")
            if day in _CD19_DAYS:
                analytes.append("cd19_b_cells")
            if day in _IGG_DAYS:
                analytes.append("igg")
            cbc_delay, chemistry_delay = self.minutes(40, 90), self.minutes(80, 180)
            deliver_after = self.hours(14, 20) if day == outage_day else None
            accession = f"ACC-{plan.number:03d}-{number:02d}"
            for analyte in analytes:
                if analyte in _CBC:
                    delay = cbc_delay
                elif analyte in _CHEMISTRY:
                    delay = chemistry_delay
                else:
                    delay = self.hours(6, 24)
                data = self._lab_data(analyte, values[analyte])
                reported_value = data
                if analyte == "platelets" and day == clump_day:
                    reported_value = data | {"value": float(rng.randint(12, 20))}
                event_id = self.emit(
                    "lab.resulted",
                    at,
                    reported_value,
                    system="lab",
                    reference=accession,
                    report_after=delay,
                    deliver_after=deliver_after,
                )
                if reported_value is not data:
                    self.emit(
                        "record.corrected",
                        at + delay + self.hours(3, 6),
                        {
                            "corrects_event_id": event_id,
                            "data": data,
                            "reason": "Platelet clumping in the EDTA sample; "
                            "recounted in a citrate tube.",
                        },
                        system="lab",
                        reference=accession,
                        report_after=self.minutes(1, 5),
                        deliver_after=deliver_after,
                    )

    def _lab_data(self, analyte: str, value: float) -> dict[str, Any]:
        reference = _REFERENCE[analyte]
        low, high = reference[self.sex] if isinstance(reference, dict) else reference
        data: dict[str, Any] = {
            "analyte": analyte,
            "value": _rounded(value, _DECIMALS[analyte]),
            "unit": _LAB_UNITS[analyte],
            "reference_low": low,
            "reference_high": high,
        }
        if analyte in _LOINC:
            data["loinc"] = _LOINC[analyte]
        return data

    def _pharmacokinetics(self) -> None:
        rng = self.rng
        scale = {"DL1": 1.0, "DL2": 1.6, "DL3": 2.2}.get(self.plan.dose_level, 1.0)
        peak = rng.uniform(8, 45) * scale
        fractions = {
            7: 1.0,
            14: rng.uniform(0.3, 0.8),
            28: rng.uniform(0.03, 0.15),
            90: rng.uniform(0.0, 0.02),
        }
        for day in _PK_DAYS:
            at = self.at(day, 6, 5)
            cells = peak * fractions[day]
            copies_per_cell = rng.uniform(800, 1500)
            for analyte, value, lloq in (
                ("car_t_cells_per_ul", round(cells, 1), 0.2),
                ("transgene_copies_per_ug_gdna", float(round(cells * copies_per_cell)), 50.0),
            ):
                data: dict[str, Any] = {"analyte": analyte, "value": value, "lloq": lloq}
                if value < lloq:
                    data |= {"value": 0.0, "below_lloq": True}
                self.emit(
                    "pk.resulted",
                    at,
                    data,
                    system="lab",
                    reference=f"PK-{self.plan.participant_id}-D{day}",
                    report_after=self.hours(72, 168),
                )

    # -- charting errors that are voided

    def _charting_errors(self) -> None:
        plan, rng = self.plan, self.rng
        if "wrong_chart" in plan.extras:
            at = self.at(rng.randint(2, 12), rng.randint(8, 20), 5 * rng.randint(0, 11))
            data = {
                "temperature_c": round(rng.uniform(38.1, 38.6), 1),
                "temperature_route": "oral",
                "heart_rate_bpm": rng.randint(96, 112),
                "systolic_bp_mmhg": rng.randint(110, 130),
            }
            target = self.emit(
                "vitals.recorded",
                at,
                data,
                system="manual",
                reference="nursing-flowsheet",
                report_after=self.minutes(5, 30),
                recorded_by=self.nurse(),
            )
            self._void(target, at + self.hours(1, 5), "Entered in the wrong participant's chart.")
        if "duplicate_med" in plan.extras and self.premedication is not None:
            at = self.premedication.occurred_at
            duplicate = self.emit(
                "medication.administered",
                at,
                dict(self.premedication.data),
                system="bedside",
                reference="emar",
                report_after=self.minutes(20, 60),
                recorded_by=self.nurse(),
            )
            self._void(
                duplicate, at + self.hours(2, 8), "Duplicate entry: a single dose was given."
            )

    def _void(self, target: str, at: datetime, reason: str) -> None:
        self.emit(
            "record.voided",
            at,
            {"voids_event_id": target, "reason": reason},
            system="edc",
            reference=f"{self.plan.participant_id}/VOID",
            report_after=self.minutes(1, 10),
            recorded_by=f"crc-{self.site_code}-01",
        )

    # -- stories (module docstring), after everything else so no other draw moves

    def _stories(self) -> None:
        stories = self.plan.stories
        if "src_confirms_crs_admission" in stories and self.serious_crs_report is not None:
            event_id, reported = self.serious_crs_report
            self._adjudication(
                reported + self.hours(44, 52),
                {"kind": "event", "id": event_id},
                "confirm",
                f"Stay prolonged by grade 3 CRS requiring {_GRADE_3_SUPPORT[self.plan.crs_path]}",
            )
        if "src_regrades_crs" in stories and self.crs_end is not None:
            self._adjudication(
                self.crs_end + self.hours(68, 76),
                {"kind": "crs_episode", "id": "1"},
                "regrade",
                "Hypotension/hypoxia reading was a charting artefact; "
                "repeat measurement normal within 10 min",
                grade=1,
            )
        if "src_rejects_iechs" in stories and self.crs_onset is not None:
            self._adjudication(
                self.crs_onset + self.hours(44, 52),
                {"kind": "iechs_screen", "id": "iechs:1"},
                "reject",
                "Ferritin rise explained by CRS; no new cytopenia, coagulopathy or "
                "hepatic dysfunction",
            )
        if "licats_flare" in stories:
            self._licats_flare()
        elif "dlt_licats" in stories:
            self._licats_flare(self._dlt_licats_day())
        if "late_susar" in stories:
            self._late_susar()

    def _adjudication(
        self,
        at: datetime,
        target: dict[str, str],
        decision: str,
        reason: str,
        *,
        grade: int | None = None,
    ) -> None:
        """A safety review committee decision (reference section 9), entered in the EDC."""
        data: dict[str, Any] = {
            "target": target,
            "decision": decision,
            "reason": reason,
            "adjudicator": "SRC",
        }
        if grade is not None:
            data["grade"] = grade
        self.edc("adjudication.recorded", at, data, "ADJ")

    def _licats_flare(self, day: int | None = None) -> None:
        """A LICATS grade 3 flare (hospitalisation; reference section 6) inside the DLT
        window: rule 6 of section 7. By default it starts after the protocol-mandated
        stay, so the readmission is unplanned and the SAE clock runs; ``day`` sets the
        study day of onset and admission."""
        rng = self.rng
        if day is None:
            discharged = self.discharge_at or self.at(15, 10)
            day = (discharged - self.midnight0).days + _LICATS_DAYS_AFTER_DISCHARGE
        admitted = self.at(day, rng.randint(9, 20), 5 * rng.randint(0, 11))
        self.unplanned_stay("admission", admitted)
        ae_id = self.next_ae_id()

        def report(resolved: datetime | None, reported: datetime) -> None:
            self._adverse_event(
                ae_id,
                _LICATS_TERM,
                3,
                admitted,
                resolved,
                reported,
                serious=True,
                grading_scale="LICATS-2025",
            )

        report(None, admitted + self.hours(2, 6))
        home = self.at(day + _LICATS_STAY_DAYS, 10, 5 * rng.randint(0, 11))
        self.unplanned_stay("discharge", home)
        report(home - self.hours(6, 20), home + self.hours(2, 8))

    def _dlt_licats_day(self) -> int:
        """A day in ``_DLT_LICATS_DAYS``, after the day CRS and ICANS ended where possible."""
        low, high = _DLT_LICATS_DAYS
        for end in (self.crs_end, None if self.icans_window is None else self.icans_window[1]):
            if end is not None:
                low = max(low, (end - self.midnight0).days + 1)
        return self.rng.randint(min(low, high), high)

    def _late_susar(self) -> None:
        """An unexpected, possibly related SAE after the DLT window: a SUSAR whose
        15-day clock runs (reference section 10). It does not resolve in follow-up."""
        rng = self.rng
        onset = self.at(_SUSAR_ONSET_DAY, rng.randint(6, 14), 5 * rng.randint(0, 11))
        self.unplanned_stay("admission", onset + self.hours(3, 8))
        self._adverse_event(
            self.next_ae_id(),
            _SUSAR_TERM,
            3,
            onset,
            None,
            self.at(_SUSAR_ONSET_DAY + 1, rng.randint(9, 16), 5 * rng.randint(0, 11)),
            serious=True,
            grading_scale="CTCAE-5.0",
            relatedness="possible",
            expected=False,
            outcome="not_recovered",
        )


_GRADE_3_SUPPORT = {"vasopressor": "vasopressors", "high_flow": "high-flow oxygen"}
_LICATS_TERM = "Local immune effector cell-associated toxicity syndrome"
#: Readmission on day 18 after the usual day-15 discharge: inside the 28-day DLT window.
_LICATS_DAYS_AFTER_DISCHARGE = 3
_LICATS_STAY_DAYS = 6
_SUSAR_TERM = "Parkinsonism"
_SUSAR_ONSET_DAY = 44


class _LabModel:
    """Laboratory trajectories: Flu/Cy cytopenias, CAR-T expansion, CRS inflammation."""

    def __init__(self, course: _Course) -> None:
        rng = course.rng
        self.rng = rng
        self.sex = course.sex
        day = timedelta(days=1)
        self.onset = None if course.crs_onset is None else (course.crs_onset - course.day0) / day
        self.toci = (
            None if course.tocilizumab_at is None else (course.tocilizumab_at - course.day0) / day
        )
        grade = course.plan.crs_grade
        peaks = _INFLAMMATION.get(
            grade, {"crp": (0, 0), "ferritin": (0, 0), "il6": (0, 0), "alt": (0, 0)}
        )
        self.peak = {name: rng.uniform(*bounds) for name, bounds in peaks.items()}
        anc = rng.uniform(2.5, 6.5)
        nadir_day = rng.randint(4, 7)
        nadir = rng.uniform(0.08, 0.3) if rng.random() < 0.2 else rng.uniform(0.3, 1.3)
        day0_anc = anc * rng.uniform(0.55, 0.8)
        nadir = min(nadir, day0_anc * 0.8)
        self.anc = [
            (-6, anc),
            (-3, anc * 0.9),
            (0, day0_anc),
            (nadir_day, nadir),
            (nadir_day + 1, nadir * rng.uniform(1.0, 1.3)),
            (nadir_day + rng.randint(3, 7), anc * rng.uniform(0.45, 0.7)),
            (28, anc * rng.uniform(0.7, 0.95)),
            (90, anc * rng.uniform(0.85, 1.05)),
        ]
        alc = rng.uniform(0.6, 2.0)
        self.alc = [
            (-6, alc),
            (-3, alc * 0.5),
            (0, rng.uniform(0.08, 0.25)),
            (4, rng.uniform(0.05, 0.2)),
            (rng.randint(7, 10), rng.uniform(0.6, 2.5)),
            (14, rng.uniform(0.5, 1.2)),
            (28, alc * rng.uniform(0.5, 0.9)),
            (90, alc * rng.uniform(0.8, 1.1)),
        ]
        platelets = rng.uniform(160, 330)
        self.platelets = [
            (-6, platelets),
            (0, platelets * 0.95),
            (rng.randint(6, 9), platelets * rng.uniform(0.55, 0.85)),
            (14, platelets * 0.85),
            (28, platelets * 0.95),
            (90, platelets),
        ]
        hemoglobin = rng.uniform(11.0, 13.5) if self.sex == "F" else rng.uniform(12.5, 15.5)
        self.hemoglobin = [
            (-6, hemoglobin),
            (0, hemoglobin - 0.3),
            (7, hemoglobin - rng.uniform(0.6, 1.6)),
            (14, hemoglobin - 0.8),
            (28, hemoglobin - 0.3),
            (90, hemoglobin),
        ]
        self.base = {
            "crp": rng.uniform(0.5, 8.0),
            "ferritin": rng.uniform(40, 300),
            "il6": rng.uniform(1.5, 6.5),
            "alt": rng.uniform(12, 35),
            "ast": rng.uniform(14, 32),
            "creatinine": rng.uniform(48, 78) if self.sex == "F" else rng.uniform(62, 100),
            "bilirubin_total": rng.uniform(5, 15),
            "ldh": rng.uniform(140, 230),
            "cd19_b_cells": rng.uniform(60, 300),
            "igg": rng.uniform(7.5, 15.0),
        }
        self.b_cell_return = rng.uniform(5, 40) if rng.random() < 0.3 else 0.0
        self.grade = grade

    def _shape(self, day: float, rise: float, half_life: float) -> float:
        if self.onset is None or day < self.onset:
            return 0.0
        elapsed = day - self.onset
        if elapsed < rise:
            return elapsed / rise
        return float(0.5 ** ((elapsed - rise) / half_life))

    def values(self, day: int) -> dict[str, float]:
        rng, base = self.rng, self.base
        d = day + 0.0

        def noisy(value: float, spread: float = 0.05) -> float:
            return max(0.0, value * rng.gauss(1.0, spread))

        anc = noisy(_log_interpolate(self.anc, d))
        alc = noisy(_log_interpolate(self.alc, d))
        il6 = base["il6"] + self.peak["il6"] * self._shape(d, 0.3, 0.7)
        if self.toci is not None and self.toci <= d < self.toci + 4:
            il6 *= 3.0
        hepatic = self.peak["alt"] * self._shape(d, 2.0, 4.0)
        organ = 0.1 * self.grade * self._shape(d, 1.0, 2.0)
        if day < 7:
            b_cells = base["cd19_b_cells"] * (1.0 if day < 0 else 0.5)
        else:
            b_cells = self.b_cell_return if day >= 90 else rng.uniform(0.0, 0.4)
        return {
            "anc": anc,
            "alc": alc,
            "wbc": (anc + alc) * 1.1 + 0.15 + 0.05 * anc,
            "platelets": noisy(_log_interpolate(self.platelets, d), 0.04),
            "hemoglobin": noisy(_linear_interpolate(self.hemoglobin, d), 0.02),
            "crp": noisy(base["crp"] + self.peak["crp"] * self._shape(d, 1.0, 1.5)),
            "ferritin": noisy(base["ferritin"] + self.peak["ferritin"] * self._shape(d, 1.5, 4.0)),
            "il6": noisy(il6, 0.1),
            "alt": noisy(base["alt"] * (1 + hepatic)),
            "ast": noisy(base["ast"] * (1 + 0.8 * hepatic)),
            "creatinine": noisy(base["creatinine"] * (1 + organ), 0.04),
            "bilirubin_total": noisy(base["bilirubin_total"] * (1 + organ)),
            "ldh": noisy(base["ldh"] * (1 + 2 * organ), 0.04),
            "cd19_b_cells": b_cells,
            "igg": base["igg"] * (1.0 if day <= 0 else 0.85 if day <= 28 else 0.75),
        }


def _log_interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    return math.exp(_linear_interpolate([(px, math.log(py)) for px, py in points], x))


def _linear_interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


# ---------------------------------------------------------------- serialisation


def _midnight(at: datetime) -> datetime:
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def _rounded(value: float, decimals: int) -> float:
    return float(round(value)) if decimals == 0 else round(value, decimals)


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _before(events: list[_Event], horizon: datetime) -> list[_Event]:
    """Events that occurred before ``horizon``; corrections and voids of dropped ones go too."""
    kept = [e for e in events if e.occurred_at < horizon]
    ids = {e.event_id for e in kept}
    return [
        e
        for e in kept
        if e.data.get("corrects_event_id", e.data.get("voids_event_id", e.event_id)) in ids
        or e.type not in ("record.corrected", "record.voided")
    ]


def _message(trial_id: str, plan: _Plan, event: _Event) -> SimulatedMessage:
    obj: dict[str, Any] = {
        "schema": CLINICAL_SCHEMA,
        "event_id": event.event_id,
        "type": event.type,
        "trial_id": trial_id,
        "site_id": plan.site_id,
        "participant_id": plan.participant_id,
        "occurred_at": event.occurred_at.isoformat(),
        "reported_at": event.reported_at.isoformat(),
        "source": event.source,
        "data": event.data,
    }
    if event.recorded_by is not None:
        obj["recorded_by"] = event.recorded_by
    return SimulatedMessage(plan.participant_id.encode(), _encode(obj), event.deliver_at, "valid")


def _ticks(
    trial_id: str, start: datetime, every: timedelta, until: datetime
) -> list[SimulatedMessage]:
    """``clock.ticked`` every ``every`` from ``start`` to the first tick at or after ``until``."""
    ticks: list[SimulatedMessage] = []
    at = start
    while True:
        iso = at.isoformat()
        obj = {
            "schema": CLINICAL_SCHEMA,
            "event_id": f"tick-{iso}",
            "type": "clock.ticked",
            "trial_id": trial_id,
            "site_id": TICK_SITE,
            "participant_id": TRIAL_LEVEL_PARTICIPANT,
            "occurred_at": iso,
            "reported_at": iso,
            "source": {"system": "device", "reference": "toxwatch-scheduler"},
            "data": {},
        }
        ticks.append(SimulatedMessage(TRIAL_LEVEL_PARTICIPANT.encode(), _encode(obj), at, "valid"))
        if at >= until:
            return ticks
        at += every


def _src_resumes_enrolment(
    spec: CohortSpec, tag: str, dose_level: str, crs_onset: datetime
) -> SimulatedMessage:
    """The safety review committee's trial-level decision after reviewing the grade 4 CRS
    at ``dose_level`` (reference section 8: committees pause and resume enrolment), in
    the afternoon of the seventh day after its onset, entered in the EDC."""
    rng = random.Random(f"{spec.seed}:src:{dose_level}")
    decided = _midnight(crs_onset) + timedelta(
        days=_SRC_DAYS_AFTER_ONSET, hours=_SRC_MEETING_HOUR, minutes=5 * rng.randint(0, 11)
    )
    reported = decided + timedelta(minutes=rng.randint(20, 120))
    obj = {
        "schema": CLINICAL_SCHEMA,
        "event_id": f"edc-{tag}-src-{dose_level}",
        "type": "committee.decided",
        "trial_id": spec.trial_id,
        "site_id": TICK_SITE,
        "participant_id": TRIAL_LEVEL_PARTICIPANT,
        "occurred_at": decided.isoformat(),
        "reported_at": reported.isoformat(),
        "source": {"system": "edc", "reference": f"SRC/{dose_level}"},
        "recorded_by": "src-secretary",
        "data": {
            "committee": "src",
            "decision": "resume_enrollment",
            "reason": f"SRC reviewed the grade 4 CRS at {dose_level}: "
            "resume enrolment at lower dose levels",
        },
    }
    deliver_at = reported + timedelta(seconds=rng.randint(1, 20))
    return SimulatedMessage(TRIAL_LEVEL_PARTICIPANT.encode(), _encode(obj), deliver_at, "valid")


def _write_lines(messages: Iterable[SimulatedMessage], handle: IO[Any]) -> None:
    text = isinstance(handle, io.TextIOBase)
    for message in messages:
        line = message.value.replace(b"\r\n", b" ").replace(b"\n", b" ").replace(b"\r", b" ")
        if text:
            handle.write(line.decode("utf-8", errors="replace") + "\n")
        else:
            handle.write(line + b"\n")
