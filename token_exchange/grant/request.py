"""The token exchange request (RFC 8693 §2.1), parsed from the form into a typed request.

``single_values`` applies RFC 6749 §3.1-3.2 to any grant's form (no repeats, empty is omitted);
``ExchangeRequest.from_form`` validates token exchange's own parameters, RFC 8707 ``resource``
and RFC 9396 ``authorization_details``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..oauth import reasons, strictjson
from ..oauth.errors import (
    InvalidAuthorizationDetails,
    InvalidRequest,
    InvalidTarget,
)
from ..oauth.profile import (
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_JWT,
    TOKEN_TYPE_REFRESH_TOKEN,
    TOKEN_TYPE_TXN_TOKEN,
)
from ..oauth.uris import resource_problem
from .policy import parse_scope

#: Subject/actor token types we can verify: both are JWTs from a configured issuer.
ACCEPTED_TOKEN_TYPES = frozenset({TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT})
#: What we mint; ``issued_token_type`` echoes the request (RFC 8693 §2.2.1).
ISSUABLE_TOKEN_TYPES = frozenset({TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, TOKEN_TYPE_TXN_TOKEN})
#: A Txn-Token's subject: a token we can verify, or a Txn-Token to replace (draft-ietf-oauth-
#: transaction-tokens-10 §6.2, §10.7). A Txn-Token is never the subject of anything else.
TXN_SUBJECT_TOKEN_TYPES = ACCEPTED_TOKEN_TYPES | {TOKEN_TYPE_TXN_TOKEN}
#: The Txn-Token request's JSON parameters (§6.1): their largest size and deepest nesting. The
#: context is signed into the token and travels with every call of the chain.
TXN_JSON_PARAMETERS = ("request_context", "request_details")
MAX_TXN_JSON_BYTES = 4096
MAX_TXN_JSON_DEPTH = 8
#: RFC 8693 §2.1 lets these repeat; any other parameter appearing twice is invalid_request
#: (RFC 6749 §3.2: "Request and response parameters MUST NOT be included more than once").
MULTI_VALUED = frozenset({"audience", "resource"})
PARAMETERS = frozenset(
    {
        "grant_type", "client_id", "client_secret", "subject_token", "subject_token_type",
        "actor_token", "actor_token_type", "requested_token_type", "scope", "audience",
        "resource", "authorization_details", "request_context", "request_details",
    }
)  # fmt: skip


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
    #: A Txn-Token request's ``request_context`` and ``request_details`` (JSON objects).
    request_context: Mapping[str, Any] | None = None
    request_details: Mapping[str, Any] | None = None

    @property
    def txn_token(self) -> bool:
        """Whether a Txn-Token is asked for (draft-ietf-oauth-transaction-tokens-10 §6.1)."""
        return self.requested_token_type == TOKEN_TYPE_TXN_TOKEN

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
        requested = values.get("requested_token_type", TOKEN_TYPE_ACCESS_TOKEN)
        if requested == TOKEN_TYPE_REFRESH_TOKEN:
            raise InvalidRequest(
                "refresh tokens are not issued", reason=reasons.TOKEN_TYPE_UNSUPPORTED
            )
        if requested not in ISSUABLE_TOKEN_TYPES:
            raise InvalidRequest(
                "requested_token_type must be an access_token, jwt or txn_token token type",
                reason=reasons.TOKEN_TYPE_UNSUPPORTED,
            )
        if requested == TOKEN_TYPE_TXN_TOKEN:
            return cls._txn_token_request(form, values, subject_token, subject_token_type)
        for name in TXN_JSON_PARAMETERS:
            if name in values:
                raise InvalidRequest(
                    f"{name} is a parameter of a Txn-Token request only",
                    reason=reasons.TXN_CONTEXT_INVALID,
                )
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

        target = Target.from_form(form, values)
        return cls(
            subject_token=subject_token,
            subject_token_type=subject_token_type,
            requested_token_type=requested,
            audiences=target.audiences,
            resources=target.resources,
            scopes=target.scopes,
            authorization_details=target.authorization_details,
            actor_token=actor_token,
            actor_token_type=actor_token_type,
        )

    @classmethod
    def _txn_token_request(
        cls,
        form: Mapping[str, Sequence[str]],
        values: Mapping[str, str],
        subject_token: str,
        subject_token_type: str,
    ) -> ExchangeRequest:
        """A Txn-Token request (draft-ietf-oauth-transaction-tokens-10 §6.1): ``audience``
        and ``scope`` are REQUIRED; no actor, resource or authorization details (a Txn-Token
        is for the trust domain, its purpose is its scope)."""
        if subject_token_type not in TXN_SUBJECT_TOKEN_TYPES:
            raise InvalidRequest(
                "subject_token_type must be an access_token, jwt or txn_token token type",
                reason=reasons.TOKEN_TYPE_UNSUPPORTED,
            )
        for name in ("actor_token", "actor_token_type", "resource", "authorization_details"):
            if name in values:
                raise InvalidRequest(
                    f"a Txn-Token request takes no {name}", reason=reasons.REQUEST_MALFORMED
                )
        audiences = tuple(dict.fromkeys(v for v in form.get("audience", ()) if v))
        if not audiences:
            raise InvalidRequest(
                "audience (the trust domain) is required", reason=reasons.PARAMETER_MISSING
            )
        scopes = parse_scope(values.get("scope"))
        if scopes is None:
            raise InvalidRequest(
                "scope (the transaction's purpose) is required", reason=reasons.PARAMETER_MISSING
            )
        return cls(
            subject_token=subject_token,
            subject_token_type=subject_token_type,
            requested_token_type=TOKEN_TYPE_TXN_TOKEN,
            audiences=audiences,
            scopes=scopes,
            request_context=_json_object(values, "request_context"),
            request_details=_json_object(values, "request_details"),
        )


def _json_object(values: Mapping[str, str], name: str) -> Mapping[str, Any] | None:
    """The form parameter ``name``: a JSON object (RFC 8259 only), bounded in size and depth;
    None when omitted."""
    text = values.get(name)
    if text is None:
        return None
    value = None
    if len(text.encode(errors="replace")) <= MAX_TXN_JSON_BYTES:
        try:
            value = strictjson.loads(text, max_depth=MAX_TXN_JSON_DEPTH)
        except ValueError:
            value = None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"{name} must be a JSON object of at most {MAX_TXN_JSON_BYTES} bytes and "
            f"{MAX_TXN_JSON_DEPTH} levels",
            reason=reasons.TXN_CONTEXT_INVALID,
        )
    return value


@dataclass(frozen=True)
class Target:
    """What a token request asks for, whatever its grant: the API (RFC 8693 §2.1 ``audience``,
    RFC 8707 ``resource``), the ``scope`` (RFC 6749 §3.3) and RFC 9396
    ``authorization_details``."""

    audiences: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    scopes: tuple[str, ...] | None = None
    authorization_details: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_form(cls, form: Mapping[str, Sequence[str]], values: Mapping[str, str]) -> Target:
        resources = tuple(dict.fromkeys(v for v in form.get("resource", ()) if v))
        for resource in resources:
            if why := resource_problem(resource):
                # RFC 8707 §2: an invalid or malformed resource is invalid_target.
                raise InvalidTarget(why, reason=reasons.RESOURCE_INVALID)
        return cls(
            audiences=tuple(dict.fromkeys(v for v in form.get("audience", ()) if v)),
            resources=resources,
            scopes=parse_scope(values.get("scope")),
            authorization_details=_parse_authorization_details(values.get("authorization_details")),
        )


def _parse_authorization_details(value: str | None) -> tuple[Mapping[str, Any], ...]:
    """RFC 9396 §2: a JSON array of objects, each with a string ``type``. RFC 8259 JSON only
    (``strictjson``): the details are sent on to the permissions API and signed into tokens."""
    if value is None:
        return ()
    try:
        details = strictjson.loads(value)
    except ValueError as e:
        raise InvalidAuthorizationDetails(
            f"authorization_details is not RFC 8259 JSON: {strictjson.problem(e)}",
            reason=reasons.AUTHORIZATION_DETAILS_INVALID,
        ) from None
    if not isinstance(details, list) or not all(
        isinstance(d, dict) and isinstance(d.get("type"), str) and d["type"] for d in details
    ):
        raise InvalidAuthorizationDetails(
            "authorization_details must be a JSON array of objects, each with a type",
            reason=reasons.AUTHORIZATION_DETAILS_INVALID,
        )
    return tuple(details)
