"""The README's first command: the demo runs end to end and stops by itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import httpx
import pytest

from tests.integration import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_demo_streams_a_cohort_shows_crs_grades_and_stops_cleanly(tmp_path):
    env = os.environ | {"TOXWATCH_DATA_DIR": str(tmp_path), "COLUMNS": "240"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    demo = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "demo", "--duration", "60",
         "--stream-seconds", "15", "--participants", "9"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    # While it runs: the printed API answers the printed monitor token with alerts.
    assert wait_until(lambda: any(line.startswith("ALERT") for line in lines), 120), lines
    api = next(re.search(r"(http://127\.0\.0\.1:\d+)/docs", x) for x in lines if "/docs" in x)
    token = next(re.search(r"(tw_[0-9a-f]{16}_\S+)", x) for x in lines if x.startswith("token"))
    assert api and token, lines
    answers: list[httpx.Response] = []

    def alerts_listed() -> bool:
        # The API's read models follow the store (every 0.1 s): the console may print
        # an alert a moment before the API has folded it.
        answers.append(
            httpx.get(
                f"{api.group(1)}/alerts", headers={"Authorization": f"Bearer {token.group(1)}"}
            )
        )
        return answers[-1].status_code == 200 and bool(answers[-1].json())

    assert wait_until(alerts_listed, 15), answers[-1].text
    assert httpx.get(f"{api.group(1)}/alerts").status_code == 401
    demo.wait(timeout=180)
    reader.join(10)
    output = "".join(lines)
    assert demo.returncode == 0, output
    assert "embedded tansu" in output
    assert "CRS grade 1" in output
    assert "resolved" in output
    assert "rejected not_json" in output
    assert "cohort streamed" in output
    assert "child process exited" not in output
    delivered = [line for line in output.splitlines() if line.startswith("ALERT")]
    assert delivered and all("signed ✓" in line for line in delivered)
    assert re.search(r"[1-9]\d* alert messages delivered to the webhook, [1-9]\d* mails", output)
    assert list(tmp_path.glob("demo/*/toxwatch.sqlite3"))
