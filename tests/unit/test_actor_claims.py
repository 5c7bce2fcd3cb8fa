"""The actor's kind in configuration, JSON Pointer conditions on nested claims (Kubernetes'
``kubernetes.io``), and the actor chain a downstream API reads."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from token_exchange.config.settings import ConfigError, parse_settings
from token_exchange.oauth.conditions import parse_conditions
from token_exchange.verify import Actor, InvalidToken, actor_chain

from .test_settings import MINIMAL

POD = {"kubernetes.io": {"namespace": "agents", "serviceaccount": {"name": "summarizer"}}}


@pytest.mark.parametrize(
    ("pointer", "value", "holds"),
    [
        ("/kubernetes.io/namespace", "agents", True),
        ("/kubernetes.io/namespace", "default", False),
        ("/kubernetes.io/serviceaccount/name", "summarizer", True),
        ("/kubernetes.io/pod/name", "x", False),  # no such member
        ("/kubernetes.io/namespace/x", "agents", False),  # walks into a string
    ],
)
def test_a_pointer_condition_reads_a_nested_member(pointer: str, value: str, holds: bool) -> None:
    conditions, problems = parse_conditions({pointer: value}, "c")
    assert problems == []
    assert (conditions.first_failure(POD) is None) is holds


def test_a_pointer_escapes_slash_and_tilde_and_refuses_a_bare_tilde() -> None:
    conditions, _ = parse_conditions({"/a~1b/c~0d": 1}, "c")
    assert conditions.first_failure({"a/b": {"c~d": 1}}) is None
    _, problems = parse_conditions({"/a~2b": 1}, "c")
    assert problems == ['c."/a~2b": is not a JSON Pointer (RFC 6901): ~ must be ~0 or ~1']


def test_a_name_without_a_leading_slash_is_still_one_claim() -> None:
    conditions, _ = parse_conditions({"https://example.com/org": "acme"}, "c")
    assert conditions.first_failure({"https://example.com/org": "acme"}) is None


def client_with(**extra: Any) -> list[str]:
    raw = copy.deepcopy(MINIMAL)
    raw["clients"][0].update(extra)
    try:
        parse_settings(raw, env={}, base_dir=Path("/etc/token-exchange"))
    except ConfigError as e:
        return e.problems
    return []


@pytest.mark.parametrize("good", ["ai_agent", "service", "user", "service ai_agent"])
def test_an_actor_is_an_agent_a_service_or_a_user(good: str) -> None:
    assert client_with(actor_sub_profile=good) == []


@pytest.mark.parametrize("bad", ["device", "ai_agent ai_agent", "", "ai-agent", " service"])
def test_other_actor_kinds_are_refused(bad: str) -> None:
    (problem,) = client_with(actor_sub_profile=bad)
    assert problem.startswith('clients["spa"].actor_sub_profile')


def test_a_delegated_lifetime_is_whole_seconds() -> None:
    assert client_with(delegated_token_ttl=60) == []
    (problem,) = client_with(delegated_token_ttl=0)
    assert "delegated_token_ttl" in problem


def test_the_actor_chain_reads_current_first() -> None:
    claims = {
        "act": {
            "sub": "agent", "iss": "https://k8s.test", "sub_profile": "service ai_agent",
            "act": {"sub": "earlier"},
        }
    }  # fmt: skip
    assert actor_chain(claims) == [
        Actor("agent", "https://k8s.test", ("service", "ai_agent")),
        Actor("earlier", None),
    ]
    assert actor_chain({}) == []


@pytest.mark.parametrize(
    "act",
    [
        "agent",
        {"iss": "https://k8s.test"},
        {"sub": 7},
        {"sub": "a", "sub_profile": ["ai_agent"]},
        {"sub": "a", "act": "b"},
    ],
)
def test_an_act_that_is_no_chain_is_an_invalid_token(act: Any) -> None:
    with pytest.raises(InvalidToken):
        actor_chain({"act": act})


def test_a_spiffe_trust_domain_is_an_upstream_with_a_bundle_endpoint() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["upstreams"][0]["subject_prefix"] = "a|"
    raw["upstreams"].append(
        {"issuer": "spiffe://example.org", "audiences": ["x"], "subject_prefix": "s|"}
    )
    with pytest.raises(ConfigError, match="needs jwks_uri"):
        parse_settings(raw, env={}, base_dir=Path("/etc/token-exchange"))
    raw["upstreams"][1]["jwks_uri"] = "https://spire.example.org/bundle"
    parse_settings(raw, env={}, base_dir=Path("/etc/token-exchange"))
    raw["upstreams"][1]["issuer"] = "spiffe://Example.org/path"
    with pytest.raises(ConfigError, match="spiffe://<trust domain>"):
        parse_settings(raw, env={}, base_dir=Path("/etc/token-exchange"))


def test_a_spiffe_trust_domain_or_an_actor_only_issuer_asserts_nothing() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["upstreams"][0]["subject_prefix"] = "a|"
    raw["upstreams"].append(
        {
            "issuer": "spiffe://example.org", "audiences": ["x"], "subject_prefix": "s|",
            "jwks_uri": "https://spire.example.org/bundle", "assertions": ["workload"],
        }
    )  # fmt: skip
    with pytest.raises(ConfigError, match="no jwt-bearer assertions"):
        parse_settings(raw, env={}, base_dir=Path("/etc/token-exchange"))
    raw["upstreams"][1]["issuer"] = "https://k8s.example.org"
    raw["upstreams"][1]["actor_only"] = True
    with pytest.raises(ConfigError, match="actor_only"):
        parse_settings(raw, env={}, base_dir=Path("/etc/token-exchange"))
