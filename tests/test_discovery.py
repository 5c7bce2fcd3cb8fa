"""JWKS (RFC 7517), metadata (RFC 8414), health, readiness, and an upstream that is down."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import pytest
import requests

from .fakes import STS_ISSUER, FakeIssuer, Sts
from .helpers import assert_error, assert_issued
from .test_operations import audit_lines

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def test_jwks_has_public_members_only_and_a_max_age(sts: Sts) -> None:
    response = requests.get(f"{sts.url}/.well-known/jwks.json", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert "max-age=300" in response.headers["Cache-Control"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    (key,) = response.json()["keys"]
    assert not PRIVATE_MEMBERS & set(key)
    assert key["use"] == "sig"
    assert key["alg"] == "ES256"


def test_jwks_answers_304_to_a_matching_etag(sts: Sts) -> None:
    first = requests.get(f"{sts.url}/.well-known/jwks.json", timeout=5)
    etag = first.headers["ETag"]
    again = requests.get(
        f"{sts.url}/.well-known/jwks.json", headers={"If-None-Match": etag}, timeout=5
    )
    assert again.status_code == 304
    assert again.content == b""


def test_jwks_private_members_absent_for_rsa_keys(make_sts: Callable[..., Sts]) -> None:
    sts = make_sts(alg="RS256")
    (key,) = sts.jwks()["keys"]
    assert set(key) == {"kty", "n", "e", "kid", "alg", "use"}


def test_authorization_server_metadata(sts: Sts) -> None:
    response = requests.get(f"{sts.url}/.well-known/oauth-authorization-server", timeout=5)
    assert response.status_code == 200
    metadata = response.json()
    assert metadata["issuer"] == STS_ISSUER
    assert metadata["token_endpoint"] == f"{STS_ISSUER}/token"
    assert metadata["jwks_uri"] == f"{STS_ISSUER}/.well-known/jwks.json"
    assert metadata["grant_types_supported"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    # An authorization endpoint that serves no response type (below): published because MCP's
    # SDKs refuse metadata without one (RFC 8414 §2 does not require it of us).
    assert metadata["authorization_endpoint"] == f"{STS_ISSUER}/authorize"
    assert metadata["response_types_supported"] == []
    assert metadata["response_modes_supported"] == []  # omitted, it would say query, fragment
    assert "code_challenge_methods_supported" not in metadata
    assert set(metadata["token_endpoint_auth_methods_supported"]) == {
        "none",
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    }
    assert "countries:read" in metadata["scopes_supported"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_the_authorization_endpoint_refuses_every_request_and_never_redirects(
    sts: Sts, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    # A request as an authorization-code client sends it, to a redirect URI of an attacker's.
    query = {
        "response_type": "code",
        "client_id": "spa",
        "redirect_uri": "https://attacker.example/callback",
        "state": "s1",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
        # Not read: a client assertion's sub would be the attacker's word for who asks.
        "client_assertion": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.",
    }
    # Nor a Basic header: at an authorization endpoint it would be a user's credentials.
    basic = ("a-user", "their-password")
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        if method == "GET":
            response = requests.get(
                f"{sts.url}/authorize", params=query, auth=basic, allow_redirects=False, timeout=5
            )
        else:
            response = requests.post(
                f"{sts.url}/authorize", data=query, auth=basic, allow_redirects=False, timeout=5
            )
    # RFC 6749 §4.1.2.1: no client has a redirect URI here, so none is ever redirected to;
    # the error is shown to whoever sent the request.
    assert_error(response, 400, "unsupported_response_type")
    assert "Location" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"
    assert "attacker" not in response.text
    assert "spa" not in response.text
    (line,) = audit_lines(caplog)
    assert line["event"] == "authorization_refused"
    assert line["reason"] == "unsupported_response_type"
    assert line["outcome"] == "unsupported_response_type"
    assert line["request_id"] == response.headers["X-Request-ID"]
    # Who tried, as at /token; never the redirect URI, the state or the PKCE challenge.
    assert line["attempted_client_id"] == "spa"
    assert not {"state", "redirect_uri", "code_challenge"} & set(line)
    assert "attacker" not in json.dumps(line)
    assert "mallory" not in json.dumps(line)
    assert "a-user" not in json.dumps(line)


def test_the_authorization_endpoint_allows_get_and_post_only(sts: Sts) -> None:
    response = requests.put(f"{sts.url}/authorize", timeout=5)
    assert_error(response, 405, "invalid_request")
    allowed = set(response.headers["Allow"].split(", "))
    assert {"GET", "POST"} <= allowed
    assert "PUT" not in allowed


def test_healthz(sts: Sts) -> None:
    response = requests.get(f"{sts.url}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_when_ready(sts: Sts, issuer: FakeIssuer) -> None:
    response = requests.get(f"{sts.url}/readyz", timeout=5)
    assert response.status_code == 200, response.text
    assert response.json()["problems"] == []


def test_upstream_down_at_start_gives_503_until_its_keys_load(
    make_sts: Callable[..., Sts], issuer: FakeIssuer
) -> None:
    issuer.down = True

    def short_cooldown(config: dict[str, object]) -> None:
        upstreams = config["upstreams"]
        assert isinstance(upstreams, list)
        upstreams[0]["jwks_cooldown"] = 1

    sts = make_sts(short_cooldown)  # the service starts anyway
    response = sts.exchange(issuer.token())
    assert_error(response, 503, "temporarily_unavailable")
    assert int(response.headers["Retry-After"]) >= 1
    ready = requests.get(f"{sts.url}/readyz", timeout=5)
    assert ready.status_code == 503
    assert issuer.issuer in ready.json()["problems"][0]

    issuer.down = False
    deadline = time.monotonic() + 5
    while sts.exchange(issuer.token()).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert_issued(sts.exchange(issuer.token()))
    assert requests.get(f"{sts.url}/readyz", timeout=5).status_code == 200


def test_configured_jwks_uri_skips_discovery(
    make_sts: Callable[..., Sts], issuer: FakeIssuer
) -> None:
    def with_jwks_uri(config: dict[str, object]) -> None:
        upstreams = config["upstreams"]
        assert isinstance(upstreams, list)
        upstreams[0]["jwks_uri"] = issuer.jwks_uri

    sts = make_sts(with_jwks_uri)
    assert_issued(sts.exchange(issuer.token()))
    paths = {req.path for req, _ in issuer.server.log}
    assert "/.well-known/openid-configuration" not in paths
