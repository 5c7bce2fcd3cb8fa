"""The jwt-bearer grant (RFC 7523) at /token, end to end: ID-JAGs
(draft-ietf-oauth-identity-assertion-authz-grant-04) and workload JWTs from a fake issuer with
real JWKS over HTTP, the same permissions question (``"grant": "jwt-bearer"``) and the same
minted token as an exchange; every bad assertion refused with ``invalid_grant``."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests

from .fakes import (
    COUNTRIES,
    STS_ISSUER,
    STS_TOKEN_ENDPOINT,
    DpopKey,
    FakeIssuer,
    FakePermissions,
    Sts,
)
from .helpers import assert_error

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_JAG = "oauth-id-jag+jwt"
AGENT = ("agent", "agent-secret-value")


def configure(
    assertions: list[str], upstream: dict[str, Any] | None = None
) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["upstreams"][0]["assertions"] = assertions
        config["upstreams"][0].update(upstream or {})
        config["clients"].append(
            {"client_id": "agent", "type": "confidential", "secret_env": "AGENT_SECRET",
             "audiences": [COUNTRIES], "grant_types": [EXCHANGE, JWT_BEARER]}
        )  # fmt: skip

    return edit


@pytest.fixture
def make(make_sts: Callable[..., Sts]) -> Callable[..., Sts]:
    from .fakes import ENV

    def start(assertions: list[str] | None = None, **upstream: Any) -> Sts:
        edit = configure(["id-jag", "workload"] if assertions is None else assertions, upstream)
        return make_sts(edit, env={**ENV, "AGENT_SECRET": AGENT[1]})

    return start


@pytest.fixture
def sts(make: Callable[..., Sts]) -> Sts:
    return make()


def id_jag(issuer: FakeIssuer, **claims: Any) -> str:
    """An ID-JAG as an enterprise IdP (Okta) signs it (draft -04 §3.1's example claims)."""
    headers = claims.pop("headers", {"typ": ID_JAG})
    base = {
        "aud": STS_ISSUER,
        "client_id": "agent",
        "jti": uuid.uuid4().hex,
        "exp": int(time.time()) + 300,
        "resource": f"{COUNTRIES}/countries/nl",
        "scope": "countries:read",
        "given_name": None, "family_name": None, "email": None,
    }  # fmt: skip
    return issuer.token(headers=headers, **{**base, **claims})


def redeem(sts: Sts, assertion: str | None, auth: Any = AGENT, **params: Any) -> requests.Response:
    headers = params.pop("headers", None)
    data = {"grant_type": JWT_BEARER, "assertion": assertion, **params}
    data = {k: v for k, v in data.items() if v is not None}
    return sts.http.post(f"{sts.url}/token", data=data, auth=auth, headers=headers, timeout=10)


def test_an_id_jag_is_redeemed_for_a_token_after_the_permissions_question(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    response = redeem(sts, id_jag(issuer))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert "refresh_token" not in body
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    claims = sts.decode(body["access_token"])
    assert claims["sub"] == "auth0|42"
    assert claims["aud"] == COUNTRIES
    assert claims["client_id"] == "agent"
    assert claims["scope"] == "countries:read"
    assert claims["custom_access_to_countries"] == ["nl"]
    (question,) = permissions_api.questions
    assert question["grant"] == "jwt-bearer"
    assert question["resources"] == [f"{COUNTRIES}/countries/nl"]
    assert question["client_id"] == "agent"


def test_the_metadata_names_the_grant_and_the_id_jag_profile(sts: Sts) -> None:
    metadata = sts.http.get(f"{sts.url}/.well-known/oauth-authorization-server", timeout=5).json()
    assert metadata["grant_types_supported"] == [EXCHANGE, JWT_BEARER]
    assert metadata["authorization_grant_profiles_supported"] == [
        "urn:ietf:params:oauth:grant-profile:id-jag"
    ]


def test_without_a_client_that_may_use_it_the_grant_is_not_offered(
    make_sts: Callable[..., Sts], issuer: FakeIssuer
) -> None:
    sts = make_sts()
    metadata = sts.http.get(f"{sts.url}/.well-known/oauth-authorization-server", timeout=5).json()
    assert metadata["grant_types_supported"] == [EXCHANGE]
    assert "authorization_grant_profiles_supported" not in metadata
    response = redeem(sts, id_jag(issuer), auth=("backend", "s3cret-backend-secret"))
    assert_error(response, 400, "unsupported_grant_type")


def test_a_client_not_registered_for_the_grant_is_unauthorized_client(
    sts: Sts, issuer: FakeIssuer
) -> None:
    response = redeem(
        sts, id_jag(issuer, client_id="backend"), auth=("backend", "s3cret-backend-secret")
    )
    assert_error(response, 400, "unauthorized_client")


def test_a_replayed_id_jag_is_invalid_grant(sts: Sts, issuer: FakeIssuer) -> None:
    assertion = id_jag(issuer)
    assert redeem(sts, assertion).status_code == 200
    assert_error(redeem(sts, assertion), 400, "invalid_grant")


NOW = int(time.time())


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"client_id": "someone-else"}, "assertion_client"),  # issued to another client
        ({"aud": "https://other-as.example.test"}, "audience"),  # for another server
        ({"aud": [STS_ISSUER, "https://other-as.example.test"]}, "assertion_audience"),
        ({"exp": NOW - 120, "iat": NOW - 400}, "expired"),
        ({"iat": NOW + 600, "exp": NOW + 900}, "issued_in_future"),
        ({"exp": NOW + 3600}, "assertion_lifetime"),  # lives longer than the cap
        ({"headers": {}}, "assertion_not_enabled"),  # no typ: no ID-JAG
        ({"headers": {"typ": "JWT"}}, "assertion_not_enabled"),
        ({"jti": None}, "missing_claim"),
        ({"client_id": None}, "missing_claim"),
        ({"sub": None}, "missing_claim"),
        ({"iat": None}, "missing_claim"),
    ],
    ids=lambda c: ",".join(c) if isinstance(c, dict) else str(c),
)
def test_a_bad_id_jag_is_invalid_grant(
    make: Callable[..., Sts],
    issuer: FakeIssuer,
    claims: dict[str, Any],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from .test_operations import audit_lines

    caplog.set_level(logging.INFO, logger="token_exchange.audit")
    # An issuer of ID-JAGs only: a JWT without the ID-JAG typ is no assertion it may make.
    sts = make(["id-jag"])
    response = redeem(sts, id_jag(issuer, **claims))
    assert_error(response, 400, "invalid_grant")
    (line,) = [line for line in audit_lines(caplog) if line.get("grant") == "jwt-bearer"]
    assert (line["reason"], line["parameter"]) == (reason, "assertion")


def test_unsigned_and_foreign_assertions_are_invalid_grant(sts: Sts, issuer: FakeIssuer) -> None:
    claims = issuer.claims(aud=STS_ISSUER, client_id="agent", jti="j-1", exp=int(time.time()) + 300)
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"typ": ID_JAG})
    assert_error(redeem(sts, unsigned), 400, "invalid_grant")
    hs = jwt.encode(
        claims, "secret-key-of-32-bytes-or-more!!", algorithm="HS256", headers={"typ": ID_JAG}
    )
    assert_error(redeem(sts, hs), 400, "invalid_grant")
    foreign = id_jag(issuer, iss="https://evil.example.test/")
    assert_error(redeem(sts, foreign), 400, "invalid_grant")
    assert_error(redeem(sts, "x" * 20_000), 400, "invalid_grant")


def test_an_issuer_not_enabled_for_id_jags_is_refused(
    make: Callable[..., Sts], issuer: FakeIssuer
) -> None:
    sts = make(["workload"])
    assert_error(redeem(sts, id_jag(issuer)), 400, "invalid_grant")


def test_the_request_only_narrows_what_the_id_jag_carries(sts: Sts, issuer: FakeIssuer) -> None:
    wider_scope = redeem(sts, id_jag(issuer), scope="countries:read countries:write")
    assert_error(wider_scope, 400, "invalid_scope")
    other_resource = redeem(sts, id_jag(issuer), resource=f"{COUNTRIES}/countries/de")
    assert_error(other_resource, 400, "invalid_target")
    within = redeem(
        sts,
        id_jag(issuer, resource=f"{COUNTRIES}/countries/", scope="countries:read countries:write"),
        resource=f"{COUNTRIES}/countries/nl",
        scope="countries:read",
    )
    assert within.status_code == 200, within.text
    assert within.json()["scope"] == "countries:read"


def test_malformed_requests_are_invalid_request(sts: Sts, issuer: FakeIssuer) -> None:
    assert_error(redeem(sts, None), 400, "invalid_request")
    both = redeem(sts, id_jag(issuer), subject_token=issuer.token())
    assert_error(both, 400, "invalid_request")


def test_an_id_jag_bound_to_a_key_needs_a_proof_by_it(sts: Sts, issuer: FakeIssuer) -> None:
    key = DpopKey()
    bound = id_jag(issuer, cnf={"jkt": key.jkt})
    assert_error(redeem(sts, bound), 400, "invalid_grant")
    other = DpopKey()
    assert_error(
        redeem(sts, id_jag(issuer, cnf={"jkt": key.jkt}), headers={"DPoP": other.proof()}),
        400,
        "invalid_grant",
    )
    response = redeem(sts, id_jag(issuer, cnf={"jkt": key.jkt}), headers={"DPoP": key.proof()})
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"
    assert sts.decode(response.json()["access_token"])["cnf"] == {"jkt": key.jkt}


def test_a_workload_jwt_for_our_token_endpoint_names_its_api(sts: Sts, issuer: FakeIssuer) -> None:
    workload = issuer.token(
        sub="system:serviceaccount:agents:planner",
        aud=STS_TOKEN_ENDPOINT,
        jti=uuid.uuid4().hex,
        exp=int(time.time()) + 300,
    )
    assert_error(redeem(sts, workload), 400, "invalid_target")  # no resource or audience
    response = redeem(sts, workload, audience=COUNTRIES, scope="countries:read")
    assert response.status_code == 200, response.text
    claims = sts.decode(response.json()["access_token"])
    assert claims["sub"] == "system:serviceaccount:agents:planner"


def test_refusals_are_audited_with_a_reason(
    sts: Sts, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    from .test_operations import audit_lines

    caplog.set_level(logging.INFO, logger="token_exchange.audit")
    assertion = id_jag(issuer)
    redeem(sts, assertion)
    redeem(sts, assertion)
    lines = [line for line in audit_lines(caplog) if line.get("grant") == "jwt-bearer"]
    assert [line["outcome"] for line in lines] == ["issued", "invalid_grant"]
    assert lines[1]["reason"] == "assertion_replayed"
    assert lines[0]["profile"] == "id-jag"
    assert all(assertion not in str(line) for line in lines)


def workload_jwt(issuer: FakeIssuer, sub: str) -> str:
    return issuer.token(
        sub=sub, aud=STS_TOKEN_ENDPOINT, jti=uuid.uuid4().hex, exp=int(time.time()) + 300
    )


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_the_issuers_conditions_are_claim_rules_for_workloads(
    make: Callable[..., Sts], issuer: FakeIssuer, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    from .test_operations import audit_lines

    caplog.set_level(logging.INFO, logger="token_exchange.audit")
    agents_only = {"sub": {"pattern": "system:serviceaccount:agents:.*"}}
    sts = make(["workload"], conditions=agents_only, conditions_mode=mode)
    ok = redeem(
        sts, workload_jwt(issuer, "system:serviceaccount:agents:planner"), audience=COUNTRIES
    )
    assert ok.status_code == 200, ok.text
    other = redeem(
        sts, workload_jwt(issuer, "system:serviceaccount:web:frontend"), audience=COUNTRIES
    )
    line = [x for x in audit_lines(caplog) if x.get("grant") == "jwt-bearer"][-1]
    if mode == "enforce":
        assert_error(other, 400, "invalid_grant")
        assert (line["reason"], line["policy"], line["claim"]) == (
            "condition",
            "upstreams.conditions",
            "sub",
        )
    else:
        assert other.status_code == 200, other.text
        assert line["would_refuse"][0]["policy"] == "upstreams.conditions"
