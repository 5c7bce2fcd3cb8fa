"""Minted tokens follow RFC 9068 and verify with a stock JWT library against our JWKS."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from token_exchange.oauth.jose import thumbprint

from .fakes import COUNTRIES, STS_ISSUER, FakeIssuer, FakePermissions, Sts
from .helpers import assert_issued


def test_header_is_at_jwt_with_the_thumbprint_kid(sts: Sts, issuer: FakeIssuer) -> None:
    token = assert_issued(sts.exchange(issuer.token()))["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    (jwk,) = sts.jwks()["keys"]
    assert header["kid"] == jwk["kid"] == thumbprint(jwk)


def test_registered_and_copied_claims(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    before = int(time.time())
    body = assert_issued(sts.exchange(issuer.token(), scope="countries:read"))
    claims = sts.decode(body["access_token"])
    assert claims["iss"] == STS_ISSUER
    assert claims["sub"] == "auth0|42"
    assert claims["aud"] == COUNTRIES  # exactly one API
    assert claims["client_id"] == "spa"
    assert claims["scope"] == "countries:read"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + 300
    assert len(claims["jti"]) >= 16
    # copy_claims that the subject token has are copied; the rest of it is not.
    assert (claims["given_name"], claims["family_name"]) == ("John", "Doe")
    assert claims["email"] == "john@example.test"
    assert claims["custom_access_to_countries"] == ["nl"]
    assert "userinfo" not in str(claims["aud"])


def test_copy_claims_missing_from_the_subject_are_left_out(sts: Sts, issuer: FakeIssuer) -> None:
    body = assert_issued(sts.exchange(issuer.token(email=None)))
    assert "email" not in sts.decode(body["access_token"])


def test_jti_is_unique(sts: Sts, issuer: FakeIssuer) -> None:
    token = issuer.token()
    jtis = {sts.decode(sts.exchange(token).json()["access_token"])["jti"] for _ in range(5)}
    assert len(jtis) == 5


def test_token_never_outlives_the_subject_token(sts: Sts, issuer: FakeIssuer) -> None:
    exp = int(time.time()) + 60
    body = assert_issued(sts.exchange(issuer.token(exp=exp)))
    assert body["expires_in"] <= 60
    assert sts.decode(body["access_token"])["exp"] == exp


def test_subject_token_expired_within_leeway_mints_nothing(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(issuer.token(exp=int(time.time()) - 5))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA"])
def test_each_signing_algorithm_verifies_with_pyjwt(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, alg: str
) -> None:
    sts = make_sts(alg=alg)
    token = assert_issued(sts.exchange(issuer.token()))["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == alg
    (jwk,) = sts.jwks()["keys"]
    assert jwk["alg"] == alg
    assert sts.decode(token)["sub"] == "auth0|42"


def test_minted_token_verifies_with_pyjwk_client(sts: Sts, issuer: FakeIssuer) -> None:
    # Exactly what a downstream API written with PyJWT does.
    token = assert_issued(sts.exchange(issuer.token()))["access_token"]
    client = jwt.PyJWKClient(f"{sts.url}/.well-known/jwks.json")
    key = client.get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key, algorithms=["ES256"], audience=COUNTRIES, issuer=STS_ISSUER)
    assert claims["client_id"] == "spa"


def test_delegation_adds_act(sts: Sts, issuer: FakeIssuer) -> None:
    from .fakes import ACCESS_TOKEN, BACKEND_SECRET

    actor = issuer.token(sub="service|batch")
    body = assert_issued(
        sts.exchange(
            issuer.token(act={"sub": "service|earlier"}),
            client_id="backend",
            client_secret=BACKEND_SECRET,
            actor_token=actor,
            actor_token_type=ACCESS_TOKEN,
        )
    )
    claims = sts.decode(body["access_token"])
    # RFC 8693 §4.1: the current actor on top, the earlier one nested.
    assert claims["act"] == {
        "sub": "service|batch", "iss": issuer.issuer,
        "act": {"sub": "service|earlier", "iss": issuer.issuer},
    }  # fmt: skip
    assert claims["sub"] == "auth0|42"


def test_actor_token_needs_a_client_allowed_to_delegate(sts: Sts, issuer: FakeIssuer) -> None:
    from .fakes import ACCESS_TOKEN

    response = sts.exchange(
        issuer.token(), actor_token=issuer.token(sub="x"), actor_token_type=ACCESS_TOKEN
    )
    assert response.json()["error"] == "invalid_request"


def test_may_act_restricts_the_actor(sts: Sts, issuer: FakeIssuer) -> None:
    from .fakes import ACCESS_TOKEN, BACKEND_SECRET

    def attempt(actor_sub: str) -> Any:
        return sts.exchange(
            issuer.token(may_act={"sub": "service|batch"}),
            client_id="backend",
            client_secret=BACKEND_SECRET,
            actor_token=issuer.token(sub=actor_sub),
            actor_token_type=ACCESS_TOKEN,
        )

    assert attempt("service|other").json()["error"] == "invalid_request"
    assert_issued(attempt("service|batch"))
