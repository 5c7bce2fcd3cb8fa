"""Load shedding: past a set number of requests in flight in one worker, answer 503 at once.

A worker that accepts more work than it can finish lets latency grow without bound for everyone;
one that refuses the excess at once (``503 temporarily_unavailable`` with ``Retry-After``) keeps
serving what it admitted at full speed, and tells clients when to come back.

Requests waiting on a dependency (inside a bulkhead, see resilience.py) do not count: they hold a
thread but no CPU, and their number is bounded by the dependencies' shares. Counting them would
let two hanging permission sources fill ``max_in_flight`` and shed every warm exchange. So a
worker has ``max_in_flight`` + the dependencies' shares + a few spare threads
(``serving_threads``), and a shed answer never waits for a busy thread.

Admitted requests run their Python code one at a time (``resilience.CpuGate``), after their body
has arrived. The body is read before the request is admitted, so a client sending its body
slowly holds a thread, never an in-flight place nor the gate: 64 such clients cannot get every
exchange shed. Reading has a deadline of its own (``BODY_TIMEOUT``): a body that has not arrived
by then gets ``408`` (``invalid_request``) and the connection is closed. Where the server gives
us its socket (gunicorn, werkzeug) the deadline interrupts a stalled read; granian's body stream
cannot be interrupted, so there a read ends when the client sends or goes, and a body that
arrived too late still gets 408 (see README, "Security notes": put a buffering proxy in front).

Liveness (``/healthz``) and ``/metrics`` are never shed: an overloaded worker is not a dead one,
and restarting it would only make the overload worse.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..config.settings import AuthzenPermissionsSettings as AuthzenSettings
from ..config.settings import HttpPermissionsSettings as HttpSettings
from ..config.settings import Settings
from ..sources.jwks import CLIENT_JWKS_FETCHES
from ..sources.resilience import CpuGate

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Threads per worker beyond ``max_in_flight``: they answer shed requests.
SPARE_THREADS = 8
#: The environ key of a request body read in full by the shedder (bytes).
BODY = "token_exchange.body"
NEVER_SHED = frozenset({"/healthz", "/metrics"})
#: Seconds a request body may take to arrive, from the moment the app sees the request.
BODY_TIMEOUT = 10.0
#: Bytes read at a time, the deadline checked between reads (granian's reads wait for them all).
BODY_PIECE = 16 * 1024
#: Where servers put the connection's socket in the environ.
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")
_BODY = json.dumps(
    {
        "error": "temporarily_unavailable",
        "error_description": "the service is overloaded; try again later",
    },
    separators=(",", ":"),
).encode()
_HEADERS = (
    ("Content-Type", "application/json"),
    ("Content-Length", str(len(_BODY))),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
    ("Retry-After", "1"),
)
_LATE_BODY = json.dumps(
    {
        "error": "invalid_request",
        "error_description": "the request body did not arrive in time",
    },
    separators=(",", ":"),
).encode()
_LATE_HEADERS = (
    ("Content-Type", "application/json"),
    ("Content-Length", str(len(_LATE_BODY))),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
    # The rest of the body may still come: it must not be read as the next request.
    ("Connection", "close"),
)


class _BodyTimeout(Exception):
    """The request body did not arrive within the deadline."""


class LoadShedder:
    """WSGI middleware admitting at most ``max_in_flight`` requests at once (see module doc).

    Its 503 gets ``X-Request-ID`` and CORS headers from ``headers.ResponseHeaders`` outside it,
    so that a browser of an allowed origin can read it and its ``Retry-After``.
    """

    def __init__(
        self,
        app: WsgiApp,
        *,
        max_in_flight: int,
        metrics: Metrics | None = None,
        waiting: Callable[[], int] = lambda: 0,
        gate: CpuGate | None = None,
        max_body_bytes: int = 64 * 1024,
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.gate = gate
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        #: How many of the requests in flight are waiting on a dependency right now.
        self.waiting = waiting
        self.in_flight = 0
        self._gauge = metrics.in_flight if metrics else None
        self._shed = metrics.requests_shed if metrics else None
        self._arriving = metrics.bodies_arriving if metrics else None
        self._late = metrics.bodies_late if metrics else None
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if self.gate is not None:
            # Before admission: waiting for a body costs a thread, not an in-flight place.
            if self._arriving is not None:
                self._arriving.inc()
            try:
                self._read_body(environ)
            except _BodyTimeout:
                if self._late is not None:
                    self._late.inc()
                start_response("408 Request Timeout", list(_LATE_HEADERS))
                return [_LATE_BODY]
            finally:
                if self._arriving is not None:
                    self._arriving.dec()
        with self._lock:
            admitted = self.in_flight - self.waiting() < self.max_in_flight or path in NEVER_SHED
            if admitted:
                self.in_flight += 1
        if not admitted:
            return self._refuse(start_response)
        if self._gauge is not None:
            self._gauge.inc()
        try:
            if self.gate is None:
                return _joined(self.app(environ, start_response))
            with self.gate.run():
                # Our answers are built in memory: the work is done when the app returns.
                return _joined(self.app(environ, start_response))
        finally:
            with self._lock:
                self.in_flight -= 1
            if self._gauge is not None:
                self._gauge.dec()

    def _read_body(self, environ: dict[str, Any]) -> None:
        """Read a body of a size we accept before taking the gate (see the module docstring);
        larger ones are left to the app, which refuses them (413) without reading them.

        A body without a length (``Transfer-Encoding: chunked``) is read here too, up to one
        byte past the limit: then it has a length, and one too long is refused (413) by the app
        like a declared one, never cut short at the limit and parsed (which werkzeug does).
        """
        length = environ.get("CONTENT_LENGTH") or ""
        if length.isdigit() and 0 < (size := int(length)) <= self.max_body_bytes:
            body = self._read(environ, size, until_end=False)
            environ["wsgi.input"] = io.BytesIO(body)
            if len(body) == size:
                # The whole body, within the app's limit: the views read it from here rather
                # than through werkzeug's stream again.
                environ[BODY] = body
        elif not length and environ.get("HTTP_TRANSFER_ENCODING"):
            body = self._read(environ, self.max_body_bytes + 1, until_end=True)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            del environ["HTTP_TRANSFER_ENCODING"]  # the server has decoded it
            if 0 < len(body) <= self.max_body_bytes:
                environ[BODY] = body

    def _read(self, environ: dict[str, Any], limit: int, *, until_end: bool) -> bytes:
        """Up to ``limit`` bytes of the body, in pieces, within ``body_timeout`` (else
        ``_BodyTimeout``); ``until_end``: a stream without a length, read until it ends."""
        deadline = time.monotonic() + self.body_timeout
        stream = environ["wsgi.input"]
        found = (environ.get(k) for k in _SOCKET_KEYS)
        sock = next((s for s in found if isinstance(s, socket.socket)), None)
        previous = sock.gettimeout() if sock is not None else None
        parts: list[bytes] = []
        total = 0
        try:
            while total < limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _BodyTimeout
                if sock is not None:
                    # A stalled client: the read itself ends at the deadline.
                    sock.settimeout(left)
                asked = min(BODY_PIECE, limit - total)
                part = stream.read(asked)
                parts.append(part)
                total += len(part)
                if not part or (len(part) < asked and not until_end):
                    break  # the stream has ended (early, for a declared length: the client went)
            if time.monotonic() > deadline:
                raise _BodyTimeout  # it did arrive, too late (granian: see the module doc)
        except OSError as e:  # TimeoutError among them: the socket's deadline
            raise _BodyTimeout from e
        if sock is not None:
            with contextlib.suppress(OSError):  # closed meanwhile: the server finds out itself
                sock.settimeout(previous)
        return b"".join(parts)

    def _refuse(self, start_response: Callable[..., Any]) -> list[bytes]:
        if self._shed is not None:
            self._shed.inc()
        start_response("503 Service Unavailable", list(_HEADERS))
        return [_BODY]


def _joined(result: Iterable[bytes]) -> list[bytes]:
    """The answer in one piece, its iterable closed (PEP 3333): a server takes a list of one
    ``bytes`` faster than it walks werkzeug's ``ClosingIterator`` (granian: about 10 µs of CPU
    per request, bench/README.md). Every answer of ours is built in memory and small."""
    try:
        return [b"".join(result)]
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def dependency_shares(settings: Settings) -> int:
    """How many requests of one worker may wait on its dependencies at once: the sum of the
    shares (``max_concurrency``) of the guards ``app.create_app`` builds for ``settings``
    (``Services.guards``; a test checks that the two agree)."""
    shares = sum(
        p.max_concurrency
        for p in settings.permissions.values()
        if isinstance(p, HttpSettings | AuthzenSettings)
    )
    shares += sum(u.jwks_max_concurrency for u in settings.upstreams)
    # private_key_jwt clients whose keys are fetched (jwks_uri), each with its own share.
    shares += CLIENT_JWKS_FETCHES * sum(1 for c in settings.clients if c.jwks_uri is not None)
    if not settings.store.url.startswith("memory:"):
        shares += settings.store.max_concurrency
    return shares


def serving_threads(settings: Settings) -> int:
    """Threads per worker: ``max_in_flight``, every dependency's share, and spares."""
    return settings.server.max_in_flight + dependency_shares(settings) + SPARE_THREADS
