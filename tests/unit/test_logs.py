"""JSON log lines (``logs.event``, ``logs.JsonFormatter``)."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from token_exchange.obs.logs import JsonFormatter, JsonLines, event, server_dictconfig


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


class Ours:
    """A logger whose records reach only a ``JsonLines`` handler, as under ``serve``."""

    def __init__(self) -> None:
        self.logger = logging.Logger("token_exchange.test_logs.ours", logging.INFO)
        self.logger.propagate = False  # not in logging's tree: pytest adds no handler to it
        self.stream = io.StringIO()
        self.handler = JsonLines(self.stream)
        self.logger.addHandler(self.handler)

    def __iter__(self) -> Any:
        return iter((self.logger, self.handler, self.stream))


@pytest.fixture
def ours() -> Ours:
    return Ours()


def test_a_line_written_the_short_way_is_the_line_logging_writes(
    ours: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, handler, stream = ours
    monkeypatch.setattr(logger, "makeRecord", None)  # the short way builds no record
    before = time.time()
    event(logger, "token_exchange", sub="auth0|42", ms=1.5, when=datetime(2026, 1, 1))
    (line,) = stream.getvalue().splitlines()
    written = json.loads(line)
    record = logging.makeLogRecord(
        {"name": logger.name, "msg": "token_exchange", "levelname": "INFO",
         "fields": {"sub": "auth0|42", "ms": 1.5, "when": datetime(2026, 1, 1)}}
    )  # fmt: skip
    assert written == {**json.loads(handler.format(record)), "time": written["time"]}
    assert list(written) == ["time", "level", "logger", "event", "sub", "ms", "when"]
    stamp = datetime.fromisoformat(written["time"].replace("Z", "+00:00")).timestamp()
    assert before - 0.001 <= stamp <= time.time()


def test_another_handler_or_a_filter_on_the_way_gets_every_record(ours: Any) -> None:
    logger, handler, stream = ours
    other = Collect()
    logger.addHandler(other)
    try:
        event(logger, "both", sub="x")
    finally:
        logger.removeHandler(other)
    assert len(other.records) == 1
    assert json.loads(stream.getvalue())["event"] == "both"
    handler.addFilter(lambda record: record.getMessage() != "hidden")
    event(logger, "hidden", sub="x")
    event(logger, "shown", sub="x")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == [
        "both", "shown"
    ]  # fmt: skip


def test_a_handler_above_the_level_is_not_written_to(ours: Any) -> None:
    logger, handler, stream = ours
    handler.setLevel(logging.WARNING)
    event(logger, "info", sub="x")
    event(logger, "warned", level=logging.WARNING, sub="x")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["warned"]


def test_a_failing_stream_is_reported_as_logging_reports_it(
    ours: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, handler, _ = ours
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "stream", None)  # write() on None fails
    monkeypatch.setattr(handler, "handleError", reported.append)
    event(logger, "lost", sub="x")
    assert [r.getMessage() for r in reported] == ["lost"]


def test_the_workers_logging_config_writes_the_short_way() -> None:
    config = server_dictconfig()
    handler = logging.config.DictConfigurator(config).configure_handler(config["handlers"]["json"])
    assert isinstance(handler, JsonLines)
    assert isinstance(handler.formatter, JsonFormatter)
