"""A permissions source that asks a policy decision point (PDP) over the OpenID AuthZEN
Authorization API 1.0: ``type = "authzen"`` in ``[permissions.NAME]``.

One exchange is one batch ``POST <access_evaluations_endpoint>`` (AuthZEN 1.0 §7): one
evaluation per requested scope (action = the scope, or its ``actions`` mapping; resource = the
API) and one per candidate resource ID of each declared resource-ID claim. Where the PDP's
metadata (§9, ``/.well-known/authzen-configuration``) names no batch endpoint, the same
evaluations go one by one to ``access_evaluation_endpoint`` (§6). The answers become a
``Decision`` exactly like the http source's: the scopes whose ``decision`` is ``true``, and the
declared claims. Every way of not getting a decision is one error::

    refused connection, timeout, non-200, non-JSON, wrong shape, wrong count,
    metadata for another PDP or naming another origin  ->  UpstreamUnavailable (503)

AuthZEN answers carry no lifetime: answers are cached for the configured ``ttl`` (never beyond
the subject token's expiry) by ``permissions.CachingPermissionSource``.

Every configuration key is declared once, in ``AuthzenPermissionsSettings`` and
``AuthzenClaim`` (type, default, range, meaning); ``parse_authzen_settings`` validates a TOML
table against them and reports every problem at once.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import urllib3

from .errors import UpstreamUnavailable
from .http import call, new_pool
from .logs import event
from .permissions import _COMPACT, MAX_ANSWER_BYTES, Decision, PermissionRequest
from .resilience import Guard
from .settings import REGISTERED_CLAIMS
from .uris import resource_under, url_problem

if TYPE_CHECKING:
    from .metrics import Metrics
    from .store import Clock

log = logging.getLogger(__name__)

#: AuthZEN 1.0 §9: the PDP metadata document, and the default paths (§6, §7) without discovery.
WELL_KNOWN = "/.well-known/authzen-configuration"
EVALUATION_PATH = "/access/v1/evaluation"
EVALUATIONS_PATH = "/access/v1/evaluations"
#: Largest metadata document we read.
MAX_METADATA_BYTES = 64 * 1024
#: How long discovered endpoints are used before the metadata is read again (the last good
#: endpoints stay in use while it cannot be).
METADATA_TTL = 300.0
#: Most evaluations one exchange may need (scopes plus candidate IDs): more is a config mistake
#: or an abusive request, refused before any call.
MAX_EVALUATIONS = 256
#: Longest identifier (candidate ID, action name, type) we send.
MAX_NAME = 256


# --------------------------------------------------------------------------------------------
# Configuration: every key, its type, default and range, in one place.


@dataclass(frozen=True)
class AuthzenClaim:
    """``[permissions.NAME.claims.CLAIM]``: a claim of the minted token decided by the PDP.

    Either **candidates** (``resource_type`` with ``candidates_from`` and/or ``candidates``):
    each candidate resource ID is evaluated in the same batch, and the claim is the list of
    the granted IDs; or **from_context**: the value at a dotted path in the ``context`` of the
    first granted scope's decision.
    """

    name: str
    #: Resource ``type`` of the candidate evaluations (required for candidates).
    resource_type: str | None = None
    #: Action ``name`` of the candidate evaluations.
    action: str = "read"
    #: ``"resources"``: the IDs of the requested resource indicators (RFC 8707) under
    #: ``resource_prefix`` (the rest of the URI is the ID). Each one must be granted, or the
    #: exchange is refused (``invalid_target``).
    candidates_from: Literal["resources"] | None = None
    #: URI prefix of the requested resources this claim covers (required with candidates_from).
    resource_prefix: str | None = None
    #: IDs evaluated when the request names no resource under ``resource_prefix`` (at most 100).
    candidates: tuple[str, ...] = ()
    #: Dotted path into a decision's ``context``, such as ``"claims.tenant"`` (at most 8 parts).
    from_context: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AuthzenPermissionsSettings:
    """``[permissions.NAME]`` with ``type = "authzen"``: an AuthZEN 1.0 PDP."""

    name: str
    #: The PDP's base URL (its "PDP identifier"), https (http only for loopback).
    url: str
    #: Read ``/.well-known/authzen-configuration`` for the endpoints (else the standard paths).
    discovery: bool = True
    #: Without discovery: whether the PDP has the batch endpoint ``/access/v1/evaluations``.
    batch: bool = True
    #: Environment variable with the bearer token sent to the PDP (never the token itself).
    token_env: str | None = None
    token: str | None = field(default=None, repr=False)
    #: Seconds for everything one exchange asks the PDP (metadata and evaluations), > 0, <= 30.
    timeout: float = 2.0
    #: Seconds an answer is cached, 0 to 86400 (0: never); never beyond the subject token.
    ttl: int = 60
    #: Seconds a refusal (a denied requested resource) is cached, 0 to 3600.
    refusal_ttl: int = 10
    #: Seconds after expiry a cached answer may still serve while the PDP is down, 0 to 86400.
    stale_if_error: int = 0
    #: Calls in flight at once per worker, 1 to 1024; more are answered 503 at once.
    max_concurrency: int = 16
    #: Failures in a row that open the circuit breaker, 1 to 1000.
    breaker_failures: int = 5
    #: Seconds the open breaker refuses calls before one probe, > 0, <= 300.
    breaker_cooldown: float = 2.0
    #: ``subject.type`` of every evaluation; ``subject.id`` is the subject token's ``sub``.
    subject_type: str = "user"
    #: Subject-token claims sent as ``subject.properties`` (they become part of the cache key).
    subject_properties: tuple[str, ...] = ()
    #: Action name per scope; a scope not listed is its own action name.
    actions: Mapping[str, str] = field(default_factory=dict)
    #: ``resource.type`` of the scope evaluations; ``resource.id`` is the API's audience.
    resource_type: str = "api"
    #: Claims decided by the PDP (see ``AuthzenClaim``).
    claims: tuple[AuthzenClaim, ...] = ()
    type: Literal["authzen"] = "authzen"


_TOP_KEYS = frozenset(
    {
        "type", "url", "discovery", "batch", "token_env", "timeout", "ttl", "refusal_ttl",
        "stale_if_error", "max_concurrency", "breaker_failures", "breaker_cooldown",
        "subject_type", "subject_properties", "actions", "resource_type", "claims",
    }
)  # fmt: skip
_CLAIM_KEYS = frozenset(
    {"resource_type", "action", "candidates_from", "resource_prefix", "candidates", "from_context"}
)
_SECRET_KEYS = ("secret", "client_secret", "token", "password")
MAX_CANDIDATES = 100


class _Problems:
    """Typed getters that collect problems instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def known(self, section: Mapping[str, Any], where: str, keys: frozenset[str]) -> None:
        for key in section:
            if key in _SECRET_KEYS:
                self.add(
                    f"{where}.{key}",
                    "secrets are never read from the file: put it in an environment variable "
                    "and name that variable (token_env)",
                )
            elif key not in keys:
                self.add(f"{where}.{key}", f"unknown key (known: {', '.join(sorted(keys))})")

    def name(self, section: Mapping[str, Any], key: str, where: str, default: str | None) -> str:
        value = section.get(key, default)
        if value is None:
            self.add(f"{where}.{key}", "is required")
            return ""
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
            self.add(f"{where}.{key}", f"must be a non-empty string of at most {MAX_NAME}")
            return default or ""
        return value

    def integer(
        self, s: Mapping[str, Any], key: str, where: str, default: int, hi: int, lo: int = 0
    ) -> int:
        value = s.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.add(f"{where}.{key}", f"must be a whole number from {lo} to {hi}")
            return default
        return value

    def seconds(
        self, s: Mapping[str, Any], key: str, where: str, default: float, hi: float
    ) -> float:
        value = s.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 < value <= hi
        ):
            self.add(f"{where}.{key}", f"must be a number of seconds, above 0, <= {hi:g}")
            return default
        return float(value)

    def boolean(self, s: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = s.get(key, default)
        if not isinstance(value, bool):
            self.add(f"{where}.{key}", "must be true or false")
            return default
        return value

    def names(self, s: Mapping[str, Any], key: str, where: str, most: int) -> tuple[str, ...]:
        value = s.get(key, [])
        if not (
            isinstance(value, list)
            and len(value) <= most
            and all(isinstance(v, str) and v and len(v) <= MAX_NAME for v in value)
        ):
            self.add(f"{where}.{key}", f"must be a list of at most {most} non-empty strings")
            return ()
        return tuple(dict.fromkeys(value))

    def url(self, value: str, where: str) -> None:
        if value and (why := url_problem(value)):
            self.add(where, why)


def parse_authzen_settings(
    name: str, section: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[AuthzenPermissionsSettings, list[str]]:
    """Validate ``[permissions.NAME]`` (``type = "authzen"``): the settings, usable only when
    the list of problems is empty."""
    where = f"permissions.{name}"
    p = _Problems()
    p.known(section, where, _TOP_KEYS)
    url = p.name(section, "url", where, None)
    p.url(url, f"{where}.url")
    if url and (urlsplit(url).query or "?" in url):
        p.add(f"{where}.url", "must not contain a query")
    token_env = section.get("token_env")
    token = None
    if token_env is not None:
        if not isinstance(token_env, str) or not token_env:
            p.add(f"{where}.token_env", "must be a non-empty string")
            token_env = None
        elif not (token := env.get(token_env)):
            p.add(f"{where}.token_env", f"environment variable {token_env} is not set or empty")
    actions_raw = section.get("actions", {})
    actions: dict[str, str] = {}
    if not isinstance(actions_raw, Mapping):
        p.add(f"{where}.actions", "must be a table of scope = action name")
    else:
        for scope, action in actions_raw.items():
            if not isinstance(action, str) or not action or len(action) > MAX_NAME:
                p.add(f"{where}.actions.{scope}", "must be a non-empty action name")
            else:
                actions[scope] = action
    claims_raw = section.get("claims", {})
    claims: list[AuthzenClaim] = []
    if not isinstance(claims_raw, Mapping):
        p.add(f"{where}.claims", "must be a table of claim tables")
    else:
        for claim_name, raw in claims_raw.items():
            claim = _claim(p, claim_name, raw, f"{where}.claims.{claim_name}")
            if claim is not None:
                claims.append(claim)
    settings = AuthzenPermissionsSettings(
        name=name,
        url=url.rstrip("/"),
        discovery=p.boolean(section, "discovery", where, True),
        batch=p.boolean(section, "batch", where, True),
        token_env=token_env,
        token=token or None,
        timeout=p.seconds(section, "timeout", where, 2.0, 30),
        ttl=p.integer(section, "ttl", where, 60, 86_400),
        refusal_ttl=p.integer(section, "refusal_ttl", where, 10, 3600),
        stale_if_error=p.integer(section, "stale_if_error", where, 0, 86_400),
        max_concurrency=p.integer(section, "max_concurrency", where, 16, 1024, lo=1),
        breaker_failures=p.integer(section, "breaker_failures", where, 5, 1000, lo=1),
        breaker_cooldown=p.seconds(section, "breaker_cooldown", where, 2.0, 300),
        subject_type=p.name(section, "subject_type", where, "user"),
        subject_properties=p.names(section, "subject_properties", where, 50),
        actions=actions,
        resource_type=p.name(section, "resource_type", where, "api"),
        claims=tuple(claims),
    )
    # Returned even with problems (the bad values replaced by defaults), so the cross-checks of
    # the whole file still run and every problem is reported at once.
    return settings, p.problems


def _claim(p: _Problems, name: str, raw: Any, where: str) -> AuthzenClaim | None:
    if not isinstance(raw, Mapping):
        p.add(where, "must be a table")
        return None
    p.known(raw, where, _CLAIM_KEYS)
    # The PDP adds claims; it can never set one we are responsible for.
    if name in REGISTERED_CLAIMS:
        p.add(where, "is a registered claim we set ourselves")
    from_context = None
    if "from_context" in raw:
        path = raw["from_context"]
        parts = path.split(".") if isinstance(path, str) else []
        if not parts or len(parts) > 8 or not all(parts):
            p.add(f"{where}.from_context", "must be a dotted path such as 'claims.tenant'")
        from_context = tuple(parts)
        if set(raw) - {"from_context"}:
            p.add(where, "from_context takes no other key (it is not a candidates claim)")
        return AuthzenClaim(name=name, from_context=from_context)
    candidates_from = raw.get("candidates_from")
    if candidates_from not in (None, "resources"):
        p.add(f"{where}.candidates_from", 'must be "resources"')
        candidates_from = None
    prefix = raw.get("resource_prefix")
    if candidates_from is not None:
        if not isinstance(prefix, str) or not prefix:
            p.add(f"{where}.resource_prefix", 'is required with candidates_from = "resources"')
            prefix = None
        else:
            p.url(prefix, f"{where}.resource_prefix")
            if not prefix.endswith("/"):
                p.add(f"{where}.resource_prefix", "must end with '/' (the ID is what follows)")
    elif prefix is not None:
        p.add(f"{where}.resource_prefix", 'is used only with candidates_from = "resources"')
    candidates = p.names(raw, "candidates", where, MAX_CANDIDATES)
    if candidates_from is None and not candidates:
        p.add(where, 'needs candidates_from = "resources", candidates = [...], or from_context')
    return AuthzenClaim(
        name=name,
        resource_type=p.name(raw, "resource_type", where, None),
        action=p.name(raw, "action", where, "read"),
        candidates_from=candidates_from,
        resource_prefix=prefix,
        candidates=candidates,
    )


def authzen_scope_problems(
    source: AuthzenPermissionsSettings, scopes: set[str], where: str
) -> list[str]:
    """An ``actions`` entry for a scope no API using this source defines: a typo that would
    silently ask the PDP the wrong question."""
    return [
        f"{where}.actions.{scope}: is not a scope of any API using this source"
        for scope in source.actions
        if scope not in scopes
    ]


# --------------------------------------------------------------------------------------------
# The protocol core: pure functions from a request to AuthZEN bodies and from answers back.


@dataclass(frozen=True)
class Evaluation:
    """One AuthZEN evaluation: ``action`` on ``resource``; ``scope`` or ``claim`` says why."""

    action: str
    resource_type: str
    resource_id: str
    scope: str | None = None
    claim: str | None = None
    #: The candidate came from a requested resource: denying it refuses the exchange.
    requested: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "action": {"name": self.action},
            "resource": {"type": self.resource_type, "id": self.resource_id},
        }


@dataclass(frozen=True)
class Result:
    decision: bool
    context: Mapping[str, Any]


def plan(settings: AuthzenPermissionsSettings, request: PermissionRequest) -> list[Evaluation]:
    """The evaluations one exchange needs: each requested scope, then each claim's candidates."""
    evaluations = [
        Evaluation(settings.actions.get(s, s), settings.resource_type, request.audience, scope=s)
        for s in request.scopes
    ]
    for claim in settings.claims:
        if claim.from_context is not None or claim.resource_type is None:
            continue
        ids: list[str] = []
        if claim.candidates_from == "resources" and claim.resource_prefix:
            ids = [
                _resource_id(r, claim.resource_prefix)
                for r in request.resources
                # The prefix itself names the whole collection: no one ID.
                if r != claim.resource_prefix and resource_under(r, claim.resource_prefix)
            ]
        requested = bool(ids)
        for candidate in dict.fromkeys(ids or claim.candidates):
            evaluations.append(
                Evaluation(
                    claim.action,
                    claim.resource_type,
                    candidate,
                    claim=claim.name,
                    requested=requested,
                )
            )
    return evaluations


class _Refused(Exception):
    """The request cannot be granted whatever the PDP says (a refusal, not an error)."""


def _resource_id(resource: str, prefix: str) -> str:
    """The ID of a requested resource under ``prefix``: the one path segment after it.

    Taken from the parsed path, not the text (``https://x.test:443/c/nl`` is under
    ``https://x.test/c/``). A resource under the prefix that is not exactly one ID (a deeper
    path, a query, too long) cannot be granted: we would evaluate something else than what the
    token would name.
    """
    parts = urlsplit(resource)
    rest = parts.path[len(urlsplit(prefix).path) :]
    if not rest or "/" in rest or parts.query or "?" in resource or len(rest) > MAX_NAME:
        raise _Refused()
    return rest


def subject_json(
    settings: AuthzenPermissionsSettings, request: PermissionRequest
) -> dict[str, Any]:
    subject: dict[str, Any] = {"type": settings.subject_type, "id": request.subject}
    properties = {
        c: request.subject_claims[c]
        for c in settings.subject_properties
        if c in request.subject_claims
    }
    if properties:
        subject["properties"] = properties
    return subject


def context_json(request: PermissionRequest) -> dict[str, Any]:
    """The exchange as AuthZEN ``context`` (§5.4): client, requested scopes and resources, actor."""
    context: dict[str, Any] = {
        "client_id": request.client_id,
        "issuer": request.issuer,
        "audience": request.audience,
        "scopes": list(request.scopes),
        "resources": list(request.resources),
    }
    if request.authorization_details:
        context["authorization_details"] = list(request.authorization_details)
    if request.actor is not None:
        context["actor"] = {
            "subject": request.actor.get("subject"),
            "issuer": request.actor.get("issuer"),
        }
    return context


def batch_body(
    settings: AuthzenPermissionsSettings,
    request: PermissionRequest,
    evaluations: Sequence[Evaluation],
) -> dict[str, Any]:
    """AuthZEN 1.0 §7.1: shared subject and context, one action and resource per evaluation."""
    return {
        "subject": subject_json(settings, request),
        "context": context_json(request),
        "evaluations": [e.to_json() for e in evaluations],
    }


def single_body(
    settings: AuthzenPermissionsSettings, request: PermissionRequest, evaluation: Evaluation
) -> dict[str, Any]:
    """AuthZEN 1.0 §6.1: one complete evaluation request."""
    return {
        "subject": subject_json(settings, request),
        **evaluation.to_json(),
        "context": context_json(request),
    }


def _malformed(why: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"PDP answer is malformed: {why}")


def parse_result(item: Any) -> Result:
    """One decision (§6.2): only a JSON ``true`` grants; anything but a boolean is malformed."""
    if not isinstance(item, dict):
        raise _malformed("a decision is not a JSON object")
    decision = item.get("decision")
    if not isinstance(decision, bool):
        raise _malformed("'decision' must be true or false")
    context = item.get("context", {})
    if not isinstance(context, dict):
        raise _malformed("'context' must be an object")
    return Result(decision, context)


def parse_batch(answer: Any, expected: int) -> list[Result]:
    """A batch answer (§7.2): exactly one decision per evaluation we asked, in order."""
    if not isinstance(answer, dict):
        raise _malformed("not a JSON object")
    items = answer.get("evaluations")
    if not isinstance(items, list):
        raise _malformed("'evaluations' must be a list")
    # A shorter list would leave questions unanswered; a longer one answers questions we never
    # asked: neither can be matched to our evaluations, so we cannot decide.
    if len(items) != expected:
        raise _malformed(f"{len(items)} decisions for {expected} evaluations")
    return [parse_result(item) for item in items]


def to_decision(
    settings: AuthzenPermissionsSettings,
    evaluations: Sequence[Evaluation],
    results: Sequence[Result],
) -> Decision:
    """The ``Decision`` for these answers: granted scopes and the declared claims."""
    ttl = settings.ttl
    granted = tuple(
        e.scope for e, r in zip(evaluations, results, strict=True) if e.scope and r.decision
    )
    claims: dict[str, Any] = {}
    for claim in settings.claims:
        if claim.from_context is not None:
            value = _from_context(claim.from_context, evaluations, results)
            if value is not None:
                claims[claim.name] = value
            continue
        ids = []
        for e, r in zip(evaluations, results, strict=True):
            if e.claim != claim.name:
                continue
            if r.decision:
                ids.append(e.resource_id)
            elif e.requested:
                # RFC 8707: a token for a resource the subject may not access is refused.
                return Decision(allow=False, ttl=ttl)
        claims[claim.name] = ids
    return Decision(allow=True, scopes=granted, claims=claims, ttl=ttl)


def _from_context(
    path: tuple[str, ...], evaluations: Sequence[Evaluation], results: Sequence[Result]
) -> Any:
    """The value at ``path`` in the context of the first granted scope that has one."""
    for e, r in zip(evaluations, results, strict=True):
        if not (e.scope and r.decision):
            continue
        node: Any = r.context
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


# --------------------------------------------------------------------------------------------
# Discovery and the source


@dataclass(frozen=True)
class Endpoints:
    evaluation: str
    evaluations: str | None


def metadata_url(base: str) -> str:
    """AuthZEN 1.0 §9.2: the well-known path goes between the host and the identifier's path."""
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + parts.path.rstrip("/"), "", ""))


def parse_metadata(base: str, document: Any) -> Endpoints:
    """Validate PDP metadata (§9.1): for this PDP, endpoints on this PDP's origin only."""
    if not isinstance(document, dict):
        raise _malformed("metadata is not a JSON object")
    pdp = document.get("policy_decision_point")
    # §9.2.3: metadata naming another PDP must not be used.
    if not isinstance(pdp, str) or pdp.rstrip("/") != base.rstrip("/"):
        raise _malformed("metadata is for another policy_decision_point")
    origin = urlsplit(base)[:2]

    def endpoint(key: str) -> str | None:
        value = document.get(key)
        if value is None:
            return None
        # Our bearer token and the user's claims go only to the origin the config names.
        if not isinstance(value, str) or len(value) > 2048 or urlsplit(value)[:2] != origin:
            raise _malformed(f"'{key}' is not a URL on the PDP's origin")
        return value

    evaluation = endpoint("access_evaluation_endpoint")
    if evaluation is None:
        raise _malformed("metadata has no access_evaluation_endpoint")
    return Endpoints(evaluation, endpoint("access_evaluations_endpoint"))


class AuthzenPermissionSource:
    """An AuthZEN PDP, called over a pooled connection behind its own bulkhead and breaker."""

    def __init__(
        self,
        settings: AuthzenPermissionsSettings,
        *,
        pool: urllib3.PoolManager | None = None,
        metrics: Metrics | None = None,
        breaker_clock: Clock = time.monotonic,
        metadata_clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metadata_clock = metadata_clock
        self.metrics = metrics
        self.pool = pool or new_pool(pool_size=settings.max_concurrency)
        self.headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if settings.token:
            self.headers["Authorization"] = f"Bearer {settings.token}"
        # A PDP that hangs may cost only the exchanges that need its answer.
        self.guard = Guard(
            f"permissions:{settings.name}",
            max_concurrency=settings.max_concurrency,
            failure_threshold=settings.breaker_failures,
            cooldown=settings.breaker_cooldown,
            clock=breaker_clock,
            metrics=metrics,
        )
        self._lock = threading.Lock()
        self._endpoints: Endpoints | None = None
        self._endpoints_until = 0.0
        if not settings.discovery:
            self._endpoints = Endpoints(
                settings.url + EVALUATION_PATH,
                settings.url + EVALUATIONS_PATH if settings.batch else None,
            )
            self._endpoints_until = math.inf

    def decide(self, request: PermissionRequest) -> Decision:
        try:
            evaluations = plan(self.settings, request)
        except _Refused:
            return Decision(allow=False, ttl=self.settings.ttl)
        if len(evaluations) > MAX_EVALUATIONS:
            return Decision(allow=False)
        self.guard.enter()  # raises UpstreamUnavailable (503) at once when refused
        done = self.metrics.timed_permission_call(self.settings.name) if self.metrics else None
        try:
            deadline = time.monotonic() + self.settings.timeout
            endpoints = self._current_endpoints(deadline)
            if endpoints.evaluations is not None:
                mode = "batch"
                answer = self._post(
                    endpoints.evaluations, batch_body(self.settings, request, evaluations), deadline
                )
                results = parse_batch(answer, len(evaluations))
            else:
                mode = "single"
                results = [
                    parse_result(
                        self._post(
                            endpoints.evaluation, single_body(self.settings, request, e), deadline
                        )
                    )
                    for e in evaluations
                ]
            decision = to_decision(self.settings, evaluations, results)
        except UpstreamUnavailable as e:
            self.guard.leave(ok=False)
            if done:
                done("error")
            event(
                log, "authzen_unavailable", level=logging.WARNING,
                source=self.settings.name, audience=request.audience, reason=str(e),
            )  # fmt: skip
            raise
        except BaseException:
            self.guard.leave(ok=False)
            raise
        self.guard.leave(ok=True)
        allowed = decision.allow and bool(decision.scopes)
        if done:
            done("allow" if allowed else "deny")
        event(
            log, "authzen_decision", source=self.settings.name, audience=request.audience,
            sub=request.subject, mode=mode, evaluations=len(evaluations), allow=decision.allow,
            scopes=list(decision.scopes or ()),
        )  # fmt: skip
        return decision

    def _current_endpoints(self, deadline: float) -> Endpoints:
        with self._lock:
            endpoints, until = self._endpoints, self._endpoints_until
        if endpoints is not None and self.metadata_clock() < until:
            return endpoints
        try:
            fresh = parse_metadata(self.settings.url, self._get_metadata(deadline))
        except UpstreamUnavailable as e:
            if endpoints is None:
                raise
            # Keep using the last good endpoints while the metadata cannot be read.
            event(
                log, "authzen_metadata_failed", level=logging.WARNING,
                source=self.settings.name, reason=str(e),
            )  # fmt: skip
            fresh = endpoints
        with self._lock:
            self._endpoints, self._endpoints_until = fresh, self.metadata_clock() + METADATA_TTL
        return fresh

    def _get_metadata(self, deadline: float) -> Any:
        answer = call(
            self.pool,
            "GET",
            metadata_url(self.settings.url),
            timeout=_remaining(deadline),
            max_bytes=MAX_METADATA_BYTES,
            headers={"Accept": "application/json"},
        )
        return _json(answer.status, answer.body)

    def _post(self, url: str, body: dict[str, Any], deadline: float) -> Any:
        answer = call(
            self.pool,
            "POST",
            url,
            timeout=_remaining(deadline),
            max_bytes=MAX_ANSWER_BYTES,
            data=_COMPACT.encode(body),
            headers=self.headers,
        )
        return _json(answer.status, answer.body)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise UpstreamUnavailable("the PDP took longer than its timeout")
    return left


def _json(status: int, body: bytes) -> Any:
    # AuthZEN answers a denial with 200 and "decision": false; any other status (401 for a wrong
    # credential, 5xx) is no decision at all.
    if status != 200:
        raise UpstreamUnavailable(f"PDP answered HTTP {status}")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise _malformed("not JSON") from None
