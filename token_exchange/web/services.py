"""What the views need, built once per process by ``app.create_app`` (``app.extensions``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from ..config.settings import Settings
from ..grant.clients import ClientRegistry
from ..grant.introspection import TokenRegistry
from ..grant.pipeline import TokenEndpoint
from ..grant.ratelimit import RateLimiter
from ..grant.rfc8693 import TokenExchange
from ..grant.upstream import UpstreamVerifier
from ..obs.metrics import Metrics
from ..sources.keys import KeyStore, KeyStoreError
from ..sources.resilience import Guard
from ..sources.store import Store, StoreUnavailable


@dataclass
class Services:
    """Everything the views need, built once per process (``app.extensions``)."""

    settings: Settings
    clients: ClientRegistry
    exchange: TokenExchange
    #: ``POST /token``: every grant, on one pipeline.
    endpoint: TokenEndpoint
    keys: KeyStore
    verifier: UpstreamVerifier
    store: Store
    limiter: RateLimiter
    tokens: TokenRegistry
    metrics: Metrics
    scrape_registry: CollectorRegistry
    metadata: Mapping[str, Any]
    cors_origins: frozenset[str]
    #: The guards of every dependency (store, key sets, permission sources): requests waiting
    #: in them are not in flight (overload.py), and serve's threads are counted from them.
    guards: tuple[Guard, ...] = ()
    #: Paths that answer browsers of ``cors_origins`` with CORS headers.
    cors_paths: frozenset[str] = frozenset({"/token"})

    def readiness_problems(self) -> list[str]:
        problems: list[str] = []
        try:
            self.keys.signing_key()
        except KeyStoreError as e:
            problems.append(f"signing keys: {e}")
        for issuer, source in self.verifier.key_sources.items():
            if not source.ensure_loaded():
                problems.append(f"upstream {issuer}: signing keys not loaded")
        try:
            self.store.ping()
        except StoreUnavailable:
            problems.append("store: unreachable")
        return problems
