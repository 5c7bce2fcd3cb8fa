"""The memory store: bounded, never evicting durable entries; and unsupported store URLs."""

from __future__ import annotations

import pytest

from token_exchange.sources.store import MemoryStore
from token_exchange.sources.stores import open_store


def test_memory_store_is_bounded() -> None:
    store = MemoryStore(max_entries=3)
    for i in range(5):
        store.set(str(i), b"v", ttl=60)
    assert [store.get(str(i)) for i in range(5)] == [None, None, b"v", b"v", b"v"]


def test_unsupported_url() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        open_store("mongodb://x")


def test_memory_store_never_evicts_durable_entries() -> None:
    store = MemoryStore(max_entries=10)
    store.set("revoked:jti-1", b"1", ttl=60, durable=True)
    for i in range(1000):  # a flood of cache entries and counters
        store.set(f"perm:{i}", b"v", ttl=60)
        store.incr(f"rl:{i}", ttl=60)
    assert store.get("revoked:jti-1") == b"1"
