"""``toxwatch process`` on the whole simulated cohort equals the checked-in golden
derivation; a change in any grade shows up as a readable diff."""

from __future__ import annotations

import difflib
import json

from tests.golden.golden import GOLDEN, derive_cohort


def _readable(line: str) -> str:
    event = json.loads(line)
    data = event["data"]
    what = data.get("term") or event["type"]
    grade = data.get("grade", data.get("to_grade", ""))
    return f"{event['participant_id']} {event['effective_at']} {event['type']} {what} {grade}"


def test_the_cohort_derives_exactly_the_golden_events():
    expected = GOLDEN.read_text().splitlines()
    actual = derive_cohort()
    if actual != expected:
        diff = difflib.unified_diff(
            [_readable(x) for x in expected],
            [_readable(x) for x in actual],
            "golden",
            "derived now",
            lineterm="",
            n=1,
        )
        shown = "\n".join(list(diff)[:80])
        raise AssertionError(
            f"the derivation changed ({len(expected)} golden, {len(actual)} now):\n{shown}\n"
            "If the change is intended: python -m tests.golden.golden, and review the diff."
        )
