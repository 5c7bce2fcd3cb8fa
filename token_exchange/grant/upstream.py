"""Verification of subject and actor tokens issued by the configured upstreams (RFC 8725).

The issuer is looked up by the token's exact ``iss``; the token must then satisfy that issuer's
``JwtPolicy`` (its algorithms, audiences and leeway) with a key from that issuer's key set.

A SPA exchanges the same Auth0 token once per downstream call, so verified tokens are remembered
per process, keyed by a SHA-256 of the token, until they expire (a bounded LRU), and only while
the issuer still publishes the key that signed them. The issuer's own ``conditions`` depend on the
token alone, so they are evaluated once, at verification, and remembered with it; the grant acts
on the result (refuses, or logs it in audit mode) on every exchange.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..config.settings import UpstreamSettings
from ..oauth.clock import Clock
from ..oauth.conditions import Condition
from ..oauth.jose import KeyNotFound
from ..oauth.lru import ExpiringLru
from ..oauth.profile import ACCESS_TOKEN_TYP
from ..oauth.uris import spiffe_id_in

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

from ..oauth.tokens import (
    JwtPolicy,
    KeySource,
    TokenRejected,
    UnverifiedJwt,
    parse_unverified,
    verify_signed,
)


def jwt_policy(upstream: UpstreamSettings, *, own: bool = False) -> JwtPolicy:
    """What a token from ``upstream`` must satisfy. ``own``: the upstream is our own issuer
    (chained delegation), whose tokens are RFC 9068 access tokens (``typ: at+jwt``, §2.1), each
    with the ``jti`` its revocation is recorded under (§2.2; the grant checks it every time)."""
    policy = JwtPolicy(
        issuer=upstream.issuer,
        audiences=upstream.audiences,
        algorithms=upstream.algorithms,
        leeway=upstream.leeway,
    )
    if upstream.trust_domain is not None:
        # A JWT-SVID (SPIFFE JWT-SVID §3): sub, aud and exp are required, iss is not; the
        # trust domain's bundle keys vouch for it, and its sub must be a SPIFFE ID of that
        # domain (checked by UpstreamVerifier).
        policy = replace(policy, issuer=None, required=("aud", "sub", "exp"))
    if own:
        policy = replace(policy, typ=ACCESS_TOKEN_TYP, required=(*policy.required, "jti"))
    return policy


@dataclass(frozen=True)
class VerifiedToken:
    """A token whose signature, issuer, audience and lifetime have been verified."""

    upstream: UpstreamSettings
    claims: Mapping[str, Any]
    #: The key that verified it, so a cached verification ends when the issuer drops that key.
    kid: str | None = None
    alg: str = ""
    #: The first of the issuer's ``conditions`` that the token fails, if any.
    upstream_failure: Condition | None = None

    @property
    def issuer(self) -> str:
        return self.upstream.issuer

    @property
    def subject(self) -> str:
        return str(self.claims["sub"])

    @property
    def expires_at(self) -> int:
        return int(self.claims["exp"])

    @property
    def minted_subject(self) -> str:
        """The ``sub`` of tokens we mint: prefixed so equal subjects of two issuers differ."""
        return self.upstream.subject_prefix + self.subject


def _check_spiffe_id(upstream: UpstreamSettings, claims: Mapping[str, Any]) -> None:
    """A JWT-SVID's ``sub`` is a SPIFFE ID of the trust domain whose keys signed it."""
    domain = upstream.trust_domain
    if domain is not None and not spiffe_id_in(claims["sub"], domain):
        raise TokenRejected("is not a SPIFFE ID of its trust domain (sub)", code="spiffe_id")


class UpstreamVerifier:
    """Verifies JWTs from the configured issuers; one ``KeySource`` per issuer.

    ``own_issuer`` is ours: when it is configured as an upstream, its tokens are held to
    ``jwt_policy(own=True)``.
    """

    def __init__(
        self,
        upstreams: Iterable[tuple[UpstreamSettings, KeySource]],
        *,
        clock: Clock = time.time,
        cache_size: int = 10_000,
        metrics: Metrics | None = None,
        own_issuer: str | None = None,
    ) -> None:
        self.metrics = metrics
        self._cache: ExpiringLru[bytes, VerifiedToken] = ExpiringLru(cache_size)
        self._by_issuer = {
            u.issuer: (u, jwt_policy(u, own=u.issuer == own_issuer), source)
            for u, source in upstreams
        }
        #: SPIFFE trust domains configured as upstreams (issuer spiffe://<trust domain>).
        self._by_trust_domain = {
            entry[0].trust_domain: entry
            for entry in self._by_issuer.values()
            if entry[0].trust_domain is not None
        }
        self.clock = clock

    @property
    def key_sources(self) -> Mapping[str, KeySource]:
        return {issuer: source for issuer, (_, _, source) in self._by_issuer.items()}

    def verify(self, token: str) -> VerifiedToken:
        """Verify ``token`` or raise ``TokenRejected``.

        Raises ``UpstreamUnavailable`` when the issuer's keys cannot be had at all.
        """
        now = self.clock()
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest, now)
        hit = cached is not None and self._still_published(cached)
        if self.metrics:
            self.metrics.cache("subject_token", hit)
        if hit and cached is not None:
            return cached
        verified = self._verified(token, now)
        self._cache.put(digest, verified, expires_at=verified.expires_at)
        return verified

    def verify_assertion(
        self, token: str, policy_of: Callable[[UpstreamSettings, UnverifiedJwt], JwtPolicy]
    ) -> VerifiedToken:
        """Verify an assertion (RFC 7523 §3) from a configured issuer under the policy
        ``policy_of`` gives for it (which raises ``TokenRejected`` for an issuer that may not
        assert it); never remembered, since an assertion is redeemed once."""
        return self._verified(token, self.clock(), policy_of)

    def _verified(
        self,
        token: str,
        now: float,
        policy_of: Callable[[UpstreamSettings, UnverifiedJwt], JwtPolicy] | None = None,
    ) -> VerifiedToken:
        """``token`` verified with its issuer's keys, under the issuer's policy or the one
        ``policy_of`` gives; ``TokenRejected`` for an untrusted issuer or a bad token."""
        unverified = parse_unverified(token)
        issuer = unverified.payload.get("iss")
        entry = self._by_issuer.get(issuer) if isinstance(issuer, str) else None
        if entry is None:
            entry = self._trust_domain_of(unverified.payload.get("sub"))
        if entry is None:
            rejected = TokenRejected("is not from a trusted issuer", code="issuer_untrusted")
            rejected.issuer = issuer if isinstance(issuer, str) else None
            raise rejected
        upstream, policy, source = entry
        try:
            if policy_of is not None:
                policy = policy_of(upstream, unverified)
            claims = verify_signed(unverified, policy, source, now)
            _check_spiffe_id(upstream, claims)
            if upstream.trust_domain is not None:
                # What vouches for a JWT-SVID is its trust domain's bundle, not the iss it may
                # carry (unverified by anyone): conditions, act and the permissions API see
                # the trust domain as its issuer.
                claims["iss"] = upstream.issuer
        except TokenRejected as e:
            e.issuer = upstream.issuer
            raise
        return VerifiedToken(
            upstream=upstream,
            claims=claims,
            kid=unverified.header.get("kid"),
            alg=str(unverified.header.get("alg")),
            upstream_failure=upstream.conditions.first_failure(claims),
        )

    def _trust_domain_of(self, sub: Any) -> tuple[UpstreamSettings, JwtPolicy, KeySource] | None:
        """The configured trust domain a JWT-SVID's (unverified) SPIFFE ID names, if any."""
        if not self._by_trust_domain or not isinstance(sub, str):
            return None
        if not sub.startswith("spiffe://"):
            return None
        domain = sub.removeprefix("spiffe://").partition("/")[0]
        return self._by_trust_domain.get(domain)

    def _still_published(self, verified: VerifiedToken) -> bool:
        source = self._by_issuer[verified.issuer][2]
        try:
            source.find_key(verified.kid, verified.alg)
        except KeyNotFound:
            return False
        return True
