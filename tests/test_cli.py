"""The ``token-exchange`` command, run as users run it: as a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    GRANT,
    PERMISSIONS_TOKEN,
    FakeIssuer,
    FakePermissions,
)
from .helpers import CLI, free_port, run_dev_walkthrough, serve_process, service_toml

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def write_config(path: Path, issuer: FakeIssuer, permissions: FakePermissions) -> Path:
    path.write_text(service_toml(issuer.issuer, permissions.url))
    return path


@pytest.fixture
def config(tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions) -> Path:
    return write_config(tmp_path / "config.toml", issuer, permissions_api)


ENV = {"PERMS_TOKEN": PERMISSIONS_TOKEN}


# -- keys ---------------------------------------------------------------------------------------


def test_keys_generate_creates_a_key_that_signs_at_once(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    result = run("keys", "generate", "--keys-dir", str(keys_dir), "--alg", "ES256")
    assert result.returncode == 0, result.stderr
    (pem,) = keys_dir.glob("*.pem")
    assert pem.stat().st_mode & 0o777 == 0o600
    listing = run("keys", "list", "--keys-dir", str(keys_dir))
    kid = pem.stem.removeprefix("key-")
    assert re.search(rf"{kid}\s+ES256\s+active", listing.stdout), listing.stdout


def test_keys_generate_refuses_a_directory_with_keys(tmp_path: Path) -> None:
    assert run("keys", "generate", "--keys-dir", str(tmp_path)).returncode == 0
    result = run("keys", "generate", "--keys-dir", str(tmp_path))
    assert result.returncode == 2
    assert "already holds signing keys" in result.stderr


# -- check-config ---------------------------------------------------------------------------------


def test_check_config_ok(config: Path) -> None:
    run("keys", "generate", "--keys-dir", str(config.parent / "keys"))
    result = run("check-config", "--config", str(config), env=ENV)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_config_reports_every_problem(config: Path) -> None:
    config.write_text(
        config.read_text()
        .replace('scopes = ["countries:read"]', 'scopes = "x"')
        .replace('url = "sqlite:state/store.db"', 'url = "ftp://x"')
    )
    result = run("check-config", "--config", str(config), env=ENV)
    assert result.returncode == 2
    assert 'apis["https://countries.example.test"].scopes' in result.stderr
    assert "store.url" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_refuses_otel_variables_asking_for_what_is_not_there(config: Path) -> None:
    run("keys", "generate", "--keys-dir", str(config.parent / "keys"))
    env = {**ENV, "OTEL_TRACES_EXPORTER": "zipkin"}
    result = run("check-config", "--config", str(config), env=env)
    assert result.returncode == 2
    assert "OTEL_TRACES_EXPORTER names 'zipkin'" in result.stderr
    assert "Traceback" not in result.stderr


def test_dev_refuses_otel_variables_asking_for_what_is_not_there() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_SAMPLER": "rate"}
    result = run("dev", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert "OTEL_TRACES_SAMPLER names 'rate'" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_reports_missing_keys_and_secrets(config: Path) -> None:
    result = run("check-config", "--config", str(config), env={"PERMS_TOKEN": ""})
    assert result.returncode == 2
    assert "PERMS_TOKEN is not set" in result.stderr
    # One run reports the missing key too, with the command that creates it.
    assert "keys generate" in result.stderr or "does not exist" in result.stderr


def test_config_path_from_the_environment(config: Path) -> None:
    run("keys", "generate", "--keys-dir", str(config.parent / "keys"))
    result = run("check-config", env={**ENV, "TOKEN_EXCHANGE_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr


# -- serve --------------------------------------------------------------------------------------


@pytest.fixture(params=["granian", "gunicorn"])
def served(config: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    run("keys", "generate", "--keys-dir", str(config.parent / "keys"))
    with serve_process(config, ENV, workers=2, server=request.param) as url:
        yield url, request.param


def test_serve_runs_a_production_server_and_exchanges(
    served: tuple[str, str], issuer: FakeIssuer
) -> None:
    url, server = served
    response = requests.post(
        f"{url}/token",
        data={
            "grant_type": GRANT,
            "client_id": "spa",
            "subject_token": issuer.token(),
            "subject_token_type": ACCESS_TOKEN,
            "audience": COUNTRIES,
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert server in response.headers.get("Server", "")


def test_serve_refuses_a_bad_config(config: Path) -> None:
    config.write_text(config.read_text().replace("[[clients]]", "[[clientz]]"))
    result = run("serve", "--config", str(config), "--port", str(free_port()), env=ENV)
    assert result.returncode == 2
    assert "clientz" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_without_a_signing_key(config: Path) -> None:
    result = run("serve", "--config", str(config), "--port", str(free_port()), env=ENV)
    assert result.returncode == 2
    assert "keys generate" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_without_any_config() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TOKEN_EXCHANGE_CONFIG"}
    result = subprocess.run([*CLI, "serve"], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2
    assert "TOKEN_EXCHANGE_CONFIG" in result.stderr


# -- dev ----------------------------------------------------------------------------------------


def test_dev_prints_a_walkthrough_that_works_when_pasted(tmp_path: Path) -> None:
    _, _, result = run_dev_walkthrough(tmp_path, "oauth-authorization-server")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"issued_token_type":"urn:ietf:params:oauth:token-type:access_token"' in out
    assert '"custom_access_to_countries": [\n    "nl"\n  ]' in out  # the decoded claims
    assert '"error":"invalid_target"' in out  # fr is refused for alice
    assert '"keys"' in out
    assert '"token_endpoint"' in out
    # The decoded minted token names the demo user and exactly one API.
    decoded = json.loads(
        out[out.index('{\n  "given_name"') : out.index("}\n", out.index('{\n  "given_name"')) + 1]
    )
    assert decoded["sub"] == "dev|alice"
    assert decoded["aud"] == "https://countries.example.test"


# -- output into a closed pipe ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "list", "--keys-dir", "{keys}"],
        ["config-schema"],
        ["check-config", "--config", "{config}"],
    ],
    ids=["keys-list", "config-schema", "check-config"],
)
def test_output_into_a_closed_pipe_ends_quietly(config: Path, args: list[str]) -> None:
    """``keys list | head``: the reader went away; no BrokenPipeError traceback, status 141
    (as a command killed by SIGPIPE reports it)."""
    keys = config.parent / "keys"
    run("keys", "generate", "--keys-dir", str(keys))
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the command writes: every write fails with EPIPE
    try:
        result = subprocess.run(
            [*CLI, *(a.format(keys=keys, config=config) for a in args)],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
            env={**os.environ, **ENV},
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141


def test_the_command_imports_no_metrics_client_before_it_is_told_where() -> None:
    """``serve`` sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is first imported (it
    picks its multi-process mode then): the command's module must not import it."""
    probe = "import sys, token_exchange.serve.cli; print('prometheus_client' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
