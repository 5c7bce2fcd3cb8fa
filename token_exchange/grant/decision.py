"""The permissions question: what this subject may do at this API for this request (the
token's scopes and claims, RFC 8693 §2.2.1 "downscoped"), asked of the API's permission source.

A source that cannot answer is temporarily_unavailable (we fail closed); a refusal is
invalid_target (RFC 8707 §2, RFC 8693 §2.2.2).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from ..config.settings import ApiSettings
from ..oauth import reasons
from ..oauth.errors import (
    InvalidAuthorizationDetails,
    InvalidTarget,
    TemporarilyUnavailable,
    UpstreamUnavailable,
)
from ..obs import tracing
from ..sources.permissions import Decision, PermissionRequest, PermissionSource
from .policy import check_authorization_details
from .upstream import VerifiedToken

#: The name operators route these lines by, which they had before the grant was split up.
log = logging.getLogger("token_exchange.grant.exchange")


class Audience(Protocol):
    """What a question is about: an API (``ApiSettings``), or a trust domain (Txn-Tokens)."""

    @property
    def audience(self) -> str: ...
    @property
    def authorization_details_types(self) -> tuple[str, ...]: ...


def decide(
    source: PermissionSource,
    api: Audience,
    *,
    client_id: str,
    scopes: tuple[str, ...],
    resources: tuple[str, ...],
    authorization_details: tuple[Mapping[str, Any], ...],
    subject: VerifiedToken,
    actor: VerifiedToken | None,
    grant: str = "token-exchange",
    act: Mapping[str, Any] | None = None,
    request_details: Mapping[str, Any] | None = None,
) -> Decision:
    """``source``'s decision for ``subject`` (and ``actor``) at ``api``, allowed; or the error
    that refuses, or says it cannot be decided now."""
    question = PermissionRequest(
        subject=subject.subject,
        issuer=subject.issuer,
        client_id=client_id,
        audience=api.audience,
        scopes=scopes,
        resources=resources,
        authorization_details=authorization_details,
        subject_claims=subject.claims,
        actor=(
            {
                "subject": actor.subject,
                "issuer": actor.issuer,
                # Which application the actor is (the client it got its token as): what a
                # permissions API intersects with the user's permissions per agent.
                "client_id": _client_of(actor.claims),
                "claims": dict(actor.claims),
            }
            if actor
            else None
        ),
        act=act,
        valid_until=min(subject.expires_at, actor.expires_at if actor else subject.expires_at),
        grant=grant,
        request_details=request_details,
    )
    try:
        with tracing.span("permissions"):
            decision = source.decide(question)
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
            log.warning("permissions_answer_invalid", extra={"fields": {"audience": api.audience}})
            raise TemporarilyUnavailable(
                "the permissions service answered badly; try again later",
                reason=reasons.PERMISSIONS_ANSWER_INVALID,
            ) from None
    return decision


def _client_of(claims: Mapping[str, Any]) -> str | None:
    """The client an actor token was issued to: RFC 9068 ``client_id``, else OIDC ``azp``."""
    for name in ("client_id", "azp"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def decided_claims(
    api: ApiSettings,
    subject: VerifiedToken,
    decision: Decision,
    authorization_details: tuple[Mapping[str, Any], ...],
) -> dict[str, Any]:
    """The minted token's claims from the subject token (the API's ``copy_claims``) and from
    the decision, with the RFC 9396 ``authorization_details`` asked for (as granted)."""
    claims: dict[str, Any] = {
        name: subject.claims[name] for name in api.copy_claims if name in subject.claims
    }
    claims.update(decision.claims)
    if authorization_details:
        details = decision.authorization_details
        claims["authorization_details"] = list(
            authorization_details if details is None else details
        )
    return claims
