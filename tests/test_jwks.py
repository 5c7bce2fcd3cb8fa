"""The remote key set: discovery, caching, cooldown, last good set (RFC 8725 §3.10).

Real HTTP to a fake issuer; time is an injected clock so cooldowns need no sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from token_exchange.oauth.clock import ManualClock
from token_exchange.oauth.errors import UpstreamUnavailable
from token_exchange.oauth.jose import KeyNotFound
from token_exchange.sources.jwks import RemoteKeySet

from .fakes import FakeIssuer, TokenMaker


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_keyset(issuer: FakeIssuer, clock: ManualClock) -> Callable[..., RemoteKeySet]:
    def make(*, discovery: bool = True, **kwargs: float) -> RemoteKeySet:
        return RemoteKeySet(
            issuer=issuer.issuer,
            algorithms=["RS256"],
            session=requests.Session(),
            jwks_uri=None if discovery else issuer.jwks_uri,
            discovery_url=issuer.issuer.rstrip("/") + "/.well-known/openid-configuration",
            clock=clock,
            **kwargs,
        )

    return make


def test_keys_come_from_discovery(
    issuer: FakeIssuer, make_keyset: Callable[..., RemoteKeySet]
) -> None:
    keyset = make_keyset()
    assert keyset.find_key(issuer.kid, "RS256").key_id == issuer.kid
    paths = [req.path for req, _ in issuer.server.log]
    assert paths == ["/.well-known/openid-configuration", "/.well-known/jwks.json"]


def test_keys_come_from_a_configured_jwks_uri(
    issuer: FakeIssuer, make_keyset: Callable[..., RemoteKeySet]
) -> None:
    make_keyset(discovery=False).find_key(issuer.kid, "RS256")
    assert [req.path for req, _ in issuer.server.log] == ["/.well-known/jwks.json"]


def test_discovery_naming_another_issuer_is_refused(
    issuer: FakeIssuer, make_keyset: Callable[..., RemoteKeySet]
) -> None:
    issuer.server.clear()
    issuer.server.expect_request("/.well-known/openid-configuration").respond_with_json(
        {"issuer": "https://evil.example.test/", "jwks_uri": issuer.jwks_uri}
    )
    with pytest.raises(UpstreamUnavailable):
        make_keyset().find_key(issuer.kid, "RS256")


def test_cached_keys_need_no_fetch(
    issuer: FakeIssuer, make_keyset: Callable[..., RemoteKeySet]
) -> None:
    keyset = make_keyset(discovery=False)
    for _ in range(20):
        keyset.find_key(issuer.kid, "RS256")
    assert issuer.jwks_fetches() == 1


def test_unknown_kid_refetches_at_most_once_per_cooldown(
    issuer: FakeIssuer, make_keyset: Callable[..., RemoteKeySet], clock: ManualClock
) -> None:
    keyset = make_keyset(discovery=False, cooldown=30)
    keyset.find_key(issuer.kid, "RS256")
    for i in range(100):
        with pytest.raises(KeyNotFound):
            keyset.find_key(f"forged-{i}", "RS256")
    assert issuer.jwks_fetches() == 1  # still inside the cooldown of the first fetch
    clock.advance(31)
    for i in range(100):
        with pytest.raises(KeyNotFound):
            keyset.find_key(f"forged-{i}", "RS256")
    assert issuer.jwks_fetches() == 2


def test_a_key_the_issuer_adds_is_accepted_within_45_seconds(
    issuer: FakeIssuer,
    make_keyset: Callable[..., RemoteKeySet],
    clock: ManualClock,
    rsa_keys: list[rsa.RSAPrivateKey],
) -> None:
    keyset = make_keyset(discovery=False)  # defaults: cooldown 30 s, refresh every 300 s
    keyset.find_key(issuer.kid, "RS256")
    new_kid = issuer.add_key(rsa_keys[1])  # the issuer starts signing with a new key at once
    accepted_after = None
    for second in range(0, 46):
        try:
            keyset.find_key(new_kid, "RS256")
        except KeyNotFound:
            clock.advance(1)
            continue
        accepted_after = second
        break
    assert accepted_after is not None
    assert accepted_after <= 45


def test_failed_refresh_keeps_the_last_good_set(
    issuer: FakeIssuer, make_keyset: Callable[..., RemoteKeySet], clock: ManualClock
) -> None:
    keyset = make_keyset(discovery=False, refresh_interval=60)
    keyset.find_key(issuer.kid, "RS256")
    issuer.down = True
    clock.advance(61)
    assert keyset.refresh() is not None  # failed, and returned the old set
    keyset.find_key(issuer.kid, "RS256")
    clock.advance(31)
    # The refetch for an unknown kid fails: the old set still answers for the keys it holds,
    # but it is too old to say that the issuer does not publish this one (503, not 400).
    with pytest.raises(UpstreamUnavailable):
        keyset.find_key("unknown", "RS256")
    assert keyset.find_key(issuer.kid, "RS256").key_id == issuer.kid


def test_an_unknown_kid_is_unavailable_while_the_breaker_refuses_fetches(
    issuer: FakeIssuer, make_keyset: Callable[..., RemoteKeySet], clock: ManualClock
) -> None:
    keyset = make_keyset(discovery=False, breaker_cooldown=10)
    keyset.find_key(issuer.kid, "RS256")
    issuer.down = True
    clock.advance(31)
    with pytest.raises(UpstreamUnavailable):
        keyset.find_key("new-key", "RS256")  # the refetch fails: the breaker opens
    issuer.down = False
    fetches = keyset.fetches
    clock.advance(5)
    with pytest.raises(UpstreamUnavailable) as refused:
        keyset.find_key("new-key", "RS256")  # the breaker is open: no fetch, still not known
    assert keyset.fetches == fetches
    assert refused.value.retry_after == 5
    clock.advance(5)
    with pytest.raises(KeyNotFound):
        keyset.find_key("new-key", "RS256")  # the probe succeeds: the issuer has no such key


def test_stale_keys_are_refreshed_in_the_background(
    issuer: FakeIssuer, make_keyset: Callable[..., RemoteKeySet], clock: ManualClock
) -> None:
    keyset = make_keyset(discovery=False, refresh_interval=60)
    keyset.find_key(issuer.kid, "RS256")
    clock.advance(61)
    keyset.find_key(issuer.kid, "RS256")  # served from cache at once, refresh started
    deadline = time.monotonic() + 5
    while issuer.jwks_fetches() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert issuer.jwks_fetches() == 2


def test_issuer_down_from_the_start_is_unavailable_then_recovers(
    issuer: FakeIssuer, make_keyset: Callable[..., RemoteKeySet], clock: ManualClock
) -> None:
    issuer.down = True
    keyset = make_keyset(discovery=False, cooldown=10)
    with pytest.raises(UpstreamUnavailable) as raised:
        keyset.find_key(issuer.kid, "RS256")
    assert 1 <= raised.value.retry_after <= 10
    issuer.down = False
    with pytest.raises(UpstreamUnavailable):  # within the cooldown: no new fetch
        keyset.find_key(issuer.kid, "RS256")
    assert issuer.jwks_fetches() == 1
    clock.advance(10)
    assert keyset.find_key(issuer.kid, "RS256").key_id == issuer.kid


def test_connection_refused_is_unavailable(clock: ManualClock) -> None:
    keyset = RemoteKeySet(
        issuer="http://127.0.0.1:9/",
        algorithms=["RS256"],
        session=requests.Session(),
        jwks_uri="http://127.0.0.1:9/jwks.json",
        clock=clock,
    )
    with pytest.raises(UpstreamUnavailable):
        keyset.find_key("k", "RS256")


# -- parsing ----------------------------------------------------------------------------------


# -- members of the wrong type (issue 21) ------------------------------------------------------


def badly_typed_keys(issuer: TokenMaker) -> list[dict[str, object]]:
    good = issuer.jwks_document()["keys"][0]
    return [
        {**good, "kid": "ops", "key_ops": 5},
        {**good, "kid": "ops-list", "key_ops": [5]},
        {
            "kty": "OKP",
            "kid": "crv",
            "crv": ["Ed25519"],
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        },
        {**good, "kid": "n", "n": 12345},
        {**good, "kid": "use", "use": ["sig"]},
    ]


def test_a_set_without_a_usable_key_is_a_failed_fetch_that_keeps_the_last_good_set(
    issuer: FakeIssuer,
    make_keyset: Callable[..., RemoteKeySet],
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keyset = make_keyset(discovery=False, breaker_cooldown=10)
    keyset.find_key(issuer.kid, "RS256")
    bad = {"keys": badly_typed_keys(issuer)}
    monkeypatch.setattr(issuer, "jwks_document", lambda: bad)
    clock.advance(31)
    # The refetch for an unknown kid finds nothing usable: a failure, never a 500.
    with pytest.raises(UpstreamUnavailable):
        keyset.find_key("new-key", "RS256")
    assert issuer.jwks_fetches() == 2
    # Requests go on: the last good set answers, and none of them refetches until the
    # breaker lets one probe through.
    for _ in range(20):
        assert keyset.find_key(issuer.kid, "RS256").key_id == issuer.kid
        with pytest.raises(UpstreamUnavailable):
            keyset.find_key("new-key", "RS256")
    assert issuer.jwks_fetches() == 2
    clock.advance(10)
    with pytest.raises(UpstreamUnavailable):
        keyset.find_key("new-key", "RS256")  # the probe
    assert issuer.jwks_fetches() == 3


def test_a_first_set_without_a_usable_key_is_unavailable_and_not_refetched_per_request(
    issuer: FakeIssuer,
    make_keyset: Callable[..., RemoteKeySet],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = {"keys": badly_typed_keys(issuer)}
    monkeypatch.setattr(issuer, "jwks_document", lambda: bad)
    keyset = make_keyset(discovery=False, breaker_cooldown=10)
    for _ in range(20):
        with pytest.raises(UpstreamUnavailable):
            keyset.find_key(issuer.kid, "RS256")
    assert issuer.jwks_fetches() == 1
