"""Sender-constrained tokens (RFC 9449, DPoP): the request's proof checked for our token
endpoint (§4.3, §5), server nonces (§8), and the binding of the tokens presented and minted
(``cnf.jkt``, §6.1).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..config.settings import DpopSettings
from ..oauth import reasons
from ..oauth.clock import Clock
from ..oauth.dpop import (
    InvalidDpopProof,
    NonceRequired,
    Nonces,
    Proof,
    ProofRejected,
    UseDpopNonce,
    bound_jkt,
    token_hash,
    verify_proof,
)
from ..oauth.errors import TemporarilyUnavailable
from ..sources.epoch import StoreEpoch
from ..sources.store import Store, StoreUnavailable
from .record import RequestRecord, refused
from .upstream import VerifiedToken

if TYPE_CHECKING:
    from ..obs.metrics import Metrics


class DpopProofs:
    """The token endpoint's DPoP proofs: each used once (``replay``, the shared store, so once
    across every replica), with the server's nonces when ``settings.nonce`` is on."""

    def __init__(
        self,
        settings: DpopSettings,
        *,
        token_endpoint: str,
        replay: Store,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.token_endpoint = token_endpoint
        self.replay = replay
        self.clock = clock
        self.metrics = metrics
        #: Server-provided DPoP nonces (RFC 9449 §8), when configured.
        self.nonces = (
            Nonces(
                replay,
                lifetime=settings.nonce_lifetime,
                clock=clock,
                reset_nonce=self.reset_nonce,
            )
            if settings.nonce
            else None
        )

    def proof(self, values: Sequence[str], method: str, record: RequestRecord) -> Proof | None:
        """The request's DPoP proof (its ``DPoP`` header ``values``) checked for our token
        endpoint (RFC 9449 §4.3, §5), or None without one. The endpoint's URL is the one our
        metadata states (``issuer``), whatever address a proxy forwarded the request to."""
        if not values:
            return None
        try:
            proof = verify_proof(
                values,
                method=method,
                url=self.token_endpoint,
                now=self.clock(),
                replay=self.replay,
                algorithms=self.settings.algorithms,
                window=self.settings.window,
                nonces=self.nonces,
            )
        except NonceRequired as e:
            record.reason = e.code
            if self.nonces is None:  # raised only with nonces; never a 500 if not
                raise InvalidDpopProof(e.reason) from None
            try:
                nonce = self.nonces.current()
            except StoreUnavailable as unavailable:
                raise _unavailable(record) from unavailable
            raise UseDpopNonce(e.reason, nonce=nonce) from None
        except ProofRejected as e:
            record.reason = e.code
            if self.metrics is not None:
                self.metrics.refusals.labels(e.code, "enforce").inc()
            raise InvalidDpopProof(e.reason) from None
        except StoreUnavailable as e:
            raise _unavailable(record) from e
        if isinstance(self.replay, StoreEpoch) and self.replay.proof_predates(
            float(proof.claims["iat"]), self.settings.window
        ):
            # The store lost its data (epoch.py): a proof that could have been used before
            # cannot be told from a replay by its jti, nor by its iat (clients' clocks are
            # allowed the window either way). One that carries a nonce we drew since can: the
            # client is told to use it (RFC 9449 §8), as DPoP clients do, and retries at once.
            carried, reset = proof.claims.get("nonce"), self.reset_nonce()
            if reset is None:  # the window has passed since: no such proof verifies
                raise _unavailable(record)
            if not (
                isinstance(carried, str)
                and secrets.compare_digest(carried.encode(), reset.encode())
            ):
                record.reason = reasons.DPOP_STORE_RESET
                raise UseDpopNonce(
                    "the store was reset: a DPoP proof with the DPoP-Nonce given is required",
                    nonce=reset,
                )
        return proof

    def reset_nonce(self) -> str | None:
        """The nonce a proof needs after the store lost its data (``StoreEpoch.reset_nonce``)."""
        if isinstance(self.replay, StoreEpoch):
            return self.replay.reset_nonce(self.settings.window)
        return None

    def nonce(self) -> str | None:
        """The DPoP nonce to hand out with an answer (RFC 9449 §8.2), when nonces are on and
        the store answers, or while proofs need one after the store lost its data."""
        if self.nonces is None:
            return self.reset_nonce()
        try:
            return self.nonces.current()
        except StoreUnavailable:
            return None


def _unavailable(record: RequestRecord) -> TemporarilyUnavailable:
    # Fail closed: a proof whose single use cannot be recorded could be replayed.
    record.reason = "dpop_store_unavailable"
    return TemporarilyUnavailable(
        "DPoP proofs cannot be checked now; try again later", retry_after=1
    )


def require_proof(required: bool, proof: Proof | None, record: RequestRecord) -> None:
    """RFC 9449 §5.2 (``dpop_bound_access_tokens``): a client that must bind its tokens is
    refused a request without a proof; with one, the record names its key."""
    if proof is None:
        if required:
            record.reason = "dpop_required"
            raise InvalidDpopProof("a DPoP proof is required for this client")
        return
    record.jkt = proof.jkt


def check_binding(
    token: str,
    verified: VerifiedToken,
    proof: Proof | None,
    parameter: str,
    record: RequestRecord,
    metrics: Metrics | None,
    *,
    ath_required: bool,
) -> bool:
    """A DPoP-bound token (``cnf.jkt``, RFC 9449 §6.1) is accepted only with a proof by its key
    whose ``ath`` is the token's hash (§4.3 step 12, §7.1) when ``ath_required``; an upstream
    with ``require_bound_tokens`` accepts bound tokens only. True when the token is bound. A
    refusal is invalid_request (RFC 8693 §2.2.2: the token is not acceptable as presented)."""
    jkt = bound_key(verified, parameter, record, metrics)
    if jkt is None:
        return False
    if proof is None:
        raise refused(
            record,
            metrics,
            "dpop_proof_missing",
            f"{parameter} is DPoP-bound: a DPoP proof by its key is required",
            parameter=parameter,
        )
    if proof.jkt != jkt:
        raise refused(
            record,
            metrics,
            "dpop_key_mismatch",
            f"the DPoP proof is not signed by the key {parameter} is bound to",
            parameter=parameter,
        )
    if ath_required and proof.ath != token_hash(token):
        raise refused(
            record,
            metrics,
            "dpop_ath",
            f"the DPoP proof's ath is not the hash of {parameter}",
            parameter=parameter,
        )
    return True


def bound_key(
    verified: VerifiedToken, parameter: str, record: RequestRecord, metrics: Metrics | None
) -> str | None:
    """The thumbprint a token is DPoP-bound to (``cnf.jkt``), or None when it is unbound and
    its upstream accepts unbound tokens. A ``cnf`` this service cannot read is refused, never
    taken for no binding (``cnf_unsupported``), and so is an unbound token from an upstream
    with ``require_bound_tokens`` (``dpop_unbound``)."""
    try:
        jkt = bound_jkt(verified.claims)
    except ValueError:
        raise refused(
            record,
            metrics,
            "cnf_unsupported",
            f"{parameter} is bound by a method this service cannot verify (cnf)",
            parameter=parameter,
        ) from None
    if jkt is None and verified.upstream.require_bound_tokens:
        raise refused(
            record,
            metrics,
            "dpop_unbound",
            f"{parameter} must be DPoP-bound (cnf.jkt)",
            parameter=parameter,
        )
    return jkt
