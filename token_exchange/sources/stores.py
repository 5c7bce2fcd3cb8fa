"""The store a ``[store] url`` names (``store.py`` has the URL forms)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .sqlite_store import open_sqlite_store
from .store import MemoryStore, RedisStore, Store

if TYPE_CHECKING:
    from ..obs.metrics import Metrics


def open_store(
    url: str,
    *,
    timeout: float = 0.25,
    max_concurrency: int = 32,
    breaker_cooldown: float = 1.0,
    metrics: Metrics | None = None,
) -> Store:
    """The store for ``url`` (see the module docstring for the URL forms)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        return open_sqlite_store(
            url,
            timeout=timeout,
            retry_after=breaker_cooldown,
            max_concurrency=max_concurrency,
            metrics=metrics,
        )
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        return RedisStore(
            url,
            timeout=timeout,
            retry_after=breaker_cooldown,
            max_concurrency=max_concurrency,
            metrics=metrics,
        )
    raise ValueError(f"unsupported store URL scheme {scheme!r}")
