"""What a scrape says of our signing keys: the key in use, its age, and the next rotation
(issue 27: the dashboard's key panels and the rotation alert read these)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry

from token_exchange.obs.metrics import SigningKeyCollector

from ..fakes import signing_key

NOW = 1_800_000_000.0


class Keys:
    def __init__(self, *keys: Any) -> None:
        self.keys = keys

    def signing_key(self) -> Any:
        return max((k for k in self.keys if k.activate_at <= NOW), key=lambda k: k.activate_at)

    def published(self) -> list[Any]:
        return list(self.keys)


def scrape(keys: Keys) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(SigningKeyCollector(keys, clock=lambda: NOW))
    return registry


def test_the_next_rotation_is_the_soonest_published_key_not_yet_signing() -> None:
    current = signing_key(now=NOW - 86400)
    later = replace(signing_key(now=NOW), activate_at=NOW + 7200)
    soon = replace(signing_key(now=NOW), activate_at=NOW + 3600)
    registry = scrape(Keys(current, later, soon))
    name = "token_exchange_signing_key_next_activation_timestamp_seconds"
    assert registry.get_sample_value(name) == NOW + 3600
    assert registry.get_sample_value("token_exchange_signing_key_age_seconds") == 86400
    assert registry.get_sample_value("token_exchange_published_keys") == 3


def test_no_next_rotation_when_no_key_waits() -> None:
    registry = scrape(Keys(signing_key(now=NOW - 60)))
    name = "token_exchange_signing_key_next_activation_timestamp_seconds"
    assert registry.get_sample_value(name) is None
