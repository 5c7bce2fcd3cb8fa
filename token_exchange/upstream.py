"""Verification of subject and actor tokens issued by the configured upstreams (RFC 8725).

Every check is explicit: the issuer is looked up by exact ``iss``; the algorithm must be one the
configuration allows for that issuer (never taken from the token alone, never ``none``, never
HMAC); the key comes only from that issuer's published key set, never from ``jku``, ``x5u`` or
``jwk`` headers; ``aud`` must contain a configured audience; ``exp`` is required; ``exp``,
``nbf`` and ``iat`` are checked against our clock with a small leeway.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from .jwks import Clock, KeyNotFound
from .settings import UpstreamSettings

#: Upper bound on a subject token's size; a real Auth0 token is 1-3 KiB.
MAX_TOKEN_LENGTH = 16 * 1024


class KeySource(Protocol):
    """Where an issuer's verification keys come from (``jwks.RemoteKeySet`` or a static set)."""

    @property
    def loaded(self) -> bool: ...

    def ensure_loaded(self) -> bool:
        """Load the keys now if they are not loaded yet; True when they are."""
        ...

    def find_key(self, kid: str | None, alg: str) -> jwt.PyJWK: ...


class TokenRejected(Exception):
    """The token is not acceptable. ``reason`` is our own wording, safe to show the caller."""

    def __init__(self, reason: str, *, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        #: Internal detail for the log (exception class names), never for the caller.
        self.detail = detail


@dataclass(frozen=True)
class VerifiedToken:
    """A token whose signature, issuer, audience and lifetime have been verified."""

    upstream: UpstreamSettings
    claims: Mapping[str, Any]

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


class UpstreamVerifier:
    """Verifies JWTs from the configured issuers; one ``KeySource`` per issuer."""

    def __init__(
        self,
        upstreams: Iterable[tuple[UpstreamSettings, KeySource]],
        *,
        clock: Clock = time.time,
    ) -> None:
        self._by_issuer = {u.issuer: (u, source) for u, source in upstreams}
        self.clock = clock

    @property
    def key_sources(self) -> Mapping[str, KeySource]:
        return {issuer: source for issuer, (_, source) in self._by_issuer.items()}

    def verify(self, token: str) -> VerifiedToken:
        """Verify ``token`` or raise ``TokenRejected``.

        Raises ``UpstreamUnavailable`` when the issuer's keys cannot be had at all.
        """
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenRejected("is too large")
        if token.count(".") != 2:
            # Five parts would be a JWE; we accept signed JWTs only.
            raise TokenRejected("is not a signed JWT")
        try:
            # One unverified parse to learn who claims to have issued it, and with which key.
            unverified = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise TokenRejected("is not a well-formed JWT", detail=type(e).__name__) from e
        header, claims = unverified["header"], unverified["payload"]
        alg, kid = header.get("alg"), header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("has an invalid kid header")
        issuer = claims.get("iss")
        entry = self._by_issuer.get(issuer) if isinstance(issuer, str) else None
        if entry is None:
            raise TokenRejected("is not from a trusted issuer")
        upstream, source = entry
        if alg not in upstream.algorithms:
            # RFC 8725 §3.1: the allow-list comes from configuration, never from the token.
            raise TokenRejected("uses an algorithm this issuer is not trusted for")
        try:
            key = source.find_key(kid, alg)
        except KeyNotFound:
            raise TokenRejected("is signed with a key the issuer does not publish") from None

        try:
            # Every option spelled out. Time claims are checked below against our own clock,
            # which tests can replace; PyJWT would read the system clock.
            verified = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                issuer=upstream.issuer,
                audience=list(upstream.audiences),
                options={
                    "verify_signature": True,
                    "verify_iss": True,
                    "verify_aud": True,
                    "strict_aud": False,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["iss", "aud", "sub", "exp"],
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.MissingRequiredClaimError as e:
            raise TokenRejected(f"lacks the required {e.claim} claim") from e
        except jwt.InvalidAudienceError as e:
            raise TokenRejected("is not meant for this service (aud)") from e
        except jwt.InvalidIssuerError as e:
            raise TokenRejected("is not from a trusted issuer") from e
        except jwt.InvalidSignatureError as e:
            raise TokenRejected("has an invalid signature") from e
        except jwt.PyJWTError as e:
            raise TokenRejected("is invalid", detail=type(e).__name__) from e
        self._check_times(verified, upstream.leeway)
        sub = verified["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise TokenRejected("has an invalid sub claim")
        return VerifiedToken(upstream=upstream, claims=verified)

    def _check_times(self, claims: Mapping[str, Any], leeway: int) -> None:
        now = self.clock()
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise TokenRejected(f"has a non-numeric {name} claim")
        if claims["exp"] <= now - leeway:
            raise TokenRejected("has expired")
        if "nbf" in claims and claims["nbf"] > now + leeway:
            raise TokenRejected("is not valid yet (nbf)")
        if "iat" in claims and claims["iat"] > now + leeway:
            raise TokenRejected("was issued in the future (iat)")
