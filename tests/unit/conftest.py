"""The unit layer: the pure core (policy rules, the grant, client authentication) in-process.

Every test under ``tests/unit`` is marked ``unit`` (``pytest -m unit`` runs the layer alone)
and runs with sockets disabled by pytest-socket: a test here that opened one, even to
127.0.0.1, would fail with ``SocketBlockedError``. The grant is built from static parts (keys
held in-process, memory stores, static and recording permission sources) and a clock that
stands still until a test moves it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from token_exchange.config.settings import Settings, parse_settings
from token_exchange.grant.rfc8693 import TokenExchange
from token_exchange.oauth.clock import ManualClock

from ..fakes import (
    ENV,
    T0,
    TENANT,
    UNREACHABLE_PERMISSIONS,
    RecordingPermissions,
    TokenMaker,
    base_config,
    build_exchange,
)

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.unit)
            item.add_marker(pytest.mark.disable_socket)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """The test configuration of the HTTP suite, parsed; ``edit(config)`` may change it."""

    def make(edit: Callable[[dict[str, Any]], None] | None = None) -> Settings:
        config = base_config(TENANT, UNREACHABLE_PERMISSIONS)
        if edit is not None:
            edit(config)
        return parse_settings(config, env=ENV, base_dir=tmp_path)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def upstream(rsa_keys: list[rsa.RSAPrivateKey], clock: ManualClock) -> TokenMaker:
    """The Auth0 tenant's keys and tokens, dated by ``clock``."""
    return TokenMaker(TENANT, rsa_keys, clock=clock)


@pytest.fixture
def permissions() -> RecordingPermissions:
    """Stands in for the HTTP permissions API of the countries API ("webapp")."""
    return RecordingPermissions()


@pytest.fixture
def exchange(
    settings: Settings,
    upstream: TokenMaker,
    permissions: RecordingPermissions,
    clock: ManualClock,
) -> TokenExchange:
    return build_exchange(
        settings,
        clock=clock,
        key_sources={TENANT: upstream.key_source()},
        permission_sources={"webapp": permissions},
    )
