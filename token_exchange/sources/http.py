"""Outbound HTTP to our dependencies (issuers' JWKS, the permissions API, an AuthZEN PDP).

One pool per dependency. The permissions API and the PDP are asked on every exchange that a
cached answer cannot serve, so they get libcurl (``CurlPool``, through pycurl): a question costs
about 80 µs of our CPU there, against 340 µs through urllib3 (``bench/README.md``). Issuers' JWKS
are fetched rarely and get a ``requests.Session`` (which honours the proxy and CA-bundle
variables). Every call has a connect timeout, a deadline for the whole answer, never follows
redirects, and reads at most ``max_bytes``. Every way a call can fail, from a refused connection
to a body cut short, becomes ``UpstreamUnavailable``::

    pycurl.error, requests.RequestException, urllib3.exceptions.HTTPError, OSError
        ->  UpstreamUnavailable
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pycurl
import requests
import urllib3
from requests.adapters import HTTPAdapter

from ..oauth.errors import UpstreamUnavailable
from ..obs import tracing

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


class CurlPool:
    """libcurl handles for one dependency, each keeping its connections alive between calls;
    at most ``pool_size`` idle ones are kept (a guard's bulkhead bounds how many are busy).

    Each handle: HTTP/1.1 and HTTP(S) only, no redirects followed, no proxy whatever the
    environment says, no ``.netrc``, ``Expect: 100-continue`` never sent, ``Accept-Encoding:
    identity`` (an encoded answer is refused: nothing to decompress, no bomb to defuse). HTTPS is
    verified against the system's CA store, where Python's ``ssl`` finds it (so OpenSSL's
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` can point it at a company CA). Sockets are opened by
    Python's ``socket`` module, so that what governs Python's sockets (the unit layer's ban on
    them) governs these too.
    """

    def __init__(self, *, pool_size: int = 32) -> None:
        self.pool_size = pool_size
        self._idle: list[pycurl.Curl] = []
        self._lock = threading.Lock()
        paths = ssl.get_default_verify_paths()
        self._cafile = paths.cafile if paths.cafile and os.path.isfile(paths.cafile) else None
        self._capath = paths.capath if paths.capath and os.path.isdir(paths.capath) else None

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: float,
        max_bytes: int,
    ) -> Answer:
        if method not in ("GET", "POST"):
            raise ValueError("a CurlPool sends GET and POST only")
        received = bytearray()
        lines: list[bytes] = []
        too_large = False
        #: The header block being read is the answer's own (not an interim 1xx one); once it
        #: has ended, what follows (trailers) is never taken for header fields.
        final = ended = False

        def write(chunk: bytes) -> int | None:
            nonlocal too_large
            if len(received) + len(chunk) > max_bytes:
                too_large = True
                return 0  # libcurl aborts the transfer (CURLE_WRITE_ERROR)
            received.extend(chunk)
            return None

        def header(line: bytes) -> None:
            nonlocal final, ended
            if ended:
                return
            if not lines or (not final and line.startswith(b"HTTP/") and lines[-1] == b"\r\n"):
                # A status line: an interim (1xx) answer's fields are not the answer's.
                lines[:] = [line]
                final = not line.startswith(b"HTTP/1.1 1") and not line.startswith(b"HTTP/1.0 1")
                return
            lines.append(line)
            if line in (b"\r\n", b"\n"):
                ended = final

        curl = self._take()
        _opened.sockets = []
        try:
            curl.setopt(pycurl.URL, url)
            curl.setopt(pycurl.HTTPHEADER, [*_HEADERS, *(f"{k}: {v}" for k, v in headers.items())])
            if method == "POST":
                curl.setopt(pycurl.POSTFIELDS, body or b"")
            else:
                curl.setopt(pycurl.HTTPGET, 1)
            curl.setopt(pycurl.TIMEOUT_MS, max(1, int(timeout * 1000)))
            connect = min(timeout, MAX_CONNECT_TIMEOUT)
            curl.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(connect * 1000)))
            curl.setopt(pycurl.WRITEFUNCTION, write)
            curl.setopt(pycurl.HEADERFUNCTION, header)
            curl.perform()
            status = int(curl.getinfo(pycurl.RESPONSE_CODE))
        except pycurl.error as e:
            curl.close()  # whatever state its connection is in, it is not reused
            if too_large:
                raise UpstreamUnavailable(f"answer from {url} is too large") from None
            if e.args and e.args[0] == pycurl.E_OPERATION_TIMEDOUT:
                raise UpstreamUnavailable(
                    f"answer from {url} took longer than {timeout} s"
                ) from None
            raise UpstreamUnavailable(f"{_curl_error(e)} calling {url}") from None
        except BaseException:
            curl.close()
            raise
        finally:
            for sock in _opened.sockets:
                sock.close()  # libcurl holds its own duplicate
            _opened.sockets = []
        answer_headers = _parsed(lines)
        self._give(curl)
        encoding = answer_headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise UpstreamUnavailable(f"answer from {url} is encoded ({encoding}), never asked for")
        return Answer(status, answer_headers, bytes(received))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for curl in idle:
            curl.close()

    def _take(self) -> pycurl.Curl:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        curl = pycurl.Curl()
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.PROXY, "")
        curl.setopt(pycurl.FOLLOWLOCATION, 0)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        curl.setopt(pycurl.NETRC, pycurl.NETRC_IGNORED)
        curl.setopt(pycurl.USERAGENT, "token-exchange")  # not libcurl's and OpenSSL's versions
        curl.setopt(pycurl.OPENSOCKETFUNCTION, _open_socket)
        if self._cafile:
            curl.setopt(pycurl.CAINFO, self._cafile)
        if self._capath:
            curl.setopt(pycurl.CAPATH, self._capath)
        return curl

    def _give(self, curl: pycurl.Curl) -> None:
        # An idle handle keeps neither the question (user data) nor the answer's buffer.
        curl.setopt(pycurl.POSTFIELDS, b"")
        curl.setopt(pycurl.WRITEFUNCTION, _discard)
        curl.setopt(pycurl.HEADERFUNCTION, _discard)
        with self._lock:
            if len(self._idle) < self.pool_size:
                self._idle.append(curl)
                return
        curl.close()


def _discard(data: bytes) -> None:
    """What an idle handle's callbacks do with data (it receives none)."""


#: Sent with every call through a ``CurlPool``.
_HEADERS = ("Expect:", "Accept-Encoding: identity")


#: The sockets opened for libcurl during this thread's current call (closed after it).
_opened = threading.local()


def _open_socket(purpose: int, address: tuple[Any, ...]) -> socket.socket:
    """libcurl's socket, opened by Python. pycurl keeps a duplicate of its descriptor; this one
    is closed when the call ends."""
    sock = socket.socket(address[0], address[1], address[2])
    _opened.sockets.append(sock)
    return sock


class HeaderFields(dict[str, str]):
    """An answer's header fields by lower-case name; ``get`` takes a name in any case. A field
    sent more than once is joined with ", " (RFC 9110 §5.3)."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


def _parsed(lines: Sequence[bytes]) -> HeaderFields:
    """The answer's header fields, from libcurl's header lines (the status line first)."""
    fields = HeaderFields()
    for line in lines[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip()
        if sep and name:
            fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return fields


def _curl_error(e: pycurl.error) -> str:
    code = e.args[0] if e.args else "?"
    return f"curl error {code}"


def new_pool(*, pool_size: int = 32) -> CurlPool:
    """A pool for a dependency asked per exchange (the permissions API, an AuthZEN PDP)."""
    return CurlPool(pool_size=pool_size)


def call(
    client: requests.Session | CurlPool,
    method: str,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    data: str | bytes | Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    propagate: bool = False,
    **requests_options: Any,
) -> Answer:
    """Send one request and read the whole answer within ``timeout`` seconds.

    A form ``data`` mapping and ``requests_options`` (``auth``) are for a ``requests.Session``.
    ``propagate``: the request carries the trace's context (``traceparent``), for a dependency
    of the company's own (the permissions API, the PDP); never for a third party (an issuer).
    """
    with _client_span(method, url) as span:
        if propagate and tracing.traced():
            headers = dict(headers or {})
            tracing.inject(headers)
        answer = _send(client, method, url, timeout, max_bytes, data, headers, requests_options)
        span.set_attribute("http.response.status_code", answer.status)
        if answer.status >= 400:
            tracing.failed(span, str(answer.status))
        return answer


def _client_span(method: str, url: str) -> contextlib.AbstractContextManager[Any]:
    """A client span for a call (HTTP semantic conventions) when the request is traced and
    sampled, with the URL recorded without its query and user info; else nothing."""
    if not tracing.recording():
        return tracing.span(method)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    attributes = {
        "http.request.method": method,
        "server.address": host,
        "server.port": port,
        "url.full": urlunsplit((parts.scheme, netloc, parts.path, "", "")),
    }
    return tracing.span(method, tracing.CLIENT, attributes)


def _send(
    client: requests.Session | CurlPool,
    method: str,
    url: str,
    timeout: float,
    max_bytes: int,
    data: str | bytes | Mapping[str, str] | None,
    headers: Mapping[str, str] | None,
    requests_options: Mapping[str, Any],
) -> Answer:
    if isinstance(client, CurlPool):
        if requests_options or isinstance(data, Mapping):
            raise TypeError("form data and requests options need a requests.Session")
        return client.request(
            method,
            url,
            body=data.encode() if isinstance(data, str) else data,
            headers=headers or {},
            timeout=timeout,
            max_bytes=max_bytes,
        )
    deadline = time.monotonic() + timeout
    connect = min(timeout, MAX_CONNECT_TIMEOUT)
    try:
        # Never follow a redirect: it could downgrade to http, leave the dependency, or carry
        # our bearer token and the user's claims elsewhere.
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
