"""The ``toxwatch`` command line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from infra.settings import Settings
from services.faults import faults_app
from services.fuzz import fuzz_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
protocol_app = typer.Typer(no_args_is_help=True, help="Versioned protocol files.")
bench_app = typer.Typer(no_args_is_help=True, help="Throughput against a same-run baseline.")
rules_app = typer.Typer(no_args_is_help=True, help="Dose-finding designs and stopping rules.")
app.add_typer(bench_app, name="bench")
app.add_typer(rules_app, name="rules")
app.add_typer(protocol_app, name="protocol")
token_app = typer.Typer(no_args_is_help=True, help="API tokens (stored hashed).")
report_app = typer.Typer(no_args_is_help=True, help="Reports from the event store.")
app.add_typer(report_app, name="report")
dashboard_app = typer.Typer(no_args_is_help=True, help="The built-in HTML dashboard.")
app.add_typer(dashboard_app, name="dashboard")
app.add_typer(token_app, name="token")
app.add_typer(fuzz_app, name="fuzz")
app.add_typer(faults_app, name="faults")


def _settings() -> Settings:
    return Settings()


@app.command()
def schema(
    derived: Annotated[
        bool, typer.Option(help="The derived safety event envelope instead.")
    ] = False,
) -> None:
    """Print the JSON Schema of the contract's clinical events (or derived events)."""
    from domain.contract import SafetyEvent, clinical_event_schema

    document = SafetyEvent.model_json_schema(by_alias=True) if derived else clinical_event_schema()
    typer.echo(json.dumps(document, indent=2, sort_keys=True))


@app.command()
def process(
    source: Annotated[Path, typer.Argument(help="Clinical JSONL file, or - for stdin.")],
    protocol: Annotated[Path | None, typer.Option(help="Protocol TOML file.")] = None,
) -> None:
    """Apply a clinical JSONL stream offline; derived safety events go to stdout."""
    from services.bootstrap import load_protocol
    from services.offline import in_memory_application, process_lines

    application = in_memory_application(load_protocol(protocol))
    stream = sys.stdin.buffer if str(source) == "-" else source.open("rb")
    with stream:
        summary = process_lines(stream, sys.stdout, app=application)
    outcome = summary.outcome
    typer.echo(
        f"{summary.lines} lines: {outcome.accepted} accepted, {outcome.duplicates} duplicates, "
        f"{outcome.rejected} rejected {dict(outcome.rejected_by_code)}",
        err=True,
    )


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="JSONL file to write (- for stdout).")] = Path("-"),
    seed: int = 79,
    participants: int = 42,
    malformed: Annotated[bool, typer.Option(help="Include malformed messages.")] = True,
) -> None:
    """Write a simulated LUCAR-G79 cohort as clinical JSONL."""
    from services.simulator import CohortSpec, simulate_cohort, write_jsonl

    messages = simulate_cohort(
        CohortSpec(seed=seed, participants=participants, malformed=malformed)
    )
    if str(out) == "-":
        write_jsonl(messages, sys.stdout.buffer)
    else:
        write_jsonl(messages, out)
    typer.echo(f"{len(messages)} messages", err=True)


@app.command()
def broker(
    partitions: Annotated[int, typer.Option(help="Partitions of each topic.")] = 4,
) -> None:
    """Run the embedded broker (tansu) with the ToxWatch topics until Ctrl-C."""
    from infra.broker import EmbeddedBroker, ensure_topics

    settings = _settings()
    with EmbeddedBroker(binary=settings.tansu_bin) as embedded:
        ensure_topics(embedded.bootstrap_servers, settings.topics, partitions)
        typer.echo(f"KAFKA_BOOTSTRAP_SERVERS={embedded.bootstrap_servers}")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


def _bootstrap_servers(settings: Settings) -> str:
    if not settings.kafka_bootstrap_servers:
        typer.echo("KAFKA_BOOTSTRAP_SERVERS is not set (run `toxwatch broker` for one)", err=True)
        raise typer.Exit(2)
    return settings.kafka_bootstrap_servers


@app.command()
def worker() -> None:
    """Run the ingest worker (faust) against KAFKA_BOOTSTRAP_SERVERS."""
    from prometheus_client import start_http_server

    from infra.broker import ensure_topics
    from infra.metrics import Metrics
    from services.bootstrap import build_application
    from services.worker import run_worker

    settings = _settings()
    servers = _bootstrap_servers(settings)
    ensure_topics(servers, settings.topics, settings.partitions)
    metrics = Metrics()
    if settings.metrics_port:
        start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
        )
    sys.argv = [sys.argv[0], "worker"]
    run_worker(settings, servers, build_application(settings), metrics)


@app.command()
def relay() -> None:
    """Run the relay: derived events from the store to Kafka, in log order."""
    from prometheus_client import start_http_server

    from infra.kafka import TopicIds, reliable_producer
    from infra.metrics import Metrics
    from services.bootstrap import build_application
    from services.relay import OutputReplaced, Relay

    settings = _settings()
    servers = _bootstrap_servers(settings)
    metrics = Metrics()
    if settings.metrics_port:
        start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
        )
    producer = reliable_producer(servers)
    relay_ = Relay(build_application(settings), producer, settings, metrics)
    topic_ids = TopicIds(servers)
    relay_.topic_ids = topic_ids.describe
    relay_.reconcile(servers)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        relay_.run(stop)
    except KeyboardInterrupt:
        pass
    except OutputReplaced as replaced:
        # Its successor starts with a new producer and reconciles: the supervisor's
        # restart (compose's policy), as for the worker's recreated inbound topic.
        print(f"relay: {replaced}: exiting to restart", file=sys.stderr)
        raise SystemExit(75) from None
    finally:
        producer.close(timeout=5)
        topic_ids.close()


@app.command()
def monitor() -> None:
    """Run the trial monitor: dose decisions and stopping rules from the store's log."""
    from services.bootstrap import build_application
    from services.monitor import MONITOR_TRACKING, TrialMonitor

    settings = _settings()
    metrics = _follower_metrics(settings, MONITOR_TRACKING)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        TrialMonitor(build_application(settings)).follow(stop, on_pass=metrics.passed)


@app.command()
def alerts() -> None:
    """Run the alerts process: alert decisions and escalations from the store's log."""
    from services.alerts import ALERTS_TRACKING, AlertDesk
    from services.bootstrap import build_application

    settings = _settings()
    metrics = _follower_metrics(settings, ALERTS_TRACKING)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        AlertDesk(build_application(settings)).follow(stop, on_pass=metrics.passed)


def _follower_metrics(settings: Settings, follower: str) -> Any:
    """A follower's liveness metrics, served when ``TOXWATCH_METRICS_PORT`` is set."""
    from prometheus_client import start_http_server

    from infra.metrics import FollowerMetrics

    metrics = FollowerMetrics(follower)
    if settings.metrics_port:
        start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
        )
    return metrics


@app.command()
def dispatcher() -> None:
    """Run the alert dispatcher: every configured endpoint, in log order, each once."""
    from prometheus_client import start_http_server

    from infra.metrics import Metrics
    from services.bootstrap import build_application
    from services.dispatcher import Dispatcher, build_channel, load_endpoints

    settings = _settings()
    endpoints = load_endpoints(settings)
    if not endpoints:
        typer.echo("no alert endpoints configured (TOXWATCH_ALERT_ENDPOINTS_FILE)", err=True)
        raise typer.Exit(2)
    application = build_application(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    metrics = Metrics()
    if settings.metrics_port:
        start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
        )
    dispatch = Dispatcher(
        application,
        [(e, build_channel(e, settings)) for e in endpoints],
        metrics=metrics,
        max_backoff_s=settings.dispatch_max_backoff_seconds,
    )
    with contextlib.suppress(KeyboardInterrupt):
        dispatch.run(stop)


@app.command()
def api() -> None:
    """Serve the HTTP API (TOXWATCH_API_HOST / TOXWATCH_API_PORT)."""
    import uvicorn

    from services.api import create_app
    from services.bootstrap import build_application

    settings = _settings()
    api_app = create_app(build_application(settings))
    if settings.metrics_port:
        from prometheus_client import CollectorRegistry, start_http_server

        from infra.metrics import GaugeCollector
        from services.dispatcher import load_endpoints

        endpoints = tuple(e.id for e in load_endpoints(settings))
        registry = CollectorRegistry()
        views = api_app.state.read_models
        registry.register(GaugeCollector(lambda: views.gauges(endpoints)))
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
    uvicorn.run(
        api_app,
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
    )


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="monitor, dsmb, site, auditor or admin.")],
    name: Annotated[str, typer.Option(help="Who or what holds it.")],
    site: Annotated[str | None, typer.Option(help="The site of a site token.")] = None,
    expires_in_days: Annotated[float | None, typer.Option(help="Expiry; none: never.")] = None,
    created_by: Annotated[str, typer.Option(help="Who issues it.")] = "cli",
    reason: str = "",
) -> None:
    """Issue an API token; it is printed once (only its hash is stored)."""
    from datetime import UTC, datetime, timedelta

    from domain.access import AccessError
    from services.bootstrap import build_application
    from services.tokens import TokenService

    now = datetime.now(UTC)
    expires = now + timedelta(days=expires_in_days) if expires_in_days else None
    try:
        issued = TokenService(build_application(_settings())).create(
            role,  # type: ignore[arg-type]
            name=name,
            site_id=site,
            expires_at=expires,
            created_by=created_by,
            reason=reason,
            now=now,
        )
    except AccessError as error:
        typer.echo(f"cannot issue: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(issued.token)


@token_app.command("revoke")
def token_revoke(
    token_id: str,
    reason: Annotated[str, typer.Option(help="Why (kept on the record).")],
    by: str = "cli",
) -> None:
    """Revoke a token by its id."""
    from datetime import UTC, datetime

    from domain.access import AccessError
    from services.bootstrap import build_application
    from services.tokens import TokenService

    try:
        TokenService(build_application(_settings())).revoke(
            token_id, by=by, reason=reason, now=datetime.now(UTC)
        )
    except AccessError as error:
        typer.echo(f"cannot revoke: {error}", err=True)
        raise typer.Exit(1) from None


@token_app.command("list")
def token_list() -> None:
    """The issued tokens (never their secrets)."""
    from services.bootstrap import build_application
    from services.tokens import TokenService

    for info in TokenService(build_application(_settings())).list():
        typer.echo(
            f"{info.token_id}\t{info.role}\t{info.site_id or '-'}\t{info.name}\t"
            f"expires {info.expires_at or 'never'}\t"
            f"{'revoked ' + str(info.revoked_at) if info.revoked_at else 'active'}"
        )


@dashboard_app.command("screenshots")
def dashboard_screenshots(
    out: Annotated[Path, typer.Option(help="Directory for one PNG per page.")],
    url: Annotated[
        str | None, typer.Option(help="API base URL (default: TOXWATCH_API_HOST/PORT).")
    ] = None,
) -> None:
    """Screenshot every dashboard page with headless Chromium, for review; the token
    is read from TOXWATCH_TOKEN (never from the command line)."""
    from services.screenshots import BrowserError, take_screenshots

    token = os.environ.get("TOXWATCH_TOKEN", "")
    if not token:
        typer.echo("set TOXWATCH_TOKEN to a monitor, dsmb, auditor or site token", err=True)
        raise typer.Exit(2)
    settings = _settings()
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::") else settings.api_host
    try:
        written = take_screenshots(url or f"http://{host}:{settings.api_port}", token, out)
    except BrowserError as error:
        typer.echo(f"cannot take screenshots: {error}", err=True)
        raise typer.Exit(1) from None
    for path in written:
        typer.echo(str(path))


@report_app.command("dsmb")
def report_dsmb(
    as_of: Annotated[
        str | None,
        typer.Option(help="ISO 8601 time with offset: what was recorded up to then."),
    ] = None,
    trial: Annotated[str, typer.Option(help="Trial id.")] = "NCT07049081",
    out: Annotated[Path, typer.Option(help="Folder to write the packet into.")] = Path("."),
    pdf: Annotated[bool, typer.Option(help="Also print the PDF (headless Chromium).")] = True,
) -> None:
    """The DSMB open-session safety packet (HTML and PDF) as of a moment."""
    from datetime import datetime

    from services.bootstrap import build_application
    from services.report import write_packet

    moment = datetime.fromisoformat(as_of) if as_of else None
    if moment is not None and moment.tzinfo is None:
        typer.echo("--as-of needs a UTC offset (e.g. 2026-03-04T10:00:00+00:00)", err=True)
        raise typer.Exit(2)
    html, pdf_path = write_packet(
        build_application(_settings()), trial_id=trial, as_of=moment, out_dir=out, pdf=pdf
    )
    typer.echo(html)
    if pdf_path is not None:
        typer.echo(pdf_path)


@rules_app.command("boundaries")
def rules_boundaries(
    protocol: Annotated[
        Path | None, typer.Option(help="Protocol TOML: every configured rule's table.")
    ] = None,
    design: Annotated[
        str | None, typer.Option(help="Without a protocol: boin, 3+3, bayesian or pocock.")
    ] = None,
    target: Annotated[float, typer.Option(help="BOIN target DLT rate.")] = 0.30,
    elimination_cutoff: Annotated[float, typer.Option(help="BOIN elimination cutoff.")] = 0.95,
    max_n: Annotated[int, typer.Option(help="Tables for n = 1..max_n.")] = 18,
    p0: Annotated[float, typer.Option(help="Bayesian: unacceptable DLT rate.")] = 0.30,
    cutoff: Annotated[float, typer.Option(help="Bayesian: posterior probability cutoff.")] = 0.90,
    prior_a: float = 1.0,
    prior_b: float = 1.0,
    min_n: Annotated[int, typer.Option(help="Bayesian: first n monitored.")] = 3,
    theta0: Annotated[float, typer.Option(help="Pocock: DLT rate under H0.")] = 0.20,
    alpha: Annotated[float, typer.Option(help="Pocock: overall stopping probability.")] = 0.10,
) -> None:
    """Print each rule's full decision table as CSV (n and thresholds)."""
    from domain.protocol import BayesianStoppingRule, BOINDesign, PocockStoppingRule
    from services.bootstrap import load_protocol
    from services.rules import (
        bayesian_rows,
        boin_rows,
        pocock_rows,
        protocol_tables,
        three_plus_three_rows,
        write_tables,
    )

    if protocol is not None:
        write_tables(protocol_tables(load_protocol(protocol), max_n), sys.stdout)
        return
    chosen = (design or "").lower()
    if chosen == "boin":
        table = boin_rows(BOINDesign(target=target, elimination_cutoff=elimination_cutoff), max_n)
    elif chosen == "3+3":
        table = three_plus_three_rows()
    elif chosen == "bayesian":
        rule = BayesianStoppingRule(
            rule_id="bayesian",
            p0=p0,
            cutoff=cutoff,
            prior_a=prior_a,
            prior_b=prior_b,
            min_evaluable=min_n,
            max_n=max_n,
        )
        table = bayesian_rows(rule)
    elif chosen == "pocock":
        table = pocock_rows(
            PocockStoppingRule(rule_id="pocock", theta0=theta0, alpha=alpha, max_n=max_n)
        )
    else:
        typer.echo("give --protocol FILE or --design boin|3+3|bayesian|pocock", err=True)
        raise typer.Exit(2)
    write_tables(iter([table]), sys.stdout)


@app.command()
def demo(
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: Ctrl-C).")
    ] = None,
    stream_seconds: Annotated[
        float, typer.Option(help="Real seconds over which the simulated cohort is streamed.")
    ] = 90.0,
    participants: int = 42,
    seed: int = 79,
    metrics_port: Annotated[int, typer.Option(help="Worker metrics port (0: a free one).")] = 0,
    dlt_heavy_dose: Annotated[
        str | None,
        typer.Option(help="Make this dose level DLT-heavy (it crosses the stopping rules)."),
    ] = None,
) -> None:
    """Everything embedded: broker, store, worker, monitor, relay, alerts, dispatcher,
    API and a simulated cohort."""
    from services.demo import DemoOptions, run_demo

    raise typer.Exit(
        run_demo(
            _settings(),
            DemoOptions(
                duration=duration,
                stream_seconds=stream_seconds,
                participants=participants,
                seed=seed,
                dlt_heavy_dose=dlt_heavy_dose,
                metrics_port=metrics_port,
            ),
        )
    )


@protocol_app.command("check")
def protocol_check(
    path: Annotated[Path, typer.Argument(help="Protocol TOML file.")],
) -> None:
    """Validate a protocol file and print its effective rules (defaults filled in)."""
    from pydantic import ValidationError

    from services.bootstrap import load_protocol

    try:
        protocol = load_protocol(path)
    except (OSError, ValueError) as error:
        message = str(error)
        if isinstance(error, ValidationError):
            message = "\n".join(
                f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
            )
        typer.echo(f"{path}: invalid protocol\n{message}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"# {path}: valid, protocol {protocol.protocol_id} version {protocol.version}")
    typer.echo(json.dumps(protocol.model_dump(mode="json"), indent=2))


@protocol_app.command("activate")
def protocol_activate(
    path: Annotated[Path, typer.Argument(help="Protocol TOML file.")],
    by: Annotated[str, typer.Option("--by", help="Who activates it.")],
    reason: Annotated[str, typer.Option(help="Why (e.g. amendment 2 approved).")],
) -> None:
    """Put a protocol version in force for its trial, from this point of the log on."""
    from datetime import UTC, datetime

    from services.bootstrap import build_application, load_protocol

    protocol = load_protocol(path)
    application = build_application(_settings())
    application.activate_protocol(protocol, activated_by=by, reason=reason, at=datetime.now(UTC))
    typer.echo(
        f"protocol {protocol.protocol_id} v{protocol.version} active for {protocol.trial_id}"
    )


def _programme(participants: int, days: int, tick_hours: float | None, prefix: str) -> Any:
    from services.bench_harness import Programme

    return Programme(
        participants=participants, follow_up_days=days, tick_hours=tick_hours, trial_prefix=prefix
    )


def _stores(store: str) -> list[str]:
    return ["sqlite", "postgres"] if store == "both" else [store]


_TICK_HELP = "Hours between clock ticks of a trial (default: as the 90-day simulation)."


@bench_app.command("ingest")
def bench_ingest(
    participants: Annotated[
        int, typer.Option(help="Simulated participants (trials of 42; the issue: 2,000).")
    ] = 200,
    days: Annotated[int, typer.Option(help="Follow-up days after infusion per participant.")] = 1,
    tick_hours: Annotated[float | None, typer.Option(help=_TICK_HELP)] = None,
    store: Annotated[str, typer.Option(help="sqlite, postgres or both.")] = "both",
    runs: Annotated[int, typer.Option(help="Runs per measurement (the median is reported).")] = 3,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON.")] = None,
) -> None:
    """Sustained events/s of the full ingest path next to a bare kafka-python consume."""
    from services.bench import run_ingest_bench

    run_ingest_bench(
        programme=_programme(participants, days, tick_hours, "BENCH"),
        stores=_stores(store),
        runs=runs,
        out=out,
    )


@bench_app.command("replay")
def bench_replay(
    participants: Annotated[
        int, typer.Option(help="Participants simulated in the base (42 a trial).")
    ] = 42,
    events: Annotated[
        int, typer.Option(help="Stored events of the measured store (the base replicated).")
    ] = 1_000_000,
    store: Annotated[
        Path | None,
        typer.Option(
            help="The store's SQLite file: built there once and reused (default: under the "
            "temporary folder, toxwatch-bench/replay-EVENTS-pPARTICIPANTS.sqlite3); a file "
            "without the bench's .json beside it is measured as it is."
        ),
    ] = None,
    runs: Annotated[int, typer.Option(help="Runs (the median is reported).")] = 3,
    full: Annotated[
        bool,
        typer.Option(help="Also time `toxwatch replay` (re-deriving and not) on the base."),
    ] = True,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON.")] = None,
) -> None:
    """Rebuilding every read model from the store (and `toxwatch replay`) next to merely
    reading and decoding the same stored events."""
    from services.bench_replay import run_replay_bench

    run_replay_bench(
        participants=participants, runs=runs, full=full, out=out, events=events, store=store
    )


@bench_app.command("alerts")
def bench_alerts(
    rates: Annotated[
        list[int] | None, typer.Option("--rate", help="Background clinical events/s (repeat).")
    ] = None,
    seconds: Annotated[float, typer.Option(help="Load duration per rate.")] = 20.0,
    probes_per_s: Annotated[float, typer.Option(help="Alert-raising probes per second.")] = 2.0,
    runs: Annotated[int, typer.Option(help="Runs per rate (medians are reported).")] = 1,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON.")] = None,
    keep: Annotated[Path | None, typer.Option(help="Keep each run's store in this folder.")] = None,
    fractions: Annotated[
        list[float] | None,
        typer.Option(
            "--fraction",
            help="Also at this fraction of the load's sustained maximum, measured first "
            "(repeat; e.g. 0.8).",
        ),
    ] = None,
    saturation_messages: Annotated[
        int, typer.Option(help="Messages of the load that measure its sustained maximum.")
    ] = 20_000,
) -> None:
    """Latency from a clinical event produced to its alert on a webhook, under load."""
    from services.bench_alerts import run_alert_bench

    run_alert_bench(
        rates=rates if rates is not None else ([] if fractions else [100, 1000]),
        seconds=seconds,
        probes_per_s=probes_per_s,
        runs=runs,
        out=out,
        keep=keep,
        fractions=fractions or (),
        saturation_messages=saturation_messages,
    )


def _counts(text: str | None) -> list[int] | None:
    if not text:
        return None
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


@bench_app.command("memory")
def bench_memory(
    events: Annotated[int, typer.Option(help="Messages the worker applies.")] = 1_000_000,
    checkpoints: Annotated[
        str | None,
        typer.Option(help="Applied counts to sample RSS at, comma-separated (default: tenths)."),
    ] = None,
    days: Annotated[int, typer.Option(help="Follow-up days after infusion.")] = 90,
    store: Annotated[str, typer.Option(help="sqlite or postgres.")] = "sqlite",
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON.")] = None,
) -> None:
    """The worker's resident memory at checkpoints of messages applied (issue 9: flat
    within 20 % from 100,000 to 1,000,000)."""
    from services.bench_memory import run_memory_bench

    run_memory_bench(
        events=events, checkpoints=_counts(checkpoints), days=days, store=store, out=out
    )


@bench_app.command("large")
def bench_large(
    messages: Annotated[int, typer.Option(help="Messages of the flood.")] = 800,
    message_kib: Annotated[
        int, typer.Option(help="Size of each, in KiB (over TOXWATCH_MAX_MESSAGE_BYTES).")
    ] = 900,
    runs: Annotated[int, typer.Option(help="Runs (the median is reported).")] = 1,
    store: Annotated[str, typer.Option(help="sqlite or postgres.")] = "sqlite",
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON.")] = None,
) -> None:
    """The worker's peak RSS on a flood of over-size messages (rejected and kept whole),
    next to the same flood applied one transaction per batch."""
    from services.bench_large import run_large_bench

    run_large_bench(messages=messages, message_kib=message_kib, runs=runs, store=store, out=out)


@bench_app.command("scaling")
def bench_scaling(
    participants: Annotated[int, typer.Option(help="Simulated participants.")] = 100,
    days: Annotated[int, typer.Option(help="Follow-up days after infusion.")] = 1,
    tick_hours: Annotated[float | None, typer.Option(help=_TICK_HELP)] = None,
    workers: Annotated[int, typer.Option(help="Workers of the second pass.")] = 3,
    runs: Annotated[int, typer.Option(help="Runs (the median is reported).")] = 1,
    store: Annotated[str, typer.Option(help="postgres or sqlite.")] = "postgres",
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON.")] = None,
) -> None:
    """Throughput of 1 worker, then of several in one group, on an 8-partition topic."""
    from services.bench_scaling import run_scaling_bench

    run_scaling_bench(
        programme=_programme(participants, days, tick_hours, "SCALE"),
        workers=workers,
        runs=runs,
        store=store,
        out=out,
    )


@bench_app.command("all")
def bench_all(
    preset: Annotated[
        str, typer.Option(help="Sizes: quick (a smoke run), moderate or issue (the issue's).")
    ] = "moderate",
    quick: Annotated[bool, typer.Option("--quick", help="The quick preset.")] = False,
    runs: Annotated[int | None, typer.Option(help="Runs per measurement (medians).")] = None,
    participants: Annotated[int | None, typer.Option(help="Ingest participants.")] = None,
    days: Annotated[int | None, typer.Option(help="Ingest follow-up days.")] = None,
    store: Annotated[str, typer.Option(help="Ingest stores: sqlite, postgres or both.")] = "both",
    replay_participants: Annotated[int | None, typer.Option(help="Replay participants.")] = None,
    memory_events: Annotated[int | None, typer.Option(help="Memory: messages applied.")] = None,
    memory_checkpoints: Annotated[
        str | None, typer.Option(help="Memory: RSS checkpoints, comma-separated.")
    ] = None,
    scaling_participants: Annotated[int | None, typer.Option(help="Scaling: participants.")] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(help="Leave out a part: ingest, alerts, replay, scaling, memory (repeat)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="JSON file (default bench-results/<time>-<commit>.json).")
    ] = None,
) -> None:
    """Every issue-9 target: measured, baseline, ratio, required, met; one table, one JSON."""
    from dataclasses import replace

    from services.bench_suite import PARTS, PRESETS, run_suite

    name = "quick" if quick else preset
    if name not in PRESETS:
        raise typer.BadParameter(f"preset must be one of {', '.join(PRESETS)}")
    unknown = set(skip or []) - set(PARTS)
    if unknown:
        raise typer.BadParameter(f"unknown part(s): {', '.join(sorted(unknown))}")
    options = PRESETS[name]
    ingest = replace(
        options.ingest,
        participants=participants or options.ingest.participants,
        follow_up_days=days or options.ingest.follow_up_days,
    )
    scaling = replace(
        options.scaling, participants=scaling_participants or options.scaling.participants
    )
    checkpoints = _counts(memory_checkpoints)
    options = replace(
        options,
        runs=runs or options.runs,
        ingest=ingest,
        stores=_stores(store),
        replay_participants=replay_participants or options.replay_participants,
        memory_events=memory_events or (checkpoints[-1] if checkpoints else options.memory_events),
        memory_checkpoints=checkpoints or options.memory_checkpoints,
        scaling=scaling,
        skip=list(skip or []),
    )
    run_suite(options, out)


@bench_app.command("show")
def bench_show(
    results: Annotated[list[Path], typer.Argument(help="One result, or two to compare.")],
) -> None:
    """Print a result of `toxwatch bench all`, or compare two (older first)."""
    from rich.console import Console

    from services.bench_suite import comparison_table, load_result, suite_table

    if len(results) > 2:
        raise typer.BadParameter("one result, or two to compare")
    loaded = [load_result(path) for path in results]
    table = suite_table(loaded[0]) if len(loaded) == 1 else comparison_table(*loaded)
    Console(width=160).print(table)


audit_app = typer.Typer(
    no_args_is_help=True, help="Tamper evidence: hash chain, signed checkpoints."
)
app.add_typer(audit_app, name="audit")


@audit_app.command("checkpoint")
def audit_checkpoint(
    out: Annotated[
        Path | None, typer.Option(help="Also append the checkpoint (a JSON line) to this file.")
    ] = None,
) -> None:
    """Extend the hash chain to the end of the log and record a signed checkpoint
    (key: TOXWATCH_AUDIT_KEY or TOXWATCH_AUDIT_KEY_FILE); print it, to keep off-site."""
    from datetime import UTC, datetime

    from services.audit import AuditError, append_checkpoint, audit_key_from_env, checkpoint
    from services.bootstrap import build_application

    try:
        key = audit_key_from_env()
        signed = checkpoint(build_application(_settings()), key, now=datetime.now(UTC))
    except AuditError as error:
        typer.echo(f"cannot checkpoint: {error}", err=True)
        raise typer.Exit(1) from None
    if out is not None:
        append_checkpoint(out, signed)
    typer.echo(signed.to_json())


@audit_app.command("verify")
def audit_verify(
    checkpoints: Annotated[
        Path | None, typer.Option(help="Exported checkpoints (JSON lines) to verify against too.")
    ] = None,
) -> None:
    """Recompute the hash chain over the stored events and check every checkpoint;
    exit 1 naming the first bad position if the store was tampered with."""
    from services.audit import AuditError, audit_key_from_env, load_checkpoints, verify
    from services.bootstrap import build_application

    try:
        key = audit_key_from_env()
        exported = load_checkpoints(checkpoints) if checkpoints is not None else []
        result = verify(build_application(_settings()), key, exported)
    except AuditError as error:
        typer.echo(f"cannot verify: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(result.summary())
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("trail")
def audit_trail_command(
    participant: Annotated[str | None, typer.Option(help="Only this participant.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Recorded at or after (ISO 8601 with offset).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of text.")] = False,
) -> None:
    """Every human action on the record: acknowledgements, adjudications, corrections
    (original and replacement), voids, committee decisions, protocol activations,
    tokens issued and revoked, with who, when, what and why."""
    from dataclasses import asdict
    from datetime import datetime

    from services.audit import audit_trail
    from services.bootstrap import build_application

    moment = datetime.fromisoformat(since) if since else None
    if moment is not None and moment.tzinfo is None:
        typer.echo("--since needs a UTC offset", err=True)
        raise typer.Exit(2)
    for entry in audit_trail(build_application(_settings())).select(
        participant_id=participant, since=moment
    ):
        if as_json:
            typer.echo(json.dumps(asdict(entry), default=str, sort_keys=True))
            continue
        typer.echo(
            f"{entry.recorded_at.isoformat(timespec='seconds')}  {entry.action:<20} "
            f"{entry.who}  {entry.participant_id or '-'}  {entry.what}  (why: {entry.why})"
        )
        if entry.original is not None or entry.replacement is not None:
            typer.echo(f"    original:    {json.dumps(entry.original, sort_keys=True)}")
            if entry.replacement is not None:
                typer.echo(f"    replacement: {json.dumps(entry.replacement, sort_keys=True)}")


@audit_app.command("as-of")
def audit_as_of(
    trial: str,
    participant: Annotated[
        str | None, typer.Argument(help="A participant; without it, the whole trial.")
    ] = None,
    recorded_at: Annotated[
        str | None, typer.Option(help="What was recorded up to then (ISO 8601 with offset).")
    ] = None,
    clinical_at: Annotated[
        str | None, typer.Option(help="The grades in force at this clinical time.")
    ] = None,
) -> None:
    """What ToxWatch knew of a participant (or of the whole trial: every participant's
    grades, dose-level tallies, trial findings, alerts) at a moment, and the grades
    then in force."""
    from datetime import datetime

    from services.audit import participant_as_of, trial_as_of
    from services.bootstrap import build_application

    moments = [datetime.fromisoformat(t) if t else None for t in (recorded_at, clinical_at)]
    if any(m is not None and m.tzinfo is None for m in moments):
        typer.echo("times need a UTC offset", err=True)
        raise typer.Exit(2)
    application = build_application(_settings())
    if participant is None:
        result = trial_as_of(application, trial, recorded_at=moments[0], clinical_at=moments[1])
    else:
        result = participant_as_of(
            application, trial, participant, recorded_at=moments[0], clinical_at=moments[1]
        )
    typer.echo(json.dumps(result, indent=2, default=str))


participant_app = typer.Typer(no_args_is_help=True, help="Parked participants' records.")
app.add_typer(participant_app, name="participant")


@participant_app.command("release")
def participant_release(
    trial: str,
    participant: str,
    by: Annotated[str, typer.Option("--by", help="Who releases it.")],
    reason: Annotated[str, typer.Option(help="Why (e.g. the fix deployed).")],
) -> None:
    """Apply a parked participant's held events, in arrival order (after the defect
    that parked it is fixed); an event that fails again leaves it parked."""
    from datetime import UTC, datetime

    from domain.errors import NotFound
    from services.bootstrap import build_application

    application = build_application(_settings())
    try:
        applied = application.release_participant(
            trial, participant, by=by, at=datetime.now(UTC), reason=reason
        )
    except (NotFound, ValueError) as error:
        typer.echo(f"cannot release: {error}", err=True)
        raise typer.Exit(1) from None
    except Exception as error:  # the defect is still there: stays parked
        typer.echo(f"still failing, left parked: {type(error).__name__}: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"released {trial}/{participant}: {applied} held events applied")


@app.command("replay")
def replay_command(
    into: Annotated[
        str | None,
        typer.Option(
            help="Keep the rebuilt store beside the live one: a new SQLite file (SQLite "
            "store) or a new schema in the same database (PostgreSQL store). "
            "Default: rebuilt in memory and discarded."
        ),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the full report as JSON.")] = None,
    show: Annotated[int, typer.Option(help="Differences to print (all are in --report).")] = 20,
    rederive: Annotated[
        bool,
        typer.Option(
            help="Derive every participant's safety events again (--no-rederive: take "
            "them as stored and rebuild only the trial monitor, the alerts and the views)."
        ),
    ] = True,
) -> None:
    """Rebuild every derivation (participants' safety events, trial monitor, alerts)
    and every read model from position zero beside the live store, and report each
    difference; exit 1 if anything differs. The live store is only read."""
    from services.bootstrap import build_application
    from services.offline import in_memory_application
    from services.replay import ReplayError, replay, target_settings

    settings = _settings()
    live = build_application(settings)
    try:
        if into is None:
            target = in_memory_application(live.protocol, live.limits)
        else:
            target = build_application(target_settings(settings, into))
        result = replay(live, target, rederive=rederive)
    except ReplayError as error:
        typer.echo(f"cannot replay: {error}", err=True)
        raise typer.Exit(2) from None
    if report is not None:
        report.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    compared = ", ".join(
        f"{result.compared[layer]} {layer}s ({result.compared[layer + ' events']} events)"
        for layer in ("participant", "trial", "dose level", "alert")
    )
    typer.echo(
        f"replayed {result.live_events} stored events into {result.rebuilt_events} "
        f"in {result.seconds:.1f} s; compared {compared}"
    )
    for name, verdict in result.views.items():
        typer.echo(f"  view {name}: {verdict}")
    for difference in result.differences[:show]:
        typer.echo(
            f"  DIFFERS {difference.layer} {difference.subject} ({difference.change}): "
            f"{difference.what}"
        )
    if len(result.differences) > show:
        typer.echo(f"  ... and {len(result.differences) - show} more (--report)")
    typer.echo("identical" if result.identical else f"{len(result.differences)} differences")
    if not result.identical:
        raise typer.Exit(1)


@app.command("export")
def export(
    kind: Annotated[
        Literal["jsonl", "sdtm", "fhir"],
        typer.Argument(help="jsonl (clinical + derived), sdtm (CSV + define) or fhir (R4 Bundle)."),
    ],
    out: Annotated[Path, typer.Option(help="Folder to write the export into.")] = Path("."),
) -> None:
    """Export the record: JSONL, CDISC SDTM-shaped CSV or an HL7 FHIR R4 Bundle."""
    from services.bootstrap import build_application
    from services.exports import EXPORTS

    counts = EXPORTS[kind](build_application(_settings()), out)
    for name, count in counts.items():
        typer.echo(f"{name}\t{count}")


key_app = typer.Typer(no_args_is_help=True, help="Encryption-at-rest keys: generate, rotate.")
app.add_typer(key_app, name="key")


@key_app.command("generate")
def key_generate() -> None:
    """Print a new random AES-256 key (base64) for TOXWATCH_CIPHER_KEY or a key file."""
    from services.keys import generate_key

    typer.echo(generate_key())


@key_app.command("rotate")
def key_rotate(
    batch: Annotated[int, typer.Option(help="Events re-encrypted per transaction.")] = 500,
) -> None:
    """Re-encrypt every stored event with the current key (TOXWATCH_CIPHER_KEY, previous
    keys in TOXWATCH_CIPHER_KEYS_PREVIOUS or the key file) so old keys can be retired."""
    from infra.store import CipherKeyError
    from services.keys import KeyRotationError, rotate

    try:
        report = rotate(_settings(), batch=batch)
    except (KeyRotationError, CipherKeyError) as error:
        typer.echo(f"cannot rotate: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report.summary())


def main() -> None:
    from services.logs import configure_logging

    configure_logging()
    app()


if __name__ == "__main__":
    main()
