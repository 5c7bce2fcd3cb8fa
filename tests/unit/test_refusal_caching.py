"""An answer that grants nothing is a refusal for caching: kept at most ``refusal_ttl``.

Issue 21, item 4: a PDP that refused every scope gave ``allow=True, scopes=()``, which was cached
for the full ``ttl``, so a user the policy had just granted kept getting ``invalid_scope``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from token_exchange.config.settings import parse_settings
from token_exchange.oauth.clock import ManualClock
from token_exchange.sources.authzen import Result, parse_authzen_settings, plan, to_decision
from token_exchange.sources.permission_sources import build_source
from token_exchange.sources.permissions import (
    CachingPermissionSource,
    Decision,
    PermissionRequest,
    grants_nothing,
)
from token_exchange.sources.store import MemoryStore

from ..fakes import COUNTRIES, ENV, base_config


class Source:
    """A permission source whose answer a test sets; counts its calls."""

    def __init__(self, decision: Decision) -> None:
        self.calls = 0
        self.decision = decision

    def decide(self, request: PermissionRequest) -> Decision:
        self.calls += 1
        return self.decision


READ = ("countries:read",)


def question(clock: ManualClock, scopes: tuple[str, ...] = READ) -> PermissionRequest:
    return PermissionRequest(
        subject="auth0|42", issuer="https://tenant.test/", client_id="spa", audience=COUNTRIES,
        scopes=scopes, resources=(), authorization_details=(),
        subject_claims={"sub": "auth0|42"}, valid_until=clock.now + 3600,
    )  # fmt: skip


def calls_after(cached: CachingPermissionSource, clock: ManualClock, seconds: float) -> int:
    """Ask, wait ``seconds``, ask again: how many times the source was asked."""
    source = cached.source
    assert isinstance(source, Source)
    cached.decide(question(clock))
    clock.now += seconds
    cached.decide(question(clock))
    return source.calls


@pytest.mark.parametrize(
    "decision",
    [
        Decision(allow=False, ttl=60),
        Decision(allow=True, scopes=(), ttl=60),  # every scope refused
        Decision(allow=True, scopes=("countries:write",), ttl=60),  # none of those asked
    ],
    ids=["allow-false", "no-scopes", "other-scopes"],
)
def test_an_answer_granting_nothing_is_kept_only_refusal_ttl(decision: Decision) -> None:
    clock = ManualClock()
    cached = CachingPermissionSource(
        Source(decision), MemoryStore(clock=clock), name="w", max_ttl=300, refusal_ttl=10,
        clock=clock,
    )  # fmt: skip
    assert calls_after(cached, clock, 9) == 1
    clock.now += 2
    cached.decide(question(clock))
    assert isinstance(cached.source, Source)
    assert cached.source.calls == 2


@pytest.mark.parametrize(
    "decision",
    [
        Decision(allow=True, ttl=60),  # as requested
        Decision(allow=True, scopes=("countries:read", "countries:write"), ttl=60),
    ],
)
def test_an_answer_granting_something_is_kept_its_ttl(decision: Decision) -> None:
    clock = ManualClock()
    cached = CachingPermissionSource(
        Source(decision), MemoryStore(clock=clock), name="w", max_ttl=300, refusal_ttl=10,
        clock=clock,
    )  # fmt: skip
    assert calls_after(cached, clock, 59) == 1


def test_grants_nothing_follows_the_scope_rule_of_the_grant() -> None:
    asked = question(ManualClock(), scopes=("a", "b"))
    assert grants_nothing(Decision(allow=False), asked)
    assert grants_nothing(Decision(allow=True, scopes=()), asked)
    assert grants_nothing(Decision(allow=True, scopes=("c",)), asked)
    assert not grants_nothing(Decision(allow=True), asked)
    assert not grants_nothing(Decision(allow=True, scopes=("b",)), asked)


def authzen_section(**overrides: Any) -> dict[str, Any]:
    return {"type": "authzen", "url": "https://pdp.test", "discovery": False, **overrides}


def test_a_pdp_refusing_every_scope_is_cached_refusal_ttl_not_ttl() -> None:
    """The reported case, through the wiring the service uses (``build_source``)."""
    settings, problems = parse_authzen_settings("pdp", authzen_section(ttl=60, refusal_ttl=10), {})
    assert settings is not None
    assert not problems
    clock = ManualClock()
    asked = question(clock)
    evaluations = plan(settings, asked)
    refused = to_decision(settings, evaluations, [Result(False, {})] * len(evaluations))
    assert refused.allow
    assert refused.scopes == ()
    cached = build_source(settings, store=MemoryStore(clock=clock), clock=clock)
    assert isinstance(cached, CachingPermissionSource)
    cached.source = Source(refused)
    assert calls_after(cached, clock, 9) == 1
    clock.now += 2
    cached.decide(question(clock))
    assert cached.source.calls == 2


def test_an_http_source_gets_the_same_rule() -> None:
    config = base_config("https://tenant.test/", "https://webapp.test/permissions")
    settings = parse_settings(config, env=ENV, base_dir=Path(".")).permissions["webapp"]
    clock = ManualClock()
    cached = build_source(settings, store=MemoryStore(clock=clock), clock=clock)
    assert isinstance(cached, CachingPermissionSource)
    cached.source = Source(Decision(allow=True, scopes=(), ttl=60))
    assert calls_after(cached, clock, 11) == 2
