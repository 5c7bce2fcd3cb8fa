"""An operator's first hour (issue 13): busy ports, help, logs, the path from dev to serve."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fakes import FakeIssuer, FakePermissions
from .helpers import free_port, run_dev_walkthrough, wait_for
from .test_cli import CLI, ENV, run

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow


@pytest.fixture
def config(tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions) -> Path:
    from .helpers import service_toml

    path = tmp_path / "config.toml"
    path.write_text(service_toml(issuer.issuer, permissions_api.url))
    run("keys", "generate", "--keys-dir", str(tmp_path / "keys"))
    return path


@contextlib.contextmanager
def listening(*, reuse_port: bool = False) -> Iterator[int]:
    """A socket listening on a loopback port, as another server would hold it."""
    with socket.socket() as s:
        if reuse_port:  # as granian binds: a second granian could share the port
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_serve_refuses_a_busy_metrics_port(config: Path) -> None:
    with listening() as busy:
        config.write_text(config.read_text() + f'\n[metrics]\nport = {busy}\nhost = "127.0.0.1"\n')
        result = run(
            "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(free_port()),
            env=ENV,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{busy}" in result.stderr
    assert "[metrics] port" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_serve_refuses_a_port_another_server_shares(config: Path, server: str) -> None:
    with listening(reuse_port=True) as busy:
        result = run(
            "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(busy),
            "--server", server, env=ENV,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{busy}" in result.stderr
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_dev_refuses_a_busy_port_before_its_banner() -> None:
    with listening() as busy:
        result = subprocess.run(
            [*CLI, "dev", "--port", str(busy)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2
    assert "running" not in result.stdout
    assert result.stdout == ""
    assert f"127.0.0.1:{busy}" in result.stderr


def test_dev_walkthrough_points_at_this_sts_and_tries_introspect_and_revoke(
    tmp_path: Path,
) -> None:
    port, lines, result = run_dev_walkthrough(tmp_path, "examples/countries_api.py")
    # The example API is told where this STS is, not left at its default port.
    assert f"countries_api.py --sts http://127.0.0.1:{port}" in lines[-1]
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    # Every JSON answer on a line of its own.
    assert not any("}{" in line for line in out), result.stdout
    assert any(line.startswith('{"keys"') for line in out)
    introspected = [json.loads(line) for line in out if line.startswith("{") and "active" in line]
    assert [i["active"] for i in introspected] == [True, False]
    assert introspected[0]["sub"] == "dev|alice"
    assert "200" in out


def test_serve_and_dev_options_say_their_defaults() -> None:
    serve = run("serve", "--help").stdout
    assert "granian" in run("--help").stdout
    for option, default in [("--host", "0.0.0.0"), ("--port", "8080"), ("--workers", "CPU")]:
        text = " ".join(serve[serve.index(f"\n  {option} ") :].split()[:16])
        assert "default" in text, text
        assert default in text, text
    dev = " ".join(run("dev", "--help").stdout.split())
    assert "(default 8080)" in dev
    assert "(default ES256)" in dev


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_serve_logs_only_json_lines_on_stderr(config: Path, server: str, tmp_path: Path) -> None:
    port = free_port()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [*CLI, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--server", server],
            env={**os.environ, **ENV}, stdout=stdout, stderr=stderr, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(f"http://127.0.0.1:{port}", process)  # type: ignore[arg-type]
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
    assert out.read_text() == ""
    lines = err.read_text().splitlines()
    assert lines
    # granian's "up to N Python threads ... seems quite high": serve chooses them on purpose.
    assert not [line for line in lines if "seems quite high" in line]
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def test_werkzeug_colour_codes_stay_out_of_the_json() -> None:
    import logging

    from token_exchange.obs.logs import JsonFormatter

    record = logging.LogRecord(
        "werkzeug", logging.INFO, __file__, 1, "\x1b[33mPress CTRL+C to quit\x1b[0m", (), None
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "Press CTRL+C to quit"
