"""Structured logging: a log line is an event with fields, written as one JSON object.

Callers pass only decision data (``sub``, ``client_id``, audience, ``jti``, outcome, reasons of
our own wording). Tokens, secrets and raw request bodies are never passed in, so they cannot be
written out.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with ``fields``; rendered as JSON by ``JsonFormatter``."""
    if logger.isEnabledFor(level):
        # What logger.log() does, less its walk up the stack to find the caller (an audit
        # line is written per exchange): the caller is the frame right above this one.
        caller = sys._getframe(1)
        record = logger.makeRecord(
            logger.name, level, caller.f_code.co_filename, caller.f_lineno, name, (), None,
            caller.f_code.co_name, {"fields": fields},
        )  # fmt: skip
        logger.handle(record)


#: Terminal colour codes, which werkzeug puts in its lines under ``dev``.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

#: One encoder for every line: json.dumps() with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, then the event's fields."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if "\x1b" in line["event"]:
            line["event"] = _ANSI.sub("", line["event"])
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and where it happened; messages of library exceptions are
            # not ours to vouch for, so the traceback goes to the log, never to a client.
            line["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line)

    def _time(self, record: logging.LogRecord) -> str:
        """``record.created`` as ISO 8601 UTC with milliseconds; the seconds formatted once."""
        second = int(record.created)
        cached = self._second  # one read: a pair another thread replaces stays consistent
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{int(record.msecs):03d}Z"


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
    # Our lines never show a record's thread or process names; logging looks them up for
    # every record unless told not to (an audit line is written per exchange).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def server_dictconfig() -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for granian's and gunicorn's own loggers: their lines
    as JSON on stderr like ours, in every process (workers configure logging with it too)."""
    json_handler = {"handlers": ["json"], "level": "INFO", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "token_exchange.logs.JsonFormatter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["json"], "level": "INFO"},
        "loggers": {
            name: dict(json_handler)
            for name in ("_granian", "granian.access", "gunicorn.error", "gunicorn.access")
        },
    }
