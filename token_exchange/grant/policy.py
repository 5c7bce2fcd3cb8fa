"""Pure rules of the exchange: which API a request targets, which scopes it may ask for.

No I/O here. Target selection follows RFC 8693 §2.1 (``audience``, ``resource``) and RFC 8707
§2 (resource indicators); scope rules follow RFC 6749 §3.3; authorization details RFC 9396 §2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from ..config.settings import SCOPE_TOKEN, ApiSettings, ClientSettings
from ..oauth import reasons
from ..oauth.errors import InvalidAuthorizationDetails, InvalidScope, InvalidTarget
from ..oauth.uris import canonical_resource, resource_under, same_resource


class DetailsTypes(Protocol):
    """What accepts RFC 9396 authorization details: an API, or a trust domain (none)."""

    @property
    def authorization_details_types(self) -> tuple[str, ...]: ...


def api_for_resource(apis: Iterable[ApiSettings], resource: str) -> ApiSettings | None:
    """The API a ``resource`` (RFC 8707) names: its identifier (``audience``), compared in
    canonical form (``uris.same_resource``), or under one of its ``resources`` prefixes."""
    canonical = canonical_resource(resource)
    for api in apis:
        if (
            resource == api.audience
            or same_resource(
                canonical,
                api.canonical_audience,
                trailing_slash_significant=api.trailing_slash_significant,
            )
            or any(resource_under(resource, p) for p in api.resources)
        ):
            return api
    return None


def resolve_api(
    apis: Sequence[ApiSettings], audiences: Sequence[str], resources: Sequence[str]
) -> ApiSettings:
    """The one API that every ``audience`` and ``resource`` of the request names."""
    if not audiences and not resources:
        raise InvalidTarget("audience or resource is required", reason=reasons.TARGET_MISSING)
    by_audience = {api.audience: api for api in apis}
    matched: dict[str, ApiSettings] = {}
    for audience in audiences:
        api = by_audience.get(audience)
        if api is None:
            raise InvalidTarget("audience is not a known API", reason=reasons.UNKNOWN_AUDIENCE)
        matched[api.audience] = api
    for resource in resources:
        api = api_for_resource(apis, resource)
        if api is None:
            raise InvalidTarget(
                "resource is not served by a known API", reason=reasons.UNKNOWN_RESOURCE
            )
        matched[api.audience] = api
    if len(matched) > 1:
        raise InvalidTarget(
            "a token is minted for exactly one API; the request names several",
            reason=reasons.SEVERAL_APIS,
        )
    return next(iter(matched.values()))


def check_client_target(client: ClientSettings, api: ApiSettings) -> None:
    if api.audience not in client.audiences:
        raise InvalidTarget(
            "this client may not obtain tokens for that API", reason=reasons.TARGET_NOT_ALLOWED
        )


def parse_scope(scope: str | None) -> tuple[str, ...] | None:
    """The scope parameter as a tuple of unique tokens; None when omitted (RFC 6749 §3.3)."""
    if scope is None:
        return None
    tokens = scope.split(" ")
    if any(not SCOPE_TOKEN.match(t) for t in tokens if t) or not scope.strip(" "):
        raise InvalidScope("scope is malformed", reason=reasons.SCOPE_MALFORMED)
    return tuple(dict.fromkeys(t for t in tokens if t))


def select_scopes(
    api: ApiSettings, client: ClientSettings, requested: tuple[str, ...] | None
) -> tuple[str, ...]:
    """The scopes to ask the permissions source for.

    Omitted scope means every scope of the API that the client may use; a scope the API does not
    define, or the client may not use, is ``invalid_scope``.
    """
    usable = tuple(s for s in api.scopes if client.scopes is None or s in client.scopes)
    if requested is None:
        if not usable:
            raise InvalidScope(
                "this client may use no scope of that API", reason=reasons.NO_SCOPE_ALLOWED
            )
        return usable
    if any(s not in api.scopes for s in requested):
        raise InvalidScope(
            "a requested scope is not defined by that API", reason=reasons.UNKNOWN_SCOPE
        )
    if any(s not in usable for s in requested):
        raise InvalidScope(
            "this client may not request one of those scopes", reason=reasons.SCOPE_NOT_ALLOWED
        )
    return requested


def grant_scopes(requested: tuple[str, ...], decided: tuple[str, ...] | None) -> tuple[str, ...]:
    """What the permissions answer grants: it may narrow the request, never widen it."""
    if decided is None:
        return requested
    allowed = set(decided)
    granted = tuple(s for s in requested if s in allowed)
    if not granted:
        raise InvalidScope(
            "none of the requested scopes is granted", reason=reasons.SCOPE_NOT_GRANTED
        )
    return granted


def check_authorization_details(api: DetailsTypes, details: Sequence[Mapping[str, Any]]) -> None:
    """RFC 9396 §5: every ``type`` must be one the API accepts."""
    for detail in details:
        if detail.get("type") not in api.authorization_details_types:
            raise InvalidAuthorizationDetails(
                "an authorization_details type is not accepted by that API",
                reason=reasons.AUTHORIZATION_DETAILS_TYPE,
            )
