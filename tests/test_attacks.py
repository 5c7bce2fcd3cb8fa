"""Forged and unacceptable subject tokens: each is rejected with invalid_request (RFC 8693 §2.2.2).

Threats from RFC 8725 §2 and the usual JWT attack catalogue, sent over real HTTP.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pytest_httpserver import HTTPServer

from token_exchange.sources.keys import public_jwk

from .fakes import FakeIssuer, FakePermissions, Sts, quick_server
from .helpers import assert_error


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(token: str) -> tuple[dict[str, object], dict[str, object], str]:
    header, payload, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(header))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
        signature,
    )


def _rejected(sts: Sts, token: str, permissions_api: FakePermissions) -> None:
    assert_error(sts.exchange(token), 400, "invalid_request")
    assert permissions_api.questions == [], "no permission question for an unverified subject"


@pytest.fixture
def attacker_server() -> Iterator[HTTPServer]:
    """A server the attacker controls; the service must never send it a request."""
    server = quick_server()
    server.expect_request("/jwks.json").respond_with_json({"keys": []})
    server.expect_request("/cert.pem").respond_with_data("")
    yield server
    server.clear()
    server.stop()


def test_alg_none(sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": issuer.kid}).encode())
    payload = _b64(json.dumps(issuer.claims()).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        _rejected(sts, token, permissions_api)


def test_alg_none_with_case_variants(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    payload = _b64(json.dumps(issuer.claims()).encode())
    for alg in ("None", "NONE", "nOnE"):
        header = _b64(json.dumps({"alg": alg, "kid": issuer.kid}).encode())
        _rejected(sts, f"{header}.{payload}.", permissions_api)


def test_hs256_signed_with_the_issuers_public_key(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    # The classic key-confusion attack: HMAC keyed with the RSA public key the JWKS publishes.
    public_pem = (
        issuer.keys[issuer.kid]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.kid}
    signing_input = (
        f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(issuer.claims()).encode())}"
    )
    import hashlib
    import hmac

    for secret in (public_pem, json.dumps(public_jwk(issuer.keys[issuer.kid])).encode()):
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        _rejected(sts, f"{signing_input}.{_b64(signature)}", permissions_api)


def test_tampered_payload(sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions) -> None:
    token = issuer.token()
    header, _, signature = token.split(".")
    claims = _segments(token)[1]
    claims["sub"] = "auth0|1"  # become someone else
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    _rejected(sts, forged, permissions_api)


def test_tampered_signature(sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions) -> None:
    header, payload, signature = issuer.token().split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    _rejected(sts, f"{header}.{payload}.{flipped}", permissions_api)


def test_foreign_issuer(
    sts: Sts,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    rsa_keys: list[rsa.RSAPrivateKey],
) -> None:
    other = FakeIssuer(quick_server(), rsa_keys[1:])
    try:
        _rejected(sts, other.token(), permissions_api)
        # Same `iss` as the trusted issuer, but signed by the foreign issuer's key.
        _rejected(sts, other.token(iss=issuer.issuer), permissions_api)
    finally:
        other.server.stop()


def test_issuer_must_match_exactly(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    for iss in (issuer.issuer.rstrip("/"), issuer.issuer + "x", issuer.issuer.upper()):
        _rejected(sts, issuer.token(iss=iss), permissions_api)


def test_wrong_audience(sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions) -> None:
    for aud in ("https://other.example.test", ["https://other.example.test"], None):
        _rejected(sts, issuer.token(aud=aud), permissions_api)


def test_expired(sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions) -> None:
    now = int(time.time())
    body = assert_error(
        sts.exchange(issuer.token(exp=now - 120, iat=now - 3720)), 400, "invalid_request"
    )
    assert "expired" in body["error_description"]
    assert permissions_api.questions == []


def test_nbf_in_the_future(sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions) -> None:
    _rejected(sts, issuer.token(nbf=int(time.time()) + 600), permissions_api)


def test_iat_in_the_future(sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions) -> None:
    _rejected(sts, issuer.token(iat=int(time.time()) + 600), permissions_api)


def test_no_exp(sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions) -> None:
    _rejected(sts, issuer.token(exp=None), permissions_api)


@pytest.mark.parametrize("value", ["tomorrow", True, [1], {"a": 1}])
def test_non_numeric_exp(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions, value: object
) -> None:
    _rejected(sts, issuer.token(exp=value), permissions_api)


def test_no_sub(sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions) -> None:
    _rejected(sts, issuer.token(sub=None), permissions_api)
    _rejected(sts, issuer.token(sub=""), permissions_api)


@pytest.mark.parametrize("header", ["jku", "x5u"])
def test_jku_and_x5u_are_never_fetched(
    sts: Sts,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    attacker_server: HTTPServer,
    rsa_keys: list[rsa.RSAPrivateKey],
    header: str,
) -> None:
    attacker_key = rsa_keys[2]
    url = attacker_server.url_for("/jwks.json" if header == "jku" else "/cert.pem")
    for kid in ("attacker-key", issuer.kid):
        token = issuer.token(key=attacker_key, kid=kid, headers={header: url})
        _rejected(sts, token, permissions_api)
    assert attacker_server.log == []


def test_embedded_jwk_header_is_not_used(
    sts: Sts,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    rsa_keys: list[rsa.RSAPrivateKey],
) -> None:
    attacker_key = rsa_keys[2]
    token = issuer.token(
        key=attacker_key, kid="attacker", headers={"jwk": public_jwk(attacker_key)}
    )
    _rejected(sts, token, permissions_api)


def test_algorithm_not_configured_for_the_issuer(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    # Correctly signed, but with PS256, which the config does not allow for this issuer.
    _rejected(sts, issuer.token(alg="PS256"), permissions_api)


def test_ec_key_under_the_issuers_kid(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    token = jwt.encode(
        issuer.claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
        headers={"kid": issuer.kid},
    )  # fmt: skip
    _rejected(sts, token, permissions_api)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", "a.b.c.d.e", "....", "eyJhbGciOiJSUzI1NiJ9.e30.", "\u00e9.\u00e9.\u00e9"],
)
def test_garbage_subject_tokens(sts: Sts, permissions_api: FakePermissions, token: str) -> None:
    response = sts.exchange(token)
    assert_error(response, 400, "invalid_request")


def test_flood_of_unknown_kids_does_not_fetch_the_jwks_each_time(
    sts: Sts,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    rsa_keys: list[rsa.RSAPrivateKey],
) -> None:
    sts.exchange(issuer.token())  # keys loaded
    permissions_api.questions.clear()
    fetches = issuer.jwks_fetches()
    for i in range(50):
        _rejected(sts, issuer.token(key=rsa_keys[2], kid=f"forged-{i}"), permissions_api)
    # One refetch is allowed per cooldown (30 s): the flood costs at most one request.
    assert issuer.jwks_fetches() - fetches <= 1


def test_several_upstreams_keep_equal_subjects_apart(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    rsa_keys: list[rsa.RSAPrivateKey],
) -> None:
    from .fakes import STS_AUDIENCE

    other = FakeIssuer(quick_server(), rsa_keys[1:])
    try:

        def two_upstreams(config: dict[str, object]) -> None:
            upstreams = config["upstreams"]
            assert isinstance(upstreams, list)
            upstreams[0]["subject_prefix"] = "a|"
            upstreams.append(
                {"issuer": other.issuer, "audiences": [STS_AUDIENCE], "subject_prefix": "b|"}
            )

        sts = make_sts(two_upstreams)
        subs = [
            sts.decode(sts.exchange(i.token(sub="auth0|42")).json()["access_token"])["sub"]
            for i in (issuer, other)
        ]
        assert subs == ["a|auth0|42", "b|auth0|42"]
    finally:
        other.server.stop()


def test_deeply_nested_json_in_a_token_is_invalid_request(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    header = _b64(json.dumps({"alg": "RS256", "kid": issuer.kid}).encode())
    payload = _b64(("[" * 5000 + "]" * 5000).encode())
    _rejected(sts, f"{header}.{payload}.c2ln", permissions_api)


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": float("nan")},
        {"exp": float("inf")},
        {"nbf": float("nan")},
        {"iat": float("nan")},
        {"iat": float("-inf")},
    ],
)
def test_non_finite_time_claims(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions, claims: dict[str, float]
) -> None:
    # Signed by the trusted issuer, but NaN compares false with everything: refuse it outright.
    _rejected(sts, issuer.token(**claims), permissions_api)


def test_act_from_the_subject_token_is_reduced_to_its_identities(
    sts: Sts, issuer: FakeIssuer
) -> None:
    act = {"sub": "svc|a", "role": "admin", "act": {"sub": "svc|b", "x": 1}}
    body = sts.exchange(issuer.token(act=act)).json()
    assert sts.decode(body["access_token"])["act"] == {
        "sub": "svc|a", "iss": issuer.issuer, "act": {"sub": "svc|b", "iss": issuer.issuer}
    }  # fmt: skip
    # A member that is not an actor at all is refused, not cut off (see test_delegation.py).
    junk = {"sub": "svc|a", "act": {"sub": "svc|b", "act": "junk"}}
    response = sts.exchange(issuer.token(act=junk))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
