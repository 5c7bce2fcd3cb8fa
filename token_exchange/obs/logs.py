"""Structured logging: a log line is an event with fields, written as one JSON object.

Callers pass only decision data (``sub``, ``client_id``, audience, ``jti``, outcome, reasons of
our own wording). Tokens, secrets and raw request bodies are never passed in, so they cannot be
written out.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with ``fields``; rendered as JSON by ``JsonFormatter``."""
    if logger.isEnabledFor(level):
        handler = _only_our_handler(logger, level)
        if handler is not None:
            # The one place the record would reach is our line on stderr: the same line,
            # without a LogRecord and the walk through logging's handlers (an audit line is
            # written per exchange).
            handler.write(logger.name, level, name, fields)
            return
        # What logger.log() does, less its walk up the stack to find the caller: the caller
        # is the frame right above this one.
        caller = sys._getframe(1)
        record = logger.makeRecord(
            logger.name, level, caller.f_code.co_filename, caller.f_lineno, name, (), None,
            caller.f_code.co_name, {"fields": fields},
        )  # fmt: skip
        logger.handle(record)


class Throttle:
    """Warnings about a dependency, at most one line per event name per ``interval`` seconds.

    During an outage the same warning would be written for every request (thousands a second);
    the first is written at once, the rest of the interval's are counted, and the next line
    written says how many were left out (``suppressed``).
    """

    def __init__(self, interval: float = 10.0, *, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def event(
        self, logger: logging.Logger, name: str, *, level: int = logging.WARNING, **fields: Any
    ) -> None:
        """``event(logger, name, ...)`` unless one was written less than ``interval`` ago."""
        with self._lock:
            now = self.clock()
            if now < self._next.get(name, -math.inf):
                self._suppressed[name] = self._suppressed.get(name, 0) + 1
                return
            self._next[name] = now + self.interval
            suppressed = self._suppressed.pop(name, 0)
        event(logger, name, level=level, **fields, suppressed=suppressed)


def _only_our_handler(logger: logging.Logger, level: int) -> JsonLines | None:
    """``configure``'s handler, when a record of ``logger`` at ``level`` would reach it and
    nothing else: no filter, no other handler on the way (else logging does the work)."""
    if logger.disabled or logger.filters:
        return None
    found: JsonLines | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if level < handler.level:
                continue
            if (
                found is not None
                or not isinstance(handler, JsonLines)
                or not isinstance(handler.formatter, JsonFormatter)
                or handler.filters
            ):
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


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
        fields = getattr(record, "fields", None)
        exception = None
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and where it happened; messages of library exceptions are
            # not ours to vouch for, so the traceback goes to the log, never to a client.
            exception = self.formatException(record.exc_info)
        return self.line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            fields if isinstance(fields, dict) else None,
            exception,
        )

    def line(
        self,
        created: float,
        level_name: str,
        logger: str,
        event: str,
        fields: dict[str, Any] | None,
        exception: str | None = None,
    ) -> str:
        line: dict[str, Any] = {
            "time": self._time(created),
            "level": level_name.lower(),
            "logger": logger,
            "event": _ANSI.sub("", event) if "\x1b" in event else event,
        }
        if fields:
            line.update(fields)
        if exception is not None:
            line["exception"] = exception
        return _ENCODER.encode(line)

    def _time(self, created: float) -> str:
        """``created`` as ISO 8601 UTC with milliseconds; the seconds formatted once."""
        second = int(created)
        cached = self._second  # one read: a pair another thread replaces stays consistent
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{int((created - second) * 1000):03d}Z"


class JsonLines(logging.StreamHandler):  # type: ignore[type-arg]
    """``configure``'s handler: JSON lines on a stream; ``write`` is ``event``'s short way."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self.setFormatter(JsonFormatter())

    def write(self, logger: str, level: int, event: str, fields: dict[str, Any]) -> None:
        """What ``emit`` writes for such a record, built without one (``event`` checks that
        the formatter is a ``JsonFormatter``)."""
        try:
            line = self.formatter.line(  # type: ignore[union-attr]
                time.time(), logging.getLevelName(level), logger, event, fields
            )
            with self.lock:  # type: ignore[union-attr]
                self.stream.write(line + self.terminator)
                self.stream.flush()
        except RecursionError:  # as logging.StreamHandler.emit does
            raise
        except Exception:  # noqa: BLE001 - reported as logging reports a failed emit
            record = logging.makeLogRecord({"name": logger, "levelno": level, "msg": event})
            self.handleError(record)


def configure(level: str | int = "INFO") -> None:
    """Send every log record to stderr as JSON lines (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(handler, JsonLines) for handler in root.handlers):
        root.addHandler(JsonLines(sys.stderr))
    root.setLevel(level)
    # Our lines never show a record's thread or process names; logging looks them up for
    # every record unless told not to (an audit line is written per exchange).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class ExpectedThreadsNotice(logging.Filter):
    """Drops granian's warning that a WSGI worker's threads ("up to N Python threads ... seems
    quite high") outnumber the CPUs: serve chooses that many on purpose (README, Operating it:
    threads wait on dependencies, each bounded by its share), and granian has no switch for it."""

    PREFIX = "Configuration allows spawning up to "

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.PREFIX))


def server_dictconfig() -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for granian's and gunicorn's own loggers: their lines
    as JSON on stderr like ours, in every process (workers configure logging with it too)."""
    json_handler = {"handlers": ["json"], "level": "INFO", "propagate": False}
    loggers: dict[str, Any] = {
        name: dict(json_handler)
        for name in ("_granian", "granian.access", "gunicorn.error", "gunicorn.access")
    }
    loggers["_granian"]["filters"] = ["expected_threads"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"expected_threads": {"()": ExpectedThreadsNotice}},
        "handlers": {
            "json": {"class": "token_exchange.obs.logs.JsonLines", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["json"], "level": "INFO"},
        "loggers": loggers,
    }


def printable(value: str, limit: int = 200) -> str:
    """``value``, written by a caller, fit for a log line: at most ``limit`` characters (a
    longer one is cut, with ``...``), control and format characters (newlines, ANSI escapes,
    bidirectional overrides) escaped as ``\\xNN``/``\\uNNNN``, and a backslash doubled, so that
    an escape in the line is always ours."""
    cut = value[:limit]
    if not cut.isprintable() or "\\" in cut:
        cut = "".join(_escaped(c) for c in cut)
    return cut + "..." if len(value) > limit else cut


def _escaped(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
