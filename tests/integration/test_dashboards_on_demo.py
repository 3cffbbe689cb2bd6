"""A real Prometheus scrapes the running demo (issue 6): every Grafana panel's query
returns data, and the safety rules page for a simulated stopping-boundary crossing.

The demo streams nine participants with a DLT-heavy DL3 (test_trial_monitor_pipeline
explains why it crosses the stopping rules); Prometheus scrapes the demo's four
metrics endpoints every second with the shipped alerting rules loaded.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration import wait_until
from tests.integration.prometheus_harness import (
    PrometheusServer,
    dashboard_queries,
    prometheus_binary,
    template_variables,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

INFRA = Path(__file__).resolve().parents[2] / "infra"
RULES = INFRA / "prometheus" / "rules" / "toxwatch.rules.yml"
DASHBOARDS = INFRA / "grafana" / "dashboards"
JOBS = {"worker": "toxwatch-worker", "relay": "toxwatch-relay", "safety": "toxwatch-safety",
        "dispatcher": "toxwatch-dispatcher"}  # fmt: skip


def scrape_config(endpoints: dict[str, str]) -> str:
    jobs = "".join(
        f"""
  - job_name: {JOBS[name]}
    static_configs:
      - targets: ["{address}"]"""
        for name, address in sorted(endpoints.items())
    )
    return f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - rules/toxwatch.rules.yml
scrape_configs:{jobs}
"""


def test_prometheus_scrapes_the_demo_every_panel_has_data_and_the_stopping_rule_pages(
    tmp_path: Path,
) -> None:
    if prometheus_binary() is None:
        pytest.skip("no prometheus binary (scripts/ensure-monitoring-tools installs it)")
    env = os.environ | {"TOXWATCH_DATA_DIR": str(tmp_path / "demo"), "COLUMNS": "240"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    demo = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "demo", "--duration", "400",
         "--stream-seconds", "30", "--participants", "9", "--dlt-heavy-dose", "DL3"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True).start()
    try:
        pattern = re.compile(r"^metrics\s+(\w+)\s+http://(127\.0\.0\.1:\d+)/metrics")

        def endpoints() -> dict[str, str]:
            return {m[1]: m[2] for line in list(lines) if (m := pattern.match(line))}

        assert wait_until(lambda: len(endpoints()) == len(JOBS), 120), lines
        files = {"rules/toxwatch.rules.yml": RULES.read_text()}
        with PrometheusServer(scrape_config(endpoints()), tmp_path, files=files) as prometheus:
            prometheus.wait_for_targets_up(60)
            # The DLT-heavy dose crosses the stopping rules: the safety rules page.
            prometheus.wait_for_alert("ToxWatchStoppingBoundaryCrossed", 300, trial="NCT07049081")
            assert wait_until(lambda: any("cohort streamed" in x for x in lines), 120), lines
            time.sleep(5)  # a few more scrapes, for the rates
            variables = prometheus.variable_values(
                template_variables(DASHBOARDS), prefer={"dose_level": "DL3"}
            )
            queries = dashboard_queries(DASHBOARDS, variables)
            assert len(queries) > 30

            def empty() -> list[tuple[str, str, str]]:
                return [tuple(q) for q in queries if not prometheus.query(q.expr)]

            assert wait_until(lambda: not empty(), 60, interval=2), empty()
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
