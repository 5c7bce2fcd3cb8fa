"""RFC 9728 protected-resource metadata and the challenges that point at it (``verify``'s
``BearerAuth``), without a token to verify: no key set is fetched, no socket opened."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from token_exchange.verify import BearerAuth, TokenVerifier, resource_metadata_url

STS = "https://sts.example.test"
MCP = "https://mcp.example.test/mcp"


@pytest.mark.parametrize(
    ("resource", "url"),
    [
        # RFC 9728 §3.1: inserted between host and path; a slash after the host is dropped.
        ("https://api.example.test", "https://api.example.test/.well-known/oauth-protected-resource"),
        ("https://api.example.test/", "https://api.example.test/.well-known/oauth-protected-resource"),
        (MCP, "https://mcp.example.test/.well-known/oauth-protected-resource/mcp"),
        ("https://a.example.test:8443/v1/x/", "https://a.example.test:8443/.well-known/oauth-protected-resource/v1/x"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081/.well-known/oauth-protected-resource"),
    ],
)  # fmt: skip
def test_the_metadata_url_of_a_resource(resource: str, url: str) -> None:
    assert resource_metadata_url(resource) == url


@pytest.mark.parametrize(
    "resource", ["https://api.example.test/#frag", "urn:example:api", "countries", "https:///x"]
)
def test_what_is_no_resource_identifier(resource: str) -> None:
    with pytest.raises(ValueError, match="not a resource identifier"):
        resource_metadata_url(resource)


def api(**options: Any) -> tuple[Flask, BearerAuth]:
    verifier = TokenVerifier(issuer=STS, audience=options.pop("audience", MCP))
    auth = BearerAuth(verifier, realm="mcp", **options)
    app = Flask("mcp")

    @app.post("/mcp")
    @auth.require("tools:call", "tools:list")
    def call(claims: dict[str, Any]) -> str:
        return "ok"

    @app.get("/mcp/status")
    @auth.require()
    def status(claims: dict[str, Any]) -> str:
        return "ok"

    auth.init_app(app)
    return app, auth


def test_the_metadata_document() -> None:
    app, _ = api(scopes_supported=["tools:list", "admin"], resource_name="Example MCP")
    response = app.test_client().get("/.well-known/oauth-protected-resource/mcp")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.json == {
        "resource": MCP,  # §3.3: the identifier the client derived the URL from
        "authorization_servers": [STS],
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": ["ES256", "RS256", "PS256", "EdDSA"],
        "scopes_supported": ["tools:list", "admin", "tools:call"],  # given, then required
        "resource_name": "Example MCP",
    }


def test_a_dpop_only_api_says_so() -> None:
    app, _ = api(dpop_required=True)
    document = app.test_client().get("/.well-known/oauth-protected-resource/mcp").json
    assert document is not None
    assert document["dpop_bound_access_tokens_required"] is True


def test_a_request_without_a_token_learns_where_the_metadata_is_and_what_scopes_it_needs() -> None:
    app, _ = api()
    response = app.test_client().post("/mcp")
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    pointer = (
        'resource_metadata="https://mcp.example.test/.well-known/oauth-protected-resource/mcp"'
    )
    bearer, dpop = challenge.split(", DPoP ")
    assert bearer == f'Bearer realm="mcp", scope="tools:call tools:list", {pointer}'
    assert dpop.startswith('realm="mcp", algs="ES256 RS256 PS256 EdDSA", scope="tools:call')
    assert dpop.endswith(pointer)
    assert "error=" not in challenge  # RFC 6750 §3.1: no credentials, no error code
    assert response.headers["Cache-Control"] == "no-store"


def test_an_operation_without_scopes_names_none() -> None:
    app, _ = api()
    challenge = app.test_client().get("/mcp/status").headers["WWW-Authenticate"]
    assert "scope=" not in challenge
    assert "resource_metadata=" in challenge


def test_a_dpop_only_api_offers_only_the_dpop_scheme() -> None:
    app, _ = api(dpop_required=True)
    challenge = app.test_client().post("/mcp").headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP ")
    assert "Bearer" not in challenge


def test_an_audience_that_is_no_url_publishes_nothing() -> None:
    verifier = TokenVerifier(issuer=STS, audience="countries-api")
    auth = BearerAuth(verifier)
    assert auth.resource_metadata_url is None
    with pytest.raises(ValueError, match="not a URL"):
        auth.init_app(Flask("api"))
    with pytest.raises(ValueError, match="not a resource identifier"):
        BearerAuth(verifier, resource="countries-api")
