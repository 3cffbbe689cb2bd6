"""The monitoring configuration of issue 6 is valid where it runs: Prometheus's
scrape config and alerting rules (``promtool check``, ``promtool test rules``), the
Alertmanager routing (``amtool``), and the Grafana provisioning and dashboards, whose
every query is run by a real Prometheus. Names come only from the metrics catalogue.

The tools are the Debian packages ``prometheus`` and ``prometheus-alertmanager``
(``scripts/ensure-monitoring-tools`` installs them); without them these tests skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration import wait_until
from tests.integration.prometheus_harness import (
    PrometheusError,
    PrometheusServer,
    dashboard_queries,
    iter_panels,
    load_dashboards,
    parse_label_values,
    prometheus_binary,
    substitute,
    template_variables,
)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = ROOT / "infra/prometheus/prometheus.yml"
RULES = ROOT / "infra/prometheus/rules/toxwatch.rules.yml"
RULE_TESTS = ROOT / "infra/prometheus/tests/toxwatch.rules.test.yml"
ALERTMANAGER_CONFIG = ROOT / "infra/alertmanager/alertmanager.yml"
GRAFANA = ROOT / "infra/grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES = GRAFANA / "provisioning/datasources/prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning/dashboards/toxwatch.yml"

#: The metrics catalogue (issue 6): every toxwatch_* name a rule or a panel may use.
SAFETY_METRICS = {
    "toxwatch_participants",
    "toxwatch_crs_max_grade_participants",
    "toxwatch_icans_max_grade_participants",
    "toxwatch_dlt_evaluable_participants",
    "toxwatch_dlt_participants",
    "toxwatch_dlt_windows_open",
    "toxwatch_dose_level_decision",
    "toxwatch_stopping_rule_triggered",
    "toxwatch_enrollment_paused",
    "toxwatch_alerts_open",
    "toxwatch_sae_reports_overdue",
    "toxwatch_follower_lag_events",
}
PIPELINE_METRICS = {
    "toxwatch_events_ingested_total",
    "toxwatch_events_rejected_total",
    "toxwatch_events_duplicate_total",
    "toxwatch_messages_redelivered_total",
    "toxwatch_safety_events_derived_total",
    "toxwatch_relay_published_total",
    "toxwatch_alert_dispatch_failures_total",
    "toxwatch_relay_position",
    "toxwatch_consumer_lag_messages",
    "toxwatch_ingest_topic_replacements_total",
    "toxwatch_ingest_topic_incarnation",
    "toxwatch_follower_entries_total",
    "toxwatch_follower_last_pass_timestamp_seconds",
}
HISTOGRAMS = {"toxwatch_batch_size", "toxwatch_commit_seconds", "toxwatch_alert_delivery_seconds"}
CATALOGUE = SAFETY_METRICS | PIPELINE_METRICS | HISTOGRAMS
TOXWATCH_JOBS = {
    "toxwatch-worker",
    "toxwatch-relay",
    "toxwatch-safety",
    "toxwatch-dispatcher",
    "toxwatch-monitor",
    "toxwatch-alerts",
}
DASHBOARD_FILES = {"dsmb-safety-overview.json", "dose-level-detail.json", "pipeline-health.json"}
#: What the dashboards' variables stand for when their queries are checked.
VARIABLES = {"trial": "NCT07049081", "dose_level": "DL1"}

_METRIC_NAME = re.compile(r"\btoxwatch_[a-z_]+")


def tool(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else "")
    if not found:
        pytest.skip(f"{name} is not installed (scripts/ensure-monitoring-tools installs it)")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)


def alerting_rules() -> Iterator[tuple[str, dict[str, Any]]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                yield group["name"], rule


def metric_names(expr: str) -> set[str]:
    """The toxwatch_* metric names of a query, a histogram's series by its name."""
    names = set()
    for name in _METRIC_NAME.findall(expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory) -> Iterator[PrometheusServer]:
    """A real Prometheus with the rules loaded, scraping nothing."""
    if prometheus_binary() is None:
        pytest.skip("prometheus is not installed (scripts/ensure-monitoring-tools installs it)")
    config = "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
    config += "rule_files: [rules/toxwatch.rules.yml]\n"
    files = {"rules/toxwatch.rules.yml": RULES.read_text()}
    with PrometheusServer(config, tmp_path_factory.mktemp("monitoring"), files=files) as server:
        yield server


# ---------------------------------------------------------------- Prometheus


def test_the_production_scrape_config_is_valid_and_loads_the_rules():
    checked = run(tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs >= TOXWATCH_JOBS
    [alertmanagers] = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert (PROMETHEUS_CONFIG.parent / config["rule_files"][0]).resolve() == RULES


def test_the_alerting_rules_are_valid():
    checked = run(tool("promtool"), "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_unit_tests_pass_including_a_stopping_boundary_crossing():
    tested = run(tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_unit_tests_simulate_the_bayesian_stopping_boundary_going_from_0_to_1():
    def crosses(given: dict[str, str]) -> bool:
        values = given["values"].split()
        return (
            given["series"].startswith("toxwatch_stopping_rule_triggered{")
            and 'trial="NCT07049081"' in given["series"]
            and 'rule_id="trial_dlt_rate_bayes"' in given["series"]
            and values[0] == "0"
            and "1" in values
        )

    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    [crossing] = [case for case in tests if any(crosses(g) for g in case["input_series"])]
    fired = [
        expected
        for check in crossing["alert_rule_test"]
        if check["alertname"] == "ToxWatchStoppingBoundaryCrossed"
        for expected in check.get("exp_alerts", [])
    ]
    assert fired, "the crossing is never expected to fire"
    labels, annotations = fired[0]["exp_labels"], fired[0]["exp_annotations"]
    assert {"trial": "NCT07049081", "rule_id": "trial_dlt_rate_bayes", "team": "safety",
            "severity": "page"}.items() <= labels.items()  # fmt: skip
    assert "trial_dlt_rate_bayes" in annotations["summary"]
    assert {"summary", "description", "runbook"} <= annotations.keys()


def test_every_alert_is_unit_tested_firing_and_not_firing():
    firing, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for _, rule in alerting_rules()}
    assert alerts - firing == set(), "never seen firing"
    assert alerts - quiet == set(), "never seen quiet"


def test_safety_alerts_page_the_monitors_and_pipeline_alerts_ticket_the_operators():
    groups = {}
    for group, rule in alerting_rules():
        groups.setdefault(group, []).append(rule["alert"])
        expected = {
            "safety": {"team": "safety", "severity": "page"},
            "pipeline": {"team": "operators", "severity": "ticket"},
        }[group]
        assert rule["labels"] == expected, rule["alert"]
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), rule["alert"]
        assert "{{ $labels." in rule["annotations"]["summary"] + rule["annotations"]["description"]
    assert len(groups["safety"]) >= 6 and len(groups["pipeline"]) >= 6, groups


def test_the_rules_load_and_evaluate_in_a_real_prometheus(prometheus):
    def rules() -> list[dict[str, Any]]:
        return [rule for group in prometheus.rule_groups() for rule in group["rules"]]

    assert wait_until(lambda: all(rule["health"] != "unknown" for rule in rules()), 15)
    assert {group["name"] for group in prometheus.rule_groups()} == {"safety", "pipeline"}
    assert len(rules()) == len(list(alerting_rules()))
    assert [(r["name"], r["health"], r.get("lastError")) for r in rules()
            if r["health"] != "ok"] == []  # fmt: skip


# ---------------------------------------------------------------- Alertmanager


def test_the_alertmanager_config_is_valid():
    checked = run(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"team": "safety", "severity": "page"}, "safety-monitors"),
        ({"team": "operators", "severity": "ticket"}, "operators-ticket"),
        ({"alertname": "SomethingElse"}, "operators-ticket"),
    ],
)
def test_alerts_are_routed_by_team(labels, receiver):
    routed = run(
        tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receiver}", *(f"{k}={v}" for k, v in labels.items()),
    )  # fmt: skip
    assert routed.returncode == 0, routed.stdout + routed.stderr


def test_every_rule_reaches_its_team_s_receiver():
    amtool = tool("amtool")
    receivers = {"safety": "safety-monitors", "operators": "operators-ticket"}
    for _, rule in alerting_rules():
        labels = {"alertname": rule["alert"], **rule["labels"]}
        routed = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
                     f"--verify.receivers={receivers[labels['team']]}",
                     *(f"{k}={v}" for k, v in labels.items()))  # fmt: skip
        assert routed.returncode == 0, (rule["alert"], routed.stdout + routed.stderr)


def test_the_pager_route_is_fast_and_safety_pages_are_never_inhibited():
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    routes = {route["receiver"]: route for route in config["route"]["routes"]}
    page, ticket = routes["safety-monitors"], routes["operators-ticket"]
    assert page["matchers"] == ['team="safety"'] and ticket["matchers"] == ['team="operators"']
    assert page["group_wait"] in ("0s", "5s", "10s") and page["repeat_interval"] == "15m"
    assert ticket["group_wait"] == "1m" and ticket["repeat_interval"] == "4h"
    for rule in config.get("inhibit_rules", []):
        assert 'team="operators"' in rule["target_matchers"], rule


# ---------------------------------------------------------------- Grafana


def provisioned_datasource_uid() -> str:
    [datasource] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    return str(datasource["uid"])


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards_folder():
    assert provisioned_datasource_uid() == "toxwatch-prometheus"
    [provider] = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert {path.name for path, _ in load_dashboards(DASHBOARDS)} == DASHBOARD_FILES


def test_every_dashboard_panel_queries_the_provisioned_datasource():
    uid = provisioned_datasource_uid()
    uids = []
    for path, board in load_dashboards(DASHBOARDS):
        uids.append(board["uid"])
        assert board["id"] is None and board["title"], path.name
        assert board["schemaVersion"] >= 36, path.name
        panels = [p for p in iter_panels(board["panels"]) if p["type"] != "row"]
        assert panels, path.name
        for panel in panels:
            where = f"{path.name}: {panel.get('title')}"
            assert panel["datasource"] == {"type": "prometheus", "uid": uid}, where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert target["expr"].strip(), where
                assert target.get("datasource", panel["datasource"]) == panel["datasource"], where
        for variable in board["templating"]["list"]:
            assert variable["datasource"] == {"type": "prometheus", "uid": uid}, path.name
    assert len(set(uids)) == len(uids)


def test_the_dose_level_detail_dashboard_is_filtered_by_a_dose_level_variable():
    [board] = [b for p, b in load_dashboards(DASHBOARDS) if p.name == "dose-level-detail.json"]
    variables = {v["name"]: v["query"] for v in board["templating"]["list"]}
    assert parse_label_values(variables["dose_level"]) == (
        'toxwatch_participants{trial="$trial"}',
        "dose_level",
    )
    exprs = [t["expr"] for p in iter_panels(board["panels"]) for t in p.get("targets", [])]
    assert exprs and all('dose_level="$dose_level"' in expr for expr in exprs)


def test_rules_and_panels_use_only_catalogue_metrics():
    used = {}
    for query in dashboard_queries(DASHBOARDS):
        for name in metric_names(query.expr):
            used.setdefault(name, []).append(f"{query.dashboard}: {query.panel_title}")
    for variable in template_variables(DASHBOARDS):
        for name in metric_names(variable.query):
            used.setdefault(name, []).append(f"{variable.dashboard}: ${variable.name}")
    for _, rule in alerting_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, []).append(rule["alert"])
    unknown = {name: where for name, where in used.items() if name not in CATALOGUE}
    assert unknown == {}
    assert used.keys() >= SAFETY_METRICS, "a safety metric no dashboard or rule shows"


def test_no_query_rule_or_label_names_a_participant():
    texts = [RULES.read_text(), *(path.read_text() for path in DASHBOARDS.glob("*.json"))]
    assert not any("participant_id" in text for text in texts)


def test_every_dashboard_query_is_valid_promql_in_a_real_prometheus(prometheus):
    with pytest.raises(PrometheusError, match="bad_data"):
        prometheus.query("sum by (dose_level (toxwatch_participants)")
    queries = dashboard_queries(DASHBOARDS, VARIABLES)
    assert len(queries) >= 30
    failures = []
    for query in queries:
        assert "$" not in query.expr, query
        try:
            prometheus.query(query.expr)
        except PrometheusError as error:
            failures.append((query, str(error)))
    assert failures == []


def test_every_dashboard_variable_query_runs_in_a_real_prometheus(prometheus):
    for variable in template_variables(DASHBOARDS):
        match, label = parse_label_values(variable.query)
        assert prometheus.label_values(label, substitute(match or "", VARIABLES) or None) == []
