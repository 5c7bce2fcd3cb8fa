"""Assertions shared by the HTTP tests."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import requests
from werkzeug.serving import make_server

from token_exchange.config.config_model import DEFAULT_STORE_URL
from token_exchange.sources.epoch import EPOCH_KEY, MARKER_TTL, Epoch
from token_exchange.sources.sqlite_store import SqliteStore, path_of, prepare


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 6749 §5.2 error: the status, JSON with ``error``, never cached, never a trace."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body.get("error_description"), str)
    assert "Traceback" not in response.text
    assert response.headers.get("Cache-Control") == "no-store"
    return dict(body)


def assert_issued(response: requests.Response) -> dict[str, Any]:
    """An RFC 8693 §2.2.1 success response."""
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["access_token"], str)
    assert isinstance(body["expires_in"], int)
    assert "refresh_token" not in body
    return dict(body)


def serve(app: Any, port: int = 0) -> tuple[str, Callable[[], None]]:
    """Serve ``app`` on a loopback port (free by default) in a thread; return URL and stopper."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join(5)

    return f"http://127.0.0.1:{server.port}", stop


def serve_at_issuer(
    issuer_url: str,
    permissions_url: str,
    base_dir: Path,
    edit: Callable[[dict[str, Any]], None] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[str, Any, Callable[[], None]]:
    """The service on a free loopback port whose URL is its ``issuer`` (what RFC 8414
    discovery and MCP's clients compare), from ``base_config`` after ``edit``; a signing key in
    ``base_dir/keys``. Returns the URL, the app and a stopper that also closes its store."""
    from token_exchange.config.settings import parse_settings
    from token_exchange.web.app import create_app

    from .fakes import ENV, base_config, make_signing_key

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    make_signing_key(base_dir / "keys")
    config = copy.deepcopy(base_config(issuer_url, permissions_url))
    config["issuer"] = url
    if edit is not None:
        edit(config)
    settings = parse_settings(config, env=env or ENV, base_dir=base_dir)
    store_in_service(settings.store.url)  # a store in service a while, not one just emptied
    app = create_app(settings)
    _, stop = serve(app, port=port)

    def stop_all() -> None:
        stop()
        app.extensions["token_exchange"].store.close()

    return url, app, stop_all


#: The command, as a process: ``python -m token_exchange.serve.cli``.
CLI = [sys.executable, "-m", "token_exchange.serve.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def store_in_service(url: str) -> None:
    """Make the SQLite store at ``url`` (when it is one, and new) a store that has been in
    service for a day: its epoch marker is old. A new, empty store cannot be told from one that
    lost its data (epoch.py): DPoP proofs and client assertions would first wait out their
    windows. Tests of that start with a new store on purpose (test_store_reset.py)."""
    if not url.startswith("sqlite:"):
        return
    path = path_of(url)
    if path.exists():
        return
    prepare(path)
    store = SqliteStore(path)
    try:
        assert store.add(EPOCH_KEY, Epoch("in-service", time.time() - 86400).encode(), MARKER_TTL)
    finally:
        store.close()


def config_store_in_service(config: Path) -> None:
    """``store_in_service`` for the store a config file names (or the default one)."""
    url = tomllib.loads(config.read_text()).get("store", {}).get("url", DEFAULT_STORE_URL)
    if url.startswith("sqlite:") and not url.startswith("sqlite:///"):
        url = f"sqlite://{config.parent.resolve() / url.removeprefix('sqlite:')}"
    store_in_service(url)


@contextlib.contextmanager
def serve_process(
    config: Path,
    env: dict[str, str],
    *,
    workers: int = 1,
    server: str | None = None,
    port: int | None = None,
    started: list[subprocess.Popen[str]] | None = None,
    new_store: bool = False,
) -> Iterator[str]:
    """``token-exchange serve`` as a real process on ``port`` (a free one by default); stopped
    with SIGTERM. ``started`` receives the process (the leader of its process group). Its
    SQLite store, when new, is made one in service, unless ``new_store``."""
    port = port or free_port()
    if not new_store:
        config_store_in_service(config)
    # Its log goes to a file: a pipe nobody reads would fill up and block the server.
    with tempfile.TemporaryFile(mode="w+") as log:
        yield from _serve_logging_to(log, config, env, port, workers, server, started)


def _serve_logging_to(
    log: IO[str],
    config: Path,
    env: dict[str, str],
    port: int,
    workers: int,
    server: str | None,
    started: list[subprocess.Popen[str]] | None = None,
) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "token_exchange.serve.cli", "serve", "--config", str(config),
         "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
         *(["--server", server] if server else [])],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        # A process group of its own, so that no worker can outlive the test (below).
        start_new_session=True,
    )  # fmt: skip
    if started is not None:
        started.append(process)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, process, log)
        yield url
    except BaseException:
        # The service's own account of what went wrong, in the failed test's captured output.
        log.seek(0)
        print("-- the service's log (last 8000 characters) --\n" + log.read()[-8000:])
        raise
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # A worker that missed the shutdown (one still starting when the signal came) would
        # otherwise live on, orphaned, holding its port.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def wait_for(url: str, process: subprocess.Popen[str], log: IO[str] | None = None) -> None:
    """Wait until ``url/healthz`` answers, or fail with the process's output."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if log is not None:
                log.seek(0)
            source = log or process.stdout
            raise AssertionError(f"server exited: {source.read() if source else ''}")
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            # Workers still booting on a busy machine: the listening socket accepts already.
            time.sleep(0.1)
    raise AssertionError("server did not start")


def service_toml(
    issuer_url: str,
    permissions_url: str,
    *,
    store_url: str = "sqlite:state/store.db",
    signing: str = "",
    extra: str = "",
    client_audiences: tuple[str, ...] = ("https://countries.example.test",),
    client_origins: tuple[str, ...] = (),
) -> str:
    """A config file for a service in front of a fake issuer and a fake permissions API."""
    return f"""
issuer = "https://sts.example.test"
[store]
url = "{store_url}"
[signing]
keys_dir = "keys"
{signing}
[[upstreams]]
issuer = "{issuer_url}"
audiences = ["https://sts.example.test/api"]
[[clients]]
client_id = "spa"
audiences = {json.dumps(list(client_audiences))}
allowed_origins = {json.dumps(list(client_origins))}
[[apis]]
audience = "https://countries.example.test"
scopes = ["countries:read"]
permissions = "webapp"
[permissions.webapp]
type = "http"
url = "{permissions_url}"
token_env = "PERMS_TOKEN"
{extra}
"""


def run_dev_walkthrough(
    tmp_path: Path, last_line: str, env: dict[str, str] | None = None
) -> tuple[int, list[str], subprocess.CompletedProcess[str]]:
    """Start ``token-exchange dev``, paste its printed walkthrough (up to the line containing
    ``last_line``) into bash as a newcomer would, both with ``env`` added to the environment;
    return dev's port, the printed lines and bash's result."""
    port = free_port()
    full_env = {**os.environ, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "token_exchange.serve.cli", "dev", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=full_env,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if last_line in line:
                break
        wait_for(f"http://127.0.0.1:{port}", process)
        script = tmp_path / "walkthrough.sh"
        script.write_text("set -eu\n" + "".join(lines))
        result = subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, timeout=60, env=full_env
        )
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout:
            process.stdout.close()
    return port, lines, result


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_section(title: str) -> list[str]:
    """The ```sh blocks of the README section headed ``## title``, in order."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else None]
    return [block.split("```", 1)[0] for block in section.split("```sh\n")[1:]]


@contextlib.contextmanager
def run_shell_session(script: str, cwd: Path, timeout: float = 180) -> Iterator[tuple[int, str]]:
    """Run ``script`` in bash in ``cwd`` as a user would paste it, with this environment's
    ``token-exchange`` and ``python3`` first on PATH; yield its exit status and output.

    What it starts in the background (``&``) runs on until the end of the ``with`` block, then
    it is stopped: the shell gets a process group of its own, and the whole group is ended.
    """
    path = cwd / "session.sh"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_EXCHANGE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with (cwd / "session.out").open("w+") as out:
        process = subprocess.Popen(
            ["bash", str(path)], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            try:
                status = process.wait(timeout)
            except subprocess.TimeoutExpired:
                status = -1
            out.seek(0)
            yield status, out.read()
        finally:
            _end_process_group(process)


def _end_process_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM to the group (servers shut down cleanly), SIGKILL to what is left after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            process.poll()
            os.killpg(process.pid, 0)  # ProcessLookupError once every member has gone
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(5)


@contextlib.contextmanager
def dev_process(port: int, env: dict[str, str]) -> Iterator[str]:
    """``token-exchange dev`` as a real process on ``port``, ``env`` added to its environment;
    stopped at the end."""
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "token_exchange.serve.cli", "dev", "--port", str(port)],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(url, process, log)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


ROOT = Path(__file__).resolve().parent.parent


def npm_project(
    name: str,
    source: Path,
    *,
    manifests: tuple[str, ...],
    files: tuple[str, ...],
    version: str,
    package: str = "oauth4webapi",
) -> Path:
    """``.cache/<name>`` (git-ignored): ``source``'s ``manifests`` with ``package`` at ``version``
    installed by npm (``npm ci`` with a lock file, else ``npm install``), and its ``files``
    beside them, so that ``import "<package>"`` resolves as in a user's project. Skips the
    test, saying why, when Node or npm is missing or the install fails."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip(f"node and npm are needed to run {package} (Debian packages nodejs, npm)")
    cache = ROOT / ".cache" / name
    cache.mkdir(parents=True, exist_ok=True)
    for manifest in manifests:
        shutil.copyfile(source / manifest, cache / manifest)
    installed = cache / "node_modules" / package / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != version:
        command = "ci" if "package-lock.json" in manifests else "install"
        done = subprocess.run(
            [npm, command, "--no-audit", "--no-fund"],
            cwd=cache, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not installed.exists():
            pytest.skip(f"npm {command} ({package}@{version}) failed: {done.stderr[-300:]}")
    for file in files:
        shutil.copyfile(source / file, cache / file)
    return cache
