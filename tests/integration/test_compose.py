"""The production stack (issue 8) deploys the code it ships with: ``docker-compose.yml``
is a valid Compose file (the Compose Specification's JSON schema, vendored with its
source in ``tests/data/compose-spec``); every service has a health check and a restart
policy; the ``toxwatch`` commands it runs exist; every environment variable it gives a
ToxWatch container is one the code reads, with a value the settings accept; every
secret file is a tracked template or made by the documented step; the topics the
init service creates are the code's; the Dockerfile builds in stages and runs as a
non-root user. No Docker engine is needed: the files are read, not run.
"""

from __future__ import annotations

import ast
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from pydantic import AliasChoices

from infra.settings import Settings
from tests.conftest import toxwatch_executable

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOYMENT_DOC = ROOT / "docs/deployment.md"
SCHEMA_DIR = ROOT / "tests/data/compose-spec"
COMPOSE_DIR = ROOT / "infra/compose"
MAKE_SECRETS = COMPOSE_DIR / "make-secrets.sh"
FILE_ENV_WRAPPER = COMPOSE_DIR / "toxwatch-file-env"
DEFAULT_SECRETS_DIR = COMPOSE_DIR / "secrets"
PROMETHEUS_CONFIG = ROOT / "infra/prometheus/prometheus.yml"
#: Where the code reads its environment (services wire everything; infra adapts).
CODE_PACKAGES = ("domain", "projections", "infra", "services")
#: Services that run once and exit; every other one runs for good.
ONE_SHOT = {"topic-init", "cli"}
#: Long-running ToxWatch processes that must stay single (log order, single writers).
SINGLE_INSTANCE = {"monitor", "alerts", "relay", "dispatcher", "api"}


# ---------------------------------------------------------------- reading the files


def load_compose() -> dict[str, Any]:
    """The Compose file as YAML reads it (anchors and merge keys resolved)."""
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["plain"]
        op, arg = match["op"], match["arg"] or ""
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if present:
            return env[name]
        if op and op.endswith("?"):
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return arg if op else ""

    return _VARIABLE.sub(replace, value)


def resolved(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Compose file with its variables set from ``env`` (none: every default)."""
    return interpolate(load_compose(), env or {})


def toxwatch_image(document: Mapping[str, Any]) -> str:
    return str(document["x-toxwatch"]["image"])


def toxwatch_services(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the ToxWatch image."""
    image = toxwatch_image(document)
    found = {
        name: service
        for name, service in document["services"].items()
        if service.get("image") == image
    }
    assert found, "no service runs the ToxWatch image"
    return found


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def secret_names(service: Mapping[str, Any]) -> dict[str, str]:
    """The service's secrets: name -> path in the container."""
    names: dict[str, str] = {}
    for entry in service.get("secrets") or []:
        if isinstance(entry, str):
            names[entry] = f"/run/secrets/{entry}"
        else:
            target = entry.get("target") or entry["source"]
            names[entry["source"]] = target if target.startswith("/") else f"/run/secrets/{target}"
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuations joined, heredoc
    bodies skipped."""
    instructions: list[tuple[str, str]] = []
    lines = iter(DOCKERFILE.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        keyword, _, arguments = line.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        heredoc = re.search(r"<<-?'?\"?([A-Za-z_]+)", arguments)
        if heredoc:
            for body in lines:
                if body.strip() == heredoc.group(1):
                    break
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, arguments))
    return stages


# ---------------------------------------------------------------- what the code reads


def settings_variables() -> set[str]:
    """The environment variables ``infra.settings.Settings`` reads."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "string"`` assignments."""
    constants: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    constants[target.id] = node.value.value
    return constants


def _is_environ(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id == "environ"
    return isinstance(node, ast.Attribute) and node.attr == "environ"


def environ_reads(source: str) -> set[str]:
    """Names read with ``os.environ[...]``, ``os.environ.get(...)``, ``os.getenv(...)``
    or a mapping named ``environ``; a name may be a module-level string constant."""
    tree = ast.parse(source)
    constants = _module_strings(tree)

    def name_of(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        return None

    read: set[str] = set()
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Subscript) and _is_environ(node.value):
            key = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            func = node.func
            if (func.attr == "get" and _is_environ(func.value)) or (
                func.attr == "getenv" and isinstance(func.value, ast.Name)
            ):
                key = node.args[0]
        if key is not None and (name := name_of(key)) is not None:
            read.add(name)
    return read


def code_environ_reads() -> set[str]:
    read: set[str] = set()
    for package in CODE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            read |= environ_reads(path.read_text())
    return read


def wrapper_variables() -> set[str]:
    """The settings ``toxwatch-file-env`` sets from their ``*_FILE`` variant."""
    match = re.search(r"^for var in ([A-Z0-9_ ]+); do$", FILE_ENV_WRAPPER.read_text(), re.M)
    assert match, f"{FILE_ENV_WRAPPER.name}: no `for var in …; do` line"
    return set(match.group(1).split())


# ---------------------------------------------------------------- the schema


def test_compose_spec_schema_is_the_vendored_copy_named_in_its_readme() -> None:
    digest = hashlib.sha256((SCHEMA_DIR / "compose-spec.json").read_bytes()).hexdigest()
    readme = (SCHEMA_DIR / "README.md").read_text()
    assert f"`compose-spec.json` sha256 | `{digest}`" in readme, (
        "the vendored schema changed: update its source and sha256 in its README"
    )
    assert (SCHEMA_DIR / "LICENSE").is_file()


@pytest.fixture(scope="module")
def compose_schema() -> Any:
    schema = json.loads((SCHEMA_DIR / "compose-spec.json").read_text())
    return jsonschema_rs.validator_for(schema)


def _errors(validator: Any, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.instance_path)) or '(root)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_the_schema_rejects_what_compose_rejects(compose_schema: Any) -> None:
    """A check of the check: the validator is not one that accepts anything."""
    broken = load_compose()
    broken["services"]["worker"]["healthchek"] = broken["services"]["worker"].pop("healthcheck")
    broken["services"]["api"]["restart"] = ["always"]
    errors = _errors(compose_schema, broken)
    assert any("healthchek" in error for error in errors), errors
    assert any(error.startswith("services/api/restart") for error in errors), errors


def test_compose_file_is_valid_against_the_compose_specification(compose_schema: Any) -> None:
    assert _errors(compose_schema, load_compose()) == []


@pytest.mark.parametrize(
    "env",
    [{}, {"TOXWATCH_WORKER_REPLICAS": "3", "TOXWATCH_PARTITIONS": "6"}],
    ids=["defaults", "overridden"],
)
def test_compose_file_is_valid_once_its_variables_are_set(
    compose_schema: Any, env: dict[str, str]
) -> None:
    assert _errors(compose_schema, resolved(env)) == []


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    """``docker compose config`` where a Compose v2 binary is installed."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        version = subprocess.run(
            [*command, "version", "--short"], capture_output=True, text=True, check=False
        )
        if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2"):
            break
    else:
        pytest.skip("no Docker Compose v2 (`docker compose` or `docker-compose`) installed")
    secrets = tmp_path / "secrets"
    subprocess.run(["sh", str(MAKE_SECRETS), str(secrets)], check=True, capture_output=True)
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--profile", "tools", "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ | {"TOXWATCH_SECRETS_DIR": str(secrets)},
        check=False,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- health and restarts


def test_every_service_has_a_health_check() -> None:
    for name, service in load_compose()["services"].items():
        check = service.get("healthcheck")
        assert check, f"service {name} has no healthcheck"
        assert not check.get("disable"), f"service {name} disables its healthcheck"
        test = check.get("test")
        assert test and test != ["NONE"], f"service {name}: a healthcheck without a test"
        assert isinstance(test, str) or test[0] in ("CMD", "CMD-SHELL"), (name, test)


def test_every_service_has_a_restart_policy() -> None:
    for name, service in load_compose()["services"].items():
        assert "restart" in service, f"service {name} has no restart policy"
        if name not in ONE_SHOT:
            assert service["restart"] in ("unless-stopped", "always"), (name, service["restart"])


def _python_checks() -> Iterator[tuple[str, str]]:
    """Each ToxWatch service's ``python -c`` check; a URL it fetches is on the port
    the service's settings open (metrics or API)."""
    document = load_compose()
    for name, service in toxwatch_services(document).items():
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], (
            f"service {name}: check with `python -c` (the image has no curl or wget)"
        )
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/[^'\"]*)", test[3])
        if url:
            env = environment(service)
            setting = "TOXWATCH_METRICS_PORT" if url.group(2) == "/metrics" else "TOXWATCH_API_PORT"
            assert env.get(setting) == url.group(1), f"service {name} checks {url.group(0)}"
        yield name, test[3]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _run_check(code: str, env: Mapping[str, str]) -> int:
    """The check's exit status, run as in the container (no HTTP proxy)."""
    base = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=base | dict(env), capture_output=True, timeout=30
    )
    return result.returncode


def test_the_toxwatch_health_checks_pass_on_an_answer_and_fail_without_one() -> None:
    """Each check run as the container runs it, against a local stand-in: an HTTP
    server for the URL it fetches, a listening socket for the store it dials."""
    for name, code in _python_checks():
        compile(code, f"<healthcheck of {name}>", "exec")
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/[^'\"]*)", code)
        if url:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
            local = code.replace(f"127.0.0.1:{url.group(1)}", f"127.0.0.1:{server.server_port}")
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                assert _run_check(local, {}) == 0, f"{name}: check fails on an answer"
            finally:
                server.shutdown()
                server.server_close()
            assert _run_check(local, {}) != 0, f"{name}: check passes with nothing listening"
            continue
        assert "TOXWATCH_POSTGRES_HOST" in code, f"{name}: what does its check check?"
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = str(listener.getsockname()[1])
            env = {"TOXWATCH_POSTGRES_HOST": "127.0.0.1", "TOXWATCH_POSTGRES_PORT": port}
            assert _run_check(code, env) == 0, f"{name}: check fails with the store up"
        assert _run_check(code, env) != 0, f"{name}: check passes with the store down"


# ---------------------------------------------------------------- commands


def _toxwatch_command(service: Mapping[str, Any]) -> list[str]:
    """The CLI words of a ToxWatch service's command (up to its first option)."""
    command = service.get("command") or []
    command = command.split() if isinstance(command, str) else list(command)
    words: list[str] = []
    for word in command:
        if word.startswith("-"):
            break
        words.append(word)
    return words


def test_toxwatch_services_run_the_toxwatch_entrypoint_through_the_wrapper() -> None:
    document = load_compose()
    dockerfile = DOCKERFILE.read_text()
    for name, service in toxwatch_services(document).items():
        entrypoint = service.get("entrypoint")
        assert entrypoint == [FILE_ENV_WRAPPER.name, "toxwatch"], (name, entrypoint)
    assert f"infra/compose/{FILE_ENV_WRAPPER.name} /usr/local/bin/{FILE_ENV_WRAPPER.name}" in (
        dockerfile
    ), "the Dockerfile must install the entrypoint wrapper on PATH"
    assert os.access(FILE_ENV_WRAPPER, os.X_OK)


def test_every_toxwatch_command_in_compose_exists_in_the_cli() -> None:
    commands = {
        name: _toxwatch_command(service)
        for name, service in toxwatch_services(load_compose()).items()
    }
    assert {"worker", "relay", "monitor", "alerts", "dispatcher", "api"} <= {
        " ".join(words) for words in commands.values()
    }
    for name, words in commands.items():
        result = subprocess.run(
            [toxwatch_executable(), *words, "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"service {name}: `toxwatch {' '.join(words)}` {result}"


def test_the_wrapper_sets_settings_from_their_file_variants(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret $x 'y'\n")
    result = subprocess.run(
        ["sh", str(FILE_ENV_WRAPPER), sys.executable, "-c",
         "import os; print(os.environ['TOXWATCH_POSTGRES_PASSWORD']);"
         "print('TOXWATCH_POSTGRES_PASSWORD_FILE' in os.environ)"],
        env={"PATH": os.environ["PATH"], "TOXWATCH_POSTGRES_PASSWORD_FILE": str(password)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["s3cret $x 'y'", "False"]
    unreadable = subprocess.run(
        ["sh", str(FILE_ENV_WRAPPER), "true"],
        env={"PATH": os.environ["PATH"], "TOXWATCH_SMTP_PASSWORD_FILE": str(tmp_path / "none")},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert unreadable.returncode != 0, "a missing secret file must stop the container"


# ---------------------------------------------------------------- environment


def test_environ_reads_are_found_in_source() -> None:
    """A check of the check: the scanner sees each way the code reads a variable."""
    source = (
        "import os\nKEY = 'B'\n"
        "def f(environ=os.environ):\n"
        "    return os.environ.get('A'), environ[KEY], os.getenv('C'), environ.get('D', 'x')\n"
    )
    assert environ_reads(source) == {"A", "B", "C", "D"}


def test_every_variable_given_to_a_toxwatch_service_is_read_by_the_code() -> None:
    known = settings_variables() | code_environ_reads()
    wrapped = wrapper_variables()
    for variable in wrapped:
        assert variable in settings_variables(), (
            f"{FILE_ENV_WRAPPER.name} sets {variable}, which the settings do not read"
        )
        assert f"{variable}_FILE" not in settings_variables(), (
            f"infra/settings.py now reads {variable}_FILE itself: drop {variable} from "
            f"{FILE_ENV_WRAPPER.name}"
        )
    readable = known | {f"{variable}_FILE" for variable in wrapped}
    for name, service in toxwatch_services(load_compose()).items():
        unread = sorted(set(environment(service)) - readable)
        assert not unread, f"service {name} sets variables no code reads: {unread}"


@pytest.mark.parametrize(
    "env", [{}, {"TOXWATCH_SMTP_HOST": "smtp.example", "TOXWATCH_PARTITIONS": "6"}]
)
def test_the_settings_accept_every_toxwatch_service_environment(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in toxwatch_services(resolved(env)).items():
        for variable in list(os.environ):
            if variable.startswith(("TOXWATCH_", "KAFKA_BOOTSTRAP_SERVERS")):
                monkeypatch.delenv(variable)
        for variable, value in environment(service).items():
            monkeypatch.setenv(variable, value)
        settings = Settings()
        assert settings.store == "postgres", name
        assert settings.kafka_bootstrap_servers == "kafka:9092", name
        assert settings.postgres_host in load_compose()["services"], name


def test_every_toxwatch_service_requires_encryption_with_a_key_from_a_secret() -> None:
    for name, service in toxwatch_services(load_compose()).items():
        env = environment(service)
        assert env.get("TOXWATCH_REQUIRE_ENCRYPTION") == "true", name
        assert "TOXWATCH_CIPHER_KEY" not in env, f"{name}: a key in the environment"
        assert env.get("TOXWATCH_CIPHER_KEY_FILE") in secret_names(service).values(), name


def test_file_variables_name_secrets_the_service_mounts() -> None:
    document = load_compose()
    defined = set(document.get("secrets") or {})
    used: set[str] = set()
    for name, service in document["services"].items():
        mounted = secret_names(service)
        assert set(mounted) <= defined, f"service {name} uses undefined secrets"
        used |= set(mounted)
        for variable, value in environment(service).items():
            if variable.endswith(("_FILE", "__FILE")) and value.startswith("/run/secrets/"):
                assert value in mounted.values(), f"service {name}: {variable}={value} unmounted"
    assert used == defined, f"secrets defined but never mounted: {sorted(defined - used)}"


def test_no_secret_value_is_written_in_the_compose_file() -> None:
    for name, service in load_compose()["services"].items():
        for variable, value in environment(service).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$|_KEYS", variable) and not (
                variable.endswith(("_FILE", "__FILE"))
            ):
                raise AssertionError(f"service {name}: {variable}={value!r} is a secret in clear")


# ---------------------------------------------------------------- secrets and files


def test_secret_files_are_made_by_the_documented_step(tmp_path: Path) -> None:
    from infra.store import decode_key
    from services.audit import MIN_KEY_BYTES

    made = tmp_path / "secrets"
    first = subprocess.run(
        ["sh", str(MAKE_SECRETS), str(made)], capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    document = resolved()
    for name, secret in document["secrets"].items():
        path = (ROOT / secret["file"]).resolve()
        if path.is_relative_to(DEFAULT_SECRETS_DIR):
            copy = made / path.relative_to(DEFAULT_SECRETS_DIR)
            assert copy.is_file(), f"secret {name}: {MAKE_SECRETS.name} does not make {copy.name}"
            assert stat.S_IMODE(copy.stat().st_mode) == 0o444, f"secret {name}"
        else:
            assert path.is_file(), f"secret {name}: {secret['file']} is no tracked template"
    assert decode_key((made / "cipher_keys").read_text().strip())
    assert len((made / "audit_key").read_bytes().strip()) >= MIN_KEY_BYTES
    for generated in ("postgres_password", "webhook_secret", "grafana_admin_password"):
        assert (made / generated).read_text().strip(), generated

    before = {p.name: p.read_bytes() for p in made.iterdir()}
    again = subprocess.run(["sh", str(MAKE_SECRETS), str(made)], capture_output=True, check=False)
    assert again.returncode == 0
    assert {p.name: p.read_bytes() for p in made.iterdir()} == before, "a secret was replaced"

    doc = DEPLOYMENT_DOC.read_text()
    assert f"infra/compose/{MAKE_SECRETS.name}" in doc, "docs/deployment.md must name the step"
    ignored = (DEFAULT_SECRETS_DIR / ".gitignore").read_text().split()
    assert ignored[:1] == ["*"], "the secrets folder must keep its files out of git"


def test_files_mounted_into_containers_are_in_the_repository() -> None:
    document = resolved()
    for name, config in (document.get("configs") or {}).items():
        assert (ROOT / config["file"]).is_file(), f"config {name}: {config['file']}"
    for name, service in document["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"service {name} mounts {source}"
            else:
                assert source in (document.get("volumes") or {}), f"{name}: volume {source}"


def test_the_shipped_alert_endpoints_file_is_valid() -> None:
    from services.dispatcher import EndpointFile

    config = resolved()["configs"]["alert_endpoints"]["file"]
    with (ROOT / config).open("rb") as handle:
        endpoints = EndpointFile.model_validate(tomllib.load(handle)).endpoints
    assert endpoints, "no endpoint: the dispatcher would refuse to start"


# ---------------------------------------------------------------- Kafka topics and scaling


def test_topics_created_by_the_init_service_are_the_codes_topics() -> None:
    document = load_compose()
    init = document["services"]["topic-init"]
    created = environment(init)["TOPICS"].split()
    assert sorted(created) == sorted(Settings.model_construct().topics)
    assert "$$TOPICS" in init["command"][0]
    for name, service in toxwatch_services(document).items():
        for variable, value in environment(service).items():
            if variable.endswith("_TOPIC"):
                assert value in created, f"service {name}: {variable}={value} is not created"


def test_kafka_creates_no_topic_by_itself() -> None:
    kafka = environment(load_compose()["services"]["kafka"])
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft mode"
    image = load_compose()["services"]["kafka"]["image"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", image), image


@pytest.mark.parametrize("env", [{}, {"TOXWATCH_PARTITIONS": "6"}])
def test_workers_and_init_service_agree_on_the_partitions(env: dict[str, str]) -> None:
    document = resolved(env)
    partitions = environment(document["services"]["topic-init"])["PARTITIONS"]
    assert partitions == env.get("TOXWATCH_PARTITIONS", partitions)
    for name, service in toxwatch_services(document).items():
        assert environment(service)["TOXWATCH_PARTITIONS"] == partitions, name


def test_services_that_use_kafka_start_after_the_topics_exist() -> None:
    services = load_compose()["services"]
    for name in ("worker", "relay", "dispatcher"):
        condition = services[name]["depends_on"]["topic-init"]["condition"]
        assert condition == "service_completed_successfully", name


@pytest.mark.parametrize(("env", "replicas"), [({}, None), ({"TOXWATCH_WORKER_REPLICAS": "3"}, 3)])
def test_workers_scale_in_one_consumer_group(env: dict[str, str], replicas: int | None) -> None:
    document = resolved(env)
    worker = document["services"]["worker"]
    count = int(worker["deploy"]["replicas"])
    assert count == replicas or (replicas is None and count >= 1)
    assert count <= int(environment(worker)["TOXWATCH_PARTITIONS"]), "idle workers by default"
    assert "ports" not in worker and "container_name" not in worker, "blocks --scale"
    group = environment(worker).get("TOXWATCH_CONSUMER_GROUP")
    assert group in (None, Settings.model_fields["consumer_group"].default)
    for name in SINGLE_INSTANCE:
        deploy = document["services"][name].get("deploy") or {}
        assert int(deploy.get("replicas", 1)) == 1, f"{name} is a single instance"


def test_prometheus_scrapes_the_metrics_ports_the_services_open() -> None:
    document = load_compose()
    services = document["services"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets: list[str] = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs") or []:
            targets += static["targets"]
        for dns in job.get("dns_sd_configs") or []:
            targets += [f"{name}:{dns['port']}" for name in dns["names"]]
    for target in targets:
        host, port = target.rsplit(":", 1)
        if host == "localhost":
            continue
        assert host in services, f"Prometheus scrapes {target}: no such service"
        if host in toxwatch_services(document):
            assert environment(services[host]).get("TOXWATCH_METRICS_PORT") == port, target
    for manager in config["alerting"]["alertmanagers"]:
        for static in manager["static_configs"]:
            for target in static["targets"]:
                assert target.rsplit(":", 1)[0] in services, f"Prometheus alerts {target}"


# ---------------------------------------------------------------- Dockerfile


def test_the_dockerfile_builds_in_stages_and_runs_as_a_non_root_user() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile must be multi-stage"
    earlier = {stage[0][1].split()[-1] for stage in stages[:-1]}
    final = stages[-1]
    copied_from = {
        match.group(1)
        for keyword, arguments in final
        if keyword == "COPY" and (match := re.search(r"--from=(\S+)", arguments))
    }
    assert copied_from & earlier, "the runtime stage must copy the build of an earlier stage"
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"runs as {users[-1]}"
    entrypoints = [arguments for keyword, arguments in final if keyword == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["toxwatch"]


def test_the_image_installs_the_locked_versions() -> None:
    text = DOCKERFILE.read_text()
    assert "-c requirements.lock" in text
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ARG" and arguments.startswith("PYTHON_IMAGE="):
            image = arguments.split("=", 1)[1]
            assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), image


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip().lstrip("/").rstrip("/")
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            regex, index = regex + ".*", index + 2
        elif pattern[index] == "*":
            regex, index = regex + "[^/]*", index + 1
        elif pattern[index] == "?":
            regex, index = regex + "[^/]", index + 1
        else:
            regex, index = regex + re.escape(pattern[index]), index + 1
    return re.compile(regex)


def dockerignored(path: str) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` (relative to the context) out of the
    build context: the last pattern matching it or one of its folders decides."""
    rules = [
        (line.startswith("!"), _docker_pattern(line.lstrip("!")))
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_secret() -> None:
    for keyword, arguments in dockerfile_instructions():
        if keyword != "COPY" or "--from=" in arguments:
            continue
        sources = [word for word in arguments.split() if not word.startswith("--")][:-1]
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: no such file"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if "__pycache__" in relative or relative.startswith("infra/compose/secrets/"):
                    continue
                assert not dockerignored(relative), f".dockerignore drops {relative}"
    for private in (
        "infra/compose/secrets/postgres_password",
        ".git/HEAD",
        ".venv/bin/python",
        "data/demo/toxwatch.sqlite3",
        "services/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignored(private), f"{private} would be sent to the Docker build"


# ---------------------------------------------------------------- documentation


def test_the_deployment_guide_covers_the_first_run() -> None:
    doc = DEPLOYMENT_DOC.read_text()
    for needed in (
        "docker compose build",
        "docker compose up -d",
        "--scale worker=",
        "TOXWATCH_WORKER_REPLICAS",
        "token create",
        "http://localhost:8079",
        "http://localhost:3000",
        "http://localhost:9090",
    ):
        assert needed in doc, f"docs/deployment.md does not mention {needed!r}"


def test_cli_commands_in_the_deployment_guide_exist() -> None:
    """Each ``docker compose run --rm cli <command>`` of the guide names a command of
    the CLI (its words up to the first option or argument)."""
    doc = DEPLOYMENT_DOC.read_text()
    commands: set[tuple[str, ...]] = set()
    for line in re.findall(r"docker compose run --rm cli ([^\n`]*)", doc):
        words: list[str] = []
        for word in line.split():
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            words.append(word)
        commands.add(tuple(words))
    assert commands, "the guide runs no one-off command"
    for words in sorted(commands):
        result = subprocess.run(
            [toxwatch_executable(), *words, "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"`toxwatch {' '.join(words)}` does not exist"
