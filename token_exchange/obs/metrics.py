"""Prometheus metrics (text format at ``GET /metrics``, or on a separate port).

Under ``token-exchange serve`` every worker is a process of its own: ``serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` before any worker starts, each worker writes its samples there, and a
scrape adds them up (prometheus-client's multi-process mode). In one process (``dev``, tests)
the metrics live in the app's own registry.

Labels are bounded by the configuration (client ids, audiences, issuers, permission sources) or
by our own code (outcomes, OAuth error codes): nothing a caller sends becomes a label.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from ..oauth.clock import Clock
from .processes import process_alive

ENV_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The service's metrics, in ``registry`` (a fresh one per app unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r = self.registry
        self.exchanges = Counter(
            "token_exchange_exchanges",
            "Token exchange decisions, by outcome ('issued' or the OAuth error code)",
            ["outcome", "client_id", "audience"],
            registry=r,
        )
        self.request_refusals = Counter(
            "token_exchange_request_refusals",
            "Requests refused, by endpoint, OAuth error code and reason (the audit line's code)",
            ["endpoint", "error", "reason"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "token_exchange_request_seconds",
            "Time to answer, by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.permission_calls = Counter(
            "token_exchange_permission_calls",
            "Calls to a permissions API, by outcome (allow, deny, error)",
            ["source", "outcome"],
            registry=r,
        )
        self.permission_seconds = Histogram(
            "token_exchange_permission_call_seconds",
            "Latency of calls to a permissions API",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_lookups = Counter(
            "token_exchange_cache_lookups",
            "Cache lookups by cache (subject_token, permissions_local, permissions_shared, "
            "permissions_prefix) "
            "and result (hit, miss)",
            ["cache", "result"],
            registry=r,
        )
        self.jwks_fetches = Counter(
            "token_exchange_jwks_fetches",
            "Fetches of an upstream issuer's JWKS, by outcome (ok, failed)",
            ["issuer", "outcome"],
            registry=r,
        )
        self.jwks_loaded = Gauge(
            "token_exchange_jwks_loaded",
            "Whether an issuer's key set has been loaded (1) or not yet (0): the worst worker's",
            ["issuer"],
            multiprocess_mode="livemin",
            registry=r,
        )
        # Resilience (see resilience.py): per dependency, "permissions:<name>", "jwks:<issuer>"
        # or "store". Gauges are summed (in flight) or the worst worker's (breaker) on a scrape.
        self.dependency_in_flight = Gauge(
            "token_exchange_dependency_in_flight",
            "Calls in flight to a dependency",
            ["dependency"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.dependency_breaker_state = Gauge(
            "token_exchange_dependency_breaker_state",
            "Circuit breaker of a dependency: 0 closed, 1 half-open (probing), 2 open "
            "(the worst of the workers)",
            ["dependency"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.dependency_refusals = Counter(
            "token_exchange_dependency_refusals",
            "Calls to a dependency refused without trying, by reason (busy: its concurrency "
            "share is in use; open: its circuit breaker is open)",
            ["dependency", "reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "token_exchange_in_flight_requests",
            "Requests being served",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.bodies_arriving = Gauge(
            "token_exchange_request_bodies_arriving",
            "Requests whose body is being read (not yet in flight)",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.bodies_late = Counter(
            "token_exchange_request_bodies_late",
            "Requests answered 408 because their body did not arrive in time",
            registry=r,
        )
        self.requests_shed = Counter(
            "token_exchange_requests_shed",
            "Requests answered 503 at once because a worker had too many in flight",
            registry=r,
        )
        self.refusals = Counter(
            "token_exchange_token_refusals",
            "Subject and actor tokens refused, by reason (expired, audience, signature, "
            "condition, ...; our own codes) and mode (enforce, or audit: would have been refused)",
            ["reason", "mode"],
            registry=r,
        )

        # The store's epoch marker (epoch.py): resets seen, and when the last one stops
        # making tokens issued before it doubtful.
        self.store_resets = Counter(
            "token_exchange_store_resets",
            "Times the store was found to have lost its data (counted once per reset, by the "
            "process that wrote the new epoch marker)",
            registry=r,
        )
        self.store_reset_window_closes = Gauge(
            "token_exchange_store_reset_window_closes_timestamp_seconds",
            "Unix time until which tokens issued before the last store reset are refused",
            multiprocess_mode="max",
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: ``labels()`` validates and takes a lock
        on every call, and the hot path of /token calls it several times per exchange. Label
        values come from the configuration or from our own code, so the memo is bounded."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def cache(self, cache: str, hit: bool) -> None:
        self.child(self.cache_lookups, cache, "hit" if hit else "miss").inc()

    def timed_permission_call(self, source: str) -> Callable[[str], None]:
        """Start timing a permissions API call; call the result with its outcome."""
        started = time.perf_counter()

        def done(outcome: str) -> None:
            self.permission_seconds.labels(source).observe(time.perf_counter() - started)
            self.permission_calls.labels(source, outcome).inc()

        return done


class SigningKeys(Protocol):
    """What the collector reads of our key store (``keys.KeyStore`` is one)."""

    def signing_key(self) -> Any:
        """The key that signs now (``kid``, ``alg``, ``activate_at``); raises when none does."""
        ...

    def published(self) -> Sequence[Any]: ...


class SigningKeyCollector(Collector):
    """The key in use, read from the key store at scrape time (so every worker agrees)."""

    def __init__(self, keys: SigningKeys, clock: Clock = time.time) -> None:
        self.keys = keys
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "token_exchange_signing_key_info", "The key that signs now (1)", labels=["kid", "alg"]
        )
        age = GaugeMetricFamily(
            "token_exchange_signing_key_age_seconds",
            "Seconds since the signing key started signing",
        )
        published = GaugeMetricFamily("token_exchange_published_keys", "Keys in our JWKS now")
        upcoming = GaugeMetricFamily(
            "token_exchange_signing_key_next_activation_timestamp_seconds",
            "Unix time at which the next published key starts signing (the next rotation); "
            "absent when none is waiting",
        )
        now = self.clock()
        try:
            key = self.keys.signing_key()
        except Exception:  # noqa: BLE001, S110 - no key signs now (KeyStoreError): no info sample
            pass
        else:
            info.add_metric([key.kid, key.alg], 1)
            age.add_metric([], max(0.0, now - key.activate_at))
        keys = self.keys.published()
        published.add_metric([], len(keys))
        waiting = [k.activate_at for k in keys if getattr(k, "activate_at", 0) > now]
        if waiting:
            upcoming.add_metric([], min(waiting))
        yield from (info, age, published, upcoming)


def scrape_registry(metrics: Metrics, collectors: Iterable[Collector] = ()) -> CollectorRegistry:
    """What a scrape reads: every worker's files in multi-process mode, else ``metrics``, and
    ``collectors`` (read at scrape time, such as ``keys.SigningKeyCollector``).

    Build it once: it registers the collectors.
    """
    directory = os.environ.get(ENV_MULTIPROC)
    if directory:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry = metrics.registry
    for collector in collectors:
        registry.register(collector)
    return registry


def forget_dead_workers() -> None:
    """Drop the live gauges (in-flight counts, breaker states) of worker processes that have
    died, so that a respawned worker's predecessor no longer counts (multi-process mode)."""
    directory = os.environ.get(ENV_MULTIPROC)
    if not directory:
        return
    for path in Path(directory).glob("gauge_live*_*.db"):
        suffix = path.stem.rsplit("_", 1)[-1]
        if not suffix.isdigit():
            continue
        pid = int(suffix)
        if not process_alive(pid):
            mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
