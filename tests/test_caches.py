"""Caches: permission answers in the shared store, verified subject tokens per process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from .fakes import FakeIssuer, FakePermissions, Sts
from .helpers import assert_error, assert_issued

# -- end to end, through a real Redis --------------------------------------------------------------


def with_store(url: str) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["store"] = {"url": url}

    return edit


def test_two_replicas_share_cached_answers(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    redis_url: str,
) -> None:
    permissions_api.reply(
        {"allow": True, "claims": {"custom_access_to_countries": ["nl"]}, "ttl": 60}
    )
    first, second = make_sts(with_store(redis_url)), make_sts(with_store(redis_url))
    token = issuer.token()
    assert_issued(first.exchange(token))
    body = assert_issued(second.exchange(token))
    assert second.decode(body["access_token"])["custom_access_to_countries"] == ["nl"]
    assert len(permissions_api.questions) == 1


def test_cache_control_max_age_is_used_without_ttl(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    redis_url: str,
) -> None:
    permissions_api.reply({"allow": True}, headers={"Cache-Control": "max-age=60"})
    sts = make_sts(with_store(redis_url))
    for _ in range(3):
        assert_issued(sts.exchange(issuer.token()))
    assert len(permissions_api.questions) == 1


def test_no_store_is_never_cached(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    redis_url: str,
) -> None:
    permissions_api.reply({"allow": True, "ttl": 60}, headers={"Cache-Control": "no-store"})
    sts = make_sts(with_store(redis_url))
    for _ in range(3):
        assert_issued(sts.exchange(issuer.token()))
    assert len(permissions_api.questions) == 3


def test_redis_down_falls_through_to_the_permissions_api(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    redis_url: str,
    redis_process: Any,
) -> None:
    permissions_api.reply({"allow": True, "ttl": 60})
    sts = make_sts(with_store(redis_url))
    assert_issued(sts.exchange(issuer.token()))
    redis_process.kill()
    for i in range(3):  # new questions: the shared cache cannot answer them
        assert_issued(sts.exchange(issuer.token(sub=f"auth0|{i}")))
    assert len(permissions_api.questions) == 4  # no cache, but never a refusal or a 500
    # ...and a refusal is still a refusal: a dead cache never grants anything.
    permissions_api.reply({"allow": False})
    assert_error(sts.exchange(issuer.token(sub="auth0|new")), 400, "invalid_target")


# -- verified subject tokens ---------------------------------------------------------------------


def test_a_verified_subject_token_is_not_verified_again(
    sts: Sts, issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import token_exchange.grant.upstream as upstream

    verifications = []
    real = upstream.verify_signed

    def counting(*args: Any, **kwargs: Any) -> Any:
        verifications.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(upstream, "verify_signed", counting)
    token = issuer.token()
    for _ in range(5):
        assert_issued(sts.exchange(token))
    assert len(verifications) == 1
    assert_issued(sts.exchange(issuer.token(jti="other")))  # another token is verified
    assert len(verifications) == 2


def test_verified_tokens_are_forgotten_at_their_expiry(sts: Sts, issuer: FakeIssuer) -> None:
    token = issuer.token(exp=int(time.time()) + 2)
    assert_issued(sts.exchange(token))
    time.sleep(2.1)
    assert_error(sts.exchange(token), 400, "invalid_request")


def test_a_cached_verification_ends_when_the_issuer_withdraws_the_key(
    sts: Sts, issuer: FakeIssuer
) -> None:
    token = issuer.token()
    assert_issued(sts.exchange(token))
    issuer.published.clear()  # the issuer withdraws its key...
    sts.services.verifier.key_sources[issuer.issuer].refresh()  # ...and we have refetched
    assert_error(sts.exchange(token), 400, "invalid_request")
