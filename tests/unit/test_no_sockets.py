"""The unit layer cannot reach the network, not even loopback: what passes here is pure."""

from __future__ import annotations

import socket

import pytest
import urllib3
from pytest_socket import SocketBlockedError

#: pytest-socket also warns, so that code swallowing the error cannot hide it: with warnings as
#: errors, a unit test that opens a socket fails whatever it catches.
BLOCKED = "tried to use socket"


def test_a_socket_cannot_be_opened() -> None:
    with pytest.raises(SocketBlockedError), pytest.warns(UserWarning, match=BLOCKED):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def test_an_http_call_to_loopback_is_refused() -> None:
    pool = urllib3.PoolManager(retries=False)
    with pytest.raises(SocketBlockedError), pytest.warns(UserWarning, match=BLOCKED):
        pool.request("GET", "http://127.0.0.1:9/")


def test_every_test_here_is_marked_unit(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("disable_socket") is not None


def test_a_call_through_libcurl_is_refused_too() -> None:
    """libcurl (the permissions API's client) opens its sockets through Python's socket module,
    so the ban holds for it as well."""
    from token_exchange.oauth.errors import UpstreamUnavailable
    from token_exchange.sources.http import CurlPool, call

    with pytest.raises(UpstreamUnavailable), pytest.warns(UserWarning, match=BLOCKED):
        call(CurlPool(), "GET", "http://127.0.0.1:9/", timeout=1, max_bytes=10)


def test_libcurl_calls_are_get_or_post_only() -> None:
    from token_exchange.sources.http import CurlPool, call

    with pytest.raises(ValueError, match="GET and POST"):
        call(CurlPool(), "HEAD", "http://127.0.0.1:9/", timeout=1, max_bytes=10)
