"""private_key_jwt client authentication over HTTP (RFC 7523 §2.2 and §3, OpenID Connect Core
§9): a client with an inline ``jwks`` and one whose ``jwks_uri`` is served on loopback, at
/token, /introspect and /revoke; replays across two services sharing Redis; and a client
library no one here wrote (authlib's ``PrivateKeyJWT``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import RSAKey
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request, Response

from .fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    GRANT,
    STS_ISSUER,
    STS_TOKEN_ENDPOINT,
    ClientAssertions,
    FakeIssuer,
    Sts,
    quick_server,
)
from .helpers import assert_error, assert_issued
from .test_operations import audit_lines


class ServedKeys:
    """A client's JWK Set at a loopback ``jwks_uri``; ``down`` makes it answer 503."""

    def __init__(self, server: HTTPServer, client: ClientAssertions) -> None:
        self.server = server
        self.client = client
        self.down = False
        server.expect_request("/jwks.json").respond_with_handler(self._jwks)

    @property
    def url(self) -> str:
        return self.server.url_for("/jwks.json")

    def _jwks(self, request: Request) -> Response:
        if self.down:
            return Response("down", status=503)
        return Response(json.dumps(self.client.jwks()), content_type="application/json")


@pytest.fixture
def signer() -> ClientAssertions:
    """A client whose public keys are inline in the config (``jwks``)."""
    return ClientAssertions("signer")


@pytest.fixture
def remote(rsa_keys: list[rsa.RSAPrivateKey]) -> ClientAssertions:
    """A client whose public keys are at its ``jwks_uri`` (RS256)."""
    return ClientAssertions("remote", rsa_keys[1], alg="RS256")


@pytest.fixture
def remote_keys(remote: ClientAssertions) -> Iterator[ServedKeys]:
    server = quick_server()
    yield ServedKeys(server, remote)
    server.clear()
    server.stop()


def clients(signer: ClientAssertions, jwks_uri: str) -> Callable[[dict[str, Any]], None]:
    """The config edit adding client ``signer`` (inline keys) and ``remote`` (``jwks_uri``)."""

    def edit(config: dict[str, Any]) -> None:
        config["clients"] += [
            {
                "client_id": "signer",
                "type": "confidential",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": signer.jwks(),
                "audiences": [COUNTRIES],
            },
            {
                "client_id": "remote",
                "type": "confidential",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks_uri": jwks_uri,
                "audiences": [COUNTRIES],
                "introspects": [COUNTRIES],
            },
        ]

    return edit


@pytest.fixture
def sts(make_sts: Callable[..., Sts], signer: ClientAssertions, remote_keys: ServedKeys) -> Sts:
    return make_sts(clients(signer, remote_keys.url))


def exchange(sts: Sts, issuer: FakeIssuer, form: dict[str, str]) -> requests.Response:
    """An exchange by a client that authenticates with ``form`` (no client_id beside it)."""
    return sts.exchange(issuer.token(), **{"client_id": None, **form})


def test_an_inline_jwks_client_gets_a_token(
    sts: Sts, issuer: FakeIssuer, signer: ClientAssertions
) -> None:
    issued = assert_issued(exchange(sts, issuer, signer.form()))
    assert sts.decode(issued["access_token"])["client_id"] == "signer"
    # The issuer identifier is an audience as good as the token endpoint URL.
    assert_issued(exchange(sts, issuer, signer.form(aud=STS_ISSUER)))


def test_a_jwks_uri_client_gets_a_token_introspects_and_revokes(
    sts: Sts, issuer: FakeIssuer, remote: ClientAssertions
) -> None:
    form = {**remote.form(), "client_id": "remote"}  # a client_id beside it may be sent
    token = assert_issued(exchange(sts, issuer, form))["access_token"]
    assert sts.decode(token)["client_id"] == "remote"

    def call(endpoint: str) -> requests.Response:
        data = {"token": token, **remote.form()}
        return requests.post(f"{sts.url}/{endpoint}", data=data, timeout=10)

    introspected = call("introspect")
    assert introspected.status_code == 200, introspected.text
    assert introspected.json()["active"] is True
    assert call("revoke").status_code == 200
    assert call("introspect").json() == {"active": False}
    assert_error(
        requests.post(f"{sts.url}/introspect", data={"token": token, **remote.form(aud="x")}),
        401,
        "invalid_client",
    )


def test_bad_assertions_are_refused(
    sts: Sts, issuer: FakeIssuer, signer: ClientAssertions, remote: ClientAssertions
) -> None:
    now = int(time.time())
    public_pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    stranger = ec.generate_private_key(ec.SECP256R1())
    cases = {
        "wrong iss": signer.assertion(iss="remote"),
        "wrong sub": signer.assertion(sub="remote"),
        "iss and sub of a secret client": signer.assertion(iss="backend", sub="backend"),
        "wrong aud": signer.assertion(aud="https://other-as.example.test/token"),
        "an extra aud": signer.assertion(aud=[STS_TOKEN_ENDPOINT, "https://other.test"]),
        "expired": signer.assertion(iat=now - 600, exp=now - 120),
        "no exp": signer.assertion(exp=None),
        "exp two hours ahead": signer.assertion(exp=now + 7200),
        "no jti": signer.assertion(jti=None),
        "HS256 keyed with the public key": signer.unsafe_assertion("HS256", public_pem),
        "alg none": signer.unsafe_assertion("none"),
        "a key not in the set": signer.assertion(key=stranger),
        "a key not in the set, own kid": signer.assertion(key=stranger, kid="stranger"),
        "another client's key": signer.assertion(key=remote.key, alg="RS256", kid=remote.kid),
    }
    for case, assertion in cases.items():
        response = exchange(sts, issuer, signer.form(assertion))
        assert response.status_code == 401, case
        assert_error(response, 401, "invalid_client")


def test_a_replayed_assertion_is_refused(
    sts: Sts, issuer: FakeIssuer, signer: ClientAssertions, caplog: pytest.LogCaptureFixture
) -> None:
    form = signer.form()
    assert_issued(exchange(sts, issuer, form))
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        body = assert_error(exchange(sts, issuer, form), 401, "invalid_client")
    assert body["error_description"] == "client authentication failed"
    (line,) = audit_lines(caplog)
    assert line["reason"] == "client_assertion_invalid"
    assert "used before" in line["detail"]
    assert line["attempted_client_id"] == "signer"


def test_a_replay_at_another_replica_is_refused(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    signer: ClientAssertions,
    remote_keys: ServedKeys,
    redis_url: str,
) -> None:
    edit = clients(signer, remote_keys.url)

    def shared_redis(config: dict[str, Any]) -> None:
        edit(config)
        config["store"] = {"url": redis_url}

    first, second = make_sts(shared_redis), make_sts(shared_redis)
    form = signer.form()
    assert_issued(exchange(first, issuer, form))
    assert_error(exchange(second, issuer, form), 401, "invalid_client")
    assert_issued(exchange(second, issuer, signer.form()))


def test_an_unreachable_jwks_uri_is_503(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    signer: ClientAssertions,
    remote: ClientAssertions,
    remote_keys: ServedKeys,
) -> None:
    remote_keys.down = True
    sts = make_sts(clients(signer, remote_keys.url))
    response = exchange(sts, issuer, remote.form())
    assert_error(response, 503, "temporarily_unavailable")
    assert int(response.headers["Retry-After"]) >= 1


def test_authlib_private_key_jwt_client_gets_a_token(
    sts: Sts, issuer: FakeIssuer, remote: ClientAssertions
) -> None:
    # authlib's own client authentication (the documented OAuth2Session pattern), with its
    # defaults: exp an hour ahead, a new jti for every request.
    key = RSAKey.import_key(
        remote.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    client = OAuth2Session("remote", key, token_endpoint_auth_method="private_key_jwt")
    client.register_client_auth_method(PrivateKeyJWT(STS_TOKEN_ENDPOINT))
    for _ in range(2):
        token = client.fetch_token(
            f"{sts.url}/token",
            grant_type=GRANT,
            subject_token=issuer.token(),
            subject_token_type=ACCESS_TOKEN,
            audience=COUNTRIES,
        )
        assert sts.decode(token["access_token"])["client_id"] == "remote"


def test_metadata_advertises_private_key_jwt(sts: Sts) -> None:
    metadata = requests.get(f"{sts.url}/.well-known/oauth-authorization-server", timeout=5).json()
    assert "private_key_jwt" in metadata["token_endpoint_auth_methods_supported"]
    assert metadata["token_endpoint_auth_signing_alg_values_supported"] == [
        "ES256",
        "RS256",
        "PS256",
        "EdDSA",
    ]
