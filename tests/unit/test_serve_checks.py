"""What ``serve`` and ``check-config`` refuse before serving (issue 21, items 7 and 10)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from granian import Granian

from token_exchange.obs.logs import ExpectedThreadsNotice, server_dictconfig
from token_exchange.serve import cli
from token_exchange.serve.cli import CliError, main
from token_exchange.sources.keys import write_key

from ..helpers import service_toml
from .test_key_problems import key

AUTH0_WITHOUT_SLASH = "https://tenant.eu.auth0.com"  # a warning: Auth0's iss ends with "/"


def config(tmp_path: Path, extra: str = "", issuer: str = "https://issuer.test/") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(service_toml(issuer, "https://webapp.test/permissions", extra=extra))
    write_key(tmp_path / "keys", key())
    return path


@pytest.fixture(autouse=True)
def _permissions_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERMS_TOKEN", "x")


METRICS_8080 = "[metrics]\nport = 8080\n"


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """The command configures the root logger (``logs.configure``: a JSON handler on the
    stream of the moment, a level) for a process; in this test process it must not outlive the
    test, or the tests after it read their log records through it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_serve_refuses_a_metrics_port_equal_to_its_port_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, METRICS_8080)
    assert main(["serve", "--config", str(path), "--port", "8080"]) == 2
    err = capsys.readouterr().err
    assert "metrics.port: 8080 is also the port serve listens on (--port)" in err
    assert "Traceback" not in err


def test_check_config_refuses_the_same_clash_given_the_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, METRICS_8080)
    assert main(["check-config", "--config", str(path), "--port", "8080"]) == 2
    assert "metrics.port: 8080 is also the port" in capsys.readouterr().err
    assert main(["check-config", "--config", str(path), "--port", "9000"]) == 0


def test_check_config_warns_of_a_metrics_port_equal_to_serves_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, METRICS_8080)
    assert main(["check-config", "--config", str(path)]) == 0
    captured = capsys.readouterr()
    assert "warning: metrics.port: 8080 is also the port" in captured.err
    assert "ok" in captured.out


def test_check_config_strict_fails_on_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, issuer=AUTH0_WITHOUT_SLASH)
    assert main(["check-config", "--config", str(path)]) == 0
    assert "Auth0 issuers end with '/'" in capsys.readouterr().err
    assert main(["check-config", "--config", str(path), "--strict"]) == 1
    captured = capsys.readouterr()
    assert "Auth0 issuers end with '/'" in captured.err
    assert "--strict" in captured.err
    assert "ok" not in captured.out


def test_check_config_strict_passes_without_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path)
    assert main(["check-config", "--config", str(path), "--strict"]) == 0
    assert capsys.readouterr().err == ""


def test_a_port_taken_after_the_check_is_one_line_not_granians_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def taken(self: Granian) -> None:
        raise RuntimeError(
            "Address already in use (os error 98)\n\nStack backtrace:\n   0: <unknown>"
        )

    monkeypatch.setattr(Granian, "serve", taken)
    with pytest.raises(CliError) as raised:
        cli._run_granian("127.0.0.1", 8080, 1, 8)
    message = str(raised.value)
    assert message.startswith("cannot listen on 127.0.0.1:8080 (--port): Address already in use")
    assert "\n" not in message


def test_other_granian_errors_are_not_taken_for_a_busy_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: Granian) -> None:
        raise RuntimeError("something else")

    monkeypatch.setattr(Granian, "serve", broken)
    with pytest.raises(RuntimeError, match="something else"):
        cli._run_granian("127.0.0.1", 8080, 1, 8)


def test_granians_many_threads_warning_is_dropped_and_nothing_else() -> None:
    notice = ExpectedThreadsNotice()

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("_granian", logging.WARNING, __file__, 1, msg, (), None)

    assert not notice.filter(
        record(
            "Configuration allows spawning up to 92 Python threads, which seems quite high "
            "compared to the number of CPU cores available."
        )
    )
    assert notice.filter(record("Starting granian (main PID: 1)"))
    granian = server_dictconfig()["loggers"]["_granian"]
    assert granian["filters"] == ["expected_threads"]
    assert server_dictconfig()["filters"]["expected_threads"]["()"] is ExpectedThreadsNotice


def test_only_metrics_files_are_cleared_from_the_multiprocess_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROMETHEUS_MULTIPROC_DIR may be a volume shared with the SQLite store (the one writable
    place of a read-only container): serve clears prometheus_client's files there, not others."""
    for name in ("counter_12.db", "histogram_12.db", "gauge_livesum_12.db", "store.db"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with cli._metrics_directory():
        assert sorted(p.name for p in tmp_path.iterdir()) == ["store.db"]
