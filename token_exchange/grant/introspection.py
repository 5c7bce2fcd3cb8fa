"""Revocation (RFC 7009) and introspection (RFC 7662) of the tokens we mint.

Both are for confidential clients. A client may revoke or introspect a token that was issued to
it, or a token for an API it ``introspects`` (that API itself, registered as a client).
Revoking records the token's ``jti`` in the shared store until the token expires; introspection
answers ``active: false`` for revoked, expired, foreign or unreadable tokens, for tokens derived
from a revoked one (chained delegation, ``derived_from``), and for tokens the client may not
see. When the store cannot be read, neither can answer: 503.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import jwt

from ..config.settings import SIGNING_ALGORITHMS, ClientSettings, Settings
from ..oauth import reasons
from ..oauth.clock import Clock
from ..oauth.errors import InvalidClient, TemporarilyUnavailable
from ..oauth.jose import KeyNotFound, LocalKeySource
from ..oauth.profile import (
    ACCESS_TOKEN_CLAIMS,
    ACCESS_TOKEN_TYP,
    DERIVED_FROM,
    MAX_DERIVED_FROM,
    STORE_EPOCH,
    TOKEN_TYPE_BEARER,
)
from ..oauth.tokens import JwtPolicy, TokenRejected, parse_unverified, verify_signed
from ..sources.epoch import StoreEpoch
from ..sources.keys import KeyStore
from ..sources.store import Store, StoreUnavailable


class OwnKeySource(LocalKeySource):
    """Our own published keys as a ``KeySource``: verification without HTTP."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys
        self._parsed: dict[str, jwt.PyJWK] = {}

    def find_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        for key in self.keys.published():
            if key.kid == kid and key.alg == alg:
                if kid not in self._parsed:
                    self._parsed[kid] = jwt.PyJWK(dict(key.jwk), algorithm=alg)
                return self._parsed[kid]
        raise KeyNotFound(kid)


class TokenRegistry:
    """What we know about tokens we minted: are they ours, valid, revoked."""

    def __init__(
        self, settings: Settings, keys: KeyStore, store: Store, *, clock: Clock = time.time
    ) -> None:
        #: A ``StoreEpoch`` makes tokens issued before the store lost its data ``doubtful``.
        self.store = store
        self.clock = clock
        self.keys = OwnKeySource(keys)
        self.policy = JwtPolicy(
            issuer=settings.issuer,
            audiences=tuple(api.audience for api in settings.apis),
            algorithms=SIGNING_ALGORITHMS,
            required=ACCESS_TOKEN_CLAIMS,
            leeway=0,  # an expired token is inactive, however recently it expired
            typ=ACCESS_TOKEN_TYP,
        )

    def revoke(self, token: str, client: ClientSettings) -> None:
        """RFC 7009 §2.1. Unknown, invalid and expired tokens need no revocation (§2.2)."""
        _require_confidential(client, "revoke")
        claims = self._ours(token)
        if claims is None or not _may_see(client, claims):
            # A token the client may not see gets the same answer as an unknown one, so that the
            # endpoint tells nobody which tokens exist.
            return
        ttl = int(claims["exp"]) - self.clock()
        if ttl <= 0:
            return
        try:
            self.store.set(f"revoked:{claims['jti']}", b"1", ttl + 1, durable=True)
        except StoreUnavailable as e:
            raise TemporarilyUnavailable(
                "revocation cannot be recorded now", reason=reasons.REVOCATION_UNAVAILABLE
            ) from e

    def introspect(self, token: str, client: ClientSettings) -> dict[str, Any]:
        """RFC 7662 §2.2: the token's claims with ``active: true``, or just ``active: false``."""
        _require_confidential(client, "introspect")
        claims = self._ours(token)
        if claims is None or not _may_see(client, claims):
            return {"active": False}
        jtis = lineage(claims)
        if jtis is None or self.any_revoked(jtis) or self.doubtful(claims):
            # Revoking a token deactivates those derived from it by chained delegation too.
            return {"active": False}
        # RFC 9449 §6.2: a DPoP-bound token's cnf is among its claims, its token_type DPoP.
        bound = isinstance(claims.get("cnf"), dict) and "jkt" in claims["cnf"]
        return {**claims, "active": True, "token_type": "DPoP" if bound else TOKEN_TYPE_BEARER}

    def is_revoked(self, jti: str) -> bool:
        try:
            return self.store.get(f"revoked:{jti}") is not None
        except StoreUnavailable as e:
            raise TemporarilyUnavailable(
                "revocation state cannot be read now", reason=reasons.REVOCATION_UNAVAILABLE
            ) from e

    def any_revoked(self, jtis: Iterable[str]) -> bool:
        """Whether any of ``jtis`` is revoked (a token's ``lineage``)."""
        return any(self.is_revoked(jti) for jti in jtis)

    def minting_epoch(self) -> dict[str, str]:
        """The claim that dates a token minted now (``profile.STORE_EPOCH``): empty for a
        store without an epoch (in-process) or one that has not answered yet."""
        if isinstance(self.store, StoreEpoch) and (epoch := self.store.current()) is not None:
            return {STORE_EPOCH: epoch}
        return {}

    def doubtful(self, claims: Mapping[str, Any]) -> bool:
        """True when the token was issued before the store lost its data (``epoch.py``), as
        seen by the last ``is_revoked``: it may have been revoked, and nothing says so now."""
        return isinstance(self.store, StoreEpoch) and self.store.token_predates(claims)

    def verify(self, token: str, policy: JwtPolicy | None = None) -> dict[str, Any]:
        """The claims of ``token``, one of ours under ``policy`` (by default: an access
        token, ``typ: at+jwt``, for one of our APIs) verified with our published keys, without
        HTTP; or ``TokenRejected``. Revocation is the caller's to check (``any_revoked``)."""
        return verify_signed(
            parse_unverified(token), policy or self.policy, self.keys, self.clock()
        )

    def _ours(self, token: str) -> dict[str, Any] | None:
        try:
            return self.verify(token)
        except TokenRejected:
            return None


def lineage(claims: Mapping[str, Any]) -> tuple[str, ...] | None:
    """A token of ours's ``jti`` and those of the tokens of ours it was derived from
    (``DERIVED_FROM``): revoking any of them deactivates it. None when they are malformed."""
    jti, derived = claims.get("jti"), claims.get(DERIVED_FROM, [])
    if not (
        isinstance(jti, str)
        and jti
        and isinstance(derived, list)
        and len(derived) <= MAX_DERIVED_FROM
        and all(isinstance(d, str) and d for d in derived)
    ):
        return None
    return (jti, *derived)


def _require_confidential(client: ClientSettings, action: str) -> None:
    if client.type != "confidential":
        raise InvalidClient(
            f"only confidential clients may {action} tokens",
            reason=reasons.CLIENT_NOT_CONFIDENTIAL,
        )


def _may_see(client: ClientSettings, claims: dict[str, Any]) -> bool:
    # Not `audiences`: being allowed to obtain tokens for an API is not being allowed to read
    # everybody else's tokens for it.
    return claims.get("client_id") == client.client_id or claims.get("aud") in client.introspects
