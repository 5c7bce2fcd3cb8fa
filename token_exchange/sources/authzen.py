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

Every configuration key is declared once, in ``config_model.AuthzenSourceConfig`` and
``AuthzenClaimConfig`` (type, default, range, meaning), which the JSON Schema of the config
shows, and which is what the service reads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from ..config.config_model import AuthzenSourceConfig
from ..config.settings import AuthzenPermissionsSettings
from ..oauth import strictjson
from ..oauth.errors import UpstreamUnavailable
from ..oauth.uris import resource_under
from ..obs.logs import event
from .http import CurlPool, call
from .permissions import _COMPACT, MAX_ANSWER_BYTES, Decision, PermissionRequest, remote_parts

if TYPE_CHECKING:
    from ..oauth.clock import Clock
    from ..obs.metrics import Metrics

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
# Configuration: declared once in config_model.AuthzenSourceConfig (types, ranges, defaults),
# which is what the service reads.


def parse_authzen_settings(
    name: str, section: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[AuthzenPermissionsSettings | None, list[str]]:
    """``[permissions.NAME]`` alone (``type = "authzen"``), as ``parse_settings`` reads it: the
    settings, usable only when the list of problems is empty (for tests and tools; the service
    reads the whole file with ``settings.load_settings``)."""
    try:
        model = AuthzenSourceConfig.model_validate(section, context={"env": env})
    except ValidationError as e:
        where = f"permissions.{name}"
        return None, [
            f"{where}.{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in e.errors(include_url=False)
        ]
    return model.named(name), []


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
    if request.act is not None:
        # Who acts for the subject, as RFC 8693's `act` (the AuthZEN actor delegation profile's
        # subject.properties.act): a PDP that keeps only subject properties (Cerbos: principal
        # attributes) can still intersect the user's permissions with the agent's.
        properties["act"] = dict(request.act)
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
            "client_id": request.actor.get("client_id"),
        }
    if request.grant != "token-exchange":
        context["grant"] = request.grant
    if request.request_details is not None:
        # A Txn-Token's transaction: what it is about, for the PDP to decide on.
        context["request_details"] = dict(request.request_details)
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
        pool: CurlPool | None = None,
        metrics: Metrics | None = None,
        breaker_clock: Clock = time.monotonic,
        metadata_clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metadata_clock = metadata_clock
        self.metrics = metrics
        self.pool, self.headers, self.guard = remote_parts(
            settings, pool=pool, metrics=metrics, breaker_clock=breaker_clock
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
            propagate=True,
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
            propagate=True,
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
        return strictjson.loads(body)  # RFC 8259 only: NaN and the like are a bad answer
    except ValueError:
        raise _malformed("not JSON") from None
