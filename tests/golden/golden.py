"""The golden derivation of the simulated LUCAR-G79 cohort.

``python -m tests.golden.golden`` rewrites ``cohort.derived.jsonl`` after a deliberate
rule change; review the diff like any other code change.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from services.offline import process_lines
from services.simulator import CohortSpec, simulate_cohort

GOLDEN = Path(__file__).with_name("cohort.derived.jsonl")
#: The simulated cohort's clock: its events are long past, so no "future" rejections.
FIXED_NOW = "2026-06-01T00:00:00+00:00"


def derive_cohort() -> list[str]:
    """The derived events of the default cohort, one canonical JSON line each,
    without ``recorded_at`` (the only field that depends on when it runs)."""
    from datetime import datetime

    lines = [m.value for m in simulate_cohort(CohortSpec())]
    out = io.StringIO()
    process_lines(lines, out, now=datetime.fromisoformat(FIXED_NOW))
    canonical = []
    for line in out.getvalue().splitlines():
        event = json.loads(line)
        event.pop("recorded_at")
        canonical.append(json.dumps(event, sort_keys=True, separators=(",", ":")))
    return canonical


if __name__ == "__main__":
    GOLDEN.write_text("\n".join(derive_cohort()) + "\n")
    print(f"wrote {GOLDEN}")
