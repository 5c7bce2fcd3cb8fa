"""The permission source for a ``[permissions.NAME]`` section: static, the HTTP permissions API
or an AuthZEN PDP, the latter two behind the answer cache (``permissions.CachingPermissionSource``).
"""

from __future__ import annotations

import time

from ..config.settings import (
    HttpPermissionsSettings,
    PermissionsSettings,
    StaticPermissionsSettings,
)
from ..oauth.clock import Clock
from ..obs.metrics import Metrics
from .authzen import AuthzenPermissionSource
from .http import CurlPool
from .permissions import (
    CachingPermissionSource,
    HttpPermissionSource,
    PermissionSource,
    StaticPermissionSource,
)
from .store import Store


def build_source(
    settings: PermissionsSettings,
    *,
    store: Store,
    pool: CurlPool | None = None,
    clock: Clock = time.time,
    metrics: Metrics | None = None,
) -> PermissionSource:
    """The source for ``settings``; the permissions API's answers are cached in ``store``."""
    if isinstance(settings, StaticPermissionsSettings):
        return StaticPermissionSource(settings)
    source: PermissionSource
    if isinstance(settings, HttpPermissionsSettings):
        source = HttpPermissionSource(settings, pool=pool, metrics=metrics)
        max_ttl, refusal_ttl = settings.cache_max_ttl, settings.cache_refusal_ttl
        key_claims: tuple[str, ...] = ()
    else:
        source = AuthzenPermissionSource(settings, pool=pool, metrics=metrics)
        max_ttl, refusal_ttl = settings.ttl, settings.refusal_ttl
        key_claims = settings.subject_properties
    if max_ttl <= 0:
        return source
    return CachingPermissionSource(
        source,
        store,
        name=settings.name,
        max_ttl=max_ttl,
        refusal_ttl=refusal_ttl,
        stale_if_error=settings.stale_if_error,
        clock=clock,
        metrics=metrics,
        key_claims=key_claims,
    )
