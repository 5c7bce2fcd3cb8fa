"""Minting: the RFC 9068 access token a grant issues, signed with our key, and the answer
that carries it (RFC 8693 §2.2.1, RFC 6749 §5.1).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..config.settings import ApiSettings, ClientSettings, Settings
from ..oauth.clock import Clock
from ..oauth.dpop import Proof
from ..obs import tracing
from ..sources.permissions import PermissionSource
from .decision import decide, decided_claims
from .introspection import TokenRegistry
from .policy import grant_scopes
from .record import RequestRecord, refused
from .upstream import VerifiedToken

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

from ..oauth import reasons
from ..oauth.errors import TemporarilyUnavailable
from ..oauth.profile import ACCESS_TOKEN_TYP, TOKEN_TYPE_BEARER
from ..sources.keys import KeyStoreError, Signer

#: How the permissions question names the token exchange grant (DESIGN, "Contract additions").
GRANT_NAME = "token-exchange"


class TargetLike(Protocol):
    """What a request asks for (``request.Target``, or a grant's request that has its fields)."""

    @property
    def resources(self) -> tuple[str, ...]: ...
    @property
    def authorization_details(self) -> tuple[Mapping[str, Any], ...]: ...


@dataclass(frozen=True)
class IssuedToken:
    """The result of a grant, rendered by the view per RFC 8693 §2.2.1."""

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


def new_jti() -> str:
    """A minted token's ``jti`` (RFC 7519 §4.1.7): 128 random bits."""
    return secrets.token_urlsafe(16)


def sign(signer: Signer, claims: dict[str, Any], *, typ: str = ACCESS_TOKEN_TYP) -> tuple[str, str]:
    """The token of ``claims`` signed with our current key (JOSE header ``typ``), and that key's
    ``kid``; no key is temporarily_unavailable (never an unsigned token)."""
    try:
        with tracing.span("mint"):
            token, key = signer.sign(claims, typ=typ)
    except KeyStoreError as e:
        raise TemporarilyUnavailable(
            "no signing key is available",
            retry_after=30,
            reason=reasons.SIGNING_KEY_UNAVAILABLE,
        ) from e
    return token, key.kid


class Minter:
    """The steps every grant ends with: the permissions question (``decision``), then the RFC
    9068 access token for exactly one API, signed with our key (RFC 8693 §2.2.1)."""

    def __init__(
        self,
        settings: Settings,
        *,
        permission_sources: Mapping[str, PermissionSource],
        signer: Signer,
        revocations: TokenRegistry,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.permission_sources = permission_sources
        self.signer = signer
        self.revocations = revocations
        self.clock = clock
        self.metrics = metrics

    def mint(
        self,
        api: ApiSettings,
        client: ClientSettings,
        *,
        scopes: tuple[str, ...],
        target: TargetLike,
        subject: VerifiedToken,
        actor: VerifiedToken | None,
        claims: Mapping[str, Any],
        proof: Proof | None,
        record: RequestRecord,
        issued_token_type: str,
        grant: str = GRANT_NAME,
    ) -> IssuedToken:
        """Ask ``api``'s permission source about ``subject`` (and ``actor``) for ``target``, then
        mint the token: the decision's claims, ``claims`` (delegation), bound to ``proof``'s
        key when there is one. ``grant`` names the grant in the permissions question."""
        decision = decide(
            self.permission_sources[api.permissions],
            api,
            client_id=client.client_id,
            scopes=scopes,
            resources=target.resources,
            authorization_details=target.authorization_details,
            subject=subject,
            actor=actor,
            grant=grant,
            # The delegation chain the token will carry (RFC 8693 §4.1), the new actor on top.
            act=claims.get("act") if actor is not None else None,
        )
        granted = grant_scopes(scopes, decision.scopes)

        now = int(self.clock())
        # RFC 8693 §2.2.1 / our design: a minted token never outlives the tokens it came from.
        ttl = self.settings.signing.token_ttl
        if "act" in claims and client.delegated_token_ttl is not None:
            # An agent acting for a user: as short as its client's delegated_token_ttl says.
            ttl = min(ttl, client.delegated_token_ttl)
        expires_at = min(
            now + ttl,
            subject.expires_at,
            actor.expires_at if actor else subject.expires_at,
        )
        if expires_at - now < 1:
            raise refused(
                record,
                self.metrics,
                "expired",
                "subject_token has expired",
                parameter="subject_token",
            )
        jti = new_jti()
        minted = decided_claims(api, subject, decision, target.authorization_details)
        minted.update(claims)
        # Which life of the store it was minted in: a loss of the store's data later makes
        # the tokens of earlier lives doubtful (epoch.py), not this one.
        minted.update(self.revocations.minting_epoch())
        minted.update(
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
            # this very key (check_binding): the minted token stays bound to it.
            minted["cnf"] = {"jkt": proof.jkt}
        token, kid = sign(self.signer, minted)
        record.jti, record.kid, record.scope = jti, kid, minted["scope"]
        return IssuedToken(
            access_token=token,
            issued_token_type=issued_token_type,
            expires_in=expires_at - now,
            scope=minted["scope"],
            token_type="DPoP" if proof is not None else TOKEN_TYPE_BEARER,
        )
