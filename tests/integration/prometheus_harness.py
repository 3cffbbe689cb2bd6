"""A real Prometheus for tests, and the queries of the Grafana dashboards.

:class:`PrometheusServer` runs the Debian ``prometheus`` binary on a free loopback
port with a given configuration and its TSDB under a test's temporary folder::

    config = '''
    global: {scrape_interval: 1s, evaluation_interval: 1s}
    rule_files: [rules/toxwatch.rules.yml]
    scrape_configs:
      - job_name: toxwatch-safety
        static_configs: [{targets: ["127.0.0.1:8079"]}]
    '''
    rules = {"rules/toxwatch.rules.yml": RULES.read_text()}
    with PrometheusServer(config, tmp_path, files=rules) as prometheus:
        prometheus.wait_for_targets_up(30)
        values = prometheus.variable_values(template_variables(DASHBOARDS))
        for query in dashboard_queries(DASHBOARDS, values):
            assert prometheus.query(query.expr), query

Relative paths in the configuration (rule files) resolve against the folder of the
configuration file, which is where ``files`` are written.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import httpx

#: Values for Grafana's built-in variables when a panel's query runs outside Grafana.
GRAFANA_BUILTINS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:(?P<match>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$"
)


def prometheus_binary() -> str | None:
    """The ``prometheus`` executable, or ``None`` where it is not installed."""
    found = shutil.which("prometheus")
    if found:
        return found
    return "/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None


class PrometheusError(RuntimeError):
    """Prometheus did not start, or answered an API call with an error."""


class PanelQuery(NamedTuple):
    """One target of one dashboard panel."""

    dashboard: str
    panel_title: str
    expr: str


class TemplateVariable(NamedTuple):
    """A dashboard's query variable, ``label_values(<match>, <label>)``."""

    dashboard: str
    name: str
    query: str


# ---------------------------------------------------------------- dashboards


def load_dashboards(dashboards_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every dashboard JSON of the folder, parsed, by file name."""
    return [(path, json.loads(path.read_text())) for path in sorted(dashboards_dir.glob("*.json"))]


def iter_panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, the ones inside (collapsed) rows included; rows themselves too."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def substitute(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """``expr`` with Grafana variables (``$x``, ``${x}``, ``[[x]]``) replaced: those of
    ``variables``, then the built-ins of :data:`GRAFANA_BUILTINS`. Unknown ones stay."""
    values = GRAFANA_BUILTINS | dict(variables or {})

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return values.get(name, match.group(0))

    return _VARIABLE.sub(replace, expr)


def dashboard_queries(
    dashboards_dir: Path, variables: Mapping[str, str] | None = None
) -> list[PanelQuery]:
    """Every panel target's PromQL, as ``(dashboard title, panel title, expr)``, with
    the variables substituted (see :func:`substitute`)."""
    queries = []
    for _, board in load_dashboards(dashboards_dir):
        for panel in iter_panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    expr = substitute(target["expr"], variables)
                    queries.append(PanelQuery(board["title"], panel.get("title", ""), expr))
    return queries


def template_variables(dashboards_dir: Path) -> list[TemplateVariable]:
    """The query variables of every dashboard, in their order (a later one may use an
    earlier one, as ``dose_level`` uses ``trial``)."""
    found = []
    for _, board in load_dashboards(dashboards_dir):
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("query", "")
            found.append(TemplateVariable(board["title"], variable["name"], str(query)))
    return found


def parse_label_values(query: str) -> tuple[str | None, str]:
    """``label_values(match, label)`` as ``(match, label)``; ``match`` may be ``None``."""
    parsed = _LABEL_VALUES.match(query)
    if parsed is None:
        raise ValueError(f"not a label_values() query: {query!r}")
    return parsed.group("match"), parsed.group("label")


# ---------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrometheusServer:
    """A Prometheus process of a test, on a free loopback port.

    ``config_text`` is written to ``<tmp_path>/prometheus/prometheus.yml`` and each of
    ``files`` (relative path -> text) beside it; the TSDB lives in
    ``<tmp_path>/prometheus/data`` and the log in ``<tmp_path>/prometheus/prometheus.log``.
    """

    def __init__(
        self,
        config_text: str,
        tmp_path: Path,
        *,
        files: Mapping[str, str] | None = None,
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.home = Path(tmp_path) / "prometheus"
        self.config_text = config_text
        self.files = dict(files or {})
        self.binary = binary or prometheus_binary()
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "prometheus.log"

    def log(self, last: int = 4000) -> str:
        """The end of the process's log."""
        try:
            return self.log_path.read_text(errors="replace")[-last:]
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------ lifecycle

    def start(self) -> PrometheusServer:
        if self.binary is None:
            raise PrometheusError("the prometheus binary is not installed")
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "prometheus.yml"
        config.write_text(self.config_text)
        for relative, text in self.files.items():
            path = self.home / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for _ in range(3):  # another process may take the free port before Prometheus does
            self.port = _free_port()
            if self._launch(config):
                self._client = httpx.Client(base_url=self.url, timeout=10.0)
                return self
        raise PrometheusError(f"Prometheus did not start:\n{self.log()}")

    def _launch(self, config: Path) -> bool:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.home / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "address already in use" in self.log():
                    return False
                raise PrometheusError(
                    f"Prometheus exited ({self.process.returncode}):\n{self.log()}"
                )
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"Prometheus not ready in {self.startup_timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ HTTP API

    def api(self, path: str, **params: Any) -> Any:
        """The ``data`` of a ``/api/v1/<path>`` answer; :class:`PrometheusError` when its
        status is not ``success``."""
        if self._client is None:
            raise PrometheusError("Prometheus is not running")
        answer = self._client.get(f"/api/v1/{path}", params=params)
        try:
            document = answer.json()
        except ValueError as error:
            raise PrometheusError(f"{path}: HTTP {answer.status_code}: {answer.text}") from error
        if document.get("status") != "success":
            raise PrometheusError(
                f"{path} {params}: {document.get('errorType')}: {document.get('error')}"
            )
        return document.get("data")

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result (``[{"metric": {...}, "value": [t, "v"]}, ...]``;
        a scalar or string result as a one-element list)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        result = data["result"]
        return result if data["resultType"] in ("vector", "matrix") else [result]

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """The values of ``label`` (among the series ``match`` selects)."""
        params = {"match[]": match} if match else {}
        return list(self.api(f"label/{label}/values", **params))

    def variable_values(
        self, variables: Iterable[TemplateVariable], prefer: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """A value for each dashboard variable, as Grafana would pick it (the first, in
        sorted order) unless ``prefer`` names one; resolved in order, so a variable can
        use an earlier one. A variable with no value is left out."""
        chosen: dict[str, str] = {}
        for variable in variables:
            if variable.name in chosen:
                continue
            match, label = parse_label_values(variable.query)
            values = sorted(self.label_values(label, substitute(match, chosen) if match else None))
            wanted = (prefer or {}).get(variable.name)
            if wanted is not None and wanted in values:
                chosen[variable.name] = wanted
            elif values:
                chosen[variable.name] = values[0]
        return chosen

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def wait_for_targets_up(self, timeout: float) -> list[dict[str, Any]]:
        """Wait until every active target has been scraped successfully; the targets."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets()
            if targets and all(target["health"] == "up" for target in targets):
                return targets
            if time.monotonic() > deadline:
                states = [(t["labels"].get("job"), t["scrapeUrl"], t["health"], t["lastError"])
                          for t in targets]  # fmt: skip
                raise TimeoutError(f"targets not all up after {timeout} s: {states}")
            time.sleep(0.25)

    def rule_groups(self) -> list[dict[str, Any]]:
        """The loaded rule groups (``/api/v1/rules``), with each rule's health."""
        return list(self.api("rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        """The active (pending or firing) alerts (``/api/v1/alerts``)."""
        return list(self.api("alerts")["alerts"])

    def wait_for_alert(
        self, alertname: str, timeout: float, *, state: str = "firing", **labels: str
    ) -> dict[str, Any]:
        """Wait until ``alertname`` is in ``state`` with (at least) ``labels``; the alert."""
        deadline = time.monotonic() + timeout
        while True:
            for alert in self.alerts():
                have = alert["labels"]
                if (
                    have.get("alertname") == alertname
                    and alert["state"] == state
                    and all(have.get(k) == v for k, v in labels.items())
                ):
                    return alert
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no {state} {alertname} {labels} after {timeout} s: {self.alerts()}"
                )
            time.sleep(0.25)
