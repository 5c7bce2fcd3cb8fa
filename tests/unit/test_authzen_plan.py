"""The AuthZEN source's pure parts: metadata rules (AuthZEN 1.0 §9), the evaluation plan and the
batch it sends, and how a decision is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from token_exchange.config.settings import AuthzenPermissionsSettings, ConfigError, parse_settings
from token_exchange.oauth.errors import UpstreamUnavailable
from token_exchange.sources.authzen import (
    Endpoints,
    Result,
    batch_body,
    metadata_url,
    parse_batch,
    parse_metadata,
    parse_result,
    plan,
    to_decision,
)

from ..fakes import COUNTRIES, ENV, TENANT, UNREACHABLE_PERMISSIONS, base_config
from ..test_authzen import ALICE, PREFIX, authzen_source, question, settings, use_pdp


def test_example_file_is_the_tested_source() -> None:
    """examples/cerbos/token-exchange.toml is what these tests configure."""
    import tomllib

    shipped = tomllib.loads(
        (Path(__file__).parents[2] / "examples/cerbos/token-exchange.toml").read_text()
    )["permissions"]["pdp"]
    assert shipped == authzen_source("http://127.0.0.1:3592")


def test_plan_evaluates_requested_resources_else_the_candidates() -> None:
    s = settings(actions={"countries:read": "view"})
    everything = plan(s, question())
    assert [(e.action, e.resource_type, e.resource_id) for e in everything] == [
        ("view", "countries_api", COUNTRIES),
        *[("read", "country", c) for c in ["nl", "de", "be", "fr"]],
    ]
    requested = plan(s, question(resources=(PREFIX + "nl",)))
    assert [(e.resource_id, e.requested) for e in requested[1:]] == [("nl", True)]
    with_port = plan(s, question(resources=("https://countries.example.test:443/countries/de",)))
    assert [e.resource_id for e in with_port[1:]] == ["de"]
    whole = plan(s, question(resources=(PREFIX,)))
    assert [e.resource_id for e in whole[1:]] == ["nl", "de", "be", "fr"]


def test_metadata_url_puts_the_well_known_path_before_the_pdp_path() -> None:
    assert metadata_url("https://pdp.test") == "https://pdp.test/.well-known/authzen-configuration"
    assert (
        metadata_url("https://pdp.test/tenant1")
        == "https://pdp.test/.well-known/authzen-configuration/tenant1"
    )


def test_only_a_boolean_true_grants() -> None:
    s = settings()
    evaluations = plan(s, question())
    results = [Result(True, {}), Result(True, {}), Result(False, {}), Result(True, {})]
    decision = to_decision(s, evaluations, [*results, Result(False, {})])
    assert decision.scopes == ("countries:read",)
    assert decision.claims == {"custom_access_to_countries": ["nl", "be"]}
    assert decision.ttl == 60
    for bad in [{"decision": "true"}, {"decision": None}, {}, [], {"decision": True, "context": 1}]:
        with pytest.raises(UpstreamUnavailable):
            parse_result(bad)
    assert parse_result({"decision": False, "unknown": {"x": 1}}) == Result(False, {})
    with pytest.raises(UpstreamUnavailable):
        parse_batch({"evaluations": [{"decision": True}]}, 2)


def test_metadata_must_name_this_pdp_on_its_origin() -> None:
    base = "https://pdp.example.test"
    good = {
        "policy_decision_point": base,
        "access_evaluation_endpoint": f"{base}/access/v1/evaluation",
    }
    assert parse_metadata(base, good) == Endpoints(f"{base}/access/v1/evaluation", None)
    for bad in [
        {**good, "policy_decision_point": "https://other.example.test"},
        {**good, "access_evaluation_endpoint": "http://pdp.example.test/access/v1/evaluation"},
        {**good, "access_evaluations_endpoint": "https://pdp.example.test.evil.test/b"},
        {"policy_decision_point": base},
        [],
    ]:
        with pytest.raises(UpstreamUnavailable):
            parse_metadata(base, bad)


def test_the_batch_names_subject_properties_client_and_actor() -> None:
    s = settings(subject_properties=["email", "missing"], subject_type="person")
    q = question(
        subject_claims={"sub": ALICE, "email": "alice@example.test", "secret_thing": "x"},
        actor={
            "subject": "service|batch", "issuer": "https://issuer.test/",
            "client_id": "batch-agent", "claims": {"secret_thing": "y"},
        },
        act={"sub": "service|batch", "iss": "https://issuer.test/"},
    )  # fmt: skip
    body = batch_body(s, q, plan(s, q))
    # The actor as the delegation profile's subject.properties.act (what Cerbos keeps) ...
    assert body["subject"] == {
        "type": "person", "id": ALICE,
        "properties": {
            "email": "alice@example.test",
            "act": {"sub": "service|batch", "iss": "https://issuer.test/"},
        },
    }  # fmt: skip
    # ... and in the context, with the application it acts as.
    assert body["context"]["actor"] == {
        "subject": "service|batch",
        "issuer": "https://issuer.test/",
        "client_id": "batch-agent",
    }
    assert body["context"]["client_id"] == "spa"
    assert "secret_thing" not in json.dumps(body)
    assert set(body) == {"subject", "context", "evaluations"}


def test_the_example_source_passes_check_config(tmp_path: Path) -> None:
    config = base_config(TENANT, UNREACHABLE_PERMISSIONS)
    use_pdp("https://pdp.example.test")(config)
    parsed = parse_settings(config, env=ENV, base_dir=tmp_path)
    source = parsed.permissions["pdp"]
    assert isinstance(source, AuthzenPermissionsSettings)
    assert source.claims[0].candidates == ("nl", "de", "be", "fr")
    config["permissions"]["pdp"]["claims"] = {"iss": {"from_context": "iss"}}
    with pytest.raises(ConfigError, match=r"permissions\.pdp\.claims\.iss"):
        parse_settings(config, env=ENV, base_dir=tmp_path)
