"""Rate limits per client, per subject and per address for failures, in a real Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from .fakes import FakeIssuer, Sts
from .helpers import assert_error, assert_issued
from .test_operations import audit_lines


def limits(
    redis_url: str, trusted_proxies: int = 0, **rules: str
) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["store"] = {"url": redis_url}
        config["rate_limits"] = rules
        config["server"] = {"trusted_proxies": trusted_proxies}

    return edit


def assert_limited(response: Any) -> None:
    body = assert_error(response, 429, "slow_down")
    assert body["error_description"]
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_per_client_limit(make_sts: Callable[..., Sts], issuer: FakeIssuer, redis_url: str) -> None:
    sts = make_sts(limits(redis_url, per_client="3/minute"))
    for _ in range(3):
        assert_issued(sts.exchange(issuer.token()))
    assert_limited(sts.exchange(issuer.token()))
    # Another client has its own budget.
    assert_issued(sts.exchange(issuer.token(), client_id="reader"))


def test_per_subject_limit(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, redis_url: str
) -> None:
    sts = make_sts(limits(redis_url, per_subject="2/minute"))
    for _ in range(2):
        assert_issued(sts.exchange(issuer.token(sub="auth0|1")))
    assert_limited(sts.exchange(issuer.token(sub="auth0|1")))
    assert_issued(sts.exchange(issuer.token(sub="auth0|2")))


def test_a_user_over_their_limit_does_not_use_up_the_clients(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sts = make_sts(limits(redis_url, per_client="5/minute", per_subject="2/minute"))
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        for _ in range(2):
            assert_issued(sts.exchange(issuer.token(sub="auth0|1")))
        for _ in range(6):
            assert_limited(sts.exchange(issuer.token(sub="auth0|1")))
    # Refused by per_subject, those six did not count toward the client's budget: other
    # users of the same client still get their tokens.
    for user in ("auth0|2", "auth0|3", "auth0|4"):
        assert_issued(sts.exchange(issuer.token(sub=user)))
    refused = [line for line in audit_lines(caplog) if line["outcome"] == "slow_down"]
    assert len(refused) == 6
    assert {(line["reason"], line["detail"]) for line in refused} == {
        ("rate_limited", "per_subject")
    }
    # The client's own limit still holds, and says so.
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        assert_limited(sts.exchange(issuer.token(sub="auth0|5")))
    assert audit_lines(caplog)[-1]["detail"] == "per_client"


def test_failures_per_address(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, redis_url: str
) -> None:
    sts = make_sts(limits(redis_url, failures_per_address="3/minute"))
    assert_issued(sts.exchange(issuer.token()))  # successes do not count
    for _ in range(3):
        assert_error(sts.exchange("forged"), 400, "invalid_request")
    assert_limited(sts.exchange(issuer.token()))  # now even a good request waits


def test_forwarded_for_is_believed_only_from_trusted_proxies(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, redis_url: str
) -> None:
    untrusted = make_sts(limits(redis_url, failures_per_address="2/minute"))
    for i in range(2):
        # Spoofing a new X-Forwarded-For per request does not escape the limit.
        untrusted.exchange("forged", headers={"X-Forwarded-For": f"198.51.100.{i}"})
    assert_limited(untrusted.exchange(issuer.token(), headers={"X-Forwarded-For": "203.0.113.9"}))


def test_trusted_proxy_forwarded_for_separates_clients(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, redis_url: str
) -> None:
    sts = make_sts(limits(redis_url, trusted_proxies=1, failures_per_address="2/minute"))
    for _ in range(2):
        sts.exchange("forged", headers={"X-Forwarded-For": "198.51.100.1"})
    assert_limited(sts.exchange(issuer.token(), headers={"X-Forwarded-For": "198.51.100.1"}))
    assert_issued(sts.exchange(issuer.token(), headers={"X-Forwarded-For": "198.51.100.2"}))


def test_rate_limits_that_cannot_be_checked_let_requests_through(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, redis_url: str, redis_process: Any
) -> None:
    sts = make_sts(limits(redis_url, per_client="1/minute", failures_per_address="1/minute"))
    redis_process.kill()
    for _ in range(3):
        assert_issued(sts.exchange(issuer.token()))


def test_garbage_does_not_use_up_a_public_clients_budget(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, redis_url: str
) -> None:
    # Anyone can name the SPA's client_id; only verified exchanges count against its limit.
    sts = make_sts(limits(redis_url, per_client="3/minute"))
    for _ in range(10):
        assert_error(sts.exchange("forged", client_id="spa"), 400, "invalid_request")
    assert_issued(sts.exchange(issuer.token()))


def test_forged_kids_while_the_issuer_is_down_count_as_failures(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, redis_url: str
) -> None:
    """While the issuer's keys cannot be fetched, an unknown kid is a 503 (it may be a key the
    issuer has just added), but anyone can forge one: it counts against the address."""

    def edit(config: dict[str, Any]) -> None:
        limits(redis_url, failures_per_address="2/minute")(config)
        config["upstreams"][0]["jwks_cooldown"] = 1

    sts = make_sts(edit)
    assert_issued(sts.exchange(issuer.token()))
    time.sleep(1.1)  # past jwks_cooldown: an unknown kid may refetch
    issuer.down = True
    for i in range(2):
        forged = issuer.token(kid=f"forged-{i}", key=issuer.keys[issuer.kid])
        assert_error(sts.exchange(forged), 503, "temporarily_unavailable")
    assert_limited(sts.exchange(issuer.token()))  # a good token from there now waits
