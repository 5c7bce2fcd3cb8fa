"""Fixtures that build the world; the fakes they are built from live in ``fakes.py``.

* ``issuer``: a fake Auth0 tenant with its own RSA keys, serving OIDC discovery and a JWKS.
* ``permissions_api``: a fake permissions API whose answers each test sets.
* ``sts`` / ``make_sts``: the token exchange service itself, served by a real WSGI server in a
  thread, configured through the same settings parser users' TOML goes through.
* ``redis_process`` / ``redis_cluster``: real redis-server processes on loopback.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from token_exchange.config.settings import parse_settings
from token_exchange.web.app import Overrides, create_app

from .cerbos import CerbosProcess, cerbos_binary
from .devworld import DevWorld, start_dev_world
from .fakes import (
    ENV,
    FakeIssuer,
    FakePermissions,
    Sts,
    base_config,
    make_signing_key,
    quick_server,
)
from .helpers import serve, store_in_service
from .redis_servers import REDIS_CLI, REDIS_SERVER, RedisClusterProcesses, RedisProcess

#: Fixtures that start processes: a test that uses one is ``slow`` whatever its module says.
PROCESS_FIXTURES = frozenset({"redis_process", "redis_url", "redis_cluster", "dev_world", "cerbos"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_tracing_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OTEL_* variables of whoever runs the tests do not reach the apps they build: only a
    test that sets them traces."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _processes_are_slow(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that starts a process must be marked ``slow`` (so that ``pytest -m 'not slow'``
    stays the quick run): unmarked, starting one fails it."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(
            "this test starts a process: mark it @pytest.mark.slow (or its module: "
            "pytestmark = pytest.mark.slow)"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refused)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed
    return report


_CALL_PASSED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _end_to_end_tests_connect(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A test outside ``tests/unit`` that passes without connecting a socket belongs in
    ``tests/unit`` (STYLE 17: a test that opens no socket is a unit test): it fails, saying so.
    Tests that start processes (``slow``) are exempt: what they check may be the process."""
    node = request.node
    if node.get_closest_marker("unit") or node.get_closest_marker("slow"):
        yield
        return
    connected = False
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        nonlocal connected
        connected = True
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        nonlocal connected
        connected = True
        return real_connect_ex(self, address)

    real_init = socket.socket.__init__

    def init(self: socket.socket, *args: Any, **kwargs: Any) -> None:
        # libcurl (the permissions API's client) connects in C a socket that Python opened.
        nonlocal connected
        real_init(self, *args, **kwargs)
        if kwargs.get("fileno") is None and len(args) < 4 and self.type == socket.SOCK_STREAM:
            connected = connected or self.family in (socket.AF_INET, socket.AF_INET6)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket.socket, "__init__", init)
    yield
    if not connected and node.stash.get(_CALL_PASSED, False):
        pytest.fail(
            "this test connects no socket: it belongs in tests/unit (where sockets are disabled)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    """A few RSA keys generated once; tests take them instead of generating their own."""
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


@pytest.fixture
def issuer(rsa_keys: list[rsa.RSAPrivateKey]) -> Iterator[FakeIssuer]:
    server = quick_server()
    yield FakeIssuer(server, rsa_keys)
    server.clear()
    server.stop()


@pytest.fixture
def permissions_api() -> Iterator[FakePermissions]:
    server = quick_server()
    fake = FakePermissions(server)
    server.expect_request("/internal/permissions", method="POST").respond_with_handler(fake.handle)
    yield fake
    server.clear()
    server.stop()


@pytest.fixture
def make_sts(
    issuer: FakeIssuer, permissions_api: FakePermissions, tmp_path: Path
) -> Iterator[Callable[..., Sts]]:
    """Start a service; ``edit(config)`` may change the config dict first."""
    stops: list[Callable[[], None]] = []

    def start(
        edit: Callable[[dict[str, Any]], None] | None = None,
        *,
        alg: str = "ES256",
        env: dict[str, str] | None = None,
        overrides: Overrides | None = None,
    ) -> Sts:
        base = tmp_path / uuid.uuid4().hex[:8]
        base.mkdir()
        make_signing_key(base / "keys", alg)
        config = copy.deepcopy(base_config(issuer.issuer, permissions_api.url))
        if edit:
            edit(config)
        settings = parse_settings(config, env=env or ENV, base_dir=base)
        store_in_service(settings.store.url)
        app = create_app(settings, overrides=overrides)
        url, stop = serve(app)
        stops.append(stop)
        stops.append(app.extensions["token_exchange"].store.close)
        return Sts(url, app, base / "keys")

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def sts(make_sts: Callable[..., Sts]) -> Sts:
    return make_sts()


@pytest.fixture
def dev_world() -> Iterator[DevWorld]:
    """``token-exchange dev`` and ``examples/countries_api.py``, each on its own loopback port."""
    with start_dev_world() as world:
        yield world


# -- Redis --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A real redis-server on a free port, for the whole session (flushed per test)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_process: RedisProcess) -> Iterator[str]:
    if redis_process.process is None:  # a test killed it
        redis_process.start()
    redis_process.flush()
    yield redis_process.url
    if redis_process.process is None:
        redis_process.start()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server / redis-cli are not installed (Debian package redis-server)")
    cluster = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def cerbos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CerbosProcess]:
    """A real Cerbos PDP with the example policies (examples/cerbos), for one module."""
    binary, why = cerbos_binary()
    if binary is None:
        pytest.skip(f"Cerbos is not available: {why}")
    process = CerbosProcess(binary, tmp_path_factory.mktemp("cerbos"))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def cluster(rsa_keys: list[rsa.RSAPrivateKey]) -> Iterator[FakeIssuer]:
    """A second issuer on loopback: a Kubernetes cluster's service-account issuer
    (kube-apiserver --service-account-issuer), for workload actor tokens."""
    server = quick_server()
    yield FakeIssuer(server, rsa_keys[1:])
    server.clear()
    server.stop()
