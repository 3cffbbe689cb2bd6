"""``toxwatch demo``: the whole pipeline embedded, fed by a simulated cohort.

Starts the embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` names one), a fresh
SQLite event store under the data folder, and as child processes the ingest worker,
the relay, the trial monitor, the alerts process, the dispatcher and the HTTP API;
streams a simulated LUCAR-G79 cohort in accelerated time, and shows a live feed of
the derived events read back from ``toxwatch.safety.v1`` and of the alerts as a local
safety desk receives them: a signed webhook and a mailbox (a local SMTP server), both
started by the demo. It prints the API's address with a ready monitor token.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from rich.console import Console

from infra.broker import EmbeddedBroker, ensure_topics, free_port
from infra.kafka import reading_consumer, reliable_producer
from infra.receivers import Delivery, SmtpSink, WebhookReceiver
from infra.settings import Settings
from services.bootstrap import build_application
from services.simulator import CohortSpec, SimulatedMessage, simulate_cohort
from services.tokens import TokenService

TRIAL_LEVEL_KEY = b"-"
FEED_TYPES = frozenset(
    {
        "crs.graded",
        "crs.resolved",
        "icans.graded",
        "icans.resolved",
        "icaht.graded",
        "grade.revised",
        "adjudication.requested",
        "toxicity.graded",
        "iechs.screen_positive",
        "protocol.deviation",
        "sae.clock_started",
        "sae.reminder_due",
        "dlt.candidate",
        "dlt.confirmed",
        "dlt.ruled_out",
        "dlt.window_closed",
        "dose.decision",
        "mtd.estimated",
        "stopping_rule.triggered",
        "enrollment.paused",
        "enrollment.resumed",
    }
)
#: The trial's protocol file, used when no other is configured.
TRIAL_PROTOCOL = Path(__file__).resolve().parents[1] / "protocols" / "lucar-g79.toml"
_COLOUR = {0: "dim", 1: "cyan", 2: "yellow", 3: "red", 4: "bold red", 5: "bold red"}


@dataclass(frozen=True)
class DemoOptions:
    duration: float | None = None
    stream_seconds: float = 90.0
    participants: int = 42
    seed: int = 79
    metrics_port: int = 0
    dlt_heavy_dose: str | None = None


@dataclass
class _Progress:
    total: int = 0
    produced: int = 0
    derived: int = 0
    crs_changes: int = 0
    rejected: int = 0
    alerts_delivered: int = 0
    mails: int = 0
    done_streaming: bool = False


def cohort_ending_now(options: DemoOptions, now: datetime) -> list[SimulatedMessage]:
    """The simulated cohort shifted so that its last message is due just before now."""
    spec = CohortSpec(
        seed=options.seed,
        participants=options.participants,
        dlt_heavy_dose=options.dlt_heavy_dose,
    )
    draft = simulate_cohort(spec)
    span = max(m.deliver_at for m in draft) - spec.start
    start = (now - span - timedelta(hours=1)).astimezone(spec.start.tzinfo)
    return simulate_cohort(replace(spec, start=start.replace(microsecond=0)))


def run_demo(settings: Settings, options: DemoOptions) -> int:
    console = Console()
    run_dir = settings.data_dir / "demo" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True, exist_ok=True)
    broker: EmbeddedBroker | None = None
    children: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    progress = _Progress()
    secret = secrets.token_hex(32)
    webhook = WebhookReceiver(
        secret.encode(), on_delivery=lambda d: _show_delivery(console, d, progress)
    )
    mailbox = SmtpSink()
    try:
        webhook.start()
        mailbox.start()
        servers = settings.kafka_bootstrap_servers
        if not servers:
            broker = EmbeddedBroker(binary=settings.tansu_bin, log_path=run_dir / "broker.log")
            servers = broker.start().bootstrap_servers
        ensure_topics(servers, settings.topics, settings.partitions)
        metrics_port = options.metrics_port or free_port()
        relay_port = free_port()
        safety_port = free_port()
        dispatcher_port = free_port()
        protocol_file = settings.protocol_file
        if protocol_file is None and TRIAL_PROTOCOL.exists():
            protocol_file = TRIAL_PROTOCOL
        env = os.environ | {
            "KAFKA_BOOTSTRAP_SERVERS": servers,
            "TOXWATCH_DATA_DIR": str(run_dir),
            "TOXWATCH_STORE": "sqlite",
            "TOXWATCH_PARTITIONS": str(settings.partitions),
        }
        if protocol_file is not None:
            env["TOXWATCH_PROTOCOL_FILE"] = str(protocol_file)
        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        env |= {
            "TOXWATCH_ALERT_ENDPOINTS_FILE": str(_endpoints(run_dir, settings, webhook.url)),
            "TOXWATCH_WEBHOOK_SECRET": secret,
            "TOXWATCH_SMTP_HOST": "127.0.0.1",
            "TOXWATCH_SMTP_PORT": str(mailbox.port),
            "TOXWATCH_API_PORT": str(api_port),
            "TOXWATCH_API_BASE_URL": api_url,
            "TOXWATCH_DISPATCH_MAX_BACKOFF_SECONDS": "5",
        }
        # Create the store's tables once, before the processes that share it start.
        app = build_application(
            settings.model_copy(update={"data_dir": run_dir, "store": "sqlite"})
        )
        token = (
            TokenService(app)
            .create(
                "monitor",
                name="demo safety monitor",
                created_by="toxwatch demo",
                reason="demo",
                now=datetime.now(UTC),
            )
            .token
        )
        app.close()
        children.append(_spawn("alerts", env, run_dir))
        children.append(
            _spawn("dispatcher", env | {"TOXWATCH_METRICS_PORT": str(dispatcher_port)}, run_dir)
        )
        children.append(_spawn("api", env | {"TOXWATCH_METRICS_PORT": str(safety_port)}, run_dir))
        children.append(
            _spawn("worker", env | {"TOXWATCH_METRICS_PORT": str(metrics_port)}, run_dir)
        )
        children.append(_spawn("relay", env | {"TOXWATCH_METRICS_PORT": str(relay_port)}, run_dir))
        children.append(_spawn("monitor", env, run_dir))
        console.rule("[bold]ToxWatch demo: LUCAR-G79 (NCT07049081), simulated cohort")
        console.print(f"broker      {servers}" + (" (embedded tansu)" if broker else ""))
        console.print(f"event store {run_dir / 'toxwatch.sqlite3'}")
        console.print(f"protocol    {protocol_file or 'built-in template values'}")
        for job, port in (
            ("worker", metrics_port),
            ("relay", relay_port),
            ("safety", safety_port),
            ("dispatcher", dispatcher_port),
        ):
            console.print(f"metrics     {job:<10}  http://127.0.0.1:{port}/metrics")
        console.print(f"logs        {run_dir}")
        console.print(f"API         {api_url}/docs   (OpenAPI: {api_url}/openapi.json)")
        console.print(f"token       {token}   (role monitor)")
        console.print(f"dashboard   {api_url}/dashboard   (sign in with the token)")
        console.print(
            f"try         curl -H 'Authorization: Bearer {token}' '{api_url}/alerts?status=open'"
        )
        console.print(f"live feed   curl -N -H 'Authorization: Bearer …' {api_url}/alerts/stream")
        console.print(
            f"alerts to   webhook {webhook.url} (HMAC-signed), mailbox smtp://127.0.0.1:"
            f"{mailbox.port}, Kafka {settings.alerts_topic}"
        )
        messages = cohort_ending_now(options, datetime.now(UTC))
        progress.total = len(messages)
        console.print(
            f"streaming {len(messages)} messages of {options.participants} participants "
            f"over ~{options.stream_seconds:g} s; Ctrl-C stops"
        )
        producer_thread = threading.Thread(
            target=_stream,
            args=(servers, settings, messages, options.stream_seconds, progress, stop),
            daemon=True,
        )
        producer_thread.start()
        _feed(console, servers, settings, progress, stop, options.duration, children)
    except KeyboardInterrupt:
        stop.set()
    finally:
        stop.set()
        console.print("stopping…")
        for child in children:
            _terminate(child)
        webhook.stop()
        mailbox.stop()
        if broker is not None:
            broker.stop()
        console.print(
            f"{progress.alerts_delivered} alert messages delivered to the webhook, "
            f"{len(mailbox.messages)} mails received"
        )
    return 0


def _endpoints(run_dir: Path, settings: Settings, webhook_url: str) -> Path:
    """The demo's delivery endpoints: Kafka for integrations, the local safety desk's
    webhook, and the on-call mailbox for what reaches e-mail (critical, escalations)."""
    path = run_dir / "alert-endpoints.toml"
    path.write_text(
        f"""[[endpoints]]
id = "integrations"
kind = "kafka"
topic = "{settings.alerts_topic}"

[[endpoints]]
id = "safety-desk"
kind = "webhook"
url = "{webhook_url}"

[[endpoints]]
id = "on-call-mail"
kind = "email"
to = ["safety-desk@sponsor.example"]
roles = ["safety_monitor", "medical_monitor", "principal_investigator", "src_chair"]
"""
    )
    return path


_SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow"}


def _show_delivery(console: Console, delivery: Delivery, progress: _Progress) -> None:
    """One alert message as the safety desk's webhook received it."""
    progress.alerts_delivered += 1
    event = delivery.body
    data = event.get("data", {})
    severity = str(data.get("severity", "info"))
    style = _SEVERITY_STYLE.get(severity, "cyan")
    who = event.get("participant_id", "?")
    if event.get("type") == "alert.escalated":
        text = f"ESCALATED to {data.get('to')} ({data.get('overdue_minutes')} min unacknowledged)"
    elif event.get("type") == "alert.acknowledged":
        text = f"acknowledged by {data.get('by')}"
    else:
        revision = data.get("revision", 1)
        text = f"{data.get('title')}" + (f" (revision {revision})" if revision != 1 else "")
    signed = "signed ✓" if delivery.valid else "BAD SIGNATURE"
    console.print(
        f"[{style}]ALERT {severity.upper()}[/{style}] {data.get('category')} {who}: {text} "
        f"[dim]webhook, {signed}[/dim]"
    )


def _spawn(command: str, env: dict[str, str], run_dir: Path) -> subprocess.Popen[bytes]:
    log = (run_dir / f"{command}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", command],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _terminate(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(15)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(5)


def _stream(
    servers: str,
    settings: Settings,
    messages: list[SimulatedMessage],
    stream_seconds: float,
    progress: _Progress,
    stop: threading.Event,
) -> None:
    producer: KafkaProducer = reliable_producer(servers)
    partitions = sorted(producer.partitions_for(settings.clinical_topic))
    first = messages[0].deliver_at
    span = (messages[-1].deliver_at - first).total_seconds() or 1.0
    scale = span / max(stream_seconds, 0.001)
    started = time.monotonic()
    try:
        for message in messages:
            if stop.is_set():
                return
            due = started + (message.deliver_at - first).total_seconds() / scale
            delay = due - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            if message.key == TRIAL_LEVEL_KEY:
                for partition in partitions:  # a trial-level tick reaches every partition
                    producer.send(
                        settings.clinical_topic,
                        key=message.key,
                        value=message.value,
                        partition=partition,
                    )
            else:
                producer.send(settings.clinical_topic, key=message.key, value=message.value)
            progress.produced += 1
        producer.flush()
        progress.done_streaming = True
    finally:
        producer.close()


def _feed(
    console: Console,
    servers: str,
    settings: Settings,
    progress: _Progress,
    stop: threading.Event,
    duration: float | None,
    children: list[subprocess.Popen[bytes]],
) -> None:
    consumer = reading_consumer(
        servers, settings.safety_topic, settings.rejected_topic, consumer_timeout_ms=500
    )
    started = time.monotonic()
    last_status = 0.0
    caught_up_reported = False
    try:
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    if record.topic == settings.rejected_topic:
                        progress.rejected += 1
                        error = dict(record.headers or []).get("error", b"{}")
                        console.print(f"[red]rejected[/red] {json.loads(error).get('code')}")
                        continue
                    progress.derived += 1
                    event = json.loads(record.value)
                    if event["type"] in FEED_TYPES and _worth_showing(event):
                        progress.crs_changes += event["type"].startswith("crs.")
                        console.print(_describe(event))
            now = time.monotonic()
            if now - last_status >= 5:
                last_status = now
                console.print(
                    f"[dim]produced {progress.produced}/{progress.total} · derived "
                    f"{progress.derived} · CRS events {progress.crs_changes} · rejected "
                    f"{progress.rejected} · alerts delivered {progress.alerts_delivered}[/dim]"
                )
            for child in children:
                if child.poll() is not None:
                    console.print(f"[red]a child process exited ({child.args}); see its log[/red]")
                    return
            if progress.done_streaming and not caught_up_reported:
                caught_up_reported = True
                console.print("[green]cohort streamed; Ctrl-C to stop[/green]")
            if duration is not None and now - started >= duration:
                return
    finally:
        consumer.close()


def _worth_showing(event: dict[str, Any]) -> bool:
    """Toxicities from grade 3 (and their return), everything else as it comes."""
    if event["type"] != "toxicity.graded":
        return True
    data = event["data"]
    return max(int(data["grade"]), int(data["previous_grade"])) >= 3


_TRIAL_TYPES = frozenset(
    {
        "dose.decision",
        "mtd.estimated",
        "stopping_rule.triggered",
        "enrollment.paused",
        "enrollment.resumed",
    }
)


def _describe_trial(kind: str, data: dict[str, Any]) -> str:
    revised = " (revised)" if data.get("revises") else ""
    if kind == "dose.decision":
        colour = {"escalate": "green", "stay": "cyan", "de_escalate": "yellow"}.get(
            data["decision"], "bold red"
        )
        return (
            f"{data['design']} at {data['dose_level']}: [{colour}]{data['decision']}"
            f"[/{colour}] ({data['y']} DLT of {data['n']} evaluable){revised}"
        )
    if kind == "mtd.estimated":
        return f"MTD estimate: {data['dose_level'] or 'none'} ({data['reason']}){revised}"
    if kind == "stopping_rule.triggered":
        return (
            f"[bold red]stopping rule {data['rule_id']}[/bold red] ({data['scope']}): "
            f"{data['y']} of {data['n']}, boundary {data['boundary']}{revised}"
        )
    verb = (
        "[bold red]enrolment paused[/bold red]"
        if kind == "enrollment.paused"
        else ("[green]enrolment resumed[/green]")
    )
    return f"{verb} by {data['by']}: {data['reason']}"


def _describe(event: dict[str, Any]) -> str:
    data = event["data"]
    who = f"{event['participant_id']} {event.get('dose_level') or '?'}"
    when = str(event["effective_at"])[:16].replace("T", " ")
    kind = event["type"]
    day = data.get("study_day")
    on_day = f"D{day:+}  " if isinstance(day, int) else ""
    if kind in ("crs.resolved", "icans.resolved"):
        term = kind.split(".")[0].upper()
        return (
            f"{when}  {who}  [green]{term} episode {data['episode']} resolved[/green] "
            f"(max grade {data['max_grade']}, {data['duration_hours']} h)"
        )
    if kind == "grade.revised":
        return (
            f"{when}  {who}  [yellow]{data['term']} revised {data['from_grade']} → "
            f"{data['to_grade']}[/yellow] ({data['because']})"
        )
    if kind == "adjudication.requested":
        return f"{when}  {who}  [magenta]adjudication requested[/magenta]: {data['question']}"
    if kind.startswith("dlt."):
        if kind == "dlt.window_closed":
            verdict = "evaluable" if data["evaluable"] else "not evaluable"
            dlt = ", DLT" if data["had_dlt"] else ", no DLT"
            return f"{when}  {who}  [blue]DLT window closed[/blue] ({verdict}{dlt})"
        label = {
            "dlt.candidate": "DLT candidate",
            "dlt.confirmed": "DLT confirmed",
            "dlt.ruled_out": "DLT ruled out",
        }[kind]
        colour = "bold red" if kind == "dlt.confirmed" else "blue"
        return (
            f"{when}  {who}  [{colour}]{label}[/{colour}] {data['rule']} "
            f"({data['term']}, grade {data['grade']})"
        )
    if kind == "iechs.screen_positive":
        return (
            f"{when}  {who}  [red]IEC-HS screen positive[/red]: {', '.join(data['criteria_met'])}"
        )
    if kind == "protocol.deviation":
        return f"{when}  {who}  [red]protocol deviation[/red] {data['rule']}: {data['detail']}"
    if kind == "sae.clock_started":
        return (
            f"{when}  {who}  [red]SAE clock[/red] {data['obligation']} for {data['ae_id']}, "
            f"due {str(data['deadline_at'])[:16]}"
        )
    if kind in _TRIAL_TYPES:
        return f"{when}  [bold]trial[/bold]  {_describe_trial(kind, data)}"
    if kind == "sae.reminder_due":
        due = str(data["deadline_at"])[:16].replace("T", " ")
        state = "[bold red]OVERDUE[/bold red]" if data["overdue"] else "[red]due soon[/red]"
        return (
            f"{when}  {who}  SAE report {state}: {data['obligation']} for {data['ae_id']} at {due}"
        )
    if kind == "toxicity.graded":
        grade = int(data["grade"])
        colour = _COLOUR[grade]
        return (
            f"{when}  {who}  [{colour}]{data['term']} grade {grade}[/{colour}] "
            f"(was {data['previous_grade']}; {data['criteria']})"
        )
    grade = int(data["grade"])
    colour = _COLOUR[grade]
    if kind == "icaht.graded":
        return (
            f"{when}  {who}  [{colour}]ICAHT {data['phase']} grade {grade}[/{colour}] "
            f"({data['days_anc_le_0_5']} days ANC <= 0.5)"
        )
    term = kind.split(".")[0].upper()
    return (
        f"{when}  {who}  {on_day}[{colour}]{term} grade {grade}[/{colour}] "
        f"(was {data['previous_grade']}): {data['explanation']}"
    )
