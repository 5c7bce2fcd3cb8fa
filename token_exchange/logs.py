"""Structured logging: a log line is an event with fields, written as one JSON object.

Callers pass only decision data (``sub``, ``client_id``, audience, ``jti``, outcome, reasons of
our own wording). Tokens, secrets and raw request bodies are never passed in, so they cannot be
written out.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with ``fields``; rendered as JSON by ``JsonFormatter``."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and where it happened; messages of library exceptions are
            # not ours to vouch for, so the traceback goes to the log, never to a client.
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure(level: str | int = "INFO") -> None:
    """Send every log record to stderr as JSON lines (idempotent)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "_token_exchange", False):
            break
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._token_exchange = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
