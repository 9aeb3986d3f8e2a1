"""Structured JSON logs, one object per line, each with the current request id.

Secrets stay out: any key that looks like a credential is replaced before
rendering, whichever code logged it.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import structlog

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

SECRET_KEYS = frozenset(
    {
        "authorization",
        "token",
        "access_token",
        "api_key",
        "x-api-key",
        "password",
        "private_key",
        "secret",
        "cookie",
    }
)
REDACTED = "[redacted]"


def _add_request_id(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    request_id = request_id_var.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def _redact_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key.lower() in SECRET_KEYS:
            event[key] = REDACTED
    return event


def configure_logging(level: str = "info", service: str | None = None) -> None:
    numeric = logging.getLevelName(level.upper())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_request_id,
        _redact_secrets,
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(sort_keys=True),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    if service is not None:
        structlog.contextvars.bind_contextvars(service=service)
    # Libraries that log through the standard library (uvicorn, alembic) go through the same renderer.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *processors,
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    for noisy in ("uvicorn.access",):  # replaced by our own access log line
        logging.getLogger(noisy).disabled = True
    # httpx logs every outgoing request at INFO with its full URL; our own log lines say what matters.
    logging.getLogger("httpx").setLevel(max(numeric, logging.WARNING))


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
