"""Bulkheads and circuit breakers (resilience.py): pure logic, with a fake clock."""

from __future__ import annotations

import threading

import pytest

from token_exchange.oauth.clock import ManualClock
from token_exchange.oauth.errors import UpstreamUnavailable
from token_exchange.obs.metrics import Metrics
from token_exchange.sources.resilience import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Bulkhead,
    CircuitBreaker,
    CpuGate,
    Guard,
)


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=5, clock=ManualClock(1000.0))
    breaker.failure()
    breaker.failure()
    breaker.success()  # a success in between starts the count again
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == OPEN
    assert not breaker.allow()


def test_open_breaker_lets_one_probe_through_after_its_cooldown() -> None:
    clock = ManualClock(1000.0)
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5, clock=clock)
    breaker.failure()
    clock.now += 4.9
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.allow()  # the probe
    assert breaker.state == HALF_OPEN
    assert not breaker.allow()  # nobody else while the probe is out
    breaker.failure()  # the probe failed: open for another cooldown
    assert breaker.state == OPEN
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED
    assert all(breaker.allow() for _ in range(10))


def test_half_open_admits_exactly_one_of_many_concurrent_callers() -> None:
    clock = ManualClock(1000.0)
    breaker = CircuitBreaker(failure_threshold=1, cooldown=1, clock=clock)
    breaker.failure()
    clock.now += 1
    admitted = []
    barrier = threading.Barrier(16)

    def try_once() -> None:
        barrier.wait()
        admitted.append(breaker.allow())

    threads = [threading.Thread(target=try_once) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted.count(True) == 1


def test_bulkhead_refuses_past_its_limit_without_waiting() -> None:
    bulkhead = Bulkhead(2)
    assert bulkhead.try_enter()
    assert bulkhead.try_enter()
    assert not bulkhead.try_enter()
    bulkhead.leave()
    assert bulkhead.try_enter()
    assert bulkhead.in_flight == 2


def test_guard_refuses_with_retry_after_and_counts() -> None:
    clock = ManualClock(1000.0)
    metrics = Metrics()
    guard = Guard(
        "permissions:x", max_concurrency=1, failure_threshold=2, cooldown=7,
        clock=clock, metrics=metrics,
    )  # fmt: skip
    guard.enter()
    with pytest.raises(UpstreamUnavailable) as busy:
        guard.enter()  # its one place is taken
    assert busy.value.retry_after == 1
    guard.leave(ok=True)
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable), guard.call():
            raise UpstreamUnavailable("timed out")
    with pytest.raises(UpstreamUnavailable) as refused, guard.call():
        pytest.fail("an open breaker must not run the call")
    assert refused.value.retry_after == 7
    sample = metrics.registry.get_sample_value
    assert sample("token_exchange_dependency_refusals_total",
                  {"dependency": "permissions:x", "reason": "busy"}) == 1  # fmt: skip
    assert sample("token_exchange_dependency_refusals_total",
                  {"dependency": "permissions:x", "reason": "open"}) == 1  # fmt: skip
    assert sample("token_exchange_dependency_breaker_state", {"dependency": "permissions:x"}) == 2
    assert sample("token_exchange_dependency_in_flight", {"dependency": "permissions:x"}) == 0


def test_cpu_gate_runs_one_request_at_a_time_and_a_waiting_one_steps_out() -> None:
    gate = CpuGate()
    guard = Guard("permissions:x", max_concurrency=4, failure_threshold=5, cooldown=1)
    order: list[str] = []
    a_waiting, b_done = threading.Event(), threading.Event()

    def request_a() -> None:
        with gate.run():
            order.append("a runs")
            with guard.call():  # waiting on a dependency: out of the gate
                a_waiting.set()
                assert b_done.wait(5)
            order.append("a runs again")

    def request_b() -> None:
        assert a_waiting.wait(5)
        with gate.run():  # gets in while a waits on its dependency
            order.append("b runs")
        b_done.set()

    threads = [threading.Thread(target=request_a), threading.Thread(target=request_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert order == ["a runs", "b runs", "a runs again"]


def test_cpu_gate_is_exclusive_while_a_request_runs() -> None:
    gate = CpuGate()
    inside = 0
    most = 0
    lock = threading.Lock()

    def request() -> None:
        nonlocal inside, most
        for _ in range(200):
            with gate.run():
                with lock:
                    inside += 1
                    most = max(most, inside)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most == 1
