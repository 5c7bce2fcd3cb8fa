"""Outbound HTTP to our dependencies (issuers' JWKS, the permissions API).

One pool per dependency: a ``urllib3.PoolManager`` for the permissions API (called on every cold
exchange: urllib3 alone costs about 0.5 ms less CPU per call than requests on top of it), a
``requests.Session`` for issuers' JWKS (rare, and they honour the proxy and CA-bundle
variables). Every call has a connect timeout, a read timeout and a deadline for the whole answer,
never follows redirects, and reads at most ``max_bytes``. Every way a call can fail, from a
refused connection to a truncated gzip body, becomes ``UpstreamUnavailable``::

    requests.RequestException, urllib3.exceptions.HTTPError, OSError  ->  UpstreamUnavailable
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from ..oauth.errors import UpstreamUnavailable

#: Longest wait for a TCP connection, whatever the overall timeout.
MAX_CONNECT_TIMEOUT = 3.05


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def new_session(*, trust_env: bool, pool_size: int = 32) -> requests.Session:
    """A pooled session. ``trust_env=False`` ignores proxy, CA-bundle and ``.netrc`` variables:
    reading them costs more per call than a loopback request, and a stray ``.netrc`` must not
    change where user data goes."""
    session = requests.Session()
    session.trust_env = trust_env
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def new_pool(*, pool_size: int = 32) -> urllib3.PoolManager:
    """A urllib3 pool that never retries and reads no proxy or ``.netrc`` variables. HTTPS is
    verified against the system's CA store (OpenSSL's ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` can
    point it at a company CA for an internal web app)."""
    return urllib3.PoolManager(num_pools=4, maxsize=pool_size, retries=False)


def call(
    client: requests.Session | urllib3.PoolManager,
    method: str,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    data: str | bytes | Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    **requests_options: Any,
) -> Answer:
    """Send one request and read the whole answer within ``timeout`` seconds.

    A form ``data`` mapping and ``requests_options`` (``auth``) are for a ``requests.Session``.
    """
    deadline = time.monotonic() + timeout
    connect = min(timeout, MAX_CONNECT_TIMEOUT)
    try:
        # Never follow a redirect: it could downgrade to http, leave the dependency, or carry
        # our bearer token and the user's claims elsewhere.
        if isinstance(client, urllib3.PoolManager):
            if requests_options or isinstance(data, Mapping):
                raise TypeError("form data and requests options need a requests.Session")
            response = client.request(
                method,
                url,
                body=data,
                headers=dict(headers or {}),
                timeout=urllib3.Timeout(connect=connect, read=timeout),
                redirect=False,
                preload_content=False,
            )
            try:
                body = _read(response, url, max_bytes, deadline, timeout)
            finally:
                response.release_conn()
            return Answer(response.status, response.headers, body)
        with client.request(
            method,
            url,
            timeout=(connect, timeout),
            allow_redirects=False,
            stream=True,
            data=data,
            headers=headers,
            **requests_options,
        ) as answer:
            body = _read(answer.raw, url, max_bytes, deadline, timeout)
            return Answer(answer.status_code, answer.headers, body)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
        raise UpstreamUnavailable(f"{type(e).__name__} calling {url}") from e


def _read(
    response: urllib3.BaseHTTPResponse, url: str, max_bytes: int, deadline: float, timeout: float
) -> bytes:
    body = bytearray()
    while chunk := response.read1(64 * 1024, decode_content=True):
        body += chunk
        if len(body) > max_bytes:
            raise UpstreamUnavailable(f"answer from {url} is too large")
        if time.monotonic() > deadline:
            raise UpstreamUnavailable(f"answer from {url} took longer than {timeout} s")
    return bytes(body)
