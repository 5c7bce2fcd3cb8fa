"""Shared state behind one small interface: cached permission answers, rate-limit counters,
revoked token ids.

``MemoryStore`` serves one process (the embedded default); ``RedisStore`` lets any number of
replicas share state through Redis or a Redis Cluster. Keys are namespaced and versioned
(``te:v1:...``) and always written with a TTL. Every failure to reach the store raises
``StoreUnavailable``; callers decide what that means (a cache falls through, a rate limit lets
the request pass, a revocation check answers 503).

Store URLs: ``memory://``; ``redis://[:password@]host:port/db`` and ``rediss://`` (TLS);
``redis+cluster://host:port`` and ``rediss+cluster://`` for a Redis Cluster (any node);
``sqlite:///path/to/store.db`` for the workers of one machine (``sqlite_store.SqliteStore``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from ..oauth.clock import Clock
from ..obs import tracing
from .resilience import Guard

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

PREFIX = "te:v1:"


class StoreUnavailable(Exception):
    """The store could not be reached or answered with an error."""


class Store(Protocol):
    """What a store implements. ``create_app`` reads revocations and writes single-use markers
    of any store but ``MemoryStore`` through ``epoch.StoreEpoch``, which needs nothing more;
    a store may add ``get_many`` and ``add_then_get`` (``epoch.Pipelined``: the epoch marker
    read in the same round trip) and ``expire`` (``epoch.Extendable``: the marker's TTL
    extended; without it the marker lives 30 days and its expiry looks like a reset)."""

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when absent or expired."""
        ...

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys``, in this order; in one round trip where the store has them."""
        ...

    def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds.

        ``durable`` entries (revocations) must outlive memory pressure: a store may evict cache
        entries and counters early, never these. (For Redis: ``maxmemory-policy noeviction``.)
        """
        ...

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds only if ``key`` is absent (or
        expired), atomically (Redis ``SET NX``); True when it was stored. Single-use markers
        (DPoP proof and client assertion ``jti``s) use it: of replicas racing with the same key,
        one wins. Kept like a ``durable`` entry: a marker evicted early would let a replay in."""
        ...

    def incr(self, key: str, ttl: float) -> int:
        """Add one to the counter ``key`` (created with ``ttl`` seconds to live); return it."""
        ...

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class MemoryStore:
    """An in-process store with expiry. Cache entries and counters are bounded to
    ``max_entries`` (oldest evicted first); durable entries only ever leave by expiring."""

    def __init__(self, *, max_entries: int = 100_000, clock: Clock = time.monotonic) -> None:
        self._data: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._durable: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.clock = clock

    def get(self, key: str) -> bytes | None:
        with self._lock:
            now = self.clock()
            entry = self._durable.get(PREFIX + key) or self._data.get(PREFIX + key)
            if entry is None or entry[0] <= now:
                return None
            value = entry[1]
            return value if isinstance(value, bytes) else str(value).encode()

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.get(key) for key in keys]

    def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        with self._lock:
            if durable:
                now = self.clock()
                if len(self._durable) % 1024 == 0:  # now and then, drop what has expired
                    self._durable = {k: v for k, v in self._durable.items() if v[0] > now}
                self._durable[PREFIX + key] = (now + ttl, value)
            else:
                self._put(PREFIX + key, value, ttl)

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        # Kept with the durable entries: a single-use marker evicted early would let its
        # proof be replayed.
        with self._lock:
            now = self.clock()
            entry = self._durable.get(PREFIX + key)
            if entry is not None and entry[0] > now:
                return False
            if len(self._durable) % 1024 == 0:  # now and then, drop what has expired
                self._durable = {k: v for k, v in self._durable.items() if v[0] > now}
            self._durable[PREFIX + key] = (now + ttl, value)
            return True

    def incr(self, key: str, ttl: float) -> int:
        with self._lock:
            now = self.clock()
            entry = self._data.get(PREFIX + key)
            if entry is None or entry[0] <= now:
                self._put(PREFIX + key, 1, ttl)
                return 1
            count = int(entry[1]) + 1
            self._data[PREFIX + key] = (entry[0], count)
            return count

    def expire(self, key: str, ttl: float) -> bool:
        """Give ``key`` ``ttl`` more seconds if it exists (see ``epoch.Extendable``)."""
        with self._lock:
            now = self.clock()
            for table in (self._durable, self._data):
                entry = table.get(PREFIX + key)
                if entry is not None and entry[0] > now:
                    table[PREFIX + key] = (now + ttl, entry[1])
                    return True
            return False

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    def _put(self, key: str, value: Any, ttl: float) -> None:
        self._data[key] = (self.clock() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)


# INCR and set the TTL on first use, atomically; one key, so it works on a cluster as well.
_INCR_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return count
"""


class RedisStore:
    """Redis or Redis Cluster through redis-py, with short timeouts, a bulkhead and a circuit
    breaker (``resilience.Guard``).

    At most ``max_concurrency`` calls are in flight at once per process; after a failure the
    store is considered down for ``retry_after`` seconds, then one probe goes through: calls
    fail at once instead of each waiting for a timeout, so a dead Redis costs one timeout per
    interval.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.25,
        retry_after: float = 1.0,
        max_concurrency: int = 32,
        clock: Clock = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.url = url
        self.guard = Guard(
            "store",
            max_concurrency=max_concurrency,
            failure_threshold=1,
            cooldown=retry_after,
            clock=clock,
            metrics=metrics,
            refused=lambda message, _retry_after: StoreUnavailable(message),
        )
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # Fail fast; the breaker below decides when to try again.
            "retry": Retry(NoBackoff(), 0),
        }
        scheme = urlsplit(url).scheme
        self.client: Any
        if scheme.endswith("+cluster"):
            parts = urlsplit(url)
            plain = urlunsplit((scheme.removesuffix("+cluster"), *parts[1:]))
            # The cluster client needs the cluster at construction; connect lazily instead.
            self._cluster_url, self._cluster_options = plain, options
            self.client = None
        else:
            self.client = redis.Redis.from_url(url, **options)
        self._incr_script: Any = None
        self._lock = threading.Lock()
        where = urlsplit(url)
        self._span_attributes = {
            "db.system.name": "redis",
            "server.address": where.hostname or "localhost",
            "server.port": where.port or 6379,
        }

    def get(self, key: str) -> bytes | None:
        return _as_bytes(self._run(lambda c: c.get(PREFIX + key), "GET"))

    def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        self._run(lambda c: c.set(PREFIX + key, value, px=max(1, int(ttl * 1000))), "SET")

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        # SET NX answers None when the key exists: one key, so it works on a cluster as well.
        stored = self._run(
            lambda c: c.set(PREFIX + key, value, px=max(1, int(ttl * 1000)), nx=True), "SET"
        )
        return bool(stored)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys``, read in one round trip (``epoch.Pipelined``).

        One ``MGET`` on one server: the keys are read at one instant, so a restart cannot fall
        between them. A cluster keeps keys of different slots on different nodes: there they
        are read one after the other, in this order."""

        def read(client: Any) -> list[Any]:
            if isinstance(client, RedisCluster):
                return [client.get(PREFIX + key) for key in keys]
            return list(client.mget([PREFIX + key for key in keys]))

        return [_as_bytes(value) for value in self._run(read, "MGET")]

    def add_then_get(
        self, key: str, value: bytes, ttl: float, then: str
    ) -> tuple[bool, bytes | None]:
        """``add(key, value, ttl)`` then ``get(then)``, in one round trip (``epoch.Pipelined``)."""

        def run(client: Any) -> list[Any]:
            if isinstance(client, RedisCluster):  # in order, as get_many
                nx = client.set(PREFIX + key, value, px=max(1, int(ttl * 1000)), nx=True)
                return [nx, client.get(PREFIX + then)]
            pipe = client.pipeline(transaction=False)
            pipe.set(PREFIX + key, value, px=max(1, int(ttl * 1000)), nx=True)
            pipe.get(PREFIX + then)
            return list(pipe.execute())

        stored, other = self._run(run, "PIPELINE")
        return bool(stored), _as_bytes(other)

    def expire(self, key: str, ttl: float) -> bool:
        """``PEXPIRE``: give ``key`` ``ttl`` more seconds if it exists (``epoch.Extendable``)."""
        ms = max(1, int(ttl * 1000))
        return bool(self._run(lambda c: c.pexpire(PREFIX + key, ms), "PEXPIRE"))

    def incr(self, key: str, ttl: float) -> int:
        def incr(client: Any) -> int:
            if self._incr_script is None:
                self._incr_script = client.register_script(_INCR_SCRIPT)
            return int(self._incr_script(keys=[PREFIX + key], args=[max(1, int(ttl * 1000))]))

        return int(self._run(incr, "EVALSHA"))

    def ping(self) -> None:
        self._run(lambda c: c.ping(), "PING")

    def close(self) -> None:
        if isinstance(self.client, RedisCluster):
            # RedisCluster.close() leaves each node's connection pool open.
            for node in self.client.get_nodes():  # type: ignore[no-untyped-call]
                if node.redis_connection is not None:
                    node.redis_connection.connection_pool.disconnect()
        if self.client is not None:
            self.client.close()

    def _connect(self) -> Any:
        if self.client is None:
            with self._lock:
                if self.client is None:
                    self.client = RedisCluster.from_url(self._cluster_url, **self._cluster_options)
        return self.client

    def _run(self, operation: Callable[[Any], Any], name: str) -> Any:
        """``operation`` (Redis command ``name``) through the guard, as a client span when the
        request is traced (the database semantic conventions: never a key or a value)."""
        if tracing.recording():
            attributes = {**self._span_attributes, "db.operation.name": name}
            with tracing.span(name, tracing.CLIENT, attributes):
                return self._guarded(operation)
        return self._guarded(operation)

    def _guarded(self, operation: Callable[[Any], Any]) -> Any:
        with self.guard.call():  # raises StoreUnavailable at once when busy or marked down
            try:
                return operation(self._connect())
            except (redis.RedisError, RedisClusterException, OSError) as e:
                raise StoreUnavailable(f"{type(e).__name__} from the store") from e


def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    # A URL with decode_responses=true makes redis-py hand back text.
    return value.encode() if isinstance(value, str) else bytes(value)


def durability_problems(url: str, *, timeout: float = 1.0) -> list[str]:
    """What about the Redis at ``url`` could lose revocations and single-use markers: no
    persistence (neither AOF nor RDB snapshots), or an eviction policy other than
    ``noeviction``. Empty for other stores; every primary of a cluster is asked.

    Raises ``StoreUnavailable`` when the store cannot be reached.
    """
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        return []
    store = RedisStore(url, timeout=timeout)
    try:
        client = store._connect()
        if isinstance(client, RedisCluster):
            nodes = [
                (f"{n.host}:{n.port} ", client.get_redis_connection(n))
                for n in client.get_primaries()  # type: ignore[no-untyped-call]
            ]
        else:
            nodes = [("", client)]
        return [problem for where, node in nodes for problem in _node_problems(where, node)]
    except (redis.RedisError, RedisClusterException, OSError) as e:
        raise StoreUnavailable(f"{type(e).__name__} from the store") from e
    finally:
        store.close()


def _node_problems(where: str, node: Any) -> list[str]:
    problems: list[str] = []
    policy = node.info("memory").get("maxmemory_policy")
    if policy is not None and policy != "noeviction":
        problems.append(
            f"store: Redis {where}has maxmemory-policy {policy}: under memory pressure it may "
            "evict revocations and used-proof markers (every key has a TTL); set noeviction"
        )
    if node.info("persistence").get("aof_enabled") in (1, "1"):
        return problems
    try:
        save = node.config_get("save").get("save")
    except redis.ResponseError:  # CONFIG renamed or refused (managed Redis): say so
        problems.append(
            f"store: Redis {where}has AOF off and its RDB settings cannot be read (CONFIG GET "
            "refused): make sure it persists, or a restart forgets every revocation"
        )
        return problems
    if not save:
        problems.append(
            f'store: Redis {where}has neither AOF (appendonly no) nor RDB snapshots (save ""): '
            "a restart forgets every revocation and used-proof marker (the service notices "
            "and refuses tokens issued before it, see README); enable appendonly yes"
        )
    else:
        problems.append(
            f"store: Redis {where}persists by RDB snapshots only (appendonly no): a restart "
            "goes back to the last snapshot, and the revocations and used-proof markers "
            "written since are lost without a sign (the snapshot holds the epoch marker too); "
            "enable appendonly yes, or run `token-exchange store mark-reset` after such a "
            "restart"
        )
    return problems
