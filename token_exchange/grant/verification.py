"""Verifying the tokens a grant is given: a subject or actor token (RFC 8693 §2.1) from a
trusted issuer, and a token of ours only while it is not revoked (RFC 7009 §2).

An invalid token is invalid_request (RFC 8693 §2.2.2); an issuer whose keys cannot be fetched
is temporarily_unavailable (we cannot decide, and fail closed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config.settings import UpstreamSettings
from ..oauth import reasons
from ..oauth.errors import KeyUnconfirmed, TemporarilyUnavailable, UpstreamUnavailable
from ..oauth.profile import DERIVED_FROM
from ..oauth.tokens import JwtPolicy, TokenRejected, UnverifiedJwt
from ..obs import tracing
from .introspection import TokenRegistry, lineage
from .record import RequestRecord, refused
from .upstream import UpstreamVerifier, VerifiedToken

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

#: The name operators route these lines by, which they had before the grant was split up.
log = logging.getLogger("token_exchange.grant.exchange")

#: Longest unverified ``iss`` written to the audit log (it is whatever the caller sent).
MAX_LOGGED_ISSUER = 200


#: The verification spans' names, made once.
_SPAN_NAMES = {p: f"verify {p}" for p in ("subject_token", "actor_token", "assertion")}


class TokenVerification:
    """Subject and actor tokens, verified against their issuer's keys (``UpstreamVerifier``)
    and, for tokens of ours, against the revocations (``TokenRegistry``)."""

    def __init__(
        self,
        verifier: UpstreamVerifier,
        revocations: TokenRegistry,
        *,
        own_issuer: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.verifier = verifier
        self.revocations = revocations
        self.own_issuer = own_issuer
        self.metrics = metrics

    def verify(
        self,
        token: str,
        parameter: str,
        record: RequestRecord,
        *,
        policy_of: Callable[[UpstreamSettings, UnverifiedJwt], JwtPolicy] | None = None,
    ) -> VerifiedToken:
        """``token``, the request's ``parameter``, verified; or the error that refuses it.
        ``policy_of``: it is an assertion (RFC 7523), held to the policy this gives."""
        try:
            with tracing.span(_SPAN_NAMES.get(parameter) or f"verify {parameter}"):
                if policy_of is None:
                    verified = self.verifier.verify(token)
                else:
                    verified = self.verifier.verify_assertion(token, policy_of)
        except TokenRejected as e:
            # RFC 8693 §2.2.2: an invalid subject or actor token is invalid_request.
            log.info(
                "token_rejected",
                extra={
                    "fields": {
                        "parameter": parameter,
                        "reason": e.reason,
                        "code": e.code,
                        "detail": e.detail,
                    }
                },
            )
            raise refused(
                record,
                self.metrics,
                e.code,
                f"{parameter} {e.reason}",
                parameter=parameter,
                # What the token claims, unverified (the verified one is `issuer`): bounded,
                # since the caller wrote it. Never the token itself.
                token_iss=None if e.issuer is None else e.issuer[:MAX_LOGGED_ISSUER],
            ) from None
        except KeyUnconfirmed as e:
            # A new key of the issuer's, or a forged kid: we cannot tell while its keys
            # cannot be fetched. The audit line says which kid (bounded: the caller wrote it).
            record.reason = "unknown_key_unconfirmed"
            record.parameter = parameter
            record.kid = (e.kid or "")[:MAX_LOGGED_ISSUER]
            raise TemporarilyUnavailable(
                "the issuer's signing keys cannot be fetched; try again later",
                retry_after=e.retry_after,
                counts_as_failure=True,
            ) from e
        except UpstreamUnavailable as e:
            raise TemporarilyUnavailable(
                "the issuer's signing keys cannot be fetched; try again later",
                retry_after=e.retry_after,
                reason=reasons.ISSUER_KEYS_UNAVAILABLE,
            ) from e
        if verified.issuer == self.own_issuer:
            self.check_not_revoked(verified, parameter, record)
        return verified

    def check_not_revoked(
        self, token: VerifiedToken, parameter: str, record: RequestRecord
    ) -> None:
        """A token of ours is accepted back only while ``/introspect`` would call it active:
        neither it nor any token it was derived from (``DERIVED_FROM``) is revoked. Revocation
        (RFC 7009) is looked up on every exchange, never remembered with the verification. A
        store that cannot be read is no answer: 503 (fail closed)."""
        jtis = lineage(token.claims)
        if jtis is None:
            raise refused(
                record,
                self.metrics,
                "invalid_claim",
                f"{parameter} has an invalid jti or {DERIVED_FROM} claim",
                parameter=parameter,
            )
        try:
            # Its own jti and those it was derived from: revoking a token of ours deactivates
            # every token minted from it by chained delegation, as /introspect says.
            revoked = self.revocations.any_revoked(jtis)
        except TemporarilyUnavailable:
            record.reason = "revocation_unavailable"
            record.parameter = parameter
            raise
        if revoked:
            raise refused(
                record,
                self.metrics,
                "revoked",
                f"{parameter} has been revoked",
                parameter=parameter,
            )
        if self.revocations.doubtful(token.claims):
            # Issued before the store lost its revocations (epoch.py): it may have been revoked.
            raise refused(
                record,
                self.metrics,
                "store_reset",
                f"{parameter} cannot be checked for revocation",
                parameter=parameter,
            )
