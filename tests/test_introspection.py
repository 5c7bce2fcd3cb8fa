"""Revocation (RFC 7009) and introspection (RFC 7662), with state in a real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask

from token_exchange.verify import BearerAuth, Introspection, TokenVerifier

from .fakes import (
    BACKEND_SECRET,
    COUNTRIES,
    COUNTRIES_API_SECRET,
    STS_ISSUER,
    FakeIssuer,
    Sts,
)
from .helpers import assert_error, assert_issued

#: The countries API, registered as a confidential client that may introspect its tokens.
API_CLIENT = ("countries-api", COUNTRIES_API_SECRET)
BACKEND = ("backend", BACKEND_SECRET)


@pytest.fixture
def sts(make_sts: Callable[..., Sts], redis_url: str) -> Sts:
    def edit(config: dict[str, Any]) -> None:
        config["store"] = {"url": redis_url}

    return make_sts(edit)


def minted(sts: Sts, issuer: FakeIssuer) -> str:
    return str(assert_issued(sts.exchange(issuer.token()))["access_token"])


def introspect(sts: Sts, token: str, auth: Any = API_CLIENT) -> requests.Response:
    return requests.post(f"{sts.url}/introspect", data={"token": token}, auth=auth, timeout=5)


def revoke(sts: Sts, token: str, auth: Any = API_CLIENT) -> requests.Response:
    return requests.post(f"{sts.url}/revoke", data={"token": token}, auth=auth, timeout=5)


def test_active_token_is_introspected_with_its_claims(sts: Sts, issuer: FakeIssuer) -> None:
    response = introspect(sts, minted(sts, issuer))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["active"] is True
    assert body["aud"] == COUNTRIES
    assert body["client_id"] == "spa"
    assert body["iss"] == STS_ISSUER
    assert body["token_type"] == "Bearer"
    assert {"sub", "scope", "exp", "iat", "jti"} <= set(body)


def test_revoked_token_is_inactive(sts: Sts, issuer: FakeIssuer) -> None:
    token = minted(sts, issuer)
    response = revoke(sts, token)
    assert response.status_code == 200
    assert introspect(sts, token).json() == {"active": False}


@pytest.mark.parametrize("token", ["garbage", "a.b.c", ""])
def test_revoking_an_invalid_token_is_200(sts: Sts, token: str) -> None:
    response = revoke(sts, token)
    if token:
        assert response.status_code == 200
    else:
        assert_error(response, 400, "invalid_request")


def test_expired_and_foreign_tokens_are_inactive(sts: Sts, issuer: FakeIssuer) -> None:
    key = sts.services.keys.signing_key()
    now = int(time.time())
    claims = {"iss": STS_ISSUER, "sub": "x", "aud": COUNTRIES, "client_id": "spa",
              "jti": "j", "scope": "countries:read"}  # fmt: skip
    expired = jwt.encode(
        {**claims, "iat": now - 600, "exp": now - 1}, key.private_key, algorithm=key.alg,
        headers={"kid": key.kid, "typ": "at+jwt"},
    )  # fmt: skip
    foreign = jwt.encode(
        {**claims, "iat": now, "exp": now + 60}, ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256", headers={"kid": key.kid, "typ": "at+jwt"},
    )  # fmt: skip
    for token in (expired, foreign, issuer.token(), "garbage"):
        assert introspect(sts, token).json() == {"active": False}


def test_a_client_sees_only_its_own_tokens_or_those_it_introspects(
    sts: Sts, issuer: FakeIssuer
) -> None:
    spa_token = minted(sts, issuer)
    # backend may obtain tokens for the countries API, but not read or revoke other clients'.
    assert introspect(sts, spa_token, auth=BACKEND).json() == {"active": False}
    assert revoke(sts, spa_token, auth=BACKEND).status_code == 200
    assert introspect(sts, spa_token).json()["active"] is True  # not revoked
    # Its own tokens it may see and revoke.
    own = assert_issued(
        sts.exchange(issuer.token(), client_id="backend", client_secret=BACKEND_SECRET)
    )["access_token"]
    assert introspect(sts, own, auth=BACKEND).json()["client_id"] == "backend"
    revoke(sts, own, auth=BACKEND)
    assert introspect(sts, own).json() == {"active": False}


def test_secret_guessing_at_introspect_is_rate_limited(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, redis_url: str
) -> None:
    def limited(config: dict[str, Any]) -> None:
        config["store"] = {"url": redis_url}
        config["rate_limits"] = {"failures_per_address": "3/minute"}

    sts = make_sts(limited)
    for _ in range(3):
        assert_error(introspect(sts, "x", auth=("countries-api", "guess")), 401, "invalid_client")
    assert_error(introspect(sts, "x", auth=("countries-api", "guess")), 429, "slow_down")
    assert_error(revoke(sts, "x"), 429, "slow_down")


def test_public_clients_may_not_introspect_or_revoke(sts: Sts, issuer: FakeIssuer) -> None:
    token = minted(sts, issuer)
    for endpoint in ("introspect", "revoke"):
        response = requests.post(
            f"{sts.url}/{endpoint}", data={"token": token, "client_id": "spa"}, timeout=5
        )
        assert_error(response, 400, "invalid_client")
        response = requests.post(f"{sts.url}/{endpoint}", data={"token": token}, timeout=5)
        assert_error(response, 400, "invalid_client")


def test_wrong_secret_is_401(sts: Sts, issuer: FakeIssuer) -> None:
    response = introspect(sts, minted(sts, issuer), auth=("backend", "wrong"))
    assert_error(response, 401, "invalid_client")


def test_store_down_is_503_for_both(sts: Sts, issuer: FakeIssuer, redis_process: Any) -> None:
    token = minted(sts, issuer)
    redis_process.kill()
    assert_error(introspect(sts, token), 503, "temporarily_unavailable")
    assert_error(revoke(sts, token), 503, "temporarily_unavailable")
    ready = requests.get(f"{sts.url}/readyz", timeout=5)
    assert ready.status_code == 503
    assert "store: unreachable" in ready.json()["problems"]


def test_endpoints_are_in_the_metadata(sts: Sts) -> None:
    metadata = requests.get(f"{sts.url}/.well-known/oauth-authorization-server", timeout=5).json()
    assert metadata["introspection_endpoint"] == f"{STS_ISSUER}/introspect"
    assert metadata["revocation_endpoint"] == f"{STS_ISSUER}/revoke"
    assert "client_secret_basic" in metadata["introspection_endpoint_auth_methods_supported"]


def test_downstream_verifier_consults_introspection_for_high_value_calls(
    sts: Sts, issuer: FakeIssuer
) -> None:
    verifier = TokenVerifier(
        issuer=STS_ISSUER,
        audience=COUNTRIES,
        jwks_uri=f"{sts.url}/.well-known/jwks.json",
        introspection=Introspection(
            f"{sts.url}/introspect", client_id="countries-api", client_secret=COUNTRIES_API_SECRET
        ),
    )
    auth = BearerAuth(verifier)
    app = Flask("api")

    @app.get("/read")
    @auth.require("countries:read")
    def read(claims: dict[str, Any]) -> str:
        return "read"

    @app.post("/transfer")
    @auth.require("countries:read", introspect=True)
    def transfer(claims: dict[str, Any]) -> str:
        return "done"

    client = app.test_client()
    token = minted(sts, issuer)
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/transfer", headers=headers).status_code == 200
    revoke(sts, token)
    refused = client.post("/transfer", headers=headers)
    assert refused.status_code == 401
    assert "revoked" in refused.headers["WWW-Authenticate"]
    # Ordinary calls keep trusting the signature until the token expires (minutes).
    assert client.get("/read", headers=headers).status_code == 200
