# syntax=docker/dockerfile:1
# The ToxWatch image: every `toxwatch` command (docker-compose.yml runs worker, relay,
# monitor, alerts, dispatcher and api from it). Two stages: the builder makes a venv
# with the project and exactly the runtime packages pinned in requirements.lock
# (binary wheels only, nothing compiled); the runtime stage is the slim Python image
# with that venv, run as an unprivileged user.
#
#   docker build -t toxwatch:0.1.0 .        (or: docker compose build)

ARG PYTHON_IMAGE=python:3.11.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/toxwatch
COPY pyproject.toml README.md requirements.lock ./
COPY domain ./domain
COPY projections ./projections
COPY infra ./infra
COPY services ./services
# The project as a wheel, then it and its dependencies at the versions of the lock.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/toxwatch/bin/pip install --only-binary=:all: -c requirements.lock /wheels/toxwatch-*.whl
# Refuse an image holding a distribution the lock does not pin at that version.
RUN /opt/toxwatch/bin/python - <<'PY'
import importlib.metadata as metadata
import re

def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()

lock = {}
for line in open("requirements.lock"):
    line = line.split("#", 1)[0].strip()
    if line:
        name, version = line.split("==")
        lock[key(name)] = version
unpinned = sorted(
    f"{d.metadata['Name']}=={d.version}"
    for d in metadata.distributions()
    if key(d.metadata["Name"]) not in {"toxwatch", "pip", "setuptools"}
    and lock.get(key(d.metadata["Name"])) != d.version
)
if unpinned:
    raise SystemExit(f"installed but not pinned in requirements.lock: {unpinned}")
PY

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/toxwatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOXWATCH_DATA_DIR=/var/lib/toxwatch
RUN groupadd --system --gid 10001 toxwatch \
 && useradd --system --uid 10001 --gid toxwatch --home-dir /var/lib/toxwatch \
      --no-create-home --shell /usr/sbin/nologin toxwatch \
 && install -d -o toxwatch -g toxwatch -m 0750 /var/lib/toxwatch
COPY --from=builder /opt/toxwatch /opt/toxwatch
COPY protocols /etc/toxwatch/protocols
COPY --chmod=0755 infra/compose/toxwatch-file-env /usr/local/bin/toxwatch-file-env
WORKDIR /var/lib/toxwatch
USER 10001:10001
# The API (TOXWATCH_API_PORT) and the Prometheus metrics (TOXWATCH_METRICS_PORT).
EXPOSE 8079 9100
ENTRYPOINT ["toxwatch"]
CMD ["--help"]
