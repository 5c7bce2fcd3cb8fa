"""Dependencies that misbehave on the wire: every failure is a 503, never a 500 or a hang.

A raw socket server answers the permissions API's or the issuer's requests with a broken
response: bad gzip, a body cut short, a stall, or a slow drip under the read timeout.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import trustme
from pytest_httpserver import HTTPServer

from .fakes import FakeIssuer, FakePermissions, Sts
from .helpers import assert_error, assert_issued

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"


def bad_gzip(conn: socket.socket) -> None:
    conn.sendall(HEAD + b"Content-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!")


def short(conn: socket.socket) -> None:
    conn.sendall(HEAD + b'Content-Length: 5000\r\n\r\n{"allow"')


def stall(conn: socket.socket) -> None:
    conn.sendall(HEAD + b"Content-Length: 5000\r\n\r\n{")
    time.sleep(3)


def drip(conn: socket.socket) -> None:
    # One byte every 0.2 s: every read is within the read timeout, the whole is not.
    conn.sendall(HEAD + b"Content-Length: 5000\r\n\r\n")
    for _ in range(40):
        conn.sendall(b" ")
        time.sleep(0.2)


def huge(conn: socket.socket) -> None:
    # Past the 256 KiB any answer may have: the read stops there.
    conn.sendall(HEAD + b"Content-Length: 300000\r\n\r\n" + b" " * 300_000)


ALLOW = b'{"allow": true, "ttl": 0}'


def interim(conn: socket.socket) -> None:
    # An interim answer (RFC 9110 §15.2) before the real one: its fields are not the answer's.
    conn.sendall(
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\nContent-Encoding: gzip\r\n\r\n"
        + HEAD
        + b"Content-Length: %d\r\n\r\n" % len(ALLOW)
        + ALLOW
    )


def trailers(conn: socket.socket) -> None:
    # Trailer fields after a chunked body (RFC 9112 §7.1.2) are not the answer's header fields:
    # an encoding named there does not change how the answer is read.
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\nTrailer: Content-Encoding\r\n\r\n"
        + b"%x\r\n" % len(ALLOW)
        + ALLOW
        + b"\r\n0\r\nContent-Encoding: gzip\r\n\r\n"
    )


BEHAVIOURS: dict[str, Callable[[socket.socket], None]] = {
    "trailers": trailers,
    "bad_gzip": bad_gzip,
    "huge": huge,
    "interim": interim,
    "short": short,
    "stall": stall,
    "drip": drip,
}


class RawServer:
    def __init__(self) -> None:
        self.behaviour = "short"
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            BEHAVIOURS[self.behaviour](conn)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    server = RawServer()
    yield server
    server.stop()


@pytest.mark.parametrize("behaviour", ["bad_gzip", "short", "stall", "drip", "huge"])
def test_broken_permissions_answers_are_503(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, raw_server: RawServer, behaviour: str
) -> None:
    raw_server.behaviour = behaviour

    def broken_permissions(config: dict[str, object]) -> None:
        config["permissions"]["webapp"]["url"] = raw_server.url + "/perms"  # type: ignore[index]

    sts = make_sts(broken_permissions)
    started = time.monotonic()
    response = sts.exchange(issuer.token())
    assert_error(response, 503, "temporarily_unavailable")
    # The configured timeout (1 s) bounds the whole call, not each read.
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("behaviour", ["bad_gzip", "short", "drip"])
def test_broken_jwks_answers_are_503(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, raw_server: RawServer, behaviour: str
) -> None:
    raw_server.behaviour = behaviour

    def broken_jwks(config: dict[str, object]) -> None:
        config["upstreams"][0]["jwks_uri"] = raw_server.url + "/jwks"  # type: ignore[index]

    sts = make_sts(broken_jwks)
    assert_error(sts.exchange(issuer.token()), 503, "temporarily_unavailable")
    ready = requests.get(f"{sts.url}/readyz", timeout=30)
    assert ready.status_code == 503


@pytest.mark.parametrize("behaviour", ["interim", "trailers"])
def test_interim_answers_and_trailers_are_not_the_permissions_answers_fields(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, raw_server: RawServer, behaviour: str
) -> None:
    raw_server.behaviour = behaviour

    def raw_permissions(config: dict[str, object]) -> None:
        config["permissions"]["webapp"]["url"] = raw_server.url + "/perms"  # type: ignore[index]

    assert_issued(make_sts(raw_permissions).exchange(issuer.token()))


def test_the_permissions_call_ignores_proxy_variables_and_asks_for_no_encoding(
    sts: Sts,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """User data goes to the permissions API itself, whatever a stray proxy variable says; a
    question of more than 1 KiB is sent at once (no ``Expect: 100-continue`` round trip); and
    no compressed answer is asked for (none is decompressed)."""
    assert_issued(sts.exchange(issuer.token()))  # the issuer's keys fetched (they honour proxies)
    monkeypatch.setattr(sts.http, "trust_env", False)  # this test's own client goes direct
    for name in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    assert_issued(sts.exchange(issuer.token(notes="n" * 5000)))
    sent = {k.lower(): v for k, v in permissions_api.headers[-1].items()}
    assert "expect" not in sent
    assert sent["accept-encoding"] == "identity"
    assert len(permissions_api.questions[-1]["subject_claims"]["notes"]) == 5000


def test_the_permissions_api_over_https_is_verified_against_the_ca_store(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A company CA is trusted through SSL_CERT_FILE, as the README says; without it, the same
    server's certificate is refused (503), never accepted unverified."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.expect_request("/perms").respond_with_json({"allow": True, "ttl": 0})
    server.start()
    try:

        def over_https(config: dict[str, object]) -> None:
            config["permissions"]["webapp"]["url"] = server.url_for("/perms")  # type: ignore[index]

        assert server.url_for("/perms").startswith("https://")
        untrusted = make_sts(over_https)
        assert_error(untrusted.exchange(issuer.token()), 503, "temporarily_unavailable")
        authority.cert_pem.write_to_path(str(tmp_path / "company-ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "company-ca.pem"))
        assert_issued(make_sts(over_https).exchange(issuer.token()))
    finally:
        server.clear()
        server.stop()
