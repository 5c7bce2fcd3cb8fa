"""What an operator relies on: metrics, the audit log, request ids, graceful restarts."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from .fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    GRANT,
    PERMISSIONS_TOKEN,
    FakeIssuer,
    FakePermissions,
    Sts,
)
from .hanging import wait_until
from .helpers import free_port, serve_process, wait_for
from .test_rotation import _config, cli


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_in_one_process(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    permissions_api.reply({"allow": True, "ttl": 60})
    token = issuer.token()
    for _ in range(3):
        sts.exchange(token)
    sts.exchange("forged")
    sts.exchange(token, audience="https://unknown.test")
    response = requests.get(f"{sts.url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    issued = {"outcome": "issued", "client_id": "spa", "audience": COUNTRIES}
    assert metric(text, "token_exchange_exchanges_total", **issued) == 3
    assert metric(text, "token_exchange_exchanges_total", outcome="invalid_request") == 1
    assert metric(text, "token_exchange_exchanges_total", outcome="invalid_target") == 1
    assert metric(text, "token_exchange_request_seconds_count", endpoint="token") == 5
    # Refusals by their reason (the audit line's code).
    refused = "token_exchange_request_refusals_total"
    assert metric(text, refused, endpoint="token", error="invalid_request", reason="malformed") == 1
    assert (
        metric(text, refused, endpoint="token", error="invalid_target", reason="unknown_audience")
        == 1
    )
    assert metric(text, "token_exchange_permission_calls_total", outcome="allow") == 1
    assert metric(text, "token_exchange_permission_call_seconds_count", source="webapp") == 1
    assert (
        metric(text, "token_exchange_cache_lookups_total", cache="subject_token", result="hit") >= 2
    )
    assert (
        metric(text, "token_exchange_cache_lookups_total", cache="permissions_local", result="hit")
        == 2
    )
    assert (
        metric(text, "token_exchange_jwks_fetches_total", issuer=issuer.issuer, outcome="ok") == 1
    )
    kid = sts.jwks()["keys"][0]["kid"]
    assert metric(text, "token_exchange_signing_key_info", kid=kid, alg="ES256") == 1
    assert 0 <= metric(text, "token_exchange_signing_key_age_seconds") < 600
    assert metric(text, "token_exchange_jwks_loaded", issuer=issuer.issuer) == 1
    # Nothing a caller sends becomes a label.
    assert "unknown.test" not in text
    assert "forged" not in text


def test_jwks_failures_are_counted(make_sts: Callable[..., Sts], issuer: FakeIssuer) -> None:
    issuer.down = True
    sts = make_sts()
    sts.exchange(issuer.token())
    text = requests.get(f"{sts.url}/metrics", timeout=5).text
    assert metric(text, "token_exchange_jwks_fetches_total", outcome="failed") >= 1


# -- the audit log ---------------------------------------------------------------------------


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        {"event": r.getMessage(), **getattr(r, "fields", {})}
        for r in caplog.records
        if r.name == "token_exchange.audit"
    ]


def test_one_audit_line_per_decision(
    sts: Sts, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    token = issuer.token()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        ok = sts.exchange(token, scope="countries:read", headers={"X-Request-ID": "req-1"})
        refused = sts.exchange("forged")
    lines = audit_lines(caplog)
    assert len(lines) == 2
    issued, failed = lines
    claims = sts.decode(ok.json()["access_token"])
    assert issued["request_id"] == "req-1" == ok.headers["X-Request-ID"]
    assert issued["outcome"] == "issued"
    assert issued["client_id"] == "spa"
    assert issued["sub"] == "auth0|42"
    assert issued["issuer"] == issuer.issuer
    assert issued["audience"] == COUNTRIES
    assert issued["scope"] == "countries:read"
    assert issued["jti"] == claims["jti"]
    assert issued["remote_addr"] == "127.0.0.1"
    assert issued["ms"] > 0
    assert failed["outcome"] == "invalid_request"
    assert failed["request_id"] == refused.headers["X-Request-ID"]
    # Never a token or a secret, whatever happened.
    everything = json.dumps(lines) + caplog.text
    for part in (*token.split("."), *ok.json()["access_token"].split(".")):
        assert part not in everything


def test_audit_lines_are_json(sts: Sts, issuer: FakeIssuer) -> None:
    from token_exchange.obs.logs import JsonFormatter

    record = logging.makeLogRecord(
        {"name": "token_exchange.audit", "msg": "token_exchange", "levelno": logging.INFO,
         "levelname": "INFO", "fields": {"sub": "auth0|42", "outcome": "issued"}}
    )  # fmt: skip
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "token_exchange"
    assert line["sub"] == "auth0|42"
    assert line["time"].endswith("Z")


@pytest.mark.parametrize(
    "given", ["", "x" * 129, 'a"b', "spaces are out", "tab\there", '{"json": 1}']
)
def test_unsafe_request_ids_are_replaced(sts: Sts, given: str) -> None:
    response = requests.get(f"{sts.url}/healthz", headers={"X-Request-ID": given}, timeout=5)
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


# -- several processes -------------------------------------------------------------------------


def _serve_config(
    tmp_path: Path, issuer: FakeIssuer, permissions: FakePermissions, extra: str = ""
) -> Path:
    cli("keys", "generate", "--keys-dir", str(tmp_path / "keys"))
    config = tmp_path / "config.toml"
    config.write_text(_config(issuer, permissions.url, 300) + extra)
    return config


def _exchange(url: str, issuer: FakeIssuer, sub: str = "auth0|42") -> requests.Response:
    return requests.post(
        f"{url}/token",
        data={"grant_type": GRANT, "client_id": "spa", "subject_token": issuer.token(sub=sub),
              "subject_token_type": ACCESS_TOKEN, "audience": COUNTRIES},
        timeout=10,
    )  # fmt: skip


@pytest.mark.slow
def test_metrics_add_up_across_worker_processes(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    config = _serve_config(tmp_path, issuer, permissions_api)
    with serve_process(config, {"PERMS_TOKEN": PERMISSIONS_TOKEN}, workers=2) as url:
        for i in range(20):
            assert _exchange(url, issuer, sub=f"u{i}").status_code == 200
        text = requests.get(f"{url}/metrics", timeout=5).text
    assert metric(text, "token_exchange_exchanges_total", outcome="issued") == 20
    assert metric(text, "token_exchange_permission_calls_total", outcome="allow") == 20


@pytest.mark.slow
def test_metrics_on_a_separate_port(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    port = free_port()
    config = _serve_config(
        tmp_path, issuer, permissions_api, f'\n[metrics]\nport = {port}\nhost = "127.0.0.1"\n'
    )
    with serve_process(config, {"PERMS_TOKEN": PERMISSIONS_TOKEN}, workers=2) as url:
        assert _exchange(url, issuer).status_code == 200
        assert requests.get(f"{url}/metrics", timeout=5).status_code == 404
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert metric(text, "token_exchange_exchanges_total", outcome="issued") == 1
    assert metric(text, "token_exchange_signing_key_info") == 1


@pytest.mark.slow
def test_sigterm_finishes_the_requests_in_flight(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    def slow(question: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        time.sleep(0.8)  # every exchange is in flight when the signal comes
        return 200, {"allow": True}, {}

    permissions_api.answer = slow
    config = _serve_config(tmp_path, issuer, permissions_api)
    port = free_port()
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "token_exchange.serve.cli", "serve", "--config", str(config),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            env={**os.environ, "PERMS_TOKEN": PERMISSIONS_TOKEN}, stdout=log,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_for(url, process, log)
        # Until a worker holds the issuer's keys its exchanges wait on that fetch, a few at a
        # time (the JWKS share), and the rest are refused: start once both workers hold them.
        wait_until(lambda: _read_all(log).count('"event":"jwks_fetched"') >= 2)
        results: list[Any] = []

        def one(i: int) -> None:
            try:
                results.append(_exchange(url, issuer, sub=f"u{i}").status_code)
            except requests.RequestException as e:
                results.append(type(e).__name__)

        burst = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for thread in burst:
            thread.start()
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        for thread in burst:
            thread.join()
        assert process.wait(30) == 0
    assert results == [200] * 12


def _read_all(log: Any) -> str:
    """What the server has written to ``log`` so far; read without moving the offset it
    shares with the server (``pread``), which would make it overwrite its own lines."""
    fd = log.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")


def test_refusals_before_any_parsing_are_audited_and_counted(
    sts: Sts, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        response = sts.exchange("x", padding="y" * 70_000)
    assert response.status_code == 413
    (line,) = audit_lines(caplog)
    assert line["outcome"] == "invalid_request"
    assert line["status"] == 413
    text = requests.get(f"{sts.url}/metrics", timeout=5).text
    assert metric(text, "token_exchange_exchanges_total", outcome="invalid_request") == 1


def _cpus_of_workers(leader: int) -> dict[int, set[str]]:
    """Each process in ``leader``'s session but the leader: the CPU lists of its threads."""
    found: dict[int, set[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == leader:
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) != leader:  # the session id
                continue
            found[int(entry.name)] = {
                line.split(":", 1)[1].strip()
                for task in (entry / "task").iterdir()
                for line in (task / "status").read_text().splitlines()
                if line.startswith("Cpus_allowed_list:")
            }
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
    return found


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_with_one_worker_per_cpu_each_runs_on_its_own(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions, mode: str
) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    config = _serve_config(
        tmp_path, issuer, permissions_api, f'\n[server]\ncpu_affinity = "{mode}"\n'
    )
    started: list[subprocess.Popen[str]] = []
    env = {"PERMS_TOKEN": PERMISSIONS_TOKEN}
    with serve_process(config, env, workers=len(cpus), started=started) as url:
        for i in range(4):
            assert _exchange(url, issuer, sub=f"u{i}").status_code == 200
        workers = _cpus_of_workers(started[0].pid)
    everything = _cpu_list(cpus)
    pinned = [lists for lists in workers.values() if lists != {everything}]
    if mode == "off":
        assert workers
        assert pinned == []
        return
    # One CPU per worker (every thread of it), a different one for each.
    assert len(pinned) == len(cpus), workers
    assert all(len(lists) == 1 for lists in pinned)
    assert sorted(int(next(iter(lists))) for lists in pinned) == cpus


def _cpu_list(cpus: list[int]) -> str:
    """The kernel's way of writing a CPU set (``0-1``, ``0,2``): enough for the CPUs here."""
    if cpus == list(range(cpus[0], cpus[-1] + 1)) and len(cpus) > 1:
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))
