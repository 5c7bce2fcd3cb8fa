"""The store interface, on memory, a real Redis and a real three-master Redis Cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from token_exchange.sources.store import MemoryStore, RedisStore, Store, StoreUnavailable
from token_exchange.sources.stores import open_store

from .redis_servers import RedisClusterProcesses, RedisProcess


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        store: Store = MemoryStore()
    elif request.param == "redis":
        store = open_store(request.getfixturevalue("redis_url"))
    else:
        cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
        store = open_store(cluster.url)
    yield store
    store.close()


@pytest.mark.slow
def test_set_get_and_expiry(store: Store) -> None:
    assert store.get("a") is None
    store.set("a", b"1", ttl=0.3)
    assert store.get("a") == b"1"
    time.sleep(0.4)
    assert store.get("a") is None


@pytest.mark.slow
def test_incr_counts_within_its_ttl(store: Store) -> None:
    assert [store.incr("c", ttl=0.3) for _ in range(3)] == [1, 2, 3]
    time.sleep(0.4)
    assert store.incr("c", ttl=0.3) == 1


@pytest.mark.slow
def test_many_keys_spread_over_the_cluster(store: Store) -> None:
    for i in range(50):
        store.set(f"k{i}", str(i).encode(), ttl=5)
    assert [store.get(f"k{i}") for i in range(50)] == [str(i).encode() for i in range(50)]


def test_keys_are_namespaced_and_always_expire(redis_url: str, redis_process: RedisProcess) -> None:
    redis_process.flush(in_service=False)  # no epoch marker (whose TTL is long, see epoch.py)
    store = open_store(redis_url)
    store.set("x", b"1", ttl=10)
    store.incr("n", ttl=10)
    store.close()
    raw = redis.Redis(port=redis_process.port)
    try:
        assert sorted(raw.keys("*")) == [b"te:v1:n", b"te:v1:x"]
        assert all(0 < raw.pttl(k) <= 10_000 for k in raw.keys("*"))
    finally:
        raw.close()


def test_redis_down_fails_fast_and_recovers(redis_url: str, redis_process: RedisProcess) -> None:
    store = RedisStore(redis_url, timeout=0.2, retry_after=0.5)
    store.set("k", b"v", ttl=60)
    redis_process.kill()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.get("k")
    with pytest.raises(StoreUnavailable):
        store.ping()  # within retry_after: refused without another timeout
    assert time.monotonic() - started < 0.5
    redis_process.start()
    time.sleep(0.6)
    store.ping()
    store.set("k", b"again", ttl=60)
    assert store.get("k") == b"again"
    store.close()


def test_unreachable_cluster_is_unavailable_not_a_crash() -> None:
    from .helpers import free_port

    store = open_store(f"redis+cluster://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailable):
        store.get("k")
    store.close()


def test_redis_store_tolerates_decoded_responses(redis_url: str) -> None:
    store = open_store(redis_url + "?decode_responses=true")
    store.set("k", b"value", ttl=10)
    assert store.get("k") == b"value"
    store.close()
