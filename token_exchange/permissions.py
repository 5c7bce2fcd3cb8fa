"""Permission sources: who decides what a subject may do for one exchange.

The web application's **permissions API** (``HttpPermissionSource``) answers per request; a
``StaticPermissionSource`` decides from rules in the configuration. Both return a ``Decision``.
A source that cannot decide raises ``UpstreamUnavailable``: we fail closed and never mint a token
without a decision.

Answer of the permissions API (see README, "The permissions API")::

    200 {"allow": true, "scopes": [...], "claims": {...}, "ttl": 60,
         "authorization_details": [...]}        # scopes, claims, ttl, details optional
    200 {"allow": false}  or  403               # a refusal
    anything else, a timeout, or a malformed body   # cannot decide: 503 for the caller
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from .errors import UpstreamUnavailable
from .http import call, new_session
from .settings import (
    REGISTERED_CLAIMS,
    HttpPermissionsSettings,
    PermissionsSettings,
    StaticPermissionsSettings,
    StaticRule,
)
from .uris import resource_under

log = logging.getLogger(__name__)

#: Largest answer we read from the permissions API.
MAX_ANSWER_BYTES = 256 * 1024
#: Largest ``ttl`` we take from an answer (caching lands with the shared store).
MAX_ANSWER_TTL = 86_400


@dataclass(frozen=True)
class PermissionRequest:
    """What we ask the permissions API; ``to_json`` is the documented request body."""

    subject: str
    issuer: str
    client_id: str
    audience: str
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    authorization_details: tuple[Mapping[str, Any], ...]
    subject_claims: Mapping[str, Any]
    actor: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "subject": self.subject,
            "issuer": self.issuer,
            "client_id": self.client_id,
            "audience": self.audience,
            "scopes": list(self.scopes),
            "resources": list(self.resources),
            "authorization_details": list(self.authorization_details),
            "subject_claims": dict(self.subject_claims),
        }
        if self.actor is not None:
            body["actor"] = dict(self.actor)
        return body


@dataclass(frozen=True)
class Decision:
    allow: bool
    #: Granted scopes; None means "as requested". Never wider than requested (we intersect).
    scopes: tuple[str, ...] | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    ttl: int | None = None
    authorization_details: tuple[Mapping[str, Any], ...] | None = None


class PermissionSource(Protocol):
    def decide(self, request: PermissionRequest) -> Decision:
        """Decide, or raise ``UpstreamUnavailable`` when no decision can be had."""
        ...


def parse_answer(status: int, body: bytes, headers: Mapping[str, str]) -> Decision:
    """Turn an HTTP answer of the permissions API into a ``Decision`` (pure; see module doc)."""
    if status == 403:
        return Decision(allow=False)
    if status != 200:
        raise UpstreamUnavailable(f"permissions API answered HTTP {status}")
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise UpstreamUnavailable("permissions API answer is not JSON") from None
    return decision_from_json(answer, max_age=_max_age(headers.get("Cache-Control", "")))


def decision_from_json(answer: Any, *, max_age: int | None = None) -> Decision:
    """Validate the JSON answer strictly; anything unexpected means we cannot decide."""

    def malformed(why: str) -> UpstreamUnavailable:
        return UpstreamUnavailable(f"permissions API answer is malformed: {why}")

    if not isinstance(answer, dict):
        raise malformed("not a JSON object")
    allow = answer.get("allow")
    if not isinstance(allow, bool):
        raise malformed("'allow' must be true or false")
    ttl = answer.get("ttl", max_age)
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0):
        raise malformed("'ttl' must be a non-negative integer")
    if ttl is not None:
        ttl = min(ttl, MAX_ANSWER_TTL)
    if not allow:
        return Decision(allow=False, ttl=ttl)

    scopes = answer.get("scopes")
    if scopes is not None and not _is_str_list(scopes):
        raise malformed("'scopes' must be a list of strings")
    claims = answer.get("claims", {})
    if not isinstance(claims, dict):
        raise malformed("'claims' must be an object")
    # The permissions API adds claims; it can never set or override one we are responsible for.
    reserved = sorted(set(claims) & REGISTERED_CLAIMS)
    if reserved:
        raise malformed(f"claims may not include registered claims {reserved}")
    details = answer.get("authorization_details")
    if details is not None and not (
        isinstance(details, list) and all(isinstance(d, dict) for d in details)
    ):
        raise malformed("'authorization_details' must be a list of objects")
    return Decision(
        allow=True,
        scopes=tuple(scopes) if scopes is not None else None,
        claims=claims,
        ttl=ttl,
        authorization_details=tuple(details) if details is not None else None,
    )


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _max_age(cache_control: str) -> int | None:
    """``max-age`` of a Cache-Control header; ``no-store``/``no-cache`` mean 0."""
    directives = [d.strip().lower() for d in cache_control.split(",") if d.strip()]
    if "no-store" in directives or "no-cache" in directives:
        return 0
    for directive in directives:
        name, _, value = directive.partition("=")
        if name == "max-age" and value.strip('"').isdigit():
            return int(value.strip('"'))
    return None


class HttpPermissionSource:
    """The permissions API of the web application, called over a pooled HTTP session."""

    def __init__(
        self, settings: HttpPermissionsSettings, *, session: requests.Session | None = None
    ) -> None:
        self.settings = settings
        self.session = session or new_session(trust_env=False)
        self.headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if settings.token:
            self.headers["Authorization"] = f"Bearer {settings.token}"

    def decide(self, request: PermissionRequest) -> Decision:
        answer = call(
            self.session,
            "POST",
            self.settings.url,
            timeout=self.settings.timeout,
            max_bytes=MAX_ANSWER_BYTES,
            data=json.dumps(request.to_json(), separators=(",", ":")),
            headers=self.headers,
        )
        return parse_answer(answer.status, answer.body, answer.headers)


class StaticPermissionSource:
    """Rules from the configuration; the first matching rule decides, no rule means refusal."""

    def __init__(self, settings: StaticPermissionsSettings) -> None:
        self.rules = settings.rules

    def decide(self, request: PermissionRequest) -> Decision:
        for rule in self.rules:
            if _matches(rule, request):
                if not rule.allow:
                    return Decision(allow=False)
                return Decision(allow=True, scopes=rule.scopes, claims=rule.claims)
        return Decision(allow=False)


def _matches(rule: StaticRule, request: PermissionRequest) -> bool:
    def field_matches(pattern: str, value: str) -> bool:
        return pattern in ("*", value)

    return (
        field_matches(rule.subject, request.subject)
        and field_matches(rule.issuer, request.issuer)
        and field_matches(rule.client_id, request.client_id)
        and field_matches(rule.audience, request.audience)
        and _resources_covered(rule.resources, request.resources)
    )


def _resources_covered(prefixes: Sequence[str], resources: Sequence[str]) -> bool:
    if not prefixes:
        return True
    # A rule limited to some resources does not cover a request for the whole API.
    return bool(resources) and all(any(resource_under(r, p) for p in prefixes) for r in resources)


def build_source(
    settings: PermissionsSettings, *, session: requests.Session | None = None
) -> PermissionSource:
    if isinstance(settings, HttpPermissionsSettings):
        return HttpPermissionSource(settings, session=session)
    return StaticPermissionSource(settings)
