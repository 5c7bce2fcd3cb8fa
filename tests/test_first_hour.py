"""An operator's first hour (issue 13): busy ports, help, logs, the path from dev to serve."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import FakeIssuer, FakePermissions
from .helpers import free_port
from .test_cli import CLI, ENV, run


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
