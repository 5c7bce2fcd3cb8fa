"""Caches: permission answers in the shared store, verified subject tokens per process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from .fakes import COUNTRIES, FakeIssuer, FakePermissions, Sts
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


def test_an_answer_that_covers_a_prefix_serves_the_resources_under_it(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    redis_url: str,
) -> None:
    """The SPA asks per downstream call, a new country each time: one question per subtree,
    through Redis across replicas; a refusal covers only what it names."""
    countries = f"{COUNTRIES}/countries/"
    permissions_api.reply(
        {
            "allow": True,
            "claims": {"custom_access_to_countries": ["nl", "de"]},
            "ttl": 60,
            "resource_prefixes": [countries],
        }
    )
    first, second = make_sts(with_store(redis_url)), make_sts(with_store(redis_url))
    token = issuer.token()
    assert_issued(first.exchange(token, resource=f"{countries}nl"))
    for code in ("de", "be", "fr"):
        body = assert_issued(second.exchange(token, resource=f"{countries}{code}"))
        claims = second.decode(body["access_token"])
        assert claims["custom_access_to_countries"] == ["nl", "de"]
    assert len(permissions_api.questions) == 1
    # Another user is another question.
    assert_issued(second.exchange(issuer.token(sub="auth0|7"), resource=f"{countries}de"))
    assert len(permissions_api.questions) == 2

    # An answer whose prefix contains none of the question's resources is a bug: 503.
    permissions_api.reply(
        {"allow": True, "ttl": 60, "resource_prefixes": [f"{COUNTRIES}/elsewhere/"]}
    )
    response = first.exchange(issuer.token(sub="auth0|8"), resource=f"{countries}nl")
    assert_error(response, 503, "temporarily_unavailable")


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
