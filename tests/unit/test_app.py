"""The composition root: ``create_app`` with typed ``Overrides`` wires one clock into every
service, and the whole app answers an exchange in-process (Flask's test client, no socket)."""

from __future__ import annotations

import dataclasses

import jwt
import pytest

from token_exchange.config.settings import Settings
from token_exchange.oauth.clock import SYSTEM_CLOCK, ManualClock
from token_exchange.sources.keys import MemoryKeyStore, write_key
from token_exchange.sources.store import MemoryStore
from token_exchange.web.app import Overrides, create_app

from ..fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    GRANT,
    T0,
    TENANT,
    RecordingPermissions,
    TokenMaker,
    signing_key,
)


@pytest.fixture
def overrides(
    upstream: TokenMaker, permissions: RecordingPermissions, clock: ManualClock
) -> Overrides:
    return Overrides(
        clock=clock,
        keys=MemoryKeyStore([signing_key(now=T0 - 60)], clock=clock),
        key_sources={TENANT: upstream.key_source()},
        permission_sources={"webapp": permissions},
        store=MemoryStore(clock=clock),
    )


def test_overrides_are_typed_fields_not_a_mapping() -> None:
    assert {f.name for f in dataclasses.fields(Overrides)} == {
        "clock", "metrics", "keys", "key_sources", "jwks_session", "permission_sources",
        "permissions_pool", "store",
    }  # fmt: skip
    with pytest.raises(TypeError):
        Overrides(kyes=None)  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Overrides().clock = SYSTEM_CLOCK  # type: ignore[misc]


def test_every_service_reads_the_one_clock(
    settings: Settings, overrides: Overrides, clock: ManualClock
) -> None:
    services = create_app(settings, overrides=overrides).extensions["token_exchange"]
    assert services.exchange.clock is clock
    assert services.verifier.clock is clock
    assert services.limiter.clock is clock
    assert services.tokens.clock is clock
    # The HTTP permission source nobody replaced caches its answers by the same clock.
    services = create_app(
        settings, overrides=dataclasses.replace(overrides, permission_sources={})
    ).extensions["token_exchange"]
    assert services.exchange.permission_sources["webapp"].clock is clock
    # The signing key's age, as a scrape reads it, is by that clock too.
    age = services.scrape_registry.get_sample_value("token_exchange_signing_key_age_seconds")
    assert age == 60


def test_the_key_store_built_from_the_settings_reads_the_clock(
    settings: Settings, overrides: Overrides, clock: ManualClock
) -> None:
    write_key(settings.signing.keys_dir, signing_key(now=T0))
    services = create_app(settings, overrides=dataclasses.replace(overrides, keys=None)).extensions[
        "token_exchange"
    ]
    assert services.keys.clock is clock


def test_without_overrides_the_clock_is_the_system_clock(
    settings: Settings, overrides: Overrides
) -> None:
    services = create_app(
        settings, overrides=dataclasses.replace(overrides, clock=None)
    ).extensions["token_exchange"]
    assert services.exchange.clock is SYSTEM_CLOCK


def test_the_app_exchanges_a_token_in_process(
    settings: Settings,
    overrides: Overrides,
    upstream: TokenMaker,
    permissions: RecordingPermissions,
) -> None:
    app = create_app(settings, overrides=overrides)
    response = app.test_client().post(
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
    body = response.get_json()
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert (claims["iat"], claims["exp"]) == (T0, T0 + 300)
    assert len(permissions.questions) == 1


def test_the_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(100.0)
    assert clock() == clock() == 100.0
    clock.advance(2.5)
    assert clock() == 102.5
