"""Transaction tokens (draft-ietf-oauth-transaction-tokens-10): a token exchange whose
``requested_token_type`` is ``txn_token`` (§6.1), answered by this service as its trust
domain's Txn-Token service (TTS, ``[transaction_tokens]``).

A workload of the trust domain (a confidential client with ``transaction_tokens``, which
authenticated with private_key_jwt) presents the user's token, the transaction's purpose
(``scope``) and its context. We verify the token as for an exchange (an upstream's, or an
access token of ours, never revoked), refuse a scope wider than the token's or a token whose
scope is unknown (§10.12, §10.13), ask the permissions question (``"grant": "txn-token"`` with
``request_details``) and sign a Txn-Token: ``typ: txntoken+jwt`` (§5.1), ``aud`` the trust
domain, a new ``txn``, ``req_wl`` the workload, the answer's claims as ``tctx`` and the
request's context plus the workload's address as ``rctx`` (§5.2). It never carries the token it
was made from (§10.6); the answer's ``token_type`` is ``N_A`` and never has a refresh token
(§6.4).

A Txn-Token presented back (``subject_token_type`` txn_token) is replaced (§10.7): the same
``txn``, ``sub`` and ``aud``; a scope and a ``tctx`` that can only narrow; the call chain
extended (``req_wl`` the new workload, ``req_wl_chain`` the earlier ones); never once it has
expired, never outliving it, and at most ``max_replacements`` deep (the chain's length; a
fan-out of replacements of one Txn-Token is bounded by the rate limits).

A subject token that an agent holds for the user (``act``) keeps its agents: the question
names them (``act``) and the Txn-Token, and every replacement, carries them on.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config.settings import (
    SIGNING_ALGORITHMS,
    ClientSettings,
    Settings,
    TransactionTokensSettings,
    UpstreamSettings,
)
from ..oauth import reasons, strictjson
from ..oauth.clock import Clock
from ..oauth.errors import InvalidRequest, InvalidScope, InvalidTarget, UnauthorizedClient
from ..oauth.profile import (
    TOKEN_TYPE_N_A,
    TOKEN_TYPE_TXN_TOKEN,
    TXN_TOKEN_CLAIMS,
    TXN_TOKEN_TYP,
)
from ..oauth.tokens import MAX_TOKEN_LENGTH, JwtPolicy, TokenRejected
from ..sources.keys import Signer
from ..sources.permissions import Decision, PermissionSource
from .binding import bound_key
from .decision import decide
from .delegation import Delegation
from .introspection import TokenRegistry
from .minting import IssuedToken, sign
from .policy import grant_scopes
from .ratelimit import RateLimiter
from .record import RequestRecord, refused
from .request import ExchangeRequest
from .trust import check_client_subject, check_conditions, check_minted_for
from .upstream import VerifiedToken
from .verification import TokenVerification

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

#: How the permissions question names a Txn-Token request (DESIGN, "Contract additions").
GRANT_NAME = "txn-token"
#: A claim of ours (RFC 7519 §4.3): the workloads that requested the Txn-Tokens a replacement
#: replaced, the first one first (§10.7: "MUST maintain the Call Chain"); ``req_wl`` is the
#: newest. Absent on a transaction's first Txn-Token.
CALL_CHAIN = "req_wl_chain"
#: The member of ``rctx`` we assert ourselves: the address the requesting workload called us
#: from (§5.2.2: "information about the computational entity that requested the Txn-Token").
WORKLOAD_ADDRESS = "req_wl_ip"


@dataclass(frozen=True)
class TrustDomain:
    """What a Txn-Token's permissions question is about: the trust domain, as an audience
    (``decision.Audience``) that takes no authorization details."""

    audience: str
    authorization_details_types: tuple[str, ...] = ()


def subject_scopes(claims: Mapping[str, Any]) -> frozenset[str] | None:
    """The scope a token carries: RFC 8693 §4.2 ``scope`` (RFC 9068, Auth0), else ``scp`` (a
    string or an array, as Okta and Entra write it); None when it states none (§10.13: then
    it is unknown, and never unconstrained)."""
    if "scope" in claims:
        scope = claims["scope"]
        return _scope_tokens(scope) if isinstance(scope, str) else None
    scp = claims.get("scp")
    if isinstance(scp, str):
        return _scope_tokens(scp)
    if isinstance(scp, list) and all(isinstance(s, str) for s in scp):
        return frozenset(scp)
    return None


def narrowed(original: Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
    """``original`` (a ``tctx``) narrowed by ``answer`` (a permissions answer's claims): every
    member of the original is kept; an array the answer also names keeps only the elements in
    both (the answer's claims are allow-lists, as ``custom_access_to_countries``), an object
    both name is narrowed member by member; anything else stays as it was. Nothing is added,
    removed or changed otherwise (§10.7: "MUST NOT enable modification to asserted values that
    expand the scope of permitted actions")."""
    result: dict[str, Any] = {}
    for name, value in original.items():
        given = answer.get(name)
        if isinstance(value, list) and isinstance(given, list):
            allowed = {_canonical(g) for g in given}
            result[name] = [v for v in value if _canonical(v) in allowed]
        elif isinstance(value, dict) and isinstance(given, dict):
            result[name] = narrowed(value, given)
        else:
            result[name] = value
    return result


class TransactionTokens:
    """The Txn-Token service: issuance and replacement, between an authenticated request and
    a signed Txn-Token."""

    def __init__(
        self,
        settings: Settings,
        section: TransactionTokensSettings,
        *,
        verification: TokenVerification,
        revocations: TokenRegistry,
        delegation: Delegation,
        permission_sources: Mapping[str, PermissionSource],
        signer: Signer,
        limiter: RateLimiter | None = None,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.section = section
        self.domain = TrustDomain(section.audience)
        self.verification = verification
        self.revocations = revocations
        self.permission_sources = permission_sources
        self.signer = signer
        self.limiter = limiter
        self.clock = clock
        self.metrics = metrics
        self.delegation = delegation
        own = next((u for u in settings.upstreams if u.issuer == settings.issuer), None)
        #: Our own access tokens are verified by the [[upstreams]] entry for our issuer when
        #: there is one (its conditions apply); otherwise with our keys, without HTTP.
        self._own_configured = own is not None
        self._own = own or UpstreamSettings.model_validate(
            {
                "issuer": settings.issuer,
                "audiences": [api.audience for api in settings.apis],
                "jwks_uri": settings.jwks_uri,
            }
        )
        #: What a Txn-Token presented for replacement must be: ours, for this trust domain,
        #: unexpired to the second (§10.7: "MUST NOT issue a new Txn-Token when the Txn-Token
        #: being replaced has expired").
        self.replaced_policy = JwtPolicy(
            issuer=settings.issuer,
            audiences=(section.audience,),
            algorithms=SIGNING_ALGORITHMS,
            required=(*TXN_TOKEN_CLAIMS, "iss"),
            leeway=0,
            typ=TXN_TOKEN_TYP,
        )

    @property
    def source(self) -> PermissionSource:
        """The source asked: the one named, or the only one configured."""
        name = self.section.permissions or next(iter(self.settings.permissions))
        return self.permission_sources[name]

    def issue(
        self, request: ExchangeRequest, client: ClientSettings, record: RequestRecord
    ) -> IssuedToken:
        """The Txn-Token for ``request``, or the OAuth error that refuses it."""
        record.grant = GRANT_NAME
        if not client.transaction_tokens:
            raise UnauthorizedClient(
                "this client may not request Txn-Tokens", reason=reasons.TXN_TOKEN_NOT_ALLOWED
            )
        if request.audiences != (self.section.audience,):
            # §6.1: "The value MUST be set to the Trust Domain name."
            raise InvalidTarget(
                "audience must be the trust domain's name", reason=reasons.UNKNOWN_AUDIENCE
            )
        record.audience = self.section.audience
        if request.subject_token_type == TOKEN_TYPE_TXN_TOKEN:
            return self._replace(request, client, record)
        subject = self._subject(request.subject_token, client, record)
        requested = self._within(request.scopes or (), subject_scopes(subject.claims), client)
        self._count(subject, client)
        # A user's token that an agent holds (act): the question names the agents, and the
        # Txn-Token carries them on, so that the agent's limits hold through the call chain.
        act = self.delegation.claims(
            subject, None, record, max_depth=client.max_delegation_depth
        ).get("act")
        decision = self._decide(client, requested, subject, act, request)
        context = dict(request.request_context or {})
        if record.caller_address is not None:
            context[WORKLOAD_ADDRESS] = record.caller_address
        else:
            context.pop(WORKLOAD_ADDRESS, None)
        return self._sign(
            record,
            txn=str(uuid.uuid4()),
            sub=subject.minted_subject,
            scopes=grant_scopes(requested, decision.scopes),
            client=client,
            tctx=dict(decision.claims),
            rctx=context,
            not_after=subject.expires_at,
            act=act,
        )

    def _subject(self, token: str, client: ClientSettings, record: RequestRecord) -> VerifiedToken:
        """The subject token verified: an upstream's (its conditions and the client's apply,
        as for an exchange), or an access token of ours (§6.2: "an inbound token received by
        an external endpoint"), not revoked."""
        if not self._own_configured and _claimed_issuer(token) == self.settings.issuer:
            try:
                claims = self.revocations.verify(token)
            except TokenRejected as e:
                raise refused(
                    record,
                    self.metrics,
                    e.code,
                    f"subject_token {e.reason}",
                    parameter="subject_token",
                ) from None
            subject = VerifiedToken(upstream=self._own, claims=claims)
            self.verification.check_not_revoked(subject, "subject_token", record)
        else:
            subject = self.verification.verify(token, "subject_token", record)
        record.issuer, record.sub = subject.issuer, subject.minted_subject
        if subject.issuer == self.settings.issuer:
            # Presented by any workload but its API's, a token for one API would become a
            # transaction at any other.
            check_minted_for(client, subject, record, self.metrics)
        # A DPoP-bound token was proved to the API that received it; the workload presenting
        # it here is that API and authenticates with its own key (private_key_jwt), so no
        # proof is asked for. Its binding must still be one we can read, and an upstream that
        # issues bound tokens only still accepts no other.
        bound_key(subject, "subject_token", record, self.metrics)
        if subject.upstream.actor_only:
            raise refused(
                record,
                self.metrics,
                "actor_only",
                "subject_token is not acceptable (its issuer's tokens are actor tokens only)",
                parameter="subject_token",
            )
        check_conditions(
            subject.upstream.conditions,
            subject.upstream_failure,
            "upstreams.conditions",
            "subject_token",
            record,
            self.metrics,
        )
        check_client_subject(client, subject.claims, "subject_token", record, self.metrics)
        return subject

    def _replace(
        self, request: ExchangeRequest, client: ClientSettings, record: RequestRecord
    ) -> IssuedToken:
        """A replacement for the Txn-Token presented (§10.7)."""
        try:
            claims = self.revocations.verify(request.subject_token, self.replaced_policy)
        except TokenRejected as e:
            raise refused(
                record, self.metrics, e.code, f"subject_token {e.reason}", parameter="subject_token"
            ) from None
        txn, sub, tctx, rctx = (
            claims["txn"],
            claims["sub"],
            claims.get("tctx", {}),
            claims.get("rctx", {}),
        )
        chain = claims.get(CALL_CHAIN, [])
        act = claims.get("act")
        if not (
            (act is None or isinstance(act, dict))
            and isinstance(txn, str)
            and isinstance(claims["req_wl"], str)
            and isinstance(claims["scope"], str)
            and isinstance(tctx, dict)
            and isinstance(rctx, dict)
            and isinstance(chain, list)
            and all(isinstance(w, str) for w in chain)
        ):
            raise refused(
                record,
                self.metrics,
                "invalid_claim",
                "subject_token has an invalid Txn-Token claim",
                parameter="subject_token",
            )
        record.issuer, record.sub, record.txn = self.settings.issuer, sub, txn
        chain = [*chain, claims["req_wl"]]
        if len(chain) > self.section.max_replacements:
            # §10.7: "SHOULD limit the number of times a Txn-Token is replaced".
            raise refused(
                record,
                self.metrics,
                "txn_replacements",
                "subject_token has been replaced as often as it may be",
                parameter="subject_token",
            )
        check_client_subject(client, claims, "subject_token", record, self.metrics)
        subject = VerifiedToken(upstream=self._own, claims=claims)
        requested = self._within(request.scopes or (), _scope_tokens(claims["scope"]), client)
        self._count(subject, client)
        decision = self._decide(client, requested, subject, act, request)
        # The transaction's context was asserted when it began: a later workload may add to
        # it, never change it.
        added = {k: v for k, v in (request.request_context or {}).items() if k != WORKLOAD_ADDRESS}
        return self._sign(
            record,
            txn=txn,
            sub=sub,
            scopes=grant_scopes(requested, decision.scopes),
            client=client,
            tctx=narrowed(tctx, decision.claims),
            rctx={**added, **rctx},
            not_after=int(claims["exp"]),
            chain=chain,
            act=act,
        )

    def _within(
        self, requested: tuple[str, ...], held: frozenset[str] | None, client: ClientSettings
    ) -> tuple[str, ...]:
        """§10.12: the requested scope is "equal or less than" the subject token's; §10.13: a
        subject token whose scope is unknown is refused. And a workload with ``scopes`` asks
        for those only."""
        if client.scopes is not None and not set(requested) <= set(client.scopes):
            raise InvalidScope(
                "this client may not request one of those scopes",
                reason=reasons.SCOPE_NOT_ALLOWED,
            )
        if held is None:
            raise InvalidScope(
                "the subject_token states no scope, so none can be granted",
                reason=reasons.SUBJECT_SCOPE_UNKNOWN,
            )
        if not set(requested) <= held:
            raise InvalidScope(
                "scope exceeds the subject_token's scope", reason=reasons.SCOPE_EXCEEDS_SUBJECT
            )
        return requested

    def _decide(
        self,
        client: ClientSettings,
        requested: tuple[str, ...],
        subject: VerifiedToken,
        act: Mapping[str, Any] | None,
        request: ExchangeRequest,
    ) -> Decision:
        """The permissions question of a Txn-Token (issued or replaced): no resource, the
        agents that act (``act``) named, the request's details passed on."""
        return decide(
            self.source,
            self.domain,
            client_id=client.client_id,
            scopes=requested,
            resources=(),
            authorization_details=(),
            subject=subject,
            actor=None,
            grant=GRANT_NAME,
            act=act,
            request_details=request.request_details,
        )

    def _count(self, subject: VerifiedToken, client: ClientSettings) -> None:
        if self.limiter is not None:
            self.limiter.subject(subject.issuer, subject.subject)
            self.limiter.client(client.client_id)

    def _sign(
        self,
        record: RequestRecord,
        *,
        txn: str,
        sub: str,
        scopes: tuple[str, ...],
        client: ClientSettings,
        tctx: dict[str, Any],
        rctx: dict[str, Any],
        not_after: int,
        chain: list[str] | None = None,
        act: Mapping[str, Any] | None = None,
    ) -> IssuedToken:
        now = int(self.clock())
        expires_at = min(now + self.section.token_ttl, not_after)
        if expires_at - now < 1:
            raise refused(
                record,
                self.metrics,
                "expired",
                "subject_token has expired",
                parameter="subject_token",
            )
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "iat": now,
            "exp": expires_at,
            "aud": self.section.audience,
            "txn": txn,
            "sub": sub,
            "scope": " ".join(scopes),
            "req_wl": client.client_id,
        }
        if chain:
            claims[CALL_CHAIN] = chain
        if act is not None:
            # RFC 8693 §4.1: the agents acting for sub, the current one first.
            claims["act"] = act
        claims["tctx"] = tctx
        claims["rctx"] = rctx
        token, kid = sign(self.signer, claims, typ=TXN_TOKEN_TYP)
        if len(token) > MAX_TOKEN_LENGTH:
            # No verifier of ours (nor a replacement) would take it: refused here instead.
            raise InvalidRequest(
                "the Txn-Token would be too large (request_context and the permissions answer)",
                reason=reasons.TXN_CONTEXT_INVALID,
            )
        record.txn, record.kid, record.scope = txn, kid, claims["scope"]
        return IssuedToken(
            access_token=token,
            issued_token_type=TOKEN_TYPE_TXN_TOKEN,
            expires_in=expires_at - now,
            scope=claims["scope"],
            token_type=TOKEN_TYPE_N_A,
        )


def _claimed_issuer(token: str) -> str | None:
    """The ``iss`` a token claims, unverified: only which verification applies (the token is
    verified next). Read from the payload segment alone, without a full parse: a Txn-Token
    request for an upstream's token is served from the verified-token cache, and would
    otherwise parse the token every time."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        payload = strictjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    iss = payload.get("iss") if isinstance(payload, dict) else None
    return iss if isinstance(iss, str) else None


def _scope_tokens(scope: str) -> frozenset[str]:
    """RFC 6749 §3.3: a scope is a list of space-delimited (0x20) strings."""
    return frozenset(s for s in scope.split(" ") if s)


def _canonical(value: Any) -> str:
    """A JSON value as one string: equal values, equal strings (so 1 and true differ)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
