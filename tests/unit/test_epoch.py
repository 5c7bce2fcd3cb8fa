"""A store that loses its data (epoch.py): revocations and single-use markers recorded before
the loss are not silently forgotten; what came after works normally."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from token_exchange.config.settings import Settings
from token_exchange.oauth.clock import ManualClock
from token_exchange.obs.metrics import Metrics
from token_exchange.sources.epoch import (
    EPOCH_KEY,
    MARKER_TTL,
    RECHECK,
    REFRESH_INTERVAL,
    Epoch,
    StoreEpoch,
)
from token_exchange.sources.keys import MemoryKeyStore
from token_exchange.sources.store import PREFIX, MemoryStore
from token_exchange.web.app import Overrides, create_app

from ..fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    COUNTRIES_API_SECRET,
    GRANT,
    T0,
    TENANT,
    DpopKey,
    RecordingPermissions,
    SharedStore,
    TokenMaker,
    signing_key,
)

API = ("countries-api", COUNTRIES_API_SECRET)


@pytest.fixture
def shared(clock: ManualClock) -> SharedStore:
    return SharedStore(clock)


@pytest.fixture
def app_client(
    settings: Settings,
    upstream: TokenMaker,
    permissions: RecordingPermissions,
    clock: ManualClock,
    shared: SharedStore,
) -> FlaskClient:
    return build_app(settings, upstream, permissions, clock, shared).test_client()


def build_app(
    settings: Settings,
    upstream: TokenMaker,
    permissions: RecordingPermissions,
    clock: ManualClock,
    shared: SharedStore,
) -> Flask:
    """The service on ``shared``, a store that outlives it (and can forget, as Redis can)."""
    return create_app(
        settings,
        overrides=Overrides(
            clock=clock,
            keys=MemoryKeyStore([signing_key(now=T0 - 60)], clock=clock),
            key_sources={TENANT: upstream.key_source()},
            permission_sources={"webapp": permissions},
            store=shared,
        ),
    )


def mint(client: FlaskClient, upstream: TokenMaker) -> str:
    response = client.post(
        "/token",
        data={
            "grant_type": GRANT,
            "client_id": "spa",
            "subject_token": upstream.token(),
            "subject_token_type": ACCESS_TOKEN,
            "audience": COUNTRIES,
        },
    )
    assert response.status_code == 200, response.text
    return str(response.get_json()["access_token"])


def active(client: FlaskClient, token: str) -> bool:
    response = client.post("/introspect", data={"token": token}, auth=API)
    assert response.status_code == 200, response.text
    return bool(response.get_json()["active"])


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.getMessage() == name]  # type: ignore[attr-defined]


def test_a_revoked_token_is_not_active_again_after_the_store_forgets(
    app_client: FlaskClient,
    upstream: TokenMaker,
    clock: ManualClock,
    shared: SharedStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock.advance(60)  # the app read the store's epoch at start-up; this is a minute later
    revoked, other = mint(app_client, upstream), mint(app_client, upstream)
    assert app_client.post("/revoke", data={"token": revoked}, auth=API).status_code == 200
    assert not active(app_client, revoked)
    assert active(app_client, other)

    clock.advance(10)
    shared.forget()  # Redis restarted empty
    with caplog.at_level(logging.INFO, logger="token_exchange.sources.epoch"):
        # Nothing says it is revoked any more: it is not active all the same, nor is any
        # other token issued before the loss (none of them can be proven unrevoked).
        assert not active(app_client, revoked)
        assert not active(app_client, other)
    (reset,) = events(caplog, "store_reset")
    assert reset["reset_at"] == T0 + 70
    assert reset["window_closes_at"] == T0 + 70 + 2 + 300  # + clock skew + token_ttl
    assert reset["written_here"] is True

    clock.advance(3)  # past the allowance for clocks that disagree
    fresh = mint(app_client, upstream)
    assert active(app_client, fresh)
    assert app_client.post("/revoke", data={"token": fresh}, auth=API).status_code == 200
    assert not active(app_client, fresh)


def test_the_window_closes_when_the_tokens_from_before_have_expired(
    app_client: FlaskClient,
    upstream: TokenMaker,
    clock: ManualClock,
    shared: SharedStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock.advance(60)
    shared.forget()
    with caplog.at_level(logging.INFO, logger="token_exchange.sources.epoch"):
        # Minted as the loss is seen: in the new epoch (store_epoch), so not doubtful.
        assert active(app_client, mint(app_client, upstream))
        clock.advance(3)
        later = mint(app_client, upstream)
        clock.advance(299)  # T0 + 362: every token issued before the loss has expired
        assert active(app_client, later)
    (closed,) = events(caplog, "store_reset_window_closed")
    assert closed["closed_at"] == T0 + 60 + 2 + 300
    services = app_client.application.extensions["token_exchange"]
    sample = services.scrape_registry.get_sample_value
    # Two: an empty store at start-up cannot be told from a reset one, then the loss.
    assert sample("token_exchange_store_resets_total") == 2
    assert sample("token_exchange_store_reset_window_closes_timestamp_seconds") == T0 + 362


def test_a_process_that_has_not_noticed_yet_notices_with_its_own_read(
    clock: ManualClock, shared: SharedStore
) -> None:
    first, second = (StoreEpoch(shared, lifetime=300, clock=clock) for _ in range(2))
    first.check()
    assert second.check() == first.check()  # both in the same epoch
    clock.advance(100)
    shared.forget()
    clock.advance(1)
    assert first.get("revoked:x") is None  # the first to read writes the new epoch
    clock.advance(1)
    # The second was told nothing; its own read of the (lost) revocation sees the new marker.
    assert second.get("revoked:x") is None
    assert second.since == first.since == T0 + 101 + 2
    assert second.token_predates({"iat": T0 + 50})
    assert not second.token_predates({"iat": T0 + 104})


def test_a_loss_between_the_key_and_the_marker_is_seen(
    clock: ManualClock, shared: SharedStore
) -> None:
    """Without pipelining the marker is read after the key: data lost before the key was read
    is lost before the marker was read."""
    epoch = StoreEpoch(shared, lifetime=300, clock=clock)
    epoch.check()
    clock.advance(60)
    shared.set("revoked:x", b"1", 300, durable=True)

    class LosesDataAfterTheKeyIsRead(SharedStore):
        def get(self, key: str) -> bytes | None:
            value = super().get(key)
            if key == "revoked:x":
                self.forget()
            return value

    racing = LosesDataAfterTheKeyIsRead(clock)
    racing.data = shared.data
    epoch.store = racing
    assert epoch.get("revoked:x") == b"1"  # read before the loss: true
    assert racing.reads == ["revoked:x", EPOCH_KEY]  # missing: a new one is added
    assert epoch.token_predates({"iat": T0 + 30})  # and the loss is known at once


def test_a_new_process_judges_by_a_young_epoch_and_ignores_an_old_one(
    clock: ManualClock, shared: SharedStore
) -> None:
    young = Epoch("young", T0 - 100)
    shared.add(EPOCH_KEY, young.encode(), MARKER_TTL)
    started = StoreEpoch(shared, lifetime=300, clock=clock)
    assert started.check() == young
    # Tokens issued before the reset another process saw are doubtful here too.
    assert started.token_predates({"iat": T0 - 150})
    assert not started.token_predates({"iat": T0 - 50})

    shared.forget()
    shared.add(EPOCH_KEY, Epoch("old", T0 - 86400).encode(), MARKER_TTL)
    metrics = Metrics()
    quiet = StoreEpoch(shared, lifetime=300, clock=clock, metrics=metrics)
    quiet.check()
    assert metrics.registry.get_sample_value("token_exchange_store_resets_total") == 0


def test_proofs_and_assertions_that_could_have_been_used_before_the_loss(
    clock: ManualClock, shared: SharedStore
) -> None:
    epoch = StoreEpoch(shared, lifetime=300, clock=clock)
    epoch.check()  # a fresh store: the epoch starts now (T0), since = T0 + 2
    # A DPoP proof is acceptable within 60 s of its iat: one made up to 60 s after the reset
    # could have been used (by a server whose clock was behind) before it.
    assert epoch.proof_predates(T0 + 61, window=60)
    assert not epoch.proof_predates(T0 + 62, window=60)
    # A client assertion, within its leeway; without iat, while one could be unexpired.
    assert epoch.assertion_predates(T0 + 31, 3600, 30)
    assert not epoch.assertion_predates(T0 + 32, 3600, 30)
    assert epoch.assertion_predates(None, 3600, 30)
    clock.advance(3600 + 61 + 2)
    assert not epoch.assertion_predates(None, 3600, 30)


def test_the_marker_is_extended_never_rewritten(clock: ManualClock) -> None:
    store = MemoryStore(clock=clock)
    epoch = StoreEpoch(store, lifetime=300, clock=clock)
    mine = epoch.check()
    clock.advance(REFRESH_INTERVAL + 1)
    # Another process has written a newer marker meanwhile (after a reset this one missed).
    newer = Epoch("newer", clock())
    store.set(EPOCH_KEY, newer.encode(), 60, durable=True)
    assert epoch.get("revoked:x") is None
    assert json.loads(store.get(EPOCH_KEY) or b"") == {"id": "newer", "created": clock()}
    assert epoch.since == newer.created + 2 != mine.created + 2
    clock.advance(REFRESH_INTERVAL + 1)
    epoch.get("revoked:x")  # extends it: still there long after its own 60 s
    clock.advance(MARKER_TTL - 100)
    assert store.get(EPOCH_KEY) is not None
    assert PREFIX + EPOCH_KEY in store._durable


def test_a_token_is_judged_by_the_epoch_it_was_minted_in(
    clock: ManualClock, shared: SharedStore
) -> None:
    """Tokens carry the epoch they were minted in (``store_epoch``): one minted right after a
    reset is not doubtful, whatever the clocks; one of an earlier epoch is, whatever its iat."""
    epoch = StoreEpoch(shared, lifetime=300, clock=clock)
    before = epoch.current()
    assert before is not None
    clock.advance(60)
    shared.forget()
    clock.advance(0.5)
    # Not read for RECHECK seconds: the process reads the marker before it names the epoch.
    after = epoch.current()
    assert after is not None
    assert after != before
    assert epoch.token_predates({"store_epoch": before, "iat": T0 + 61})
    assert not epoch.token_predates({"store_epoch": after, "iat": T0 + 60.5})
    # Without the claim (tokens minted before it existed): judged by iat, with the skew.
    assert epoch.token_predates({"iat": T0 + 60.5})
    assert not epoch.token_predates({"iat": T0 + 63})


def test_the_minting_epoch_is_read_again_after_recheck(
    clock: ManualClock, shared: SharedStore
) -> None:
    epoch = StoreEpoch(shared, lifetime=300, clock=clock)
    first = epoch.current()
    shared.forget()
    assert epoch.current() == first  # read less than RECHECK ago: not read again
    clock.advance(RECHECK)
    assert epoch.current() != first


@pytest.mark.parametrize("nonces", [False, True], ids=["no-nonces", "nonces"])
def test_after_a_loss_a_dpop_proof_carries_a_nonce_drawn_since(
    make_settings: Callable[..., Settings],
    upstream: TokenMaker,
    permissions: RecordingPermissions,
    clock: ManualClock,
    shared: SharedStore,
    nonces: bool,
) -> None:
    """A proof made around a loss could have been used before it: instead of refusing it for
    the proof window, the service asks for a nonce (RFC 9449 §8) derived from the new epoch,
    which no proof from before can carry; DPoP clients retry with it at once."""

    def edit(config: dict[str, Any]) -> None:
        config["dpop"] = {"nonce": nonces}

    client = build_app(make_settings(edit), upstream, permissions, clock, shared).test_client()
    key = DpopKey(clock=clock)

    def exchange(proof: str) -> TestResponse:
        return client.post(
            "/token",
            data={
                "grant_type": GRANT,
                "client_id": "spa",
                "subject_token": upstream.token(),
                "subject_token_type": ACCESS_TOKEN,
                "audience": COUNTRIES,
            },
            headers={"DPoP": proof},
        )

    clock.advance(200)  # the app read the store's epoch at start-up (a new store: a reset)
    before = key.proof(nonce=exchange(key.proof()).headers.get("DPoP-Nonce"))
    if nonces:
        assert exchange(before).status_code == 200
    shared.forget()
    clock.advance(1)
    asked = exchange(before)  # replayed after the loss: it carries no nonce drawn since
    assert asked.status_code == 400
    assert asked.get_json()["error"] == "use_dpop_nonce"
    nonce = asked.headers["DPoP-Nonce"]
    fresh = key.proof()  # made now, but nothing tells it from one made before the loss
    assert exchange(fresh).headers["DPoP-Nonce"] == nonce
    answered = exchange(key.proof(nonce=nonce))
    assert answered.status_code == 200, answered.text
    assert answered.headers["DPoP-Nonce"] == nonce  # for the client's next proof
    # Once no proof from before can be within its window, none is asked for that reason.
    clock.advance(2 * 60 + 3)
    later = exchange(key.proof(nonce=exchange(key.proof()).headers.get("DPoP-Nonce")))
    assert later.status_code == 200, later.text
    assert later.headers.get("DPoP-Nonce") != nonce


def test_the_writer_of_a_new_marker_says_so_when_another_thread_adopted_it_first(
    clock: ManualClock, shared: SharedStore, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    epoch = StoreEpoch(shared, lifetime=300, clock=clock, metrics=metrics)
    shared.add(EPOCH_KEY, Epoch("old", T0 - 86400).encode(), MARKER_TTL)
    assert epoch.get("k") is None  # adopts the old epoch
    clock.advance(10)
    shared.forget()  # the store lost its data
    real_add = shared.add

    def add(key: str, value: bytes, ttl: float) -> bool:
        added = real_add(key, value, ttl)
        if key == EPOCH_KEY and added:
            # Another thread of this process reads the marker just written, and adopts it
            # before the writing thread gets to.
            epoch.get("other-thread")
        return added

    shared.add = add  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="token_exchange.sources.epoch"):
        epoch.get("k")
    resets = events(caplog, "store_reset")
    assert [r["written_here"] for r in resets] == [False, True]
    assert {r["epoch"] for r in resets} == {resets[0]["epoch"]}
    assert all(r["previous_epoch"] == "old" for r in resets)
    assert metrics.store_resets._value.get() == 1
