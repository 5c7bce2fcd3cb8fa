"""Rate limit rules in-process: their syntax and IPv6 addresses limited per /64."""

from __future__ import annotations

from typing import Any

import pytest

from token_exchange.oauth.errors import RateLimited


@pytest.mark.parametrize("value", ["600", "600/day", "x/minute", "0/minute", 600])
def test_rate_limit_syntax(value: Any) -> None:
    import copy

    from token_exchange.config.settings import ConfigError

    from .test_settings import MINIMAL, parse

    raw = copy.deepcopy(MINIMAL)
    raw["rate_limits"] = {"per_client": value}
    with pytest.raises(ConfigError, match=r"rate_limits\.per_client"):
        parse(raw)


def test_ipv6_addresses_are_limited_per_64() -> None:
    from token_exchange.config.settings import RateLimitSettings, RateRule
    from token_exchange.grant.ratelimit import RateLimiter
    from token_exchange.sources.store import MemoryStore

    limiter = RateLimiter(
        MemoryStore(), RateLimitSettings(failures_per_address=RateRule(limit=2, window=60))
    )
    # One host picks a new address of its /64 for every attempt: still one budget.
    limiter.failure("2001:db8:1:2::1")
    limiter.failure("2001:db8:1:2:ffff::9")
    with pytest.raises(RateLimited):
        limiter.check_address("2001:db8:1:2::abcd")
    limiter.check_address("2001:db8:1:3::1")  # another /64
    limiter.check_address("192.0.2.1")
