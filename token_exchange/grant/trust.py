"""Trust policy: whether a verified token is acceptable from this client (RFC 8693 §2.2.2,
"unacceptable based on policy"): the issuer's and the client's conditions on its claims, and
the rules for a token of ours presented back to us (chained delegation, RFC 8693 §1.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..config.settings import ApiSettings, ClientSettings, pins_actor_issuer, receives
from ..oauth.conditions import Condition, ConditionSet
from ..oauth.errors import InvalidScope
from .record import RequestRecord, refused
from .upstream import VerifiedToken

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

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


def check_minted_for(
    client: ClientSettings, subject: VerifiedToken, record: RequestRecord, metrics: Metrics | None
) -> None:
    """A token of ours is the bearer's to present only when it was minted for it: its ``aud``
    names the client (or an API the client ``introspects``). Held by any other client it was
    leaked or passed on (the API it was sent to holds it by design, and that API is the
    client its aud names)."""
    aud = subject.claims.get("aud")
    if not (isinstance(aud, str) and receives(client.client_id, client.introspects, aud)):
        raise refused(
            record, metrics, "chained_token_wrong_client", NOT_FOR_CLIENT, parameter="subject_token"
        )


def check_client_subject(
    client: ClientSettings,
    claims: Mapping[str, Any],
    parameter: str,
    record: RequestRecord,
    metrics: Metrics | None,
) -> None:
    """The client's ``subject_conditions`` on the subject's ``claims`` (they depend on who
    presents the token, so they are evaluated on every request)."""
    if client.subject_conditions:
        check_conditions(
            client.subject_conditions,
            client.subject_conditions.first_failure(claims),
            "clients.subject_conditions",
            parameter,
            record,
            metrics,
        )


def check_conditions(
    conditions: ConditionSet,
    failure: Condition | None,
    policy: str,
    parameter: str,
    record: RequestRecord,
    metrics: Metrics | None,
) -> None:
    """Act on the first ``failure`` of ``conditions``: refuse, or in audit mode log it."""
    if failure is None:
        return
    # The audit line names the condition set, the claim and the operator; never the
    # claim's value (it may be personal data) and never to the caller.
    if conditions.mode == "audit":
        record.would_have_refused(policy, failure.claim, failure.operator)
        if metrics is not None:
            metrics.refusals.labels("condition", "audit").inc()
        return
    raise refused(
        record,
        metrics,
        "condition",
        POLICY_REFUSED.format(parameter),
        parameter=parameter,
        policy=policy,
        claim=failure.claim,
        condition=failure.operator,
    )


def check_actor_bound(
    client: ClientSettings, issuers: int, record: RequestRecord, metrics: Metrics | None
) -> None:
    """A delegating client's ``actor_conditions`` must bind its actor tokens (to an issuer,
    when ``issuers`` are trusted more than one)."""
    conditions = client.actor_conditions
    if not conditions or (
        issuers > 1 and conditions.mode == "enforce" and not pins_actor_issuer(conditions)
    ):
        # The settings refuse a delegating client that binds no actor token, or with
        # several issuers none of them; a client built some other way must not make every
        # token anyone holds (of any issuer) an actor token of its own.
        raise refused(
            record,
            metrics,
            "actor_unbound",
            POLICY_REFUSED.format("actor_token"),
            parameter="actor_token",
        )


def chained_scopes(
    client: ClientSettings,
    api: ApiSettings,
    subject: VerifiedToken,
    scopes: tuple[str, ...],
    *,
    actor_token: str | None,
    record: RequestRecord,
    metrics: Metrics | None,
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
    if not client.allow_delegation or actor_token is None:
        raise refused(
            record, metrics, "chained_token_not_allowed", CHAINED_ONLY, parameter="subject_token"
        )
    check_minted_for(client, subject, record, metrics)
    if subject.claims.get("aud") != api.audience:
        return scopes
    carried = subject.claims.get("scope")
    carried_scopes = frozenset(carried.split(" ") if isinstance(carried, str) else ())
    narrowed = tuple(scope for scope in scopes if scope in carried_scopes)
    if not narrowed:
        record.reason = "scope_not_carried"
        record.parameter = "subject_token"
        raise InvalidScope("the subject_token carries none of the requested scopes")
    return narrowed
