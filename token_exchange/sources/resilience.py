"""Bounded concurrency and fail-fast for every dependency: bulkheads and circuit breakers.

A dependency that hangs may cost the requests that need it, never anyone else's. Each
dependency (a permissions source, an issuer's JWKS endpoint, the store) gets a ``Guard``:

- its **bulkhead** admits at most ``max_concurrency`` calls at once in this process and refuses
  the next one at once: a full bulkhead is a 503, never a queue;
- its **circuit breaker** opens after ``failure_threshold`` consecutive failures, refuses every
  call for ``cooldown`` seconds, then lets exactly one probe through (half-open): a probe that
  succeeds closes it, one that fails opens it again.

A refusal raises what the guard's ``refused`` factory builds (``UpstreamUnavailable`` by
default: a 503 with ``Retry-After`` for the caller) before any I/O is attempted.

A worker serves many requests on threads but lets **one at a time run Python code** (``CpuGate``):
threads that all run CPU-bound Python only fight over the GIL, which cost a quarter of the warm
throughput when measured (bench/README.md). A request steps out of the gate while it waits on a
dependency (inside a guard's bulkhead), so a hanging call never holds up the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from ..oauth.clock import Clock
from ..oauth.errors import UpstreamUnavailable

if TYPE_CHECKING:
    from ..obs.metrics import Metrics


CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
#: Gauge values of the breaker states (0 is the healthy one, higher is worse).
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitBreaker:
    """Closed -> open after ``failure_threshold`` failures in a row -> half-open after
    ``cooldown`` seconds, with one probe in flight -> closed on its success, open on its failure.
    """

    def __init__(
        self,
        *,
        failure_threshold: int,
        cooldown: float,
        clock: Clock = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or cooldown <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown > 0")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.clock = clock
        self.on_change = on_change
        self.state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """May a call go ahead now? In the half-open state only one call (the probe) may."""
        if self.state == CLOSED:  # the common case, without the lock
            return True
        with self._lock:
            if self.state == OPEN and self.clock() - self._opened_at >= self.cooldown:
                self._set(HALF_OPEN)
                return True  # this call is the probe; the others are refused until it ends
            return self.state == CLOSED

    def success(self) -> None:
        if self.state == CLOSED and self._failures == 0:
            return
        with self._lock:
            self._failures = 0
            self._set(CLOSED)

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self.state == HALF_OPEN or self._failures >= self.failure_threshold:
                self._opened_at = self.clock()
                self._set(OPEN)

    def retry_after(self) -> float:
        """Seconds until the next probe may go through (0 when calls are allowed)."""
        if self.state == CLOSED:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown - self.clock())

    def _set(self, state: str) -> None:
        # Called with the lock held.
        if state != self.state:
            self.state = state
            if self.on_change:
                self.on_change(state)


class CpuGate:
    """Lets one request of this worker at a time run Python code (see the module docstring).

    ``run()`` brackets a request; ``step_out()`` / ``step_in()`` (nested freely) bracket a wait
    on a dependency, during which the next request may run.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()

    def run(self) -> CpuGate:
        """``with gate.run():`` brackets one request (a plain context manager, not a generator:
        it is entered on every request)."""
        return self

    def __enter__(self) -> None:
        self._lock.acquire()
        local = self._local
        local.depth = 0
        local.token = _gate.set(self)

    def __exit__(self, *exc_info: object) -> None:
        local = self._local
        _gate.reset(local.token)
        if local.depth == 0:
            self._lock.release()
        local.depth = 0

    def step_out(self) -> None:
        depth = getattr(self._local, "depth", None)
        if depth is None:
            return  # not a request thread (a background fetch): nothing to release
        if depth == 0:
            self._lock.release()
        self._local.depth = depth + 1

    def step_in(self) -> None:
        depth = getattr(self._local, "depth", None)
        if not depth:
            return
        self._local.depth = depth - 1
        if depth == 1:
            self._lock.acquire()


#: The gate of the request this thread is serving, if any (set by ``CpuGate.run``).
_gate: ContextVar[CpuGate | None] = ContextVar("token_exchange_cpu_gate", default=None)


class Bulkhead:
    """At most ``limit`` holders at once; ``try_enter`` never waits."""

    def __init__(self, limit: int, *, on_change: Callable[[int], None] | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.in_flight = 0
        self.on_change = on_change
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.in_flight >= self.limit:
                return False
            self.in_flight += 1
        if self.on_change:
            self.on_change(1)
        return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
        if self.on_change:
            self.on_change(-1)


def unavailable(message: str, retry_after: float) -> Exception:
    return UpstreamUnavailable(message, retry_after=max(1, round(retry_after)))


class Guard:
    """A bulkhead and a circuit breaker for one dependency named ``name`` (see module doc)."""

    def __init__(
        self,
        name: str,
        *,
        max_concurrency: int,
        failure_threshold: int,
        cooldown: float,
        clock: Clock = time.monotonic,
        metrics: Metrics | None = None,
        refused: Callable[[str, float], Exception] = unavailable,
    ) -> None:
        self.name = name
        self.metrics = metrics
        self.refused = refused
        in_flight = metrics.dependency_in_flight.labels(name) if metrics else None
        state = metrics.dependency_breaker_state.labels(name) if metrics else None
        if state is not None:
            state.set(STATE_VALUES[CLOSED])
        self.bulkhead = Bulkhead(
            max_concurrency, on_change=in_flight.inc if in_flight is not None else None
        )
        self.breaker = CircuitBreaker(
            failure_threshold=failure_threshold,
            cooldown=cooldown,
            clock=clock,
            on_change=(lambda s: state.set(STATE_VALUES[s])) if state is not None else None,
        )

    @contextmanager
    def call(self) -> Iterator[None]:
        """Run the body as one call to the dependency, or refuse at once.

        Any exception from the body counts as a failure of the dependency; the body should let
        only the dependency's own failures escape (a refusal by the permissions API is an
        answer, not a failure).
        """
        self.enter()
        try:
            yield
        except BaseException:
            self.leave(ok=False)
            raise
        self.leave(ok=True)

    def enter(self) -> None:
        """Take a place in the bulkhead and pass the breaker, or raise the refusal."""
        if not self.occupy():
            self._refuse("busy", f"{self.name}: too many calls in flight", 1.0)
        if not self.breaker.allow():
            self.vacate()
            self._refuse(
                "open", f"{self.name}: circuit open after failures", self.breaker.retry_after()
            )

    def leave(self, *, ok: bool) -> None:
        """End a call begun with ``enter``, recording whether the dependency answered."""
        self.vacate()
        if ok:
            self.breaker.success()
        else:
            self.breaker.failure()

    def occupy(self) -> bool:
        """Take a place in the bulkhead (False when it is full) and step out of the CPU gate."""
        if not self.bulkhead.try_enter():
            return False
        gate = _gate.get()
        if gate is not None:
            gate.step_out()
        return True

    def vacate(self) -> None:
        """Give the place back and wait for the CPU gate again."""
        self.bulkhead.leave()
        gate = _gate.get()
        if gate is not None:
            gate.step_in()

    def count_refusal(self, reason: str) -> None:
        """Count a call refused without trying (``busy`` or ``open``)."""
        if self.metrics:
            self.metrics.dependency_refusals.labels(self.name, reason).inc()

    def _refuse(self, reason: str, message: str, retry_after: float) -> None:
        self.count_refusal(reason)
        raise self.refused(message, retry_after)
