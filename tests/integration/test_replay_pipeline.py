"""``toxwatch replay`` over a store the real processes wrote (issue 7, acceptance):
the full simulated LUCAR-G79 cohort (42 participants, 90 days of follow-up,
malformed messages, hourly clock ticks, a DLT-heavy top dose level) streamed through
the broker to the worker, with the trial monitor and the alerts process following
the store as they do in production; halfway through, a protocol amendment is
activated and a monitor acknowledges the open alerts. Rebuilt from position zero,
every participant's derivations, the trial monitor's facts, tallies and decisions,
every alert (acknowledgements included) and every read model come out identical, on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from services.alerts import acknowledge
from services.api import ReadModels
from services.simulator import CohortSpec, simulate_cohort
from tests.conftest import Kafka, Services, Store, Topics, next_offsets, toxwatch_executable
from tests.integration import wait_until

pytestmark = pytest.mark.broker

PROTOCOL = Path(__file__).resolve().parents[2] / "protocols" / "lucar-g79.toml"
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
COHORT = CohortSpec(dlt_heavy_dose="DL3")


def amendment(tmp_path: Path) -> Path:
    """The same rules as a new protocol version (what an approved amendment that
    changes nothing clinical looks like to the store: a version in force)."""
    text = PROTOCOL.read_text()
    assert 'version = "0.1"' in text
    path = tmp_path / "lucar-g79-amendment.toml"
    path.write_text(text.replace('version = "0.1"', 'version = "0.2"', 1))
    return path


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [toxwatch_executable(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("store", STORES, indirect=True)
def test_a_full_cohort_replays_identically(
    broker: Kafka, fresh_topics: Topics, store: Store, services: Services, tmp_path: Path
) -> None:
    messages = simulate_cohort(COHORT)
    half = len(messages) // 2
    env = (
        fresh_topics.env()
        | store.env
        | {
            "TOXWATCH_PROTOCOL_FILE": str(PROTOCOL),
            "TOXWATCH_LOG_FORMAT": "json",
            "TOXWATCH_LOG_LEVEL": "INFO",
        }
    )
    store.initialise()
    for command in ("worker", "monitor", "alerts"):
        services.start(command, env)
    application = store.open()
    try:
        ends: dict[int, int] = {}

        def applied() -> bool:
            positions = application.ingest_positions(fresh_topics.clinical, ends)
            return all(positions[p] >= end for p, end in ends.items())

        def settled() -> bool:
            lag = ReadModels(application).lag()
            return applied() and not lag["alerts"] and not lag["trial_monitor"]

        first = broker.produce_clinical(
            fresh_topics.clinical, [(m.key, m.value) for m in messages[:half]]
        )
        ends = next_offsets(first)
        assert wait_until(settled, timeout=900, interval=1), services.logs()

        activated = run(
            services.environment(env),
            "protocol", "activate", str(amendment(tmp_path)),
            "--by", "pi:chen", "--reason", "amendment 2 approved",
        )  # fmt: skip
        assert activated.returncode == 0, activated.stderr
        models = ReadModels(application)
        models.refresh()
        open_alerts = [row for row in models.alerts.rows.values() if row.status == "open"]
        assert open_alerts, "the first half of the cohort raises alerts"
        for row in open_alerts[:5]:
            acknowledge(
                application,
                row.alert_id,
                by="monitor:ana",
                at=datetime.now(UTC),
                comment="reviewed with the site",
                revision=row.revision,
            )

        second = broker.produce_clinical(
            fresh_topics.clinical, [(m.key, m.value) for m in messages[half:]]
        )
        ends = next_offsets([*first, *second])
        assert wait_until(settled, timeout=1500, interval=1), services.logs()
        services.stop_all()

        models = ReadModels(application)
        models.refresh()
        categories = {row.category for row in models.alerts.rows.values()}
        assert {"crs", "icans", "dlt", "stopping_rule", "data_quality"} <= categories
        acknowledged = sum(
            row.acknowledged_by == "monitor:ana" for row in models.alerts.rows.values()
        )
        assert acknowledged == min(5, len(open_alerts))
    finally:
        application.close()

    into = (
        str(tmp_path / "rebuilt.sqlite3")
        if store.kind == "sqlite"
        else f"{store.settings_kwargs['postgres_schema']}_rebuilt"
    )
    report_path = tmp_path / "replay.json"
    try:
        replayed = run(
            services.environment(env), "replay", "--into", into, "--report", str(report_path)
        )
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        report: dict[str, Any] = json.loads(report_path.read_text())
    finally:
        if store.kind == "postgres":
            _drop_schema(store, into)

    assert report["identical"] is True
    assert report["differences"] == []
    assert report["rebuilt_events"] == report["live_events"] > len(messages)
    compared = report["compared"]
    assert compared["participant"] == COHORT.participants
    assert compared["trial"] == 1
    assert compared["dose level"] >= 3
    assert compared["alert"] == len(models.alerts.rows)
    assert set(report["views"]) == {
        "alerts inbox", "safety metrics", "kinetics", "participants", "DSMB packet data",
        "audit trail",
    }  # fmt: skip
    assert set(report["views"].values()) == {"identical"}
    assert "identical" in replayed.stdout


def assert_logs_are_json_without_identifiers(services: Services, messages: list[Any]) -> None:
    """Issue 8, item 6: the services log one JSON object per line, and no line names a
    participant, a site or a clinical event (the whole cohort went through them)."""
    identifiers: set[str] = set()
    for message in messages:
        try:
            event = json.loads(message.value)
        except ValueError:
            continue  # a malformed message of the stream
        if isinstance(event, dict):
            for name in ("participant_id", "site_id", "event_id"):
                value = event.get(name)
                if isinstance(value, str) and len(value) >= 5 and value != "-":
                    identifiers.add(value)
    assert len(identifiers) > 100
    lines = 0
    for service in services.started:
        for line in service.log_path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)  # every line is a JSON log record
            assert {"time", "level", "logger", "message", "service"} <= set(record), line
            named = [i for i in identifiers if i in line]
            assert not named, f"{service.name} logged {named[:3]}: {line[:300]}"
            lines += 1
    assert lines > 0, "the services logged nothing at INFO"


def _drop_schema(store: Store, name: str) -> None:
    kwargs = store.settings_kwargs
    with psycopg.connect(
        host=kwargs["postgres_host"],
        port=kwargs["postgres_port"],
        dbname=kwargs["postgres_dbname"],
        user=kwargs["postgres_user"],
        password=kwargs["postgres_password"],
        autocommit=True,
    ) as connection:
        connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
