"""Logging for every ``toxwatch`` process (issue 8, item 6).

``TOXWATCH_LOG_FORMAT=json`` (production) writes one JSON object per line
(python-json-logger): ``time`` (ISO 8601), ``level``, ``logger``, ``service`` (the
command),
``message`` and, for a failure, ``exc_info``. ``text`` (the default) is for a
terminal. ``TOXWATCH_LOG_LEVEL`` sets the level (default ``WARNING``).

What the code logs is positions, types, counts, token ids and error classes, never a
clinical value, a participant, site or event id (``tests/integration`` checks the
services' logs over a whole simulated cohort).
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from collections.abc import Mapping
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def logging_config(command: str, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of a process running ``command``."""
    level = environ.get("TOXWATCH_LOG_LEVEL", "WARNING").upper()
    fmt = environ.get("TOXWATCH_LOG_FORMAT", "text").lower()
    if fmt not in ("text", "json"):
        raise ValueError(f"TOXWATCH_LOG_FORMAT must be text or json, not {fmt!r}")
    formatter: dict[str, Any] = (
        {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "static_fields": {"service": command},
            "datefmt": "%Y-%m-%dT%H:%M:%S%z",
        }
        if fmt == "json"
        else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"toxwatch": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "toxwatch",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }


def configure_logging(argv: list[str] | None = None) -> None:
    """Configure the root logger for this process (its command from ``argv``)."""
    args = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")]
    logging.config.dictConfig(logging_config(args[0] if args else "toxwatch"))
