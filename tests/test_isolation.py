"""A dependency that hangs or fails costs only the requests that need it (issue 11).

Every test runs ``token-exchange serve`` (the production serving model) in front of a
``HangingServer`` on loopback, and proves isolation by counting: how many requests reached the
faulty dependency, how many it still holds, and what everyone else got meanwhile.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from .fakes import ACCESS_TOKEN, COUNTRIES, GRANT, PERMISSIONS_TOKEN, FakeIssuer, FakePermissions
from .hanging import HangingServer, wait_until
from .helpers import serve_process, service_toml
from .test_operations import metric
from .test_rotation import cli

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow

SLOW = "https://slow.example.test"
SLOW_ISSUER = "https://slow-tenant.example.test/"
ENV = {"PERMS_TOKEN": PERMISSIONS_TOKEN}


@pytest.fixture
def dependency() -> Iterator[HangingServer]:
    server = HangingServer()
    yield server
    server.close()


def _config(
    tmp_path: Path,
    issuer: FakeIssuer,
    permissions: FakePermissions,
    extra: str,
    audiences: tuple[str, ...] = (COUNTRIES, SLOW),
) -> Path:
    cli("keys", "generate", "--keys-dir", str(tmp_path / "keys"))
    config = tmp_path / "config.toml"
    config.write_text(
        service_toml(
            issuer.issuer,
            permissions.url,
            extra=extra,
            client_audiences=audiences,
            client_origins=("https://app.example.test",),
        )
    )
    return config


def _slow_api(dependency: HangingServer, source: str) -> str:
    """A second API whose permissions source is ``dependency``."""
    return f"""
[[apis]]
audience = "{SLOW}"
scopes = ["slow:read"]
permissions = "slow"
[permissions.slow]
type = "http"
url = "{dependency.url("/permissions")}"
{source}
"""


def _exchange(
    url: str, token: str, audience: str = COUNTRIES, headers: dict[str, str] | None = None
) -> requests.Response:
    return requests.post(
        f"{url}/token",
        data={"grant_type": GRANT, "client_id": "spa", "subject_token": token,
              "subject_token_type": ACCESS_TOKEN, "audience": audience},
        headers=headers,
        timeout=30,
    )  # fmt: skip


def _warm(url: str, token: str, count: int = 20) -> list[int]:
    with requests.Session() as session:
        return [
            session.post(
                f"{url}/token",
                data={"grant_type": GRANT, "client_id": "spa", "subject_token": token,
                      "subject_token_type": ACCESS_TOKEN, "audience": COUNTRIES},
                timeout=10,
            ).status_code
            for _ in range(count)
        ]  # fmt: skip


def _unavailable(response: requests.Response) -> bool:
    return (
        response.status_code == 503
        and response.json()["error"] == "temporarily_unavailable"
        and int(response.headers["Retry-After"]) >= 1
    )


def _fire(
    pool: ThreadPoolExecutor, call: Callable[[], requests.Response], n: int
) -> list[Future[requests.Response]]:
    return [pool.submit(call) for _ in range(n)]


def test_a_hanging_permissions_api_holds_only_its_share(
    tmp_path: Path,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    dependency: HangingServer,
) -> None:
    permissions_api.reply({"allow": True, "ttl": 60})
    source = "timeout = 10.0\nmax_concurrency = 2\nbreaker_failures = 100"
    config = _config(tmp_path, issuer, permissions_api, _slow_api(dependency, source))
    token = issuer.token()
    with serve_process(config, ENV, workers=1) as url, ThreadPoolExecutor(8) as pool:
        assert _exchange(url, token).status_code == 200  # warm: verified and answer cached
        slow = _fire(pool, lambda: _exchange(url, token, SLOW), 6)
        # Two calls (its share) reach the hanging API; the four others are refused at once.
        wait_until(lambda: dependency.held == 2 and sum(f.done() for f in slow) == 4)
        assert all(_unavailable(f.result()) for f in slow if f.done())
        # Meanwhile everything that does not need that API is served as usual...
        assert _warm(url, token) == [200] * 20
        # ...while the two calls are still held: nobody waited for them.
        assert dependency.held == 2
        assert dependency.requests == 2
        dependency.release()
        results = [f.result() for f in slow]
    # No token was minted without a decision.
    assert all(_unavailable(r) for r in results)


def test_a_failing_permissions_api_opens_its_breaker_then_recovers(
    tmp_path: Path,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    dependency: HangingServer,
) -> None:
    dependency.mode = "error"
    source = "timeout = 2.0\nbreaker_failures = 3\nbreaker_cooldown = 1.0"
    config = _config(tmp_path, issuer, permissions_api, _slow_api(dependency, source))
    token = issuer.token()
    with serve_process(config, ENV, workers=1) as url:
        for _ in range(3):
            assert _unavailable(_exchange(url, token, SLOW))
        assert dependency.requests == 3
        # Open: refused without calling, however often asked.
        for _ in range(5):
            assert _unavailable(_exchange(url, token, SLOW))
        assert dependency.requests == 3
        text = requests.get(f"{url}/metrics", timeout=5).text
        dep = {"dependency": "permissions:slow"}
        assert metric(text, "token_exchange_dependency_breaker_state", **dep) == 2
        assert metric(text, "token_exchange_dependency_refusals_total", reason="open", **dep) == 5
        dependency.mode = "ok"
        time.sleep(1.2)  # the breaker's cooldown
        assert _exchange(url, token, SLOW).status_code == 200  # the probe, and it succeeded
        assert dependency.requests == 4
        assert _exchange(url, token, SLOW).status_code == 200  # closed again (answer cached)
        text = requests.get(f"{url}/metrics", timeout=5).text
        assert metric(text, "token_exchange_dependency_breaker_state", **dep) == 0


def test_a_hanging_jwks_endpoint_is_fetched_once_and_costs_no_one_else(
    tmp_path: Path,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    dependency: HangingServer,
    rsa_keys: list[rsa.RSAPrivateKey],
) -> None:
    permissions_api.reply({"allow": True, "ttl": 60})
    slow_issuer = f"""
[[upstreams]]
issuer = "{SLOW_ISSUER}"
jwks_uri = "{dependency.url("/jwks.json")}"
audiences = ["https://sts.example.test/api"]
subject_prefix = "slow|"
jwks_timeout = 10.0
jwks_wait = 0.3
jwks_max_concurrency = 4
"""
    config = _config(tmp_path, issuer, permissions_api, slow_issuer, audiences=(COUNTRIES,))
    # Two upstreams need distinct subject prefixes.
    config.write_text(
        config.read_text().replace(
            'audiences = ["https://sts.example.test/api"]\n[[clients]]',
            'audiences = ["https://sts.example.test/api"]\nsubject_prefix = "main|"\n[[clients]]',
        )
    )
    token = issuer.token()
    now = int(time.time())
    slow_token = jwt.encode(
        {"iss": SLOW_ISSUER, "sub": "u1", "aud": "https://sts.example.test/api", "iat": now,
         "exp": now + 600},
        rsa_keys[2], algorithm="RS256", headers={"kid": "slow-1"},
    )  # fmt: skip
    with serve_process(config, ENV, workers=1) as url, ThreadPoolExecutor(8) as pool:
        # The start-up prefetch is the one fetch in flight.
        wait_until(lambda: dependency.held == 1)
        slow = _fire(pool, lambda: _exchange(url, slow_token), 8)
        wait_until(lambda: all(f.done() for f in slow))
        assert all(_unavailable(f.result()) for f in slow)
        assert dependency.requests == 1  # single-flight: nobody started another fetch
        assert _warm(url, token) == [200] * 20
        assert dependency.held == 1
        text = requests.get(f"{url}/metrics", timeout=5).text
        busy = metric(
            text,
            "token_exchange_dependency_refusals_total",
            dependency=f"jwks:{SLOW_ISSUER}",
            reason="busy",
        )
        assert busy >= 1  # more than jwks_max_concurrency wanted the keys: refused at once


def test_past_max_in_flight_requests_are_shed_at_once(
    tmp_path: Path,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    dependency: HangingServer,
) -> None:
    permissions_api.reply({"allow": True, "ttl": 60})
    source = "timeout = 10.0\nmax_concurrency = 4"
    extra = _slow_api(dependency, source) + "\n[server]\nmax_in_flight = 1\n"
    config = _config(tmp_path, issuer, permissions_api, extra)
    token = issuer.token()
    with serve_process(config, ENV, workers=1) as url, ThreadPoolExecutor(8) as pool:
        assert _exchange(url, token).status_code == 200
        # One at a time: with max_in_flight = 1, a second request arriving before the first
        # has reached the dependency would be shed, the first still counting then.
        slow = _fire(pool, lambda: _exchange(url, token, SLOW), 1)
        wait_until(lambda: dependency.held == 1)
        slow += _fire(pool, lambda: _exchange(url, token, SLOW), 1)
        wait_until(lambda: dependency.held == 2)
        # Requests waiting on a dependency hold no CPU and are bounded by its share: they do
        # not count, or a hanging source would get every other exchange shed.
        assert _exchange(url, token).status_code == 200
        # Nor does a request whose body is still arriving: it holds a thread, not a place.
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow_body:
            slow_body.sendall(
                b"POST /token HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
                b"grant_type="
            )
            wait_until(lambda: metric(_metrics(url), "token_exchange_request_bodies_arriving") == 1)
            assert _exchange(url, token).status_code == 200
        # Past max_in_flight (1), requests that overlap are shed at once: six clients at a
        # time, each request a few milliseconds of the worker's CPU, overlap many times.
        browser = {"Origin": "https://app.example.test", "X-Request-ID": "shed-1"}
        answers = [
            f.result() for f in _fire(pool, lambda: _exchange(url, token, headers=browser), 40)
        ]
        shed = [a for a in answers if a.status_code != 200]
        assert shed, "no request was shed"
        for answer in shed:
            assert _unavailable(answer)
            assert answer.json()["error_description"] == (
                "the service is overloaded; try again later"
            )
            assert answer.headers["Cache-Control"] == "no-store"
            # The headers of every answer: a browser of an allowed origin can read it.
            assert answer.headers["X-Request-ID"] == "shed-1"
            assert answer.headers["Vary"] == "Origin"
            assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example.test"
            assert "Retry-After" in answer.headers["Access-Control-Expose-Headers"]
        assert dependency.held == 2  # answered while both were still held
        # Liveness and metrics are never shed.
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        text = requests.get(f"{url}/metrics", timeout=5).text
        assert metric(text, "token_exchange_requests_shed_total") == len(shed)
        dependency.release()
        assert all(_unavailable(f.result()) for f in slow)
        wait_until(lambda: _in_flight(url) == 1)
        assert _exchange(url, token).status_code == 200


def _in_flight(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=5).text
    return metric(text, "token_exchange_in_flight_requests")


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(body), body)


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_a_chunked_body_arriving_slowly_holds_its_thread_not_the_worker(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions, server: str
) -> None:
    """A body without Content-Length (Transfer-Encoding: chunked) is read before the request
    takes the worker's CPU gate, like any other: a client sending it slowly stalls no one."""
    permissions_api.reply({"allow": True, "ttl": 60})
    config = _config(tmp_path, issuer, permissions_api, "", audiences=(COUNTRIES,))
    token = issuer.token()
    with serve_process(config, ENV, workers=1, server=server) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow_body:
            slow_body.sendall(
                b"POST /token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
                + _chunked(b"grant_type=")
            )
            wait_until(lambda: metric(_metrics(url), "token_exchange_request_bodies_arriving") == 1)
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
            assert _exchange(url, token).status_code == 200
            # The rest arrives: the request is answered as if it had come at once.
            rest = f"{GRANT}&client_id=spa&subject_token_type={ACCESS_TOKEN}&audience={COUNTRIES}"
            rest += f"&subject_token={token}"
            slow_body.sendall(_chunked(rest.encode()) + b"0\r\n\r\n")
            answer = slow_body.recv(65536).decode()
            assert answer.startswith("HTTP/1.1 200"), answer[:200]


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_a_chunked_body_over_the_limit_is_refused_not_cut_short(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions, server: str
) -> None:
    """werkzeug would read a chunked body only up to the limit and parse that; the
    parameters after it would silently be lost. It gets 413, as a declared length does."""
    config = _config(tmp_path, issuer, permissions_api, "", audiences=(COUNTRIES,))
    token = issuer.token()
    padding = "pad=" + "x" * (70 * 1024)
    body = f"{padding}&grant_type={GRANT}&client_id=spa&subject_token_type={ACCESS_TOKEN}"
    body += f"&subject_token={token}"

    def chunks() -> Iterator[bytes]:
        data = body.encode()
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    with serve_process(config, ENV, workers=1, server=server) as url:
        response = requests.post(
            f"{url}/token",
            data=chunks(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=30,
        )
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "invalid_request"


def _metrics(url: str) -> str:
    return requests.get(f"{url}/metrics", timeout=5).text


def test_a_hanging_authzen_pdp_under_a_flood_leaves_warm_exchanges_served(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions, dependency: HangingServer
) -> None:
    """The worker's threads are counted from every dependency's share, the AuthZEN PDP's
    included: a flood of requests for a hanging PDP holds its share of threads, never those of
    the exchanges that do not need it."""
    permissions_api.reply({"allow": True, "ttl": 60})
    cli("keys", "generate", "--keys-dir", str(tmp_path / "keys"))
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
issuer = "https://sts.example.test"
[store]
url = "memory://"
[server]
max_in_flight = 2
[signing]
keys_dir = "keys"
[[upstreams]]
issuer = "{issuer.issuer}"
audiences = ["https://sts.example.test/api"]
jwks_max_concurrency = 1
[[clients]]
client_id = "spa"
audiences = ["{COUNTRIES}", "{SLOW}"]
[[apis]]
audience = "{COUNTRIES}"
scopes = ["countries:read"]
permissions = "webapp"
[[apis]]
audience = "{SLOW}"
scopes = ["slow:read"]
permissions = "pdp"
[permissions.webapp]
type = "http"
url = "{permissions_api.url}"
token_env = "PERMS_TOKEN"
max_concurrency = 1
[permissions.pdp]
type = "authzen"
url = "{dependency.url("/pdp")}"
discovery = false
batch = false
timeout = 10.0
max_concurrency = 16
breaker_failures = 1000
"""
    )
    token = issuer.token()
    with serve_process(config, ENV, workers=1) as url, ThreadPoolExecutor(24) as pool:
        # Ready: the issuer's keys loaded (their one fetch at a time is the start-up's until then).
        wait_until(lambda: requests.get(f"{url}/readyz", timeout=5).status_code == 200)
        assert _exchange(url, token).status_code == 200  # warm: verified and answer cached
        flood = _fire(pool, lambda: _exchange(url, token, SLOW), 24)
        # Its share (16) reaches the hanging PDP; the rest are refused at once.
        wait_until(lambda: dependency.held == 16 and sum(f.done() for f in flood) == 8)
        # Meanwhile the exchanges that do not need the PDP are served, at once...
        assert _warm(url, token) == [200] * 20
        # ...while the PDP still holds its sixteen.
        assert dependency.held == 16
        dependency.release()
        results = [f.result() for f in flood]
    assert all(_unavailable(r) for r in results)  # no token without a decision
