"""Integration tests against the real broker (tansu) and PostgreSQL, with the worker
and the relay run as ``toxwatch`` subprocesses; helpers shared by them."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

#: Clinical JSONL values per derived participant: the expected pipeline result.
PerParticipant = dict[str, list[dict[str, Any]]]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def wait_for_count(
    count: Callable[[], int], expected: int, timeout: float, settle: float = 3.0
) -> int:
    """Wait until ``count()`` reaches ``expected`` (or ``timeout`` passes), then until it
    has not changed for ``settle`` seconds, so that extra messages have time to show."""
    deadline = time.monotonic() + timeout
    last = count()
    while last < expected and time.monotonic() < deadline:
        time.sleep(0.25)
        last = count()
    stable_since = time.monotonic()
    while time.monotonic() - stable_since < settle and time.monotonic() < deadline + settle:
        time.sleep(0.25)
        now = count()
        if now != last:
            last, stable_since = now, time.monotonic()
    return last


def run_process_command(
    values: Sequence[bytes],
    workdir: Path,
    toxwatch: str,
    *,
    with_trial_level: bool = False,
    args: Sequence[str] = (),
) -> list[dict]:
    """``toxwatch process IN.jsonl`` on ``values`` (one per line, in order): its
    derived safety events (the participants' only, unless ``with_trial_level``)."""
    for value in values:
        assert b"\n" not in value and b"\r" not in value, "a JSONL line cannot hold a line break"
    source = workdir / "clinical.jsonl"
    source.write_bytes(b"".join(value + b"\n" for value in values))
    done = subprocess.run(
        [toxwatch, "process", str(source), *args], capture_output=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return events if with_trial_level else participant_level(events)


def participant_level(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The participants' derived events, without the trial monitor's (participant ``-``),
    which only a running ``toxwatch monitor`` publishes, and without alerts, which only
    a running ``toxwatch alerts`` publishes."""
    return [
        event
        for event in events
        if event["participant_id"] != "-" and not event["type"].startswith("alert.")
    ]


def process_offline(values: Iterable[bytes], app: Any = None) -> list[dict]:
    """``services.offline.process_lines`` on ``values`` (into ``app`` if given, else a
    fresh in-memory application): the participants' derived safety events."""
    import io

    from services.offline import process_lines

    out = io.StringIO()
    process_lines(values, out, app=app)
    return participant_level(json.loads(line) for line in out.getvalue().splitlines())


def participants_of(values: Iterable[bytes]) -> set[tuple[str, str]]:
    """``(trial_id, participant_id)`` of every participant-level event among ``values``."""
    found = set()
    for value in values:
        try:
            document = json.loads(value)
        except ValueError:
            continue
        if isinstance(document, dict) and document.get("participant_id", "-") != "-":
            found.add((document["trial_id"], document["participant_id"]))
    return found


def recorded_event_ids(app: Any, participants: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """The clinical event ids each participant's record holds, in recording order."""
    return {
        f"{trial_id}/{participant_id}": [
            entry.event_id for entry in app.get_participant(trial_id, participant_id).entries
        ]
        for trial_id, participant_id in sorted(participants)
    }


def comparable(event: dict[str, Any]) -> dict[str, Any]:
    """A derived event without ``recorded_at`` (when it was derived: differs per run)."""
    return {name: value for name, value in event.items() if name != "recorded_at"}


def per_participant(events: Iterable[dict[str, Any]]) -> PerParticipant:
    """Derived events grouped by ``(trial, participant)``, each group in the given order."""
    grouped: PerParticipant = defaultdict(list)
    for event in events:
        grouped[f"{event['trial_id']}/{event['participant_id']}"].append(comparable(event))
    return dict(grouped)


def duplicated_ids(events: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(event["event_id"] for event in events)
    return {event_id: n for event_id, n in counts.items() if n > 1}


def describe_difference(actual: PerParticipant, expected: PerParticipant) -> str:
    """A short account of how two per-participant derivations differ."""
    lines = []
    for participant in sorted(set(actual) | set(expected)):
        got, want = actual.get(participant, []), expected.get(participant, [])
        if got == want:
            continue
        lines.append(f"{participant}: {len(got)} derived on Kafka, {len(want)} offline")
        for index, (a, b) in enumerate(zip(got, want, strict=False)):
            if a != b:
                differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                lines.append(f"  first difference at #{index}: fields {differing}")
                lines.append(f"    kafka:   {json.dumps(a, sort_keys=True)[:400]}")
                lines.append(f"    offline: {json.dumps(b, sort_keys=True)[:400]}")
                break
        else:
            longer = got if len(got) > len(want) else want
            extra = longer[min(len(got), len(want)) :]
            which = "kafka" if longer is got else "offline"
            lines.append(f"  only {which}: {[(e['type'], e['event_id']) for e in extra][:10]}")
    return "\n".join(lines) or "no difference"
