"""Rate limits in the shared store: per client, per subject, and failed exchanges per address.

Fixed windows (``600/minute`` allows 600 events in each calendar minute), counted in the store so
that every replica enforces the same limit. A limit that cannot be checked because the store is
down lets the request through and logs it: rate limiting protects capacity, it is not an
authorization decision.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Iterator

from ..config.settings import RateLimitSettings, RateRule
from ..oauth.clock import Clock
from ..oauth.errors import OAuthError, RateLimited
from ..obs.logs import Throttle
from ..sources.store import Store, StoreUnavailable

log = logging.getLogger(__name__)


class RateLimiter:
    def __init__(self, store: Store, settings: RateLimitSettings, *, clock: Clock = time.time):
        self.store = store
        self.settings = settings
        self.clock = clock
        #: While the store is down every exchange would warn up to three times: one line per
        #: interval, with the count of those left out.
        self.warnings = Throttle()

    def client(self, client_id: str) -> None:
        """Count one exchange for ``client_id``; raise ``RateLimited`` beyond its limit."""
        self._hit("client", client_id, self.settings.per_client)

    def subject(self, issuer: str, subject: str) -> None:
        """Count one exchange for a subject of an issuer; raise ``RateLimited`` beyond it."""
        self._hit("subject", f"{issuer} {subject}", self.settings.per_subject)

    def check_address(self, address: str) -> None:
        """Raise ``RateLimited`` when ``address`` has failed too often in this window."""
        rule = self.settings.failures_per_address
        if rule is None:
            return
        key, retry_after = self._key("fail", network_of(address), rule)
        try:
            count = int(self.store.get(key) or 0)
        except StoreUnavailable as e:
            self.warnings.event(log, "rate_limit_unchecked", kind="fail", reason=str(e))
            return
        if count >= rule.limit:
            raise RateLimited(
                "too many failed requests from this address",
                retry_after=retry_after,
                detail="failures_per_address",
            )

    @contextlib.contextmanager
    def failures_counted(self, address: str) -> Iterator[None]:
        """Refuse an address over its failure limit; count the client errors raised inside."""
        self.check_address(address)
        try:
            yield
        except OAuthError as e:
            # An error's own counts_as_failure wins: a 503 may count, a 400 may not.
            counts = getattr(e, "counts_as_failure", None)
            if counts or (counts is None and e.status_code in (400, 401)):
                self.failure(address)
            raise

    def failure(self, address: str) -> None:
        """Count one failed exchange from ``address``."""
        rule = self.settings.failures_per_address
        if rule is None:
            return
        key, retry_after = self._key("fail", network_of(address), rule)
        try:
            self.store.incr(key, retry_after)
        except StoreUnavailable as e:
            self.warnings.event(log, "rate_limit_unchecked", kind="fail", reason=str(e))

    def _hit(self, kind: str, ident: str, rule: RateRule | None) -> None:
        if rule is None:
            return
        key, retry_after = self._key(kind, ident, rule)
        try:
            count = self.store.incr(key, retry_after)
        except StoreUnavailable as e:
            self.warnings.event(log, "rate_limit_unchecked", kind=kind, reason=str(e))
            return
        if count > rule.limit:
            # detail: the [rate_limits] rule that refused, for the audit line.
            raise RateLimited(
                f"too many requests for this {kind}", retry_after=retry_after, detail=f"per_{kind}"
            )

    def _key(self, kind: str, ident: str, rule: RateRule) -> tuple[str, int]:
        now = self.clock()
        window_start = math.floor(now / rule.window) * rule.window
        digest = hashlib.sha256(ident.encode()).hexdigest()[:32]
        retry_after = max(1, math.ceil(window_start + rule.window - now))
        return f"rl:{kind}:{rule.window}:{window_start}:{digest}", retry_after


def network_of(address: str) -> str:
    """The unit a failure budget belongs to: an IPv4 address, or an IPv6 /64.

    One IPv6 host usually owns a whole /64 and can pick a new address for every attempt.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
