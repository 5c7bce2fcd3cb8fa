"""Dependency warnings during an outage: one line per interval, with a count of the rest."""

from __future__ import annotations

import logging

import pytest

from token_exchange.config.settings import RateLimitSettings, RateRule
from token_exchange.grant.ratelimit import RateLimiter
from token_exchange.oauth.clock import ManualClock
from token_exchange.obs.logs import Throttle
from token_exchange.sources.store import MemoryStore, StoreUnavailable


class DownStore(MemoryStore):
    def get(self, key: str) -> bytes | None:
        raise StoreUnavailable("TimeoutError from the store")

    def incr(self, key: str, ttl: float) -> int:
        raise StoreUnavailable("TimeoutError from the store")


def test_a_store_outage_writes_one_rate_limit_warning_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rule = RateRule(limit=100, window=60)
    limiter = RateLimiter(
        DownStore(),
        RateLimitSettings(per_client=rule, per_subject=rule, failures_per_address=rule),
    )
    clock = ManualClock(0.0)
    limiter.warnings = Throttle(10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="token_exchange.grant.ratelimit"):
        for _ in range(6):  # 12 s of an outage, three exchanges every 2 s
            for _ in range(3):
                limiter.check_address("192.0.2.1")
                limiter.client("spa")
                limiter.subject("https://tenant.test/", "auth0|42")
            clock.advance(2)
    lines = [r.fields for r in caplog.records]  # type: ignore[attr-defined]
    # 54 warnings: the first at once, the next 10 s later, counting the 44 in between.
    assert len(lines) == 2
    assert lines[0]["suppressed"] == 0
    assert lines[1]["suppressed"] == 3 * 3 * 5 - 1
    assert lines[0]["reason"] == "TimeoutError from the store"


def test_each_event_has_its_own_interval(caplog: pytest.LogCaptureFixture) -> None:
    throttle = Throttle(5.0, clock=ManualClock(0.0))
    log = logging.getLogger("token_exchange.test")
    with caplog.at_level(logging.WARNING, logger="token_exchange.test"):
        for _ in range(3):
            throttle.event(log, "a_down")
            throttle.event(log, "b_down")
    assert [r.getMessage() for r in caplog.records] == ["a_down", "b_down"]
