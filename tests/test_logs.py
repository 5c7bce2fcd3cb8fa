"""JSON log lines (``logs.event``, ``logs.JsonFormatter``)."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from token_exchange.logs import JsonFormatter, event


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def collected() -> Any:
    logger = logging.getLogger("token_exchange.test_logs")
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, handler
    logger.removeHandler(handler)


def test_an_event_is_one_json_line_with_its_fields(collected: Any) -> None:
    logger, handler = collected
    event(logger, "token_exchange", sub="auth0|42", ms=1.5, kids=["a"], when=datetime(2026, 1, 1))
    (line,) = handler.lines
    assert "\n" not in line
    assert json.loads(line) == {
        "time": json.loads(line)["time"], "level": "info", "logger": logger.name,
        "event": "token_exchange", "sub": "auth0|42", "ms": 1.5, "kids": ["a"],
        "when": "2026-01-01 00:00:00",
    }  # fmt: skip
    # The record names the caller of event(), not logs.py.
    (record,) = handler.records
    assert record.pathname == __file__
    assert record.funcName == "test_an_event_is_one_json_line_with_its_fields"


def test_events_below_the_level_are_not_built(collected: Any) -> None:
    logger, handler = collected
    event(logger, "debugging", level=logging.DEBUG, sub="x")
    assert handler.lines == []
    event(logger, "warned", level=logging.WARNING, sub="x")
    assert json.loads(handler.lines[0])["level"] == "warning"


@pytest.mark.parametrize("created", [0.0, 1_795_669_873.0, 1_795_669_873.999, 1_795_669_874.0005])
def test_time_is_iso8601_utc_with_milliseconds(created: float) -> None:
    formatter = JsonFormatter()
    for _ in range(2):  # formatted, then from the formatter's memory of that second
        record = logging.makeLogRecord({"msg": "e", "levelname": "INFO"})
        record.created, record.msecs = created, (created - int(created)) * 1000
        expected = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(record.msecs):03d}Z"
        )
        assert json.loads(formatter.format(record))["time"] == expected
    parsed = datetime.fromisoformat(expected.replace("Z", "+00:00"))
    assert parsed.tzinfo == UTC
