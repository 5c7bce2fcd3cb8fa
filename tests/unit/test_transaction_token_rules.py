"""Transaction tokens' pure rules: the configuration a Txn-Token service needs, the scope a
subject token states, and how a replacement narrows ``tctx``."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from token_exchange.config.settings import ConfigError, parse_settings
from token_exchange.grant.txn import narrowed, subject_scopes

from ..fakes import COUNTRIES, ENV, TENANT, UNREACHABLE_PERMISSIONS, ClientAssertions, base_config

WORKLOAD = ClientAssertions("orders-gateway")


def config(**section: Any) -> dict[str, Any]:
    raw = copy.deepcopy(base_config(TENANT, UNREACHABLE_PERMISSIONS))
    raw["transaction_tokens"] = {"audience": "trust-domain.example", "permissions": "webapp"}
    raw["transaction_tokens"].update(section)
    raw["clients"].append(
        {
            "client_id": "orders-gateway",
            "type": "confidential",
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": WORKLOAD.jwks(),
            "transaction_tokens": True,
        }
    )
    return raw


def problems(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as e:
        parse_settings(raw, env=ENV, base_dir=Path("/etc/token-exchange"))
    return "\n".join(e.value.problems)


def test_a_workload_needs_no_audiences_and_the_section_has_defaults() -> None:
    settings = parse_settings(config(), env=ENV, base_dir=Path("/etc/token-exchange"))
    section = settings.transaction_tokens
    assert section is not None
    assert (section.token_ttl, section.max_replacements) == (60, 3)
    assert settings.clients[-1].transaction_tokens


def test_only_a_private_key_jwt_client_may_ask() -> None:
    raw = config()
    raw["clients"][1]["transaction_tokens"] = True  # backend: a secret
    assert 'clients["backend"].transaction_tokens: only for a confidential client' in problems(raw)
    raw = config()
    raw["clients"][0]["transaction_tokens"] = True  # the SPA: public
    assert 'clients["spa"].transaction_tokens' in problems(raw)


def test_the_section_is_checked() -> None:
    raw = config()
    del raw["transaction_tokens"]
    assert "needs a [transaction_tokens] table" in problems(raw)
    assert "no [permissions.nowhere] table" in problems(config(permissions="nowhere"))
    # A Txn-Token is no access token: its aud is no API's, nor our issuer.
    assert "transaction_tokens.audience" in problems(config(audience=COUNTRIES))
    assert "transaction_tokens.token_ttl" in problems(config(token_ttl=3600))
    assert "transaction_tokens.max_replacements" in problems(config(max_replacements=-1))
    # Which source to ask: required when there are several (the base config has two) ...
    raw = config()
    del raw["transaction_tokens"]["permissions"]
    assert "transaction_tokens.permissions: is required" in problems(raw)
    # ... optional with one, as the contract's minimal table has it.
    del raw["permissions"]["static"]
    raw["apis"] = raw["apis"][:1]
    raw["clients"][0]["audiences"] = [COUNTRIES]
    settings = parse_settings(raw, env=ENV, base_dir=Path("/etc/token-exchange"))
    assert settings.transaction_tokens is not None
    assert settings.transaction_tokens.permissions is None


@pytest.mark.parametrize(
    ("claims", "scopes"),
    [
        ({"scope": "a b"}, {"a", "b"}),
        ({"scope": ""}, set()),
        ({"scp": ["a", "b"]}, {"a", "b"}),
        ({"scp": "a"}, {"a"}),
        ({}, None),
        ({"scope": ["a"]}, None),  # not RFC 8693's string: unknown, never unconstrained
        ({"scp": [1]}, None),
        # RFC 6749 §3.3 delimits with spaces only: a tab is part of a scope's name.
        ({"scope": "a\tb  c"}, {"a\tb", "c"}),
        ({"scp": "a\nb"}, {"a\nb"}),
    ],
)
def test_the_scope_a_subject_token_states(claims: dict[str, Any], scopes: set[str] | None) -> None:
    assert subject_scopes(claims) == (None if scopes is None else frozenset(scopes))


def test_a_replacement_narrows_tctx_and_never_adds_or_changes() -> None:
    original = {
        "countries": ["nl", "be", "de"],
        "tier": "gold",
        "limits": {"regions": ["eu", "us"], "max": 10},
        "flags": ["a"],
    }
    answer = {
        "countries": ["be", "fr"],  # fr was never granted
        "tier": "platinum",  # no change of a value
        "limits": {"regions": ["us"], "max": 1000},
        "admin": True,  # nothing added
        "flags": "a",  # not an array: the original stays
    }
    assert narrowed(original, answer) == {
        "countries": ["be"],
        "tier": "gold",
        "limits": {"regions": ["us"], "max": 10},
        "flags": ["a"],
    }
    assert narrowed(original, {}) == original
    # Equal as JSON, not as Python: 1 is no true, 1.0 no 1, {"a": 1} only {"a": 1}.
    mixed = {"values": [1, True, 1.0, {"a": 1}, "1"]}
    assert narrowed(mixed, {"values": [True, {"a": 1}]}) == {"values": [True, {"a": 1}]}
    assert narrowed(mixed, {"values": [1]}) == {"values": [1]}


def test_the_question_carries_the_details_and_they_are_in_its_cache_key() -> None:
    from token_exchange.sources.authzen import context_json
    from token_exchange.sources.permissions import PermissionRequest

    def question(details: dict[str, Any] | None) -> PermissionRequest:
        return PermissionRequest(
            subject="auth0|42", issuer=TENANT, client_id="orders-gateway",
            audience="trust-domain.example", scopes=("countries:read",), resources=(),
            authorization_details=(), subject_claims={}, grant="txn-token",
            request_details=details,
        )  # fmt: skip

    nl, de = question({"country": "nl"}), question({"country": "de"})
    assert nl.to_json()["request_details"] == {"country": "nl"}
    assert nl.to_json()["grant"] == "txn-token"
    assert nl.cache_key("webapp") != de.cache_key("webapp")
    assert question(None).cache_key("webapp") not in {nl.cache_key("webapp")}
    assert "request_details" not in question(None).to_json()

    # A replacement (the subject a Txn-Token) is never answered with an issuance's answer,
    # nor one call chain's with another's.
    def replacing(claims: dict[str, Any]) -> PermissionRequest:
        return dataclasses.replace(nl, subject_claims=claims)

    replacement = replacing({"txn": "t1", "req_wl": "orders-gateway"})
    assert replacement.cache_key("webapp") != nl.cache_key("webapp")
    assert replacement.cache_key("webapp") != replacing(
        {"txn": "t2", "req_wl": "orders-gateway"}
    ).cache_key("webapp")
    other_chain = {"txn": "t1", "req_wl": "billing", "req_wl_chain": ["orders-gateway"]}
    assert replacement.cache_key("webapp") != replacing(other_chain).cache_key("webapp")
    # The AuthZEN context (§5.4) carries them to a PDP.
    assert context_json(nl)["request_details"] == {"country": "nl"}
    assert context_json(nl)["grant"] == "txn-token"
