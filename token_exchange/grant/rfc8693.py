"""The token exchange grant (RFC 8693): verify -> policy -> permissions -> mint.

HTTP-free: ``ExchangeRequest.from_form`` validates the request parameters (RFC 8693 §2.1) and
``TokenExchange.exchange`` turns a request from an authenticated client into a minted RFC 9068
access token, or raises the OAuth error that RFC 8693 §2.2.2 prescribes.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config.settings import ApiSettings, ClientSettings, Settings, pins_actor_issuer, receives
from ..oauth import reasons, strictjson
from ..oauth.clock import Clock
from ..oauth.conditions import Condition, ConditionSet
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
from ..oauth.errors import (
    InvalidAuthorizationDetails,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    KeyUnconfirmed,
    TemporarilyUnavailable,
    UnsupportedGrantType,
    UpstreamUnavailable,
)
from ..oauth.profile import (
    DERIVED_FROM,
    GRANT_TYPE,
    MAX_DERIVED_FROM,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_BEARER,
    TOKEN_TYPE_JWT,
    TOKEN_TYPE_REFRESH_TOKEN,
)
from ..oauth.tokens import TokenRejected
from ..oauth.uris import resource_problem
from ..sources.epoch import StoreEpoch
from ..sources.keys import KeyStoreError, Signer
from ..sources.permissions import Decision, PermissionRequest, PermissionSource
from ..sources.store import MemoryStore, Store, StoreUnavailable
from .introspection import TokenRegistry, lineage
from .policy import (
    check_authorization_details,
    check_client_target,
    grant_scopes,
    parse_scope,
    resolve_api,
    select_scopes,
)
from .ratelimit import RateLimiter
from .upstream import UpstreamVerifier, VerifiedToken

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

#: The name operators route these lines by, which they had before the grant was split up.
log = logging.getLogger("token_exchange.grant.exchange")

#: Subject/actor token types we can verify: both are JWTs from a configured issuer.
ACCEPTED_TOKEN_TYPES = frozenset({TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT})
#: What we mint; ``issued_token_type`` echoes the request (RFC 8693 §2.2.1).
ISSUABLE_TOKEN_TYPES = frozenset({TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT})
#: RFC 8693 §2.1 lets these repeat; any other parameter appearing twice is invalid_request
#: (RFC 6749 §3.2: "Request and response parameters MUST NOT be included more than once").
MULTI_VALUED = frozenset({"audience", "resource"})
PARAMETERS = frozenset(
    {
        "grant_type", "client_id", "client_secret", "subject_token", "subject_token_type",
        "actor_token", "actor_token_type", "requested_token_type", "scope", "audience",
        "resource", "authorization_details",
    }
)  # fmt: skip
#: Longest unverified ``iss`` written to the audit log (it is whatever the caller sent).
MAX_LOGGED_ISSUER = 200
#: What the caller is told when a condition fails: never which condition, nor which claim
#: (RFC 8693 §2.2.2: "unacceptable based on policy").
POLICY_REFUSED = "{} is not acceptable (policy)"
#: Why a token of ours is refused as a subject token outside a delegation.
CHAINED_ONLY = (
    "a token issued by this service is a subject_token only in a delegation: from a client "
    "allowed to delegate, with its actor_token"
)

#: Why a token of ours is refused from a client it was not minted for.
NOT_FOR_CLIENT = "subject_token was not issued for this client (aud)"


def single_values(
    form: Mapping[str, Sequence[str]],
    names: frozenset[str] = PARAMETERS,
    multi_valued: frozenset[str] = MULTI_VALUED,
) -> dict[str, str]:
    """The body parameters ``names`` as single values, refusing repeats (RFC 6749 §3.1, §3.2).

    Empty values count as omitted (RFC 6749 §3.1). ``multi_valued`` parameters keep only their
    first value here; ``ExchangeRequest.from_form`` reads all of them.
    """
    values: dict[str, str] = {}
    for name, all_given in form.items():
        if name not in names:
            continue
        if len(all_given) == 1:  # the usual case, without building a list
            if all_given[0] != "":
                values[name] = all_given[0]
            continue
        given = [v for v in all_given if v != ""]
        if len(given) > 1 and name not in multi_valued:
            raise InvalidRequest(f"{name} must not be repeated", reason=reasons.PARAMETER_REPEATED)
        if given:
            values[name] = given[0]
    return values


def check_grant_type(values: Mapping[str, str]) -> None:
    grant_type = values.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is required", reason=reasons.PARAMETER_MISSING)
    if grant_type != GRANT_TYPE:
        raise UnsupportedGrantType(f"only the {GRANT_TYPE} grant type is supported")


@dataclass(frozen=True)
class ExchangeRequest:
    """The validated parameters of a token exchange request (RFC 8693 §2.1)."""

    subject_token: str
    subject_token_type: str
    requested_token_type: str = TOKEN_TYPE_ACCESS_TOKEN
    audiences: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    scopes: tuple[str, ...] | None = None
    authorization_details: tuple[Mapping[str, Any], ...] = ()
    actor_token: str | None = None
    actor_token_type: str | None = None

    @classmethod
    def from_form(
        cls, form: Mapping[str, Sequence[str]], values: Mapping[str, str] | None = None
    ) -> ExchangeRequest:
        """``values`` is ``single_values(form)`` when the caller has it already."""
        if values is None:
            values = single_values(form)
        subject_token = values.get("subject_token")
        if subject_token is None:
            raise InvalidRequest("subject_token is required", reason=reasons.PARAMETER_MISSING)
        subject_token_type = values.get("subject_token_type")
        if subject_token_type is None:
            raise InvalidRequest("subject_token_type is required", reason=reasons.PARAMETER_MISSING)
        if subject_token_type not in ACCEPTED_TOKEN_TYPES:
            raise InvalidRequest(
                "subject_token_type must be an access_token or jwt token type",
                reason=reasons.TOKEN_TYPE_UNSUPPORTED,
            )

        # RFC 8693 §2.1: actor_token_type is REQUIRED when actor_token is present and MUST NOT
        # be included otherwise.
        actor_token, actor_token_type = values.get("actor_token"), values.get("actor_token_type")
        if (actor_token is None) != (actor_token_type is None):
            raise InvalidRequest(
                "actor_token and actor_token_type must be sent together",
                reason=reasons.PARAMETER_MISSING,
            )
        if actor_token_type is not None and actor_token_type not in ACCEPTED_TOKEN_TYPES:
            raise InvalidRequest(
                "actor_token_type must be an access_token or jwt token type",
                reason=reasons.TOKEN_TYPE_UNSUPPORTED,
            )

        requested = values.get("requested_token_type", TOKEN_TYPE_ACCESS_TOKEN)
        if requested == TOKEN_TYPE_REFRESH_TOKEN:
            raise InvalidRequest(
                "refresh tokens are not issued", reason=reasons.TOKEN_TYPE_UNSUPPORTED
            )
        if requested not in ISSUABLE_TOKEN_TYPES:
            raise InvalidRequest(
                "requested_token_type must be an access_token or jwt token type",
                reason=reasons.TOKEN_TYPE_UNSUPPORTED,
            )

        resources = tuple(dict.fromkeys(v for v in form.get("resource", ()) if v))
        for resource in resources:
            if why := resource_problem(resource):
                # RFC 8707 §2: an invalid or malformed resource is invalid_target.
                raise InvalidTarget(why, reason=reasons.RESOURCE_INVALID)
        return cls(
            subject_token=subject_token,
            subject_token_type=subject_token_type,
            requested_token_type=requested,
            audiences=tuple(dict.fromkeys(v for v in form.get("audience", ()) if v)),
            resources=resources,
            scopes=parse_scope(values.get("scope")),
            authorization_details=_parse_authorization_details(values.get("authorization_details")),
            actor_token=actor_token,
            actor_token_type=actor_token_type,
        )


def _parse_authorization_details(value: str | None) -> tuple[Mapping[str, Any], ...]:
    """RFC 9396 §2: a JSON array of objects, each with a string ``type``. RFC 8259 JSON only
    (``strictjson``): the details are sent on to the permissions API and signed into tokens."""
    if value is None:
        return ()
    try:
        details = strictjson.loads(value)
    except ValueError:
        details = None
    if not isinstance(details, list) or not all(
        isinstance(d, dict) and isinstance(d.get("type"), str) and d["type"] for d in details
    ):
        raise InvalidAuthorizationDetails(
            "authorization_details must be a JSON array of objects, each with a type",
            reason=reasons.AUTHORIZATION_DETAILS_INVALID,
        )
    return tuple(details)


@dataclass(frozen=True)
class IssuedToken:
    """The result of an exchange, rendered by the view per RFC 8693 §2.2.1."""

    access_token: str
    issued_token_type: str
    expires_in: int
    scope: str
    #: ``DPoP`` for a token bound to a proof's key (RFC 9449 §5).
    token_type: str = TOKEN_TYPE_BEARER

    def response(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "issued_token_type": self.issued_token_type,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "scope": self.scope,
        }


class TokenExchange:
    """The grant: everything between an authenticated request and a minted token."""

    def __init__(
        self,
        settings: Settings,
        *,
        verifier: UpstreamVerifier,
        permission_sources: Mapping[str, PermissionSource],
        signer: Signer,
        revocations: TokenRegistry,
        limiter: RateLimiter | None = None,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
        replay: Store | None = None,
    ) -> None:
        self.settings = settings
        #: Where used DPoP proofs are remembered: the shared store, so that a proof is used
        #: once across every replica; by default this process's memory.
        self.replay: Store = MemoryStore() if replay is None else replay
        #: Server-provided DPoP nonces (RFC 9449 §8), when configured.
        self.nonces = (
            Nonces(
                self.replay,
                lifetime=settings.dpop.nonce_lifetime,
                clock=clock,
                reset_nonce=self._reset_nonce,
            )
            if settings.dpop.nonce
            else None
        )
        self.verifier = verifier
        self.permission_sources = permission_sources
        self.signer = signer
        #: Which of our own tokens are revoked (``/revoke``), for those presented back to us.
        self.revocations = revocations
        self.limiter = limiter
        self.clock = clock
        self.metrics = metrics
        self._upstreams = {u.issuer: u for u in settings.upstreams}

    def dpop_proof(
        self, values: Sequence[str], method: str, audit: MutableMapping[str, Any]
    ) -> Proof | None:
        """The request's DPoP proof (its ``DPoP`` header ``values``) checked for our token
        endpoint (RFC 9449 §4.3, §5), or None without one. The endpoint's URL is the one our
        metadata states (``issuer``), whatever address a proxy forwarded the request to."""
        if not values:
            return None
        try:
            proof = verify_proof(
                values,
                method=method,
                url=self.settings.token_endpoint,
                now=self.clock(),
                replay=self.replay,
                algorithms=self.settings.dpop.algorithms,
                window=self.settings.dpop.window,
                nonces=self.nonces,
            )
        except NonceRequired as e:
            audit.update(reason=e.code)
            if self.nonces is None:  # raised only with nonces; never a 500 if not
                raise InvalidDpopProof(e.reason) from None
            try:
                nonce = self.nonces.current()
            except StoreUnavailable as unavailable:
                raise self._dpop_unavailable(audit) from unavailable
            raise UseDpopNonce(e.reason, nonce=nonce) from None
        except ProofRejected as e:
            audit.update(reason=e.code)
            if self.metrics is not None:
                self.metrics.refusals.labels(e.code, "enforce").inc()
            raise InvalidDpopProof(e.reason) from None
        except StoreUnavailable as e:
            raise self._dpop_unavailable(audit) from e
        if isinstance(self.replay, StoreEpoch) and self.replay.proof_predates(
            float(proof.claims["iat"]), self.settings.dpop.window
        ):
            # The store lost its data (epoch.py): a proof that could have been used before
            # cannot be told from a replay by its jti, nor by its iat (clients' clocks are
            # allowed the window either way). One that carries a nonce we drew since can: the
            # client is told to use it (RFC 9449 §8), as DPoP clients do, and retries at once.
            carried, reset = proof.claims.get("nonce"), self._reset_nonce()
            if reset is None:  # the window has passed since: no such proof verifies
                raise self._dpop_unavailable(audit)
            if not (
                isinstance(carried, str)
                and secrets.compare_digest(carried.encode(), reset.encode())
            ):
                audit.update(reason=reasons.DPOP_STORE_RESET)
                raise UseDpopNonce(
                    "the store was reset: a DPoP proof with the DPoP-Nonce given is required",
                    nonce=reset,
                )
        return proof

    def _reset_nonce(self) -> str | None:
        """The nonce a proof needs after the store lost its data (``StoreEpoch.reset_nonce``)."""
        if isinstance(self.replay, StoreEpoch):
            return self.replay.reset_nonce(self.settings.dpop.window)
        return None

    def dpop_nonce(self) -> str | None:
        """The DPoP nonce to hand out with an answer (RFC 9449 §8.2), when nonces are on and
        the store answers, or while proofs need one after the store lost its data."""
        if self.nonces is None:
            return self._reset_nonce()
        try:
            return self.nonces.current()
        except StoreUnavailable:
            return None

    @staticmethod
    def _dpop_unavailable(audit: MutableMapping[str, Any]) -> TemporarilyUnavailable:
        # Fail closed: a proof whose single use cannot be recorded could be replayed.
        audit.update(reason="dpop_store_unavailable")
        return TemporarilyUnavailable(
            "DPoP proofs cannot be checked now; try again later", retry_after=1
        )

    def exchange(
        self,
        request: ExchangeRequest,
        client: ClientSettings,
        audit: MutableMapping[str, Any] | None = None,
        proof: Proof | None = None,
    ) -> IssuedToken:
        """Mint a token for ``request`` or raise the OAuth error that explains why not.

        ``proof``: the request's verified DPoP proof (RFC 9449), if it had one; the minted
        token is then bound to its key. ``audit`` receives the decision's fields (issuer,
        subject, audience, jti) as they become known, for the caller's log line; a refused
        token adds ``reason`` (a code of ours), and a condition in audit mode that fails adds
        an entry to ``would_refuse``.
        """
        audit = {} if audit is None else audit
        if proof is None and client.dpop == "required":
            # RFC 9449 §5.2 (dpop_bound_access_tokens): refuse a request without a proof.
            audit.update(reason="dpop_required")
            raise InvalidDpopProof("a DPoP proof is required for this client")
        if proof is not None:
            audit["jkt"] = proof.jkt
        api = resolve_api(self.settings.apis, request.audiences, request.resources)
        audit["audience"] = api.audience
        check_client_target(client, api)
        scopes = select_scopes(api, client, request.scopes)
        check_authorization_details(api, request.authorization_details)

        subject = self._verify(request.subject_token, "subject_token", audit)
        audit.update(issuer=subject.issuer, sub=subject.minted_subject)
        subject_bound = self._check_binding(
            request.subject_token, subject, proof, "subject_token", audit, ath_required=True
        )
        if subject.issuer == self.settings.issuer:
            scopes = self._chained(request, client, api, subject, scopes, audit)
        # The issuer's conditions were evaluated at verification (they depend on the token
        # alone); the client's depend on who presents it, so they are evaluated every time.
        self._check(
            subject.upstream.conditions,
            subject.upstream_failure,
            "upstreams.conditions",
            "subject_token",
            audit,
        )
        if client.subject_conditions:
            self._check(
                client.subject_conditions,
                client.subject_conditions.first_failure(subject.claims),
                "clients.subject_conditions",
                "subject_token",
                audit,
            )
        if self.limiter is not None:
            # Counted only once the subject is verified: anyone can name a public client_id,
            # and garbage must not use up its budget (failures are limited per address). The
            # subject first: a user over their own limit must not use up the client's, which
            # would lock every other user of that client out.
            self.limiter.subject(subject.issuer, subject.subject)
            self.limiter.client(client.client_id)
        actor = self._verify_actor(request, client, subject, audit)
        if actor is not None and request.actor_token is not None:
            # One proof, one ath: that of the subject token when it is bound, else the actor
            # token's. A bound actor token with a bound subject token is proved by the key.
            self._check_binding(
                request.actor_token,
                actor,
                proof,
                "actor_token",
                audit,
                ath_required=not subject_bound,
            )
        delegation = self._delegation(client, subject, actor, audit)
        delegation.update(self._derived_from(subject, actor, audit))

        decision = self._decide(api, client, request, scopes, subject, actor)
        granted = grant_scopes(scopes, decision.scopes)

        now = int(self.clock())
        # RFC 8693 §2.2.1 / our design: a minted token never outlives the tokens it came from.
        expires_at = min(
            now + self.settings.signing.token_ttl,
            subject.expires_at,
            actor.expires_at if actor else subject.expires_at,
        )
        if expires_at - now < 1:
            raise self._refused(
                audit, "expired", "subject_token has expired", parameter="subject_token"
            )
        jti = secrets.token_urlsafe(16)
        claims = self._claims(api, subject, decision, request)
        claims.update(delegation)
        # Which life of the store it was minted in: a loss of the store's data later makes
        # the tokens of earlier lives doubtful (epoch.py), not this one.
        claims.update(self.revocations.minting_epoch())
        claims.update(
            {
                "iss": self.settings.issuer,
                "sub": subject.minted_subject,
                "aud": api.audience,
                "exp": expires_at,
                "iat": now,
                "jti": jti,
                "client_id": client.client_id,
                "scope": " ".join(granted),
            }
        )
        if proof is not None:
            # RFC 9449 §6.1. A bound subject or actor token has been checked to be bound to
            # this very key (_check_binding): the minted token stays bound to it.
            claims["cnf"] = {"jkt": proof.jkt}
        try:
            token, key = self.signer.sign(claims)
        except KeyStoreError as e:
            raise TemporarilyUnavailable(
                "no signing key is available",
                retry_after=30,
                reason=reasons.SIGNING_KEY_UNAVAILABLE,
            ) from e
        audit.update(jti=jti, kid=key.kid, scope=claims["scope"])
        return IssuedToken(
            access_token=token,
            issued_token_type=request.requested_token_type,
            expires_in=expires_at - now,
            scope=claims["scope"],
            token_type="DPoP" if proof is not None else TOKEN_TYPE_BEARER,
        )

    def _check_binding(
        self,
        token: str,
        verified: VerifiedToken,
        proof: Proof | None,
        parameter: str,
        audit: MutableMapping[str, Any],
        *,
        ath_required: bool,
    ) -> bool:
        """A DPoP-bound token (``cnf.jkt``, RFC 9449 §6.1) is accepted only with a proof by
        its key whose ``ath`` is the token's hash (§4.3 step 12, §7.1) when ``ath_required``;
        an upstream with ``require_bound_tokens`` accepts bound tokens only. True when the
        token is bound. A refusal is invalid_request (RFC 8693 §2.2.2: the token is not
        acceptable as presented)."""
        try:
            jkt = bound_jkt(verified.claims)
        except ValueError:
            raise self._refused(
                audit,
                "cnf_unsupported",
                f"{parameter} is bound by a method this service cannot verify (cnf)",
                parameter=parameter,
            ) from None
        if jkt is None:
            if verified.upstream.require_bound_tokens:
                raise self._refused(
                    audit,
                    "dpop_unbound",
                    f"{parameter} must be DPoP-bound (cnf.jkt)",
                    parameter=parameter,
                )
            return False
        if proof is None:
            raise self._refused(
                audit,
                "dpop_proof_missing",
                f"{parameter} is DPoP-bound: a DPoP proof by its key is required",
                parameter=parameter,
            )
        if proof.jkt != jkt:
            raise self._refused(
                audit,
                "dpop_key_mismatch",
                f"the DPoP proof is not signed by the key {parameter} is bound to",
                parameter=parameter,
            )
        if ath_required and proof.ath != token_hash(token):
            raise self._refused(
                audit,
                "dpop_ath",
                f"the DPoP proof's ath is not the hash of {parameter}",
                parameter=parameter,
            )
        return True

    def _verify(self, token: str, parameter: str, audit: MutableMapping[str, Any]) -> VerifiedToken:
        try:
            verified = self.verifier.verify(token)
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
            fields: dict[str, Any] = {"parameter": parameter}
            if e.issuer is not None:
                # What the token claims, unverified (the verified one is `issuer`): bounded,
                # since the caller wrote it. Never the token itself.
                fields["token_iss"] = e.issuer[:MAX_LOGGED_ISSUER]
            raise self._refused(audit, e.code, f"{parameter} {e.reason}", **fields) from None
        except KeyUnconfirmed as e:
            # A new key of the issuer's, or a forged kid: we cannot tell while its keys
            # cannot be fetched. The audit line says which kid (bounded: the caller wrote it).
            audit.update(
                reason="unknown_key_unconfirmed",
                parameter=parameter,
                kid=(e.kid or "")[:MAX_LOGGED_ISSUER],
            )
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
        if verified.issuer == self.settings.issuer:
            self._check_not_revoked(verified, parameter, audit)
        return verified

    def _check_not_revoked(
        self, token: VerifiedToken, parameter: str, audit: MutableMapping[str, Any]
    ) -> None:
        """A token of ours is accepted back only while ``/introspect`` would call it active:
        neither it nor any token it was derived from (``DERIVED_FROM``) is revoked. Revocation
        (RFC 7009) is looked up on every exchange, never remembered with the verification. A
        store that cannot be read is no answer: 503 (fail closed)."""
        jtis = lineage(token.claims)
        if jtis is None:
            raise self._refused(
                audit,
                "invalid_claim",
                f"{parameter} has an invalid jti or {DERIVED_FROM} claim",
                parameter=parameter,
            )
        try:
            # Its own jti and those it was derived from: revoking a token of ours deactivates
            # every token minted from it by chained delegation, as /introspect says.
            revoked = self.revocations.any_revoked(jtis)
        except TemporarilyUnavailable:
            audit.update(reason="revocation_unavailable", parameter=parameter)
            raise
        if revoked:
            raise self._refused(
                audit, "revoked", f"{parameter} has been revoked", parameter=parameter
            )
        if self.revocations.doubtful(token.claims):
            # Issued before the store lost its revocations (epoch.py): it may have been revoked.
            raise self._refused(
                audit,
                "store_reset",
                f"{parameter} cannot be checked for revocation",
                parameter=parameter,
            )

    def _chained(
        self,
        request: ExchangeRequest,
        client: ClientSettings,
        api: ApiSettings,
        subject: VerifiedToken,
        scopes: tuple[str, ...],
        audit: MutableMapping[str, Any],
    ) -> tuple[str, ...]:
        """The scopes to ask for with a subject token of ours (chained delegation), which is
        accepted only from a client that may delegate, together with its actor token, and only
        from the client the token was minted for: the one its ``aud`` names.

        Otherwise anyone holding a token we minted (the API it was sent to, say) could have it
        minted anew: for another client, another API or more scopes, or to meet a client's
        ``subject_conditions`` that the original token failed (a client-credentials token
        minted once has no ``gty`` any more). And a chained exchange for the same API only
        narrows: its scopes are at most those the token carries. The token's scopes are its
        ``aud``'s: for another API they bound nothing by name (two APIs' "read" are not one).
        """
        if not client.allow_delegation or request.actor_token is None:
            raise self._refused(
                audit, "chained_token_not_allowed", CHAINED_ONLY, parameter="subject_token"
            )
        aud = subject.claims.get("aud")
        if not (isinstance(aud, str) and receives(client.client_id, client.introspects, aud)):
            # A token of ours is the bearer's to present only when it was minted for it: held
            # by any other client it was leaked or passed on (the API it was sent to holds it
            # by design, and that API is the client its aud names).
            raise self._refused(
                audit, "chained_token_wrong_client", NOT_FOR_CLIENT, parameter="subject_token"
            )
        if aud != api.audience:
            return scopes
        carried = subject.claims.get("scope")
        carried_scopes = frozenset(carried.split(" ") if isinstance(carried, str) else ())
        narrowed = tuple(scope for scope in scopes if scope in carried_scopes)
        if not narrowed:
            audit.update(reason="scope_not_carried", parameter="subject_token")
            raise InvalidScope("the subject_token carries none of the requested scopes")
        return narrowed

    def _derived_from(
        self,
        subject: VerifiedToken,
        actor: VerifiedToken | None,
        audit: MutableMapping[str, Any],
    ) -> dict[str, Any]:
        """The ``DERIVED_FROM`` claim of the minted token: the lineage (own ``jti`` first) of
        the subject and actor tokens that are ours, so that revoking any of them deactivates
        it too. Refused rather than cut when longer than ``MAX_DERIVED_FROM``: a dropped
        ancestor would be a revocation that no longer reaches it."""
        derived: dict[str, None] = {}
        for token in (subject, actor):
            if token is not None and token.issuer == self.settings.issuer:
                # Checked by _check_not_revoked when the token was verified.
                derived.update(dict.fromkeys(lineage(token.claims) or ()))
        if not derived:
            return {}
        if len(derived) > MAX_DERIVED_FROM:
            raise self._refused(
                audit,
                "derived_too_long",
                "the chain of tokens this one derives from is too long",
                parameter="subject_token",
            )
        return {DERIVED_FROM: list(derived)}

    def _refused(
        self, audit: MutableMapping[str, Any], reason: str, description: str, **fields: Any
    ) -> InvalidRequest:
        """The refusal of a token (invalid_request, RFC 8693 §2.2.2), to raise: records
        ``reason`` for the audit line and counts it; ``description`` is what the caller sees."""
        audit.update(reason=reason, **fields)
        if self.metrics is not None:
            self.metrics.refusals.labels(reason, "enforce").inc()
        return InvalidRequest(description, reason=reason)

    def _check(
        self,
        conditions: ConditionSet,
        failure: Condition | None,
        policy: str,
        parameter: str,
        audit: MutableMapping[str, Any],
    ) -> None:
        """Act on the first ``failure`` of ``conditions``: refuse, or in audit mode log it."""
        if failure is None:
            return
        # The audit line names the condition set, the claim and the operator; never the
        # claim's value (it may be personal data) and never to the caller.
        why = {"policy": policy, "claim": failure.claim, "condition": failure.operator}
        if conditions.mode == "audit":
            audit.setdefault("would_refuse", []).append({"reason": "condition", **why})
            if self.metrics is not None:
                self.metrics.refusals.labels("condition", "audit").inc()
            return
        raise self._refused(
            audit, "condition", POLICY_REFUSED.format(parameter), parameter=parameter, **why
        )

    def _verify_actor(
        self,
        request: ExchangeRequest,
        client: ClientSettings,
        subject: VerifiedToken,
        audit: MutableMapping[str, Any],
    ) -> VerifiedToken | None:
        if request.actor_token is None:
            return None
        if not client.allow_delegation:
            raise self._refused(
                audit,
                "delegation_not_allowed",
                "this client may not present an actor_token",
                parameter="actor_token",
            )
        actor = self._verify(request.actor_token, "actor_token", audit)
        audit["actor"] = actor.minted_subject
        conditions = client.actor_conditions
        if not conditions or (
            len(self._upstreams) > 1
            and conditions.mode == "enforce"
            and not pins_actor_issuer(conditions)
        ):
            # The settings refuse a delegating client that binds no actor token, or with
            # several issuers none of them; a client built some other way must not make every
            # token anyone holds (of any issuer) an actor token of its own.
            raise self._refused(
                audit,
                "actor_unbound",
                POLICY_REFUSED.format("actor_token"),
                parameter="actor_token",
            )
        self._check(
            client.actor_conditions,
            client.actor_conditions.first_failure(actor.claims),
            "clients.actor_conditions",
            "actor_token",
            audit,
        )
        return actor

    def _identity(self, issuer: str, sub: str) -> tuple[str, str]:
        """(issuer, sub) in our namespace: ``("", minted sub)`` for anyone from a configured
        issuer (ours included, whose subjects are minted ones already), else as given."""
        if issuer == self.settings.issuer:
            return "", sub
        upstream = self._upstreams.get(issuer)
        if upstream is not None:
            return "", upstream.subject_prefix + sub
        return issuer, sub

    def _delegation(
        self,
        client: ClientSettings,
        subject: VerifiedToken,
        actor: VerifiedToken | None,
        audit: MutableMapping[str, Any],
    ) -> dict[str, Any]:
        """The ``act`` and ``may_act`` claims of the minted token (RFC 8693 §4.1, §4.4).

        Identities are (issuer, sub) pairs. The chain (the new actor on top of the subject
        token's own ``act``) may neither repeat anyone, the subject included, nor be longer than
        ``max_delegation_depth``; the subject token's ``may_act`` must name the actor, and is
        carried on so that it binds every later hop too.
        """
        claims: dict[str, Any] = {}
        if actor is None and "act" not in subject.claims and "may_act" not in subject.claims:
            return claims  # the usual exchange: no delegation at all
        may_act = subject.claims.get("may_act")
        if may_act is not None:
            if not (
                isinstance(may_act, dict)
                and isinstance(may_act.get("sub"), str)
                # An empty iss would be our namespace: anyone of any configured issuer.
                and isinstance(may_act.get("iss", subject.issuer), str)
                and may_act.get("iss", subject.issuer)
            ):
                raise self._refused(
                    audit,
                    "may_act",
                    "subject_token has an invalid may_act",
                    parameter="subject_token",
                )
            # A may_act without iss names someone of the subject token's own issuer, not
            # whoever of any trusted issuer happens to have that sub.
            allowed = self._identity(may_act.get("iss", subject.issuer), may_act["sub"])
            if actor is not None and self._identity(actor.issuer, actor.subject) != allowed:
                raise self._refused(
                    audit,
                    "may_act",
                    "actor_token is not allowed to act for this subject (may_act)",
                    parameter="actor_token",
                )
            claims["may_act"] = _written(allowed)

        chain = self._prior_actors(subject, client.max_delegation_depth + 1, audit)
        if actor is not None:
            chain.insert(0, self._identity(actor.issuer, actor.subject))
        token = "subject_token" if actor is None else "actor_token"
        if len(chain) > client.max_delegation_depth:
            raise self._refused(
                audit,
                "act_depth",
                "the delegation chain (act) is longer than this client allows",
                parameter=token,
            )
        everyone = [self._identity(subject.issuer, subject.subject), *chain]
        if len(set(everyone)) != len(everyone):
            raise self._refused(
                audit, "act_cycle", "the delegation chain (act) is circular", parameter=token
            )
        act: dict[str, Any] | None = None
        for identity in reversed(chain):
            entry = _written(identity)
            if act is not None:
                entry["act"] = act
            act = entry
        if act is not None:
            claims["act"] = act
        return claims

    def _prior_actors(
        self, subject: VerifiedToken, most: int, audit: MutableMapping[str, Any]
    ) -> list[tuple[str, str]]:
        """The identities in the subject token's ``act``, most recent first, at most ``most``.

        ``act`` must be a chain (RFC 8693 §4.1): objects, each with a string ``sub``, an optional
        string ``iss`` (without it, the subject token's issuer) and an optional nested ``act``.
        Anything else is refused, never dropped: a token whose actors cannot be read must not
        pass for one without any. Other members are ignored (they describe the actor to its
        own issuer and are not ours to vouch for). Only a token of ours may name our own issuer
        in ``act``: no other issuer speaks for our namespace.
        """
        chain: list[tuple[str, str]] = []
        node = subject.claims.get("act")
        while node is not None and len(chain) < most:
            member = node if isinstance(node, dict) else {}
            sub, issuer = member.get("sub"), member.get("iss", subject.issuer)
            # An empty iss would name our namespace too (see _identity).
            if not (isinstance(sub, str) and sub and isinstance(issuer, str) and issuer) or (
                issuer == self.settings.issuer and subject.issuer != self.settings.issuer
            ):
                raise self._refused(
                    audit,
                    "act_invalid",
                    "subject_token has an invalid act claim",
                    parameter="subject_token",
                )
            chain.append(self._identity(issuer, sub))
            node = member.get("act")
        return chain

    def _decide(
        self,
        api: ApiSettings,
        client: ClientSettings,
        request: ExchangeRequest,
        scopes: tuple[str, ...],
        subject: VerifiedToken,
        actor: VerifiedToken | None,
    ) -> Decision:
        question = PermissionRequest(
            subject=subject.subject,
            issuer=subject.issuer,
            client_id=client.client_id,
            audience=api.audience,
            scopes=scopes,
            resources=request.resources,
            authorization_details=request.authorization_details,
            subject_claims=subject.claims,
            actor=(
                {"subject": actor.subject, "issuer": actor.issuer, "claims": dict(actor.claims)}
                if actor
                else None
            ),
            valid_until=min(subject.expires_at, actor.expires_at if actor else subject.expires_at),
        )
        try:
            decision = self.permission_sources[api.permissions].decide(question)
        except UpstreamUnavailable as e:
            log.warning(
                "permissions_unavailable",
                extra={"fields": {"audience": api.audience, "reason": str(e)}},
            )
            raise TemporarilyUnavailable(
                "the permissions service is unavailable; try again later",
                retry_after=e.retry_after,
                reason=reasons.PERMISSIONS_UNAVAILABLE,
            ) from e
        if not decision.allow:
            raise InvalidTarget(
                "access to that audience or resource is refused",
                reason=reasons.PERMISSIONS_DENIED,
            )
        if decision.authorization_details is not None:
            try:
                check_authorization_details(api, decision.authorization_details)
            except InvalidAuthorizationDetails:
                # The answer grants something the API does not know: we cannot decide.
                log.warning(
                    "permissions_answer_invalid", extra={"fields": {"audience": api.audience}}
                )
                raise TemporarilyUnavailable(
                    "the permissions service answered badly; try again later",
                    reason=reasons.PERMISSIONS_ANSWER_INVALID,
                ) from None
        return decision

    @staticmethod
    def _claims(
        api: ApiSettings,
        subject: VerifiedToken,
        decision: Decision,
        request: ExchangeRequest,
    ) -> dict[str, Any]:
        claims: dict[str, Any] = {
            name: subject.claims[name] for name in api.copy_claims if name in subject.claims
        }
        claims.update(decision.claims)
        if request.authorization_details:
            details = decision.authorization_details
            claims["authorization_details"] = list(
                request.authorization_details if details is None else details
            )
        return claims


def _written(identity: tuple[str, str]) -> dict[str, Any]:
    """An identity as a minted token states it (RFC 8693 §4.1): ``sub`` alone when it is in
    our namespace, with its ``iss`` otherwise; the current actor on top, earlier ones nested."""
    issuer, sub = identity
    return {"sub": sub} if not issuer else {"sub": sub, "iss": issuer}
