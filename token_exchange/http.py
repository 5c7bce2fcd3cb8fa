"""Outbound HTTP to our dependencies (issuers' JWKS, the permissions API).

One pooled ``requests.Session`` per dependency; every call has a connect timeout, a read timeout
and a deadline for the whole answer, never follows redirects, and reads at most ``max_bytes``.
Every way a call can fail, from a refused connection to a truncated gzip body, becomes
``UpstreamUnavailable``::

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

from .errors import UpstreamUnavailable

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


def call(
    session: requests.Session,
    method: str,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    **kwargs: Any,
) -> Answer:
    """Send one request and read the whole answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    try:
        with session.request(
            method,
            url,
            timeout=(min(timeout, MAX_CONNECT_TIMEOUT), timeout),
            # Never follow a redirect: it could downgrade to http, leave the dependency, or carry
            # our bearer token and the user's claims elsewhere.
            allow_redirects=False,
            stream=True,
            **kwargs,
        ) as response:
            body = bytearray()
            while chunk := response.raw.read1(64 * 1024, decode_content=True):
                body += chunk
                if len(body) > max_bytes:
                    raise UpstreamUnavailable(f"answer from {url} is too large")
                if time.monotonic() > deadline:
                    raise UpstreamUnavailable(f"answer from {url} took longer than {timeout} s")
            return Answer(response.status_code, response.headers, bytes(body))
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
        raise UpstreamUnavailable(f"{type(e).__name__} calling {url}") from e
