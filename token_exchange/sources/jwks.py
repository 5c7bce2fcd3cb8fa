"""Remote JSON Web Key Sets (RFC 7517): fetched, cached, refreshed, never trusted from a token.

``RemoteKeySet`` serves verification keys for one issuer. It fetches the JWKS from a fixed
``jwks_uri`` or from the issuer's discovery document (OpenID Connect Discovery §4 / RFC 8414 §3),
keeps it in memory, refreshes it in the background once it is older than ``refresh_interval``,
and refetches at once for an unknown ``kid``, but never more than once per ``cooldown``
(RFC 8725 §3.10: a flood of forged ``kid`` values must not become a flood of fetches). A failed
refresh keeps the last good set. The same class serves our own downstream verifier.

Errors:
    KeyNotFound          the token names a key this issuer does not publish: the token is bad
    KeyUnconfirmed       the token names a key we do not hold, and the key set cannot be
                         refreshed to say whether the issuer publishes it: a 503
    UpstreamUnavailable  no key set could be loaded at all: a 503 for the caller
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jwt
import requests

from ..oauth.clock import Clock
from ..oauth.errors import KeyUnconfirmed, UpstreamUnavailable
from ..obs.logs import event
from .http import call
from .resilience import Guard

if TYPE_CHECKING:
    from ..obs.metrics import Metrics
from ..oauth.jose import KeyNotFound, KeySet, parse_jwks
from ..oauth.uris import url_problem

log = logging.getLogger(__name__)

#: Fetches of one private_key_jwt client's key set (``jwks_uri``) at once, per process: a
#: client's keys change rarely, and a fetch that hangs may hold no more threads than this.
CLIENT_JWKS_FETCHES = 4

#: Largest JWKS or discovery document we read; anything bigger is treated as a failure.
MAX_DOCUMENT_BYTES = 512 * 1024


def _require_usable(keyset: KeySet, document: Mapping[str, Any]) -> None:
    # Keys of which none is usable (bad members, or none for our algorithms) are no better
    # than no answer: a failed fetch, which keeps the last good set, and the breaker spaces
    # out the next try. An empty "keys" array is the issuer's word: it withdrew every key.
    if not keyset and document["keys"]:
        raise ValueError("the JWK Set has no usable key")


class RemoteKeySet:
    """The key set of one issuer, fetched over HTTPS and cached (see the module docstring).

    Fetches are single-flight: one at a time per issuer. A request that finds a fetch in flight
    waits for it at most ``wait`` seconds; at most ``max_concurrency`` requests may be fetching
    or waiting at once, and the next is refused at once. After a failed fetch a circuit breaker
    refuses new fetches for ``breaker_cooldown`` seconds, then lets one probe through.
    """

    def __init__(
        self,
        *,
        issuer: str,
        algorithms: Iterable[str],
        session: requests.Session,
        jwks_uri: str | None = None,
        discovery_url: str | None = None,
        refresh_interval: float = 300.0,
        spiffe: bool = False,
        cooldown: float = 30.0,
        timeout: float = 5.0,
        wait: float = 1.0,
        max_concurrency: int = 4,
        breaker_cooldown: float = 2.0,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        if not jwks_uri and not discovery_url:
            raise ValueError("either jwks_uri or discovery_url is required")
        self.issuer = issuer
        self.algorithms = tuple(algorithms)
        self.session = session
        self.jwks_uri = jwks_uri
        self.discovery_url = discovery_url
        self.refresh_interval = refresh_interval
        #: A SPIFFE bundle endpoint: JWT authorities only (``use: jwt-svid``), refreshed at its
        #: ``spiffe_refresh_hint`` when sooner, and never rolled back to a lower
        #: ``spiffe_sequence``.
        self.spiffe = spiffe
        self._configured_refresh = refresh_interval
        self._sequence: int | None = None
        self.cooldown = cooldown
        self.timeout = timeout
        self.wait = wait
        self.clock = clock
        self.metrics = metrics
        self.guard = Guard(
            f"jwks:{issuer}",
            max_concurrency=max_concurrency,
            failure_threshold=1,
            cooldown=breaker_cooldown,
            clock=clock,
            metrics=metrics,
        )
        self._discovered_jwks_uri: str | None = None
        self._keyset: KeySet | None = None
        self._fetched_at = 0.0
        self._state = threading.Lock()
        #: Set when the fetch in flight ends; None when no fetch is in flight.
        self._in_flight: threading.Event | None = None
        self._background: threading.Thread | None = None
        #: Number of fetch attempts so far (for tests and metrics).
        self.fetches = 0
        if metrics:
            metrics.jwks_loaded.labels(issuer).set(0)

    @property
    def loaded(self) -> bool:
        return self._keyset is not None

    def find_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """Return the verification key for ``kid`` and ``alg``.

        Raises ``KeyNotFound`` when the issuer publishes no such key, and ``UpstreamUnavailable``
        when no key set has ever been loaded.
        """
        keyset = self._keyset
        if keyset is None:
            keyset = self._fetch_if_allowed()
            if keyset is None:
                raise UpstreamUnavailable(
                    "issuer keys not loaded",
                    retry_after=max(1, math.ceil(self.guard.breaker.retry_after())),
                )
        elif self.clock() - self._fetched_at >= self.refresh_interval:
            self._refresh_in_background()
        key = keyset.find(kid, alg)
        if key is None and kid not in keyset.kids:
            # Maybe the issuer has just added a key: refetch, at most once per cooldown.
            keyset = self._fetch_if_allowed() or keyset
            key = keyset.find(kid, alg)
            if key is None and self.clock() - self._fetched_at >= self.cooldown:
                # The refetch failed (or the breaker or the bulkhead refused it): the key set
                # we hold is too old to say the issuer does not publish this key. Not knowing
                # is the issuer's outage, not the token's fault.
                raise KeyUnconfirmed(
                    kid, retry_after=max(1, math.ceil(self.guard.breaker.retry_after()))
                )
        if key is None:
            raise KeyNotFound(kid)
        return key

    def ensure_loaded(self) -> bool:
        """Try to load the key set now if it is not loaded (respecting the cooldown)."""
        return self._keyset is not None or self._fetch_if_allowed() is not None

    def refresh(self) -> KeySet | None:
        """Fetch now, whatever the cooldown; keep the last good set on failure."""
        return self._fetch_if_allowed(force=True)

    # -- internals ------------------------------------------------------------------------

    def _may_fetch(self) -> bool:
        # Called with the state lock held. RFC 8725 §3.10: once keys are loaded, a kid we do not
        # know refetches at most once per cooldown, so forged kids cannot become a flood of
        # fetches; a failed fetch is the breaker's to retry.
        if self._keyset is not None and self.clock() - self._fetched_at < self.cooldown:
            return False
        if not self.guard.breaker.allow():
            self.guard.count_refusal("open")
            return False
        return True

    def _fetch_if_allowed(self, *, wait: bool = True, force: bool = False) -> KeySet | None:
        """Fetch unless the cooldown or the breaker says not now; return the newest set.

        Single-flight: a caller that finds a fetch in flight waits for its result (at most
        ``self.wait`` seconds) instead of starting another.
        """
        if not self.guard.occupy():
            self.guard.count_refusal("busy")
            return self._keyset
        try:
            with self._state:
                in_flight, lead = self._in_flight, False
                if in_flight is None and (force or self._may_fetch()):
                    in_flight = self._in_flight = threading.Event()
                    lead = True
            if lead and in_flight is not None:
                try:
                    self._fetch()
                finally:
                    with self._state:
                        self._in_flight = None
                    in_flight.set()
            elif in_flight is not None and wait and self.wait > 0:
                in_flight.wait(self.wait)
            return self._keyset
        finally:
            self.guard.vacate()

    def _refresh_in_background(self) -> None:
        if (
            self._in_flight is not None
            or self.guard.breaker.retry_after() > 0
            or (self._background and self._background.is_alive())
        ):
            return
        self._background = threading.Thread(
            target=self._fetch_if_allowed,
            kwargs={"wait": False},
            name=f"jwks-refresh {self.issuer}",
            daemon=True,
        )
        self._background.start()

    def _fetch(self) -> KeySet | None:
        # Called by the one caller that leads the fetch in flight.
        started = self.clock()
        self.fetches += 1
        try:
            uri = self.jwks_uri or self._discover()
            document = self._get_json(uri)
            keyset = parse_jwks(
                document,
                self.algorithms,
                source=self.issuer,
                use="jwt-svid" if self.spiffe else "sig",
            )
            _require_usable(keyset, document)
            if self.spiffe:
                self._check_bundle(document)
        except (UpstreamUnavailable, ValueError) as e:
            self._discovered_jwks_uri = None  # discover again next time
            self.guard.breaker.failure()
            if self.metrics:
                self.metrics.jwks_fetches.labels(self.issuer, "failed").inc()
            event(
                log, "jwks_fetch_failed", level=logging.WARNING,
                issuer=self.issuer, reason=str(e), kept_keys=len(self._keyset or ()),
            )  # fmt: skip
            return self._keyset
        self.guard.breaker.success()
        self._keyset = keyset
        self._fetched_at = started
        if self.metrics:
            self.metrics.jwks_fetches.labels(self.issuer, "ok").inc()
            self.metrics.jwks_loaded.labels(self.issuer).set(1)
        event(log, "jwks_fetched", issuer=self.issuer, keys=len(keyset))
        return keyset

    def _check_bundle(self, document: Mapping[str, Any]) -> None:
        """SPIFFE Trust Domain and Bundle §4: ``spiffe_sequence`` only grows (an older bundle
        is a replay, refused like a failed fetch); ``spiffe_refresh_hint`` (seconds) shortens
        the refresh interval, never below ten seconds nor beyond the configured one."""
        sequence = document.get("spiffe_sequence")
        if sequence is not None:
            if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
                raise ValueError("spiffe_sequence is not a non-negative integer")
            if self._sequence is not None and sequence < self._sequence:
                raise ValueError(
                    f"bundle sequence {sequence} is older than the one held ({self._sequence})"
                )
            self._sequence = sequence
        hint = document.get("spiffe_refresh_hint")
        if isinstance(hint, int) and not isinstance(hint, bool) and hint > 0:
            self.refresh_interval = max(10.0, min(float(hint), self._configured_refresh))

    def _discover(self) -> str:
        if self._discovered_jwks_uri:
            return self._discovered_jwks_uri
        if self.discovery_url is None:
            raise ValueError("no jwks_uri and no discovery URL")
        document = self._get_json(self.discovery_url)
        if not isinstance(document, dict):
            raise ValueError("discovery document is not a JSON object")
        # OpenID Connect Discovery §4.3: the document's issuer MUST equal the one we trust.
        if document.get("issuer") != self.issuer:
            raise ValueError("discovery document names a different issuer")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or url_problem(uri) is not None:
            raise ValueError("discovery document has no valid jwks_uri")
        self._discovered_jwks_uri = uri
        return uri

    def _get_json(self, url: str) -> Any:
        answer = call(
            self.session,
            "GET",
            url,
            timeout=self.timeout,
            max_bytes=MAX_DOCUMENT_BYTES,
            headers={"Accept": "application/json"},
        )
        if answer.status != 200:
            raise UpstreamUnavailable(f"HTTP {answer.status} from {url}")
        try:
            return json.loads(answer.body)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"document at {url} is not JSON") from e
