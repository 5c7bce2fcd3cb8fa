"""Trust conditions on subject tokens, per upstream and per client, over real HTTP: enforce and
audit, what the caller is told (nothing about the condition), what the audit line and the
metrics say, and every token refusal's reason."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from .fakes import ENV, FakeIssuer, FakePermissions, Sts
from .helpers import assert_error, assert_issued, service_toml
from .test_operations import audit_lines, metric

SPA_APP = "auth0-spa-client-id"
ORG = "https://example.test/org_id"
POLICY_REFUSED = "subject_token is not acceptable (policy)"


def m2m_claims() -> dict[str, Any]:
    """What Auth0 puts in a client-credentials (machine-to-machine) access token."""
    return {
        "sub": "Xq3kMaChIne@clients",
        "azp": "Xq3kMaChIne",
        "gty": "client-credentials",
        "given_name": None,
        "family_name": None,
        "email": None,
    }


def user_claims(**claims: Any) -> dict[str, Any]:
    """A user's access token from the SPA, as the Auth0 recipe in the README expects it."""
    return {"azp": SPA_APP, "email_verified": True, ORG: "org_acme1", **claims}


def recipe(config: dict[str, Any]) -> None:
    """The README's Auth0 recipe, enforced."""
    config["upstreams"][0]["conditions"] = {
        "gty": {"absent": True},
        "email_verified": True,
        ORG: {"pattern": "org_[A-Za-z0-9]+"},
    }
    config["clients"][0]["subject_conditions"] = {"azp": [SPA_APP]}


def in_audit_mode(config: dict[str, Any]) -> None:
    recipe(config)
    config["upstreams"][0]["conditions_mode"] = "audit"
    config["clients"][0]["subject_conditions_mode"] = "audit"


@pytest.fixture
def guarded(make_sts: Callable[..., Sts]) -> Sts:
    return make_sts(recipe)


def refused(
    sts: Sts, token: str, permissions_api: FakePermissions, **params: Any
) -> dict[str, Any]:
    asked = len(permissions_api.questions)
    body = assert_error(sts.exchange(token, **params), 400, "invalid_request")
    assert len(permissions_api.questions) == asked, "no permission question for a refused token"
    return body


# -- enforce ------------------------------------------------------------------------------------


def test_a_token_that_satisfies_every_condition_is_exchanged(
    guarded: Sts, issuer: FakeIssuer
) -> None:
    body = assert_issued(guarded.exchange(issuer.token(**user_claims())))
    assert guarded.decode(body["access_token"])["sub"] == "auth0|42"


def test_m2m_token_is_refused(
    guarded: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    # Signature, issuer and audience are fine: it is a real Auth0 client-credentials token.
    body = refused(guarded, issuer.token(**user_claims(**m2m_claims())), permissions_api)
    assert body["error_description"] == POLICY_REFUSED


def test_token_issued_to_another_application_is_refused(
    guarded: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    for azp in ("another-app", None, ["another-app"], "", SPA_APP.upper()):
        body = refused(guarded, issuer.token(**user_claims(azp=azp)), permissions_api)
        assert body["error_description"] == POLICY_REFUSED


@pytest.mark.parametrize(
    "claims",
    [
        {"email_verified": False},
        {"email_verified": "true"},  # a string is not the boolean
        {"email_verified": 1},
        {"email_verified": None},
        {ORG: None},
        {ORG: "org_"},
        {ORG: "org_acme\n"},
        {ORG: "xorg_acme"},
        {ORG: ["nope"]},
        {ORG: 12},
        {ORG: "org_" + "a" * 600},  # beyond the length a pattern is matched against
        {"gty": "password"},
    ],
)
def test_upstream_conditions_are_enforced(
    guarded: Sts, issuer: FakeIssuer, permissions_api: FakePermissions, claims: dict[str, Any]
) -> None:
    body = refused(guarded, issuer.token(**user_claims(**claims)), permissions_api)
    assert body["error_description"] == POLICY_REFUSED


def test_a_pattern_that_backtracks_in_re_answers_at_once(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    # The review's ReDoS, written so that RE2 compiles it: with Python's re, this email held a
    # worker for minutes; RE2 matches in time linear in the value.
    def nested(config: dict[str, Any]) -> None:
        config["clients"][0]["subject_conditions"] = {
            "email": {"pattern": r"([a-z0-9.]+)+@example\.test"}
        }

    sts = make_sts(nested)
    assert_issued(sts.exchange(issuer.token(email="john@example.test")))
    started = time.perf_counter()
    body = refused(sts, issuer.token(email="a" * 60 + "@gmail.test"), permissions_api)
    assert body["error_description"] == POLICY_REFUSED
    assert time.perf_counter() - started < 5  # a backstop: it takes milliseconds


def test_namespaced_claim_in_a_list(guarded: Sts, issuer: FakeIssuer) -> None:
    # A list claim matches a pattern when any element does.
    assert_issued(guarded.exchange(issuer.token(**user_claims(**{ORG: ["x", "org_b2"]}))))


def test_client_conditions_hold_for_that_client_only(
    guarded: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    # The same verified (and cached) token: the spa may not exchange it, the reader may, and
    # the cache must not carry one client's verdict over to the other, in either order.
    token = issuer.token(**user_claims(azp="reporting-app"))
    assert_issued(guarded.exchange(token, client_id="reader"))
    refused(guarded, token, permissions_api)
    assert_issued(guarded.exchange(token, client_id="reader"))
    refused(guarded, token, permissions_api)


def test_upstream_conditions_hold_for_every_client(
    guarded: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    token = issuer.token(**user_claims(**m2m_claims()))
    for _ in range(2):  # the second time, from the verified-token cache
        for client in ("reader", "spa"):
            refused(guarded, token, permissions_api, client_id=client)


def test_no_refusal_reveals_the_condition(
    guarded: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    tokens = [
        issuer.token(**user_claims(**m2m_claims())),
        issuer.token(**user_claims(azp="another-app")),
        issuer.token(**user_claims(email_verified=False)),
        issuer.token(**user_claims(**{ORG: "nope"})),
    ]
    descriptions = {refused(guarded, t, permissions_api)["error_description"] for t in tokens}
    # One answer for every condition, upstream or client: nothing to probe with.
    assert descriptions == {POLICY_REFUSED}
    for word in ("gty", "azp", "email", "org", "absent", "pattern", "one_of", "client-cred"):
        assert word not in POLICY_REFUSED


# -- audit mode ---------------------------------------------------------------------------------


def test_audit_mode_lets_the_exchange_through_and_says_why_it_would_refuse(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    sts = make_sts(in_audit_mode)
    token = issuer.token(**user_claims(**m2m_claims()))
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        for _ in range(2):  # the second exchange hits the verified-token cache: logged again
            assert_issued(sts.exchange(token))
        assert_issued(sts.exchange(issuer.token(**user_claims())))
    first, second, clean = audit_lines(caplog)
    for line in (first, second):
        assert line["outcome"] == "issued"
        assert line["would_refuse"] == [
            {
                "reason": "condition",
                "policy": "upstreams.conditions",
                "claim": "gty",
                "condition": "absent",
            },
            {
                "reason": "condition",
                "policy": "clients.subject_conditions",
                "claim": "azp",
                "condition": "one_of",
            },
        ]
        assert line["sub"] == "Xq3kMaChIne@clients"
        assert line["issuer"] == issuer.issuer
        assert "reason" not in line
    assert "would_refuse" not in clean
    # Never a claim's value either (it may be personal data).
    assert "client-credentials" not in json.dumps(first)
    text = requests.get(f"{sts.url}/metrics", timeout=5).text
    refusals = "token_exchange_token_refusals_total"
    assert metric(text, refusals, reason="condition", mode="audit") == 4
    assert metric(text, refusals, mode="enforce") == 0


def test_audit_and_enforce_mix(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    def edit(config: dict[str, Any]) -> None:
        recipe(config)
        config["upstreams"][0]["conditions_mode"] = "audit"

    sts = make_sts(edit)
    assert_issued(sts.exchange(issuer.token(**user_claims(email_verified=False))))
    refused(sts, issuer.token(**user_claims(email_verified=False, azp="x")), permissions_api)


# -- the audit line and the metric of a refusal ---------------------------------------------------


def test_condition_refusal_is_audited_with_its_reason(
    guarded: Sts, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    token = issuer.token(**user_claims(azp="another-app"))
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        guarded.exchange(token)
        guarded.exchange(issuer.token(**user_claims(**{ORG: "nope"})))
    client_line, upstream_line = audit_lines(caplog)
    assert client_line["outcome"] == "invalid_request"
    assert client_line["reason"] == "condition"
    assert client_line["policy"] == "clients.subject_conditions"
    assert client_line["client_id"] == "spa"
    assert client_line["claim"] == "azp"
    assert client_line["condition"] == "one_of"
    assert client_line["parameter"] == "subject_token"
    assert client_line["issuer"] == issuer.issuer
    assert client_line["sub"] == "auth0|42"
    assert upstream_line["policy"] == "upstreams.conditions"
    assert upstream_line["claim"] == ORG
    assert upstream_line["condition"] == "pattern"
    everything = json.dumps([client_line, upstream_line]) + caplog.text
    assert "another-app" not in everything
    for part in token.split("."):
        assert part not in everything


def _expired(issuer: FakeIssuer) -> str:
    return issuer.token(exp=int(time.time()) - 3600)


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (_expired, "expired"),
        (lambda i: i.token(aud="https://elsewhere.test"), "audience"),
        (lambda i: i.token(nbf=int(time.time()) + 3600), "not_yet_valid"),
        (lambda i: i.token(sub=None), "missing_claim"),
        (lambda i: i.token(sub=""), "invalid_claim"),
        (lambda i: i.token()[:-4] + ("AAAA" if not i.token().endswith("AAAA") else "BBBB"),
         "signature"),
        (lambda i: i.token(key=i.keys[i.kid], kid="unknown-kid"), "unknown_key"),
        (lambda i: "forged", "malformed"),
    ],
)  # fmt: skip
def test_every_token_refusal_has_a_reason(
    sts: Sts,
    issuer: FakeIssuer,
    caplog: pytest.LogCaptureFixture,
    make_token: Callable[[FakeIssuer], str],
    reason: str,
) -> None:
    token = make_token(issuer)
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        assert_error(sts.exchange(token), 400, "invalid_request")
    (line,) = audit_lines(caplog)
    assert line["reason"] == reason
    assert line["parameter"] == "subject_token"
    if reason != "malformed":
        assert line["token_iss"] == issuer.issuer
    text = requests.get(f"{sts.url}/metrics", timeout=5).text
    assert metric(text, "token_exchange_token_refusals_total", reason=reason, mode="enforce") == 1


def test_untrusted_issuer_is_named_unverified_and_bounded(
    sts: Sts, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        sts.exchange(issuer.token(iss="https://evil.test/"))
        sts.exchange(issuer.token(iss="https://evil.test/" + "x" * 5000))
        payload = json.dumps(issuer.claims(iss={"not": "a string"})).encode()
        key = issuer.keys[issuer.kid]
        sts.exchange(jwt.api_jws.encode(payload, key, "RS256", headers={"kid": issuer.kid}))
    plain, huge, odd = audit_lines(caplog)
    assert plain["reason"] == huge["reason"] == odd["reason"] == "issuer_untrusted"
    assert plain["token_iss"] == "https://evil.test/"
    # Never taken for the verified issuer.
    assert "issuer" not in plain
    assert len(huge["token_iss"]) == 200
    assert "token_iss" not in odd
    text = requests.get(f"{sts.url}/metrics", timeout=5).text
    assert "evil.test" not in text


def test_refusal_metric_counts_by_reason(
    guarded: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    refused(guarded, issuer.token(**user_claims(**m2m_claims())), permissions_api)
    refused(guarded, issuer.token(**user_claims(azp="x")), permissions_api)
    refused(guarded, _expired(issuer), permissions_api)
    assert_issued(guarded.exchange(issuer.token(**user_claims())))
    text = requests.get(f"{guarded.url}/metrics", timeout=5).text
    labels = {"mode": "enforce"}
    assert metric(text, "token_exchange_token_refusals_total", reason="condition", **labels) == 2
    assert metric(text, "token_exchange_token_refusals_total", reason="expired", **labels) == 1
    # Label values are our own codes only: nothing from the token or the config's values.
    assert SPA_APP not in text
    assert "client-credentials" not in text


# -- check-config ---------------------------------------------------------------------------------


def check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "token_exchange.serve.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


@pytest.mark.slow
def test_check_config_reports_every_condition_problem(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    toml = (
        service_toml(issuer.issuer, permissions_api.url)
        .replace(
            'audiences = ["https://sts.example.test/api"]\n',
            'audiences = ["https://sts.example.test/api"]\n'
            "[upstreams.conditions]\n"
            "gty = { absent = true, present = true }\n"
            'org = { regex = "x" }\n'
            '"https://example.test/team" = { pattern = "(?x) ( [a-z0-9.]+ ) + @example\\\\.com" }\n'
            'name = { pattern = "[a-" }\n'
            "org_id = { pattern = '(?u)org_\\d+' }\n"
            "org_name = { pattern = 'org_(?u:\\d)+' }\n"
            "tenant = { pattern = '(a+)(?#c)+' }\n",
        )
        .replace(
            'audiences = ["https://countries.example.test"]\n',
            'audiences = ["https://countries.example.test"]\n'
            "allow_delegation = true\n"
            "[clients.subject_conditions]\n"
            "azp = { one_of = [] }\n",
            1,
        )
    )
    (tmp_path / "config.toml").write_text(toml)
    result = check_config(tmp_path / "config.toml", ENV)
    assert result.returncode == 2, result.stdout
    err = result.stderr
    upstream = f'upstreams["{issuer.issuer}"]'
    assert f"{upstream}.conditions.gty: must have exactly one of" in err
    assert f"{upstream}.conditions.org: unknown operator regex" in err
    assert f'{upstream}.conditions."https://example.test/team": pattern is not a valid' in err
    assert f"{upstream}.conditions.name: pattern is not a valid regular expression" in err
    # (?u) was a ValueError that escaped check-config as a traceback; (?u:...) undid ASCII.
    assert f"{upstream}.conditions.org_id: pattern is not a valid regular expression" in err
    assert f"{upstream}.conditions.org_name: pattern is not a valid regular expression" in err
    assert f"{upstream}.conditions.tenant: pattern is not a valid regular expression" in err
    assert 'clients["spa"].subject_conditions.azp: one_of must be a non-empty list' in err
    assert 'clients["spa"].actor_conditions: is required for a client with allow_delegation' in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_check_config_warns_about_an_auth0_issuer_without_its_slash(
    tmp_path: Path, permissions_api: FakePermissions
) -> None:
    from .fakes import make_signing_key

    make_signing_key(tmp_path / "keys")
    toml = service_toml("https://example.eu.auth0.com", permissions_api.url)
    (tmp_path / "config.toml").write_text(toml)
    result = check_config(tmp_path / "config.toml", ENV)
    assert result.returncode == 0, result.stderr
    assert 'warning: upstreams["https://example.eu.auth0.com"].issuer: Auth0 issuers end with' in (
        result.stderr
    )
    assert "https://example.eu.auth0.com/" in result.stderr


@pytest.mark.slow
def test_check_config_warns_about_delegation_that_binds_less_than_it_seems(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    from .fakes import make_signing_key

    make_signing_key(tmp_path / "keys")
    toml = service_toml(issuer.issuer, permissions_api.url) + (
        # Our own issuer as an upstream (chained delegation).
        "[[upstreams]]\n"
        'issuer = "https://sts.example.test"\n'
        'audiences = ["https://countries.example.test"]\n'
        'algorithms = ["ES256"]\n'
        'jwks_uri = "https://sts.example.test/.well-known/jwks.json"\n'
        "[[clients]]\n"
        'client_id = "agent"\n'
        'type = "confidential"\n'
        'secret_env = "BACKEND_SECRET"\n'
        'audiences = ["https://countries.example.test"]\n'
        "allow_delegation = true\n"
        'actor_conditions_mode = "audit"\n'
        "[clients.actor_conditions]\n"
        'gty = "client-credentials"\n'
        "[clients.subject_conditions]\n"
        "gty = { absent = true }\n"
    )
    (tmp_path / "config.toml").write_text(toml)
    result = check_config(tmp_path / "config.toml", ENV)
    assert result.returncode == 0, result.stderr
    assert 'warning: clients["agent"].subject_conditions: client agent may present' in result.stderr
    assert 'warning: clients["agent"].actor_conditions_mode: "audit": client agent' in result.stderr
    # In enforce mode, the same actor_conditions are a problem: they name nobody.
    (tmp_path / "config.toml").write_text(toml.replace('actor_conditions_mode = "audit"\n', ""))
    result = check_config(tmp_path / "config.toml", ENV)
    assert result.returncode == 2, result.stdout
    assert (
        'clients["agent"].actor_conditions: must bind the actor tokens of client agent'
        in result.stderr
    )
