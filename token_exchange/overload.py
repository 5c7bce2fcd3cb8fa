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
has arrived: a client sending its body slowly holds a thread, never the gate.

Liveness (``/healthz``) and ``/metrics`` are never shed: an overloaded worker is not a dead one,
and restarting it would only make the overload worse.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .resilience import CpuGate
from .settings import HttpPermissionsSettings as HttpSettings
from .settings import Settings

if TYPE_CHECKING:
    from .metrics import Metrics

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Threads per worker beyond ``max_in_flight``: they answer shed requests.
SPARE_THREADS = 8
#: The environ key of a request body read in full by the shedder (bytes).
BODY = "token_exchange.body"
NEVER_SHED = frozenset({"/healthz", "/metrics"})
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
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.gate = gate
        self.max_body_bytes = max_body_bytes
        #: How many of the requests in flight are waiting on a dependency right now.
        self.waiting = waiting
        self.in_flight = 0
        self._gauge = metrics.in_flight if metrics else None
        self._shed = metrics.requests_shed if metrics else None
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
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
                return self.app(environ, start_response)
            self._read_body(environ)
            with self.gate.run():
                # Our answers are built in memory: the work is done when the app returns.
                return self.app(environ, start_response)
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
            body = environ["wsgi.input"].read(size)
            environ["wsgi.input"] = io.BytesIO(body)
            if len(body) == size:
                # The whole body, within the app's limit: the views read it from here rather
                # than through werkzeug's stream again.
                environ[BODY] = body
        elif not length and environ.get("HTTP_TRANSFER_ENCODING"):
            body = _read_at_most(environ["wsgi.input"], self.max_body_bytes + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            del environ["HTTP_TRANSFER_ENCODING"]  # the server has decoded it
            if 0 < len(body) <= self.max_body_bytes:
                environ[BODY] = body

    def _refuse(self, start_response: Callable[..., Any]) -> list[bytes]:
        if self._shed is not None:
            self._shed.inc()
        start_response("503 Service Unavailable", list(_HEADERS))
        return [_BODY]


def _read_at_most(stream: Any, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``stream``, until its end (a read may return fewer)."""
    parts: list[bytes] = []
    total = 0
    while total < limit and (part := stream.read(limit - total)):
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def serving_threads(settings: Settings) -> int:
    """Threads per worker: ``max_in_flight``, every dependency's share, and spares."""
    shares = sum(
        p.max_concurrency for p in settings.permissions.values() if isinstance(p, HttpSettings)
    )
    shares += sum(u.jwks_max_concurrency for u in settings.upstreams)
    if not settings.store.url.startswith("memory:"):
        shares += settings.store.max_concurrency
    return settings.server.max_in_flight + shares + SPARE_THREADS
