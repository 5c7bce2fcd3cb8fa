"""Reading a JWK Set (RFC 7517 §5): which keys are kept, which members are ignored, and a token
without kid."""

from __future__ import annotations

import logging

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from token_exchange.oauth.jose import parse_jwks, thumbprint
from token_exchange.sources.keys import public_jwk

from ..fakes import TENANT, TokenMaker
from ..test_jwks import badly_typed_keys


def test_parse_jwks_keeps_only_usable_signature_keys(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    good = {**public_jwk(rsa_keys[0]), "kid": "good"}
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    ec_key = ec.generate_private_key(ec.SECP384R1())
    document = {
        "keys": [
            good,
            {**public_jwk(rsa_keys[1]), "kid": "enc", "use": "enc"},
            {**public_jwk(rsa_keys[1]), "kid": "other-alg", "alg": "RS512"},
            {**public_jwk(rsa_keys[1]), "kid": "ops", "key_ops": ["encrypt"]},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**public_jwk(small), "kid": "small"},
            {**public_jwk(ec_key), "kid": "p384"},
            "not a key",
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        ]
    }
    keyset = parse_jwks(document, ["RS256", "ES256"])
    assert keyset.kids == frozenset({"good"})


def test_parse_jwks_ignores_private_members(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    import jwt

    private = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_keys[0], as_dict=True)
    private.pop("key_ops", None)  # PyJWT marks private JWKs "sign"; we want the members test
    assert "d" in private
    keyset = parse_jwks({"keys": [{**private, "kid": "k"}]}, ["RS256"])
    key = keyset.find("k", "RS256")
    assert key is not None
    assert isinstance(key.key, rsa.RSAPublicKey)


@pytest.mark.parametrize("document", [None, [], {}, {"keys": "x"}, "keys"])
def test_parse_jwks_rejects_non_jwks(document: object) -> None:
    with pytest.raises(ValueError, match="JWK Set"):
        parse_jwks(document, ["RS256"])


def test_token_without_kid_uses_the_only_key(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    one = parse_jwks({"keys": [public_jwk(rsa_keys[0])]}, ["RS256"])
    assert one.find(None, "RS256") is not None
    two = parse_jwks(
        {"keys": [{**public_jwk(k), "kid": thumbprint(public_jwk(k))} for k in rsa_keys[:2]]},
        ["RS256"],
    )
    assert two.find(None, "RS256") is None


def test_a_key_with_a_member_of_the_wrong_type_is_skipped_the_rest_kept(
    rsa_keys: list[rsa.RSAPrivateKey], caplog: pytest.LogCaptureFixture
) -> None:
    issuer = TokenMaker(TENANT, rsa_keys)
    caplog.set_level(logging.WARNING, logger="token_exchange.sources.jwks")
    document = {"keys": [*badly_typed_keys(issuer), *issuer.jwks_document()["keys"]]}
    keyset = parse_jwks(document, ["RS256", "EdDSA"], source="https://tenant.example.test/")
    assert keyset.kids == {issuer.kid}
    skipped = [
        getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "jwks_key_skipped"
    ]
    assert [(s["kid"], s["member"]) for s in skipped] == [
        ("ops", "key_ops"), ("ops-list", "key_ops"), ("crv", "crv"), ("n", "n"), ("use", "use")
    ]  # fmt: skip
    assert all(s["source"] == "https://tenant.example.test/" for s in skipped)
