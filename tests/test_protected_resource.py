"""The resource side (RFC 9728, RFC 6750 §3.1, RFC 9449 §7.1) with tokens our service minted:
``verify.BearerAuth`` in front of an API, the keys fetched from the service over loopback."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from token_exchange.verify import BearerAuth, TokenVerifier

from .fakes import COUNTRIES, STS_ISSUER, DpopKey, FakeIssuer, Sts
from .helpers import assert_issued

METADATA = f"{COUNTRIES}/.well-known/oauth-protected-resource"
POINTER = f'resource_metadata="{METADATA}"'


def api(sts: Sts, **options: Any) -> Flask:
    verifier = TokenVerifier(
        issuer=STS_ISSUER, audience=COUNTRIES, jwks_uri=f"{sts.url}/.well-known/jwks.json"
    )
    auth = BearerAuth(verifier, realm="countries", public_url=COUNTRIES, **options)
    app = Flask("countries")

    @app.get("/countries/nl")
    @auth.require("countries:read")
    def read(claims: dict[str, Any]) -> str:
        return str(claims["sub"])

    @app.put("/countries/nl")
    @auth.require("countries:read", "countries:write")
    def write(claims: dict[str, Any]) -> str:
        return "written"

    auth.init_app(app)
    return app


def test_a_token_without_a_scope_the_operation_needs_is_403_naming_every_one(
    sts: Sts, issuer: FakeIssuer
) -> None:
    token = assert_issued(sts.exchange(issuer.token(), scope="countries:read"))["access_token"]
    client = api(sts).test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/countries/nl", headers=headers).status_code == 200
    refused = client.put("/countries/nl", headers=headers)
    assert refused.status_code == 403
    challenge = refused.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="countries", error="insufficient_scope"')
    assert 'scope="countries:read countries:write"' in challenge
    assert challenge.endswith(POINTER)


def test_a_token_for_another_api_is_401_pointing_at_the_metadata(
    sts: Sts, issuer: FakeIssuer
) -> None:
    client = api(sts).test_client()
    foreign = issuer.token()  # the user's own Auth0 token: never passed through (MCP)
    refused = client.get("/countries/nl", headers={"Authorization": f"Bearer {foreign}"})
    assert refused.status_code == 401
    challenge = refused.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in challenge
    assert 'scope="countries:read"' in challenge
    assert POINTER in challenge


def test_the_metadata_names_our_service(sts: Sts) -> None:
    document = api(sts).test_client().get("/.well-known/oauth-protected-resource").json
    assert document is not None
    assert document["resource"] == COUNTRIES
    assert document["authorization_servers"] == [STS_ISSUER]
    assert document["scopes_supported"] == ["countries:read", "countries:write"]


@pytest.fixture
def dpop_only(sts: Sts) -> Flask:
    return api(sts, dpop_required=True)


def test_a_dpop_only_api_refuses_a_valid_bearer_token(
    sts: Sts, issuer: FakeIssuer, dpop_only: Flask
) -> None:
    token = assert_issued(sts.exchange(issuer.token()))["access_token"]
    refused = dpop_only.test_client().get(
        "/countries/nl", headers={"Authorization": f"Bearer {token}"}
    )
    assert refused.status_code == 401
    challenge = refused.headers["WWW-Authenticate"]
    assert challenge.startswith('DPoP realm="countries", error="invalid_token"')
    assert "Bearer" not in challenge


def test_a_dpop_only_api_takes_a_bound_token_with_its_proof(
    sts: Sts, issuer: FakeIssuer, dpop_only: Flask
) -> None:
    key = DpopKey()
    issued = sts.exchange(issuer.token(), headers={"DPoP": key.proof()})
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    proof = key.proof(f"{COUNTRIES}/countries/nl", "GET", token=token)
    answer = dpop_only.test_client().get(
        "/countries/nl", headers={"Authorization": f"DPoP {token}", "DPoP": proof}
    )
    assert answer.status_code == 200, answer.headers.get("WWW-Authenticate")
