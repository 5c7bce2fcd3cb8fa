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

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from ..config.settings import (
    REGISTERED_CLAIMS,
    AuthzenPermissionsSettings,
    HttpPermissionsSettings,
    StaticPermissionsSettings,
    StaticRule,
)
from ..oauth import strictjson
from ..oauth.clock import Clock
from ..oauth.errors import UpstreamUnavailable
from ..oauth.lru import ExpiringLru
from ..oauth.uris import resource_under
from ..obs.logs import Throttle, event
from .http import CurlPool, call, new_pool
from .resilience import Guard
from .store import Store, StoreUnavailable

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

log = logging.getLogger(__name__)

#: Largest answer we read from the permissions API.
MAX_ANSWER_BYTES = 256 * 1024
#: Largest ``ttl`` we take from an answer (caching lands with the shared store).
MAX_ANSWER_TTL = 86_400
#: Most ``resource_prefixes`` one answer may name, and the longest one.
MAX_RESOURCE_PREFIXES = 32
MAX_PREFIX_LENGTH = 2048
#: Most answers that cover prefixes kept per question (all but the resources): the oldest go.
MAX_COVERS = 16
#: Largest list of covering answers kept for one question (read on every miss for it).
MAX_COVERS_BYTES = 64 * 1024


#: One encoder for every compact JSON text we send or store: RFC 8259 only (no NaN).
_COMPACT = strictjson.ENCODER


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
    #: When the subject (and actor) token expires: no answer is cached beyond it.
    valid_until: float = float("inf")
    #: The grant that asks ("token-exchange", "jwt-bearer"): sent, and in the cache key, for
    #: any other than token exchange, whose questions stay as they were.
    grant: str = "token-exchange"
    #: With an actor: the ``act`` chain the minted token will carry (RFC 8693 §4.1).
    act: Mapping[str, Any] | None = None
    #: A Txn-Token request's ``request_details`` (draft-ietf-oauth-transaction-tokens-10
    #: §6.1): what the transaction is about, from which the answer's claims (``tctx``) follow.
    request_details: Mapping[str, Any] | None = None

    def cache_key(self, source: str, claims: Sequence[str] = ()) -> str:
        """Everything the answer depends on, hashed: the same question, the same key.

        The subject's other claims are not part of it (except ``claims``, those a source sends):
        answers must not depend on them, or the permissions API must answer with ``ttl: 0``.
        """
        return "perm:" + self._digest(source, claims, self.resources)

    def cover_key(self, source: str, claims: Sequence[str] = ()) -> str:
        """The key of the answers that cover resource prefixes for this question: everything
        ``cache_key`` holds but the resources (subject, client, actor, audience, scopes, ...)."""
        return "permcover:" + self._digest(source, claims, ())

    def _digest(self, source: str, claims: Sequence[str], resources: Sequence[str]) -> str:
        question: list[Any] = [
            source,
            self.issuer,
            self.subject,
            self.client_id,
            self.audience,
            sorted(self.scopes),
            sorted(resources),
            sorted(json.dumps(d, sort_keys=True) for d in self.authorization_details),
            [self.actor.get("issuer"), self.actor.get("subject")] if self.actor else None,
        ]
        if self.actor and self.actor.get("client_id") is not None:
            # The same actor `sub` through two applications is two agents.
            question.append(["actor_client_id", self.actor["client_id"]])
        if claims:
            question.append([[c, self.subject_claims.get(c)] for c in claims])
        if self.grant != "token-exchange":
            question.append(["grant", self.grant])
        if self.act is not None:
            # The chain behind the actor: the same agent for the same user through another
            # agent is another question.
            question.append(["act", self.act])
        if self.request_details is not None:
            # Another transaction's details are another question: its tctx follows from them.
            question.append(["request_details", self.request_details])
        if self.grant == "txn-token" and "txn" in self.subject_claims:
            # A Txn-Token's replacement is asked about that transaction and the call chain it
            # went through, never answered with what a Txn-Token's issuance was.
            question.append(
                [
                    "replaces",
                    self.subject_claims.get("txn"),
                    self.subject_claims.get("req_wl"),
                    self.subject_claims.get("req_wl_chain"),
                ]
            )
        return hashlib.sha256(_COMPACT.encode(question).encode()).hexdigest()

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
        if self.act is not None:
            # The delegation chain: the new actor on top, or a Txn-Token's subject's agents.
            body["act"] = dict(self.act)
        if self.grant != "token-exchange":
            body["grant"] = self.grant
        if self.request_details is not None:
            body["request_details"] = dict(self.request_details)
        return body


@dataclass(frozen=True)
class Decision:
    allow: bool
    #: Granted scopes; None means "as requested". Never wider than requested (we intersect).
    scopes: tuple[str, ...] | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    ttl: int | None = None
    authorization_details: tuple[Mapping[str, Any], ...] | None = None
    #: The answer holds, as a whole, for every resource under these prefixes (path boundary,
    #: ``uris.resource_under``), for its ``ttl`` and for the same question otherwise.
    resource_prefixes: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The decision as the permissions API's answer states it (what the cache stores)."""
        return {
            "allow": self.allow,
            "scopes": self.scopes,
            "claims": self.claims,
            "ttl": self.ttl,
            "authorization_details": self.authorization_details,
            "resource_prefixes": self.resource_prefixes,
        }

    def covers(self, resources: Sequence[str]) -> bool:
        """Whether every one of ``resources`` lies under one of the answer's prefixes. A
        resource with a query is covered by none: a prefix names paths, and ``?tenant=b`` is
        not ``?tenant=a``."""
        prefixes = self.resource_prefixes or ()
        return bool(resources) and all(
            "?" not in r and any(resource_under(r, p) for p in prefixes) for r in resources
        )


#: Answers that cover resource prefixes, each with the moment it stops being fresh.
Covers = tuple[tuple[float, "Decision"], ...]


def grants_nothing(decision: Decision, request: PermissionRequest) -> bool:
    """Whether ``decision`` refuses ``request``: ``allow`` false, or none of the requested scopes
    granted (``invalid_scope``, as ``policy.grant_scopes`` decides); cached as a refusal."""
    if not decision.allow:
        return True
    if decision.scopes is None:
        return False
    return not set(request.scopes) & set(decision.scopes)


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
        # RFC 8259 only: an answer with NaN, duplicate names or deep nesting is a bad answer.
        answer = strictjson.loads(body)
    except ValueError:
        raise UpstreamUnavailable("permissions API answer is not JSON") from None
    no_store, max_age = _cache_control(headers.get("Cache-Control", ""))
    decision = decision_from_json(answer, max_age=max_age)
    # "no-store" wins over any ttl in the body: the answer must not be kept.
    return replace(decision, ttl=0) if no_store else decision


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
    prefixes = answer.get("resource_prefixes")
    if prefixes is not None and not (
        _is_str_list(prefixes)
        and 0 < len(prefixes) <= MAX_RESOURCE_PREFIXES
        and all(_is_prefix(p) for p in prefixes)
    ):
        raise malformed(
            "'resource_prefixes' must be a list of at most "
            f"{MAX_RESOURCE_PREFIXES} absolute http(s) URLs without query or fragment"
        )
    covered = tuple(prefixes) if prefixes is not None else None
    if not allow:
        return Decision(allow=False, ttl=ttl, resource_prefixes=covered)

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
        resource_prefixes=covered,
    )


def check_coverage(decision: Decision, request: PermissionRequest) -> Decision:
    """An answer's ``resource_prefixes`` must each contain a resource the question named: an
    answer about one resource that claims to hold for unrelated ones is a bug of the
    permissions API, and we cannot decide on it (fail closed) rather than cache it."""
    for prefix in decision.resource_prefixes or ():
        if not any(resource_under(r, prefix) for r in request.resources):
            raise UpstreamUnavailable(
                "permissions API answer is malformed: a resource prefix contains none of the "
                "question's resources"
            )
    return decision


def _is_prefix(value: str) -> bool:
    if not value or len(value) > MAX_PREFIX_LENGTH:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return False
    return (
        parts.scheme in ("https", "http")
        and bool(parts.hostname)
        and not (parts.query or parts.fragment or "?" in value or "#" in value)
        and not (parts.username or parts.password)
    )


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _cache_control(header: str) -> tuple[bool, int | None]:
    """(``no-store`` or ``no-cache`` present, ``max-age``) of a Cache-Control header."""
    directives = [d.strip().lower() for d in header.split(",") if d.strip()]
    no_store = "no-store" in directives or "no-cache" in directives
    for directive in directives:
        name, _, value = directive.partition("=")
        value = value.strip('"')
        # ASCII digits only ("²".isdigit() is true), and not absurdly many of them.
        if name == "max-age" and re.fullmatch(r"[0-9]{1,9}", value):
            return no_store, int(value)
    return no_store, None


def remote_parts(
    settings: HttpPermissionsSettings | AuthzenPermissionsSettings,
    *,
    pool: CurlPool | None,
    metrics: Metrics | None,
    breaker_clock: Clock,
) -> tuple[CurlPool, dict[str, str], Guard]:
    """What a source that POSTs JSON to a service of its own needs: a pool, the headers (with
    its bearer token), and a guard. A service that hangs may cost only the exchanges that need
    its answer: a bounded share of the worker's threads, and fail-fast once it keeps failing."""
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    guard = Guard(
        f"permissions:{settings.name}",
        max_concurrency=settings.max_concurrency,
        failure_threshold=settings.breaker_failures,
        cooldown=settings.breaker_cooldown,
        clock=breaker_clock,
        metrics=metrics,
    )
    return pool or new_pool(pool_size=settings.max_concurrency), headers, guard


class HttpPermissionSource:
    """The permissions API of the web application, called over a pooled connection."""

    def __init__(
        self,
        settings: HttpPermissionsSettings,
        *,
        pool: CurlPool | None = None,
        metrics: Metrics | None = None,
        breaker_clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.pool, self.headers, self.guard = remote_parts(
            settings, pool=pool, metrics=metrics, breaker_clock=breaker_clock
        )

    def decide(self, request: PermissionRequest) -> Decision:
        self.guard.enter()  # raises UpstreamUnavailable (503) at once when refused
        done = self.metrics.timed_permission_call(self.settings.name) if self.metrics else None
        try:
            answer = call(
                self.pool,
                "POST",
                self.settings.url,
                timeout=self.settings.timeout,
                max_bytes=MAX_ANSWER_BYTES,
                data=_COMPACT.encode(request.to_json()),
                headers=self.headers,
                propagate=True,
            )
            decision = check_coverage(
                parse_answer(answer.status, answer.body, answer.headers), request
            )
        except UpstreamUnavailable:
            self.guard.leave(ok=False)
            if done:
                done("error")
            raise
        except BaseException:
            self.guard.leave(ok=False)
            raise
        self.guard.leave(ok=True)
        if done:
            done("allow" if decision.allow else "deny")
        return decision


class CachingPermissionSource:
    """Answers of another source, cached in the shared store (so every replica benefits).

    An answer is kept for its ``ttl`` (or ``Cache-Control: max-age``), at most ``max_ttl`` and
    never beyond the subject token's expiry; refusals (``grants_nothing``: no scope granted
    either) at most ``refusal_ttl``; ``ttl: 0``,
    ``no-store`` and errors never. When the source is down, an answer that expired less than
    ``stale_if_error`` seconds ago may still serve (and this is logged). A store that cannot be
    read is not a decision: the source is asked.

    Each process also keeps the answers it has seen (``local_size`` of them), each only until
    the same moment the shared entry stops being fresh, so a hot question costs no round trip
    to Redis and no answer lives longer than it would in the store.
    """

    def __init__(
        self,
        source: PermissionSource,
        store: Store,
        *,
        name: str,
        max_ttl: int,
        refusal_ttl: int,
        stale_if_error: int = 0,
        clock: Clock = time.time,
        local_size: int = 10_000,
        metrics: Metrics | None = None,
        key_claims: Sequence[str] = (),
    ) -> None:
        self.metrics = metrics
        #: Subject claims the source sends along (AuthZEN ``subject_properties``): part of the key.
        self.key_claims = tuple(key_claims)
        self.source = source
        #: The guard of the source this one caches, if it has one (see overload.py).
        self.guard = getattr(source, "guard", None)
        self.store = store
        self.local: ExpiringLru[str, Decision] = ExpiringLru(local_size)
        #: The answers that cover resource prefixes, per question without its resources.
        self.covers: ExpiringLru[str, tuple[tuple[float, Decision], ...]] = ExpiringLru(local_size)
        self.name = name
        self.max_ttl = max_ttl
        self.refusal_ttl = refusal_ttl
        self.stale_if_error = stale_if_error
        self.clock = clock
        #: A store that is down would be warned of twice per exchange; see logs.Throttle.
        self.warnings = Throttle()

    def decide(self, request: PermissionRequest) -> Decision:
        key = request.cache_key(self.name, self.key_claims)
        now = self.clock()
        local = self.local.get(key, now)
        if self.metrics:
            self.metrics.cache("permissions_local", local is not None)
        if local is not None:
            return local
        # An answer that covers a prefix of every resource asked for (resource_prefixes):
        # this process's first, then the store's, read with the answer's own entry.
        cover_key = request.cover_key(self.name, self.key_claims) if request.resources else None
        if cover_key is not None:
            covered = self._covering(self.covers.get(cover_key, now), request, now)
            if covered is not None:
                return self._served(key, covered)
        cached, covers = self._read(key, cover_key)
        fresh = cached is not None and now < cached[0]
        if self.metrics:
            self.metrics.cache("permissions_shared", fresh)
        if fresh and cached is not None:
            self.local.put(key, cached[1], expires_at=cached[0])
            return cached[1]
        if cover_key is not None:
            if covers:
                self.covers.put(cover_key, covers, expires_at=max(e[0] for e in covers))
            covered = self._covering(covers, request, now)
            if covered is not None:
                return self._served(key, covered)
            if self.metrics:
                self.metrics.cache("permissions_prefix", False)
        try:
            decision = self.source.decide(request)
        except UpstreamUnavailable:
            if cached is not None and now < cached[0] + self.stale_if_error:
                event(
                    log, "permissions_stale_answer_used", level=logging.WARNING,
                    source=self.name, audience=request.audience, sub=request.subject,
                    expired_seconds_ago=round(now - cached[0], 1),
                )  # fmt: skip
                return cached[1]
            raise
        ttl = self._ttl(decision, request, now)
        if ttl > 0:
            self.local.put(key, decision, expires_at=now + ttl)
            self._write(key, decision, now + ttl, ttl + self.stale_if_error)
            if cover_key is not None and decision.covers(request.resources):
                # Only an answer whose prefixes hold every resource it was asked about: one
                # for two countries (claims for both) naming only one's prefix would carry
                # the other's claims to every resource under it.
                self._add_cover(cover_key, covers, decision, now, now + ttl)
        return decision

    def _served(self, key: str, covered: tuple[float, Decision]) -> Decision:
        """A covering answer, served for ``key`` (and kept for it in this process)."""
        if self.metrics:
            self.metrics.cache("permissions_prefix", True)
        self.local.put(key, covered[1], expires_at=covered[0])
        return covered[1]

    @staticmethod
    def _covering(
        entries: Covers | None, request: PermissionRequest, now: float
    ) -> tuple[float, Decision] | None:
        """The fresh one of ``entries`` whose ``resource_prefixes`` cover every resource of
        ``request`` (asked with the same question otherwise: they share its cover key)."""
        for fresh_until, decision in entries or ():
            if now < fresh_until and decision.covers(request.resources):
                return fresh_until, decision
        return None

    def _read(
        self, key: str, cover_key: str | None
    ) -> tuple[tuple[float, Decision] | None, Covers]:
        """The store's entry for ``key`` and its answers for ``cover_key``, in one round trip
        (a store that cannot be read is a miss)."""
        try:
            raw, raw_covers = (
                self.store.get_many([key, cover_key]) if cover_key else (self.store.get(key), None)
            )
        except StoreUnavailable as e:
            self.warnings.event(log, "permissions_cache_unavailable", reason=str(e))
            return None, ()
        return self._parsed(raw), self._parsed_covers(raw_covers)

    def _parsed(self, raw: bytes | None) -> tuple[float, Decision] | None:
        if raw is None:
            return None
        try:
            return self._entry(json.loads(raw))
        except (ValueError, RecursionError):
            return None

    def _parsed_covers(self, raw: bytes | None) -> Covers:
        if raw is None or len(raw) > MAX_COVERS_BYTES:
            return ()
        try:
            stored = json.loads(raw)
        except (ValueError, RecursionError):
            return ()
        if not isinstance(stored, list):
            return ()
        now = self.clock()
        entries = (self._entry(entry) for entry in stored[-MAX_COVERS:])
        return tuple(e for e in entries if e is not None and now < e[0] and e[1].resource_prefixes)

    def _add_cover(
        self, cover_key: str, covers: Covers, decision: Decision, now: float, fresh_until: float
    ) -> None:
        """Remember an answer that covers prefixes, beside ``covers`` (the others of the same
        question, as this request read them from the store; at most ``MAX_COVERS``, the
        newest). Two replicas adding at once may lose one of the two: that costs one more
        question, never a wrong answer."""
        entries = (*covers, (fresh_until, decision))[-MAX_COVERS:]
        value = _COMPACT.encode([_stored(d, f) for f, d in entries])
        while len(value) > MAX_COVERS_BYTES and len(entries) > 1:
            entries = entries[1:]  # the oldest go first
            value = _COMPACT.encode([_stored(d, f) for f, d in entries])
        if len(value) > MAX_COVERS_BYTES:
            return  # one answer too large to be worth reading on every miss: not kept
        until = max(e[0] for e in entries)
        self.covers.put(cover_key, entries, expires_at=until)
        try:
            self.store.set(cover_key, value.encode(), until - now)
        except StoreUnavailable as e:
            self.warnings.event(log, "permissions_cache_unavailable", reason=str(e))

    def _ttl(self, decision: Decision, request: PermissionRequest, now: float) -> float:
        if decision.ttl is None or decision.ttl <= 0:
            return 0
        # A refusal is kept briefly, so a user the policy grants is not refused for long.
        refused = grants_nothing(decision, request)
        cap = min(self.max_ttl, self.refusal_ttl) if refused else self.max_ttl
        return max(0.0, min(decision.ttl, cap, request.valid_until - now))

    def _entry(self, entry: Any) -> tuple[float, Decision] | None:
        """A stored answer and until when it is fresh. The store is shared state, not a source
        of truth: an entry is checked exactly like an answer of the permissions API, and one
        we cannot trust is a miss."""
        try:
            decision = decision_from_json(entry)
            fresh_until = float(entry["fresh_until"])
        except (ValueError, KeyError, TypeError, UpstreamUnavailable):
            return None
        if not math.isfinite(fresh_until) or fresh_until > self.clock() + self.max_ttl:
            return None
        return fresh_until, decision

    def _write(self, key: str, decision: Decision, fresh_until: float, ttl: float) -> None:
        entry = _stored(decision, fresh_until)
        try:
            self.store.set(key, _COMPACT.encode(entry).encode(), ttl)
        except StoreUnavailable as e:
            self.warnings.event(log, "permissions_cache_unavailable", reason=str(e))


def _stored(decision: Decision, fresh_until: float) -> dict[str, Any]:
    """A cached answer as the store keeps it: the answer, and until when it is fresh."""
    return {**decision.to_json(), "fresh_until": fresh_until}


class StaticPermissionSource:
    """Rules from the configuration; the first matching rule decides, no rule means refusal.

    With an actor, the user's rule (the first matching rule that names no actor) is narrowed
    by the first matching actor rule: what the user may do, intersected with what the agent
    may do. Once any actor rule exists, an actor that none matches gets nothing.
    """

    def __init__(self, settings: StaticPermissionsSettings) -> None:
        self.rules = tuple(r for r in settings.rules if not r.names_actor)
        self.actor_rules = tuple(r for r in settings.rules if r.names_actor)

    def decide(self, request: PermissionRequest) -> Decision:
        user = _first(self.rules, request)
        if user is None or not user.allow:
            return Decision(allow=False)
        decision = Decision(allow=True, scopes=user.scopes, claims=user.claims)
        if request.actor is None or not self.actor_rules:
            return decision
        agent = _first(self.actor_rules, request)
        if agent is None or not agent.allow:
            return Decision(allow=False)
        if agent.scopes is None:
            return decision
        granted = user.scopes if user.scopes is not None else request.scopes
        return replace(decision, scopes=tuple(s for s in granted if s in agent.scopes))


def _first(rules: Sequence[StaticRule], request: PermissionRequest) -> StaticRule | None:
    return next((rule for rule in rules if _matches(rule, request)), None)


def _matches(rule: StaticRule, request: PermissionRequest) -> bool:
    def field_matches(pattern: str, value: Any) -> bool:
        return pattern in ("*", value)

    actor = request.actor or {}
    return (
        field_matches(rule.subject, request.subject)
        and field_matches(rule.issuer, request.issuer)
        and field_matches(rule.client_id, request.client_id)
        and field_matches(rule.audience, request.audience)
        and _resources_covered(rule.resources, request.resources)
        and field_matches(rule.actor, actor.get("subject"))
        and field_matches(rule.actor_issuer, actor.get("issuer"))
        and field_matches(rule.actor_client_id, actor.get("client_id"))
    )


def _resources_covered(prefixes: Sequence[str], resources: Sequence[str]) -> bool:
    if not prefixes:
        return True
    # A rule limited to some resources does not cover a request for the whole API.
    return bool(resources) and all(any(resource_under(r, p) for p in prefixes) for r in resources)
