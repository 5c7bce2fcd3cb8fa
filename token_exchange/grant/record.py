"""The record of one token request: what the grant learnt, and why it refused (if it did).

The grant owns it and fills it as the request goes (RFC 8693 §2.2: who asked, for which
audience, with whose token); the pipeline returns it with the issued token or attaches it to
the OAuth error (``OAuthError.record``), and the view writes it as the request's one audit line
(``as_audit``). No field holds a token or a secret: what the caller wrote is logged only cut
and escaped (``pipeline``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..oauth.errors import InvalidRequest
from ..obs.logs import printable
from .clients import claimed_client_id

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

#: What a refusal's audit line keeps of values the caller wrote: so many characters of each,
#: so many values of a repeated parameter.
MAX_LOGGED_VALUE = 200
MAX_LOGGED_VALUES = 5


class RequestRecord:
    """One token request's audit fields, each typed and None until known; the line carries
    ``client_id`` always (None: no client was authenticated) and the others once they are set.

    The defaults are the class's own: an instance holds the fields set, in the order they were
    set, which is the order of the audit line (``as_audit``).
    """

    #: The authenticated client.
    client_id: str | None = None
    #: The grant, when it is not token exchange (``jwt-bearer``), and its assertion's profile
    #: (``id-jag``, ``workload``).
    grant: str | None = None
    profile: str | None = None
    #: The thumbprint of the DPoP proof's key (RFC 9449 §6.1).
    jkt: str | None = None
    #: The API the token is for (RFC 8693 §2.1 ``audience``/``resource`` resolved).
    audience: str | None = None
    #: The subject token's verified issuer and the ``sub`` of the token minted for it.
    issuer: str | None = None
    sub: str | None = None
    #: The actor token's minted ``sub`` (RFC 8693 §4.1).
    actor: str | None = None
    #: The conditions in audit mode that failed (each a policy, claim and condition).
    would_refuse: list[dict[str, str]] | None = None
    #: The minted token's ``jti``, signing key and granted scope; ``kid`` is also the unknown
    #: key a refused token named.
    jti: str | None = None
    #: A Txn-Token's transaction (its ``txn``, kept by every replacement).
    txn: str | None = None
    kid: str | None = None
    scope: str | None = None
    #: Why the request was refused: a code of ``oauth.reasons`` or of the grant's own.
    reason: str | None = None
    #: The parameter whose token was refused.
    parameter: str | None = None
    #: What a refused token claimed as its issuer, unverified and cut.
    token_iss: str | None = None
    #: The condition that refused: its set, its claim and its operator (never the value).
    policy: str | None = None
    claim: str | None = None
    condition: str | None = None
    #: A fixed text of ours that says more than ``reason`` (``OAuthError.detail``).
    detail: str | None = None
    #: What a refused request asked for, cut and escaped; the client_id it claimed when none
    #: was authenticated.
    requested_audience: list[str] | None = None
    requested_resource: list[str] | None = None
    requested_scope: str | None = None
    attempted_client_id: str | None = None

    def __init__(self, client_id: str | None = None) -> None:
        self.client_id = client_id

    #: The address the request came from (the token endpoint's caller), for a grant that
    #: states it (a Txn-Token's ``rctx``); the view logs it on its own, not in these fields.
    @property
    def caller_address(self) -> str | None:
        return self.__dict__.get("_caller_address")

    @caller_address.setter
    def caller_address(self, address: str | None) -> None:
        self.__dict__["_caller_address"] = address

    def as_audit(self) -> dict[str, Any]:
        """The audit line's fields: ``client_id``, then every field set, in the order the
        request set them."""
        fields = dict(self.__dict__)
        fields.pop("_caller_address", None)
        return fields

    def __repr__(self) -> str:
        return f"RequestRecord({self.__dict__!r})"

    def settle(self, reason: str, detail: str | None = None) -> None:
        """A refusal's ``reason`` and ``detail``, unless the grant named finer ones already."""
        if self.reason is None:
            self.reason = reason
        if detail is not None and self.detail is None:
            self.detail = detail

    def asked(
        self,
        form: Mapping[str, Sequence[str]],
        values: Mapping[str, str],
        authorization: str | None,
    ) -> None:
        """What a refused request asked for: the requested ``audience``, ``resource`` and
        ``scope`` and, when no client was authenticated, the client_id the request named
        (``attempted_client_id``; ``authorization`` is its Authorization header). All that the
        caller wrote is cut to ``MAX_LOGGED_VALUE`` characters with control characters
        escaped."""
        for name in ("audience", "resource"):
            given = [v for v in form.get(name, ()) if v]
            if given:
                logged = [printable(v, MAX_LOGGED_VALUE) for v in given[:MAX_LOGGED_VALUES]]
                if name == "audience":
                    self.requested_audience = logged
                else:
                    self.requested_resource = logged
        if "scope" in values:
            self.requested_scope = printable(values["scope"], MAX_LOGGED_VALUE)
        if self.client_id is None:
            attempted = claimed_client_id(authorization, values)
            if attempted is not None:
                self.attempted_client_id = printable(attempted, MAX_LOGGED_VALUE)

    def would_have_refused(self, policy: str, claim: str, condition: str) -> None:
        """A condition in audit mode failed: logged, not refused."""
        why = {"reason": "condition", "policy": policy, "claim": claim, "condition": condition}
        if self.would_refuse is None:
            self.would_refuse = [why]
        else:
            self.would_refuse.append(why)


def refused(
    record: RequestRecord,
    metrics: Metrics | None,
    reason: str,
    description: str,
    *,
    parameter: str | None = None,
    token_iss: str | None = None,
    policy: str | None = None,
    claim: str | None = None,
    condition: str | None = None,
) -> InvalidRequest:
    """The refusal of a token (invalid_request, RFC 8693 §2.2.2), to raise: records ``reason``
    and what it concerns, and counts it; ``description`` is what the caller sees."""
    record.reason = reason
    if parameter is not None:
        record.parameter = parameter
    if token_iss is not None:
        record.token_iss = token_iss
    if policy is not None:
        record.policy, record.claim, record.condition = policy, claim, condition
    if metrics is not None:
        metrics.refusals.labels(reason, "enforce").inc()
    return InvalidRequest(description, reason=reason)
