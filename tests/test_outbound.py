"""Dependencies that misbehave on the wire: every failure is a 503, never a 500 or a hang.

A raw socket server answers the permissions API's or the issuer's requests with a broken
response: bad gzip, a body cut short, a stall, or a slow drip under the read timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from .fakes import FakeIssuer, Sts
from .helpers import assert_error

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


BEHAVIOURS: dict[str, Callable[[socket.socket], None]] = {
    "bad_gzip": bad_gzip,
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


@pytest.mark.parametrize("behaviour", ["bad_gzip", "short", "stall", "drip"])
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
