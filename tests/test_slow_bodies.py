"""Request bodies that arrive slowly (issue 21): they hold a thread while they arrive, never an
in-flight place (``server.max_in_flight``), and get 408 once their deadline has passed.

Real sockets against a served app, each test bounded in time.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from token_exchange.web.overload import LoadShedder

from .fakes import FakeIssuer, FakePermissions, Sts
from .hanging import wait_until
from .helpers import assert_issued

HEAD = (
    b"POST /token HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 400\r\n\r\n"
)


def _shedder(sts: Sts) -> LoadShedder:
    shedder = sts.app.wsgi_app.app  # ResponseHeaders(LoadShedder(...))
    assert isinstance(shedder, LoadShedder)
    return shedder


@contextlib.contextmanager
def _slow_bodies(sts: Sts, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections that each sent headers and the start of a body, then nothing."""
    host, port = sts.url.removeprefix("http://").split(":")
    sockets = [socket.create_connection((host, int(port)), timeout=10) for _ in range(n)]
    try:
        for s in sockets:
            s.sendall(HEAD + b"grant_type=")
        yield sockets
    finally:
        for s in sockets:
            s.close()


def _answer(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def sts(make_sts: Callable[..., Sts], permissions_api: FakePermissions) -> Sts:
    permissions_api.reply({"allow": True, "ttl": 60})
    return make_sts(lambda c: c.update(server={"max_in_flight": 2}))


def test_bodies_arriving_slowly_get_no_exchange_shed(sts: Sts, issuer: FakeIssuer) -> None:
    shedder = _shedder(sts)
    with _slow_bodies(sts, 8):  # four times max_in_flight
        # (Before issue 21, two were admitted while they arrived, and the others shed.)
        wait_until(lambda: _gauge(sts) == 8 or shedder.in_flight == 2)
        assert shedder.in_flight == 0
        for _ in range(5):
            assert_issued(sts.exchange(issuer.token()))


def test_a_body_that_does_not_arrive_in_time_gets_408(sts: Sts, issuer: FakeIssuer) -> None:
    _shedder(sts).body_timeout = 0.5
    started = time.monotonic()
    with _slow_bodies(sts, 3) as sockets:
        answers = [_answer(s).decode() for s in sockets]
    assert time.monotonic() - started < 5
    for answer in answers:
        head, _, body = answer.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 408"), answer
        assert "Connection: close" in head
        assert "Cache-Control: no-store" in head
        assert body == (
            '{"error":"invalid_request",'
            '"error_description":"the request body did not arrive in time"}'
        )
    assert sts.services.metrics.bodies_late._value.get() == 3
    assert_issued(sts.exchange(issuer.token()))


def test_a_body_trickling_in_gets_408_at_its_deadline(sts: Sts) -> None:
    """Each byte in time for a per-read timeout, the whole too late for the deadline."""
    _shedder(sts).body_timeout = 0.5
    host, port = sts.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(HEAD)
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the server closes the connection on us
            while time.monotonic() - started < 3:
                s.sendall(b"a")
                time.sleep(0.05)
        answer = _answer(s).decode()
    assert answer.startswith("HTTP/1.1 408"), answer


def _gauge(sts: Sts) -> float:
    gauge = getattr(sts.services.metrics, "bodies_arriving", None)
    return float(gauge._value.get()) if gauge is not None else 0.0
