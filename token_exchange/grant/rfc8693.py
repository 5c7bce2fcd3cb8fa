"""The token exchange grant (RFC 8693): verify -> trust -> delegation -> binding ->
permissions -> mint.

HTTP-free: ``TokenExchange.parse`` validates the request parameters (RFC 8693 §2.1, in
``request``) and ``TokenExchange.exchange`` turns a request from an authenticated client into a
minted RFC 9068 access token, or raises the OAuth error that RFC 8693 §2.2.2 prescribes. Each
step lives in the module of its concern, for other grants to reuse: ``verification``,
``trust``, ``delegation``, ``binding``, ``decision``, ``minting``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..config.settings import ClientSettings, Settings
from ..oauth import reasons
from ..oauth.clock import Clock
from ..oauth.dpop import Nonces, Proof
from ..oauth.errors import InvalidRequest
from ..oauth.profile import GRANT_TYPE
from ..obs import tracing
from ..sources.keys import Signer
from ..sources.permissions import PermissionSource
from ..sources.store import MemoryStore, Store
from .binding import DpopProofs, check_binding, require_proof
from .delegation import Delegation
from .introspection import TokenRegistry
from .minting import IssuedToken, Minter
from .policy import (
    check_authorization_details,
    check_client_target,
    resolve_api,
    select_scopes,
)
from .ratelimit import RateLimiter
from .record import RequestRecord, refused
from .request import PARAMETERS, ExchangeRequest
from .trust import chained_scopes, check_actor_bound, check_client_subject, check_conditions
from .txn import TransactionTokens
from .upstream import UpstreamVerifier, VerifiedToken
from .verification import TokenVerification

if TYPE_CHECKING:
    from ..obs.metrics import Metrics


class TokenExchange:
    """The grant: everything between an authenticated request and a minted token."""

    #: The ``grant_type`` it answers (RFC 8693 §2.1) and the form parameters it reads.
    grant_type = GRANT_TYPE
    parameters = PARAMETERS

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
        #: The token endpoint's DPoP proofs. Used proofs are remembered in the shared store, so
        #: that a proof is used once across every replica; by default this process's memory.
        self.proofs = DpopProofs(
            settings.dpop,
            token_endpoint=settings.token_endpoint,
            replay=MemoryStore() if replay is None else replay,
            clock=clock,
            metrics=metrics,
        )
        self.verifier = verifier
        #: Which of our own tokens are revoked (``/revoke``), for those presented back to us.
        self.revocations = revocations
        self.limiter = limiter
        self.clock = clock
        self.metrics = metrics
        self.minter = Minter(
            settings,
            permission_sources=permission_sources,
            signer=signer,
            revocations=revocations,
            clock=clock,
            metrics=metrics,
        )
        self.verification = TokenVerification(
            verifier, revocations, own_issuer=settings.issuer, metrics=metrics
        )
        prefixes = {u.issuer: u.subject_prefix for u in settings.upstreams}
        self.delegation = Delegation(settings.issuer, prefixes, metrics)
        #: How many issuers are trusted (``trust.check_actor_bound``).
        self._issuers = len(prefixes)
        #: The Txn-Token service, when this service is one ([transaction_tokens]).
        self.transaction_tokens = (
            None
            if settings.transaction_tokens is None
            else TransactionTokens(
                settings,
                settings.transaction_tokens,
                verification=self.verification,
                revocations=revocations,
                delegation=self.delegation,
                permission_sources=permission_sources,
                signer=signer,
                limiter=limiter,
                clock=clock,
                metrics=metrics,
            )
        )

    # The minter's permission sources and signer, as the grant was built with them.
    @property
    def permission_sources(self) -> Mapping[str, PermissionSource]:
        return self.minter.permission_sources

    @permission_sources.setter
    def permission_sources(self, sources: Mapping[str, PermissionSource]) -> None:
        self.minter.permission_sources = sources
        if self.transaction_tokens is not None:
            self.transaction_tokens.permission_sources = sources

    @property
    def signer(self) -> Signer:
        return self.minter.signer

    @signer.setter
    def signer(self, signer: Signer) -> None:
        self.minter.signer = signer
        if self.transaction_tokens is not None:
            self.transaction_tokens.signer = signer

    # The DPoP proofs' store and nonces, as the grant was built with them.
    @property
    def replay(self) -> Store:
        return self.proofs.replay

    @replay.setter
    def replay(self, store: Store) -> None:
        self.proofs.replay = store

    @property
    def nonces(self) -> Nonces | None:
        return self.proofs.nonces

    @nonces.setter
    def nonces(self, nonces: Nonces | None) -> None:
        self.proofs.nonces = nonces

    def dpop_proof(self, values: Sequence[str], method: str, record: RequestRecord) -> Proof | None:
        """``DpopProofs.proof``: the request's DPoP proof checked for our token endpoint."""
        return self.proofs.proof(values, method, record)

    def dpop_nonce(self) -> str | None:
        """``DpopProofs.nonce``: the DPoP nonce to hand out with an answer."""
        return self.proofs.nonce()

    #: The request's parameters (RFC 8693 §2.1), validated.
    parse = staticmethod(ExchangeRequest.from_form)

    def exchange(
        self,
        request: ExchangeRequest,
        client: ClientSettings,
        record: RequestRecord | None = None,
        proof: Proof | None = None,
    ) -> IssuedToken:
        """``issue``, with a record of its own unless given one."""
        return self.issue(request, client, proof, RequestRecord() if record is None else record)

    def issue(
        self,
        request: ExchangeRequest,
        client: ClientSettings,
        proof: Proof | None,
        record: RequestRecord,
    ) -> IssuedToken:
        """Mint a token for ``request`` or raise the OAuth error that explains why not.

        ``proof``: the request's verified DPoP proof (RFC 9449), if it had one; the minted
        token is then bound to its key. ``record`` receives the decision's fields (issuer,
        subject, audience, jti) as they become known; a refused token adds ``reason`` (a code
        of ours), and a condition in audit mode that fails adds an entry to ``would_refuse``.
        """
        if request.txn_token:
            # draft-ietf-oauth-transaction-tokens-10: the same grant, another token type.
            if self.transaction_tokens is None:
                raise InvalidRequest(
                    "Txn-Tokens are not issued here", reason=reasons.TOKEN_TYPE_UNSUPPORTED
                )
            return self.transaction_tokens.issue(request, client, record)
        metrics = self.metrics
        require_proof(client.dpop == "required", proof, record)
        api = resolve_api(self.settings.apis, request.audiences, request.resources)
        record.audience = api.audience
        check_client_target(client, api)
        scopes = select_scopes(api, client, request.scopes)
        check_authorization_details(api, request.authorization_details)

        if client.require_actor_token and request.actor_token is None:
            # An agent's client: without its actor token, the user's token alone would get
            # the user's own permissions, past every cap on the agent.
            raise refused(
                record,
                metrics,
                "actor_token_required",
                "this client must present its actor_token",
                parameter="actor_token",
            )
        subject = self.verification.verify(request.subject_token, "subject_token", record)
        record.issuer, record.sub = subject.issuer, subject.minted_subject
        if subject.upstream.actor_only:
            # A workload's token (a service account's, a JWT-SVID) is no user's.
            raise refused(
                record,
                metrics,
                "actor_only",
                "subject_token is not acceptable (its issuer's tokens are actor tokens only)",
                parameter="subject_token",
            )
        subject_bound = check_binding(
            request.subject_token,
            subject,
            proof,
            "subject_token",
            record,
            metrics,
            ath_required=True,
        )
        if subject.issuer == self.settings.issuer:
            scopes = chained_scopes(
                client,
                api,
                subject,
                scopes,
                actor_token=request.actor_token,
                record=record,
                metrics=metrics,
            )
        # The issuer's conditions were evaluated at verification (they depend on the token
        # alone); the client's depend on who presents it, so they are evaluated every time.
        with tracing.span("trust policy"):
            check_conditions(
                subject.upstream.conditions,
                subject.upstream_failure,
                "upstreams.conditions",
                "subject_token",
                record,
                metrics,
            )
            check_client_subject(client, subject.claims, "subject_token", record, metrics)
        if self.limiter is not None:
            # Counted only once the subject is verified: anyone can name a public client_id,
            # and garbage must not use up its budget (failures are limited per address). The
            # subject first: a user over their own limit must not use up the client's, which
            # would lock every other user of that client out.
            self.limiter.subject(subject.issuer, subject.subject)
            self.limiter.client(client.client_id)
        actor = self._verify_actor(request, client, record)
        if actor is not None and request.actor_token is not None:
            # One proof, one ath: that of the subject token when it is bound, else the actor
            # token's. A bound actor token with a bound subject token is proved by the key.
            check_binding(
                request.actor_token,
                actor,
                proof,
                "actor_token",
                record,
                metrics,
                ath_required=not subject_bound,
            )
        delegation = self.delegation.claims(
            subject,
            actor,
            record,
            max_depth=client.max_delegation_depth,
            actor_profile=client.actor_sub_profile,
        )
        delegation.update(self.delegation.derived_from(subject, actor, record))

        return self.minter.mint(
            api,
            client,
            scopes=scopes,
            target=request,
            subject=subject,
            actor=actor,
            claims=delegation,
            proof=proof,
            record=record,
            issued_token_type=request.requested_token_type,
        )

    def _verify_actor(
        self, request: ExchangeRequest, client: ClientSettings, record: RequestRecord
    ) -> VerifiedToken | None:
        """The actor token (RFC 8693 §2.1), verified and acceptable from this client."""
        if request.actor_token is None:
            return None
        if not client.allow_delegation:
            raise refused(
                record,
                self.metrics,
                "delegation_not_allowed",
                "this client may not present an actor_token",
                parameter="actor_token",
            )
        actor = self.verification.verify(request.actor_token, "actor_token", record)
        record.actor = actor.minted_subject
        if actor.claims.get("act") is not None:
            # An actor acting for someone else is not itself (the OAuth Actor Profile, §6.5.2:
            # refused, its chain never merged): a token another agent got for a user would make
            # that user the actor.
            raise refused(
                record,
                self.metrics,
                "actor_delegated",
                "actor_token is itself delegated (act)",
                parameter="actor_token",
            )
        check_actor_bound(client, self._issuers, record, self.metrics)
        check_conditions(
            client.actor_conditions,
            client.actor_conditions.first_failure(actor.claims),
            "clients.actor_conditions",
            "actor_token",
            record,
            self.metrics,
        )
        return actor
