"""Hostile inputs at every new surface get an RFC 6749 §5.2 error, never a 500 (issue 21):
nested JSON in a client assertion, non-ASCII DPoP nonces, null time claims, NaN in
authorization details and in the permissions API's answer, and non-ASCII at the dev endpoints.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests

from token_exchange.serve.devmode import create_dev_app

from .fakes import (
    COUNTRIES,
    GRANT,
    ClientAssertions,
    DpopKey,
    FakeIssuer,
    FakePermissions,
    Sts,
)
from .helpers import assert_error, assert_issued, free_port, serve


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def signer() -> ClientAssertions:
    return ClientAssertions("signer")


@pytest.fixture
def sts(make_sts: Callable[..., Sts], signer: ClientAssertions) -> Sts:
    def edit(config: dict[str, Any]) -> None:
        config["clients"].append(
            {
                "client_id": "signer",
                "type": "confidential",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": signer.jwks(),
                "audiences": [COUNTRIES],
                "introspects": [COUNTRIES],
            }
        )
        config["dpop"] = {"nonce": True}

    return make_sts(edit)


NESTED = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize("endpoint", ["token", "introspect", "revoke"])
@pytest.mark.parametrize("part", ["header", "payload"])
def test_a_client_assertion_with_deeply_nested_json_is_invalid_client(
    sts: Sts, endpoint: str, part: str
) -> None:
    header = '{"alg":"ES256","x":' + NESTED + "}" if part == "header" else '{"alg":"ES256"}'
    payload = '{"sub":' + NESTED + "}" if part == "payload" else '{"sub":"signer"}'
    assertion = f"{_b64(header.encode())}.{_b64(payload.encode())}.c2ln"
    data = {
        "grant_type": GRANT,
        "token": "x",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    response = requests.post(f"{sts.url}/{endpoint}", data=data, timeout=10)
    assert_error(response, 401, "invalid_client")


@pytest.mark.parametrize("nonce", ["é", "☃", "n\u00ffnce"])
def test_a_dpop_nonce_with_non_ascii_characters_is_use_dpop_nonce(
    sts: Sts, issuer: FakeIssuer, nonce: str
) -> None:
    proof = DpopKey().proof(nonce=nonce)
    response = sts.exchange(issuer.token(), headers={"DPoP": proof})
    assert_error(response, 400, "use_dpop_nonce")
    assert response.headers["DPoP-Nonce"]


@pytest.mark.parametrize("claim", ["nbf", "iat", "exp"])
def test_a_null_time_claim_is_refused(
    sts: Sts, issuer: FakeIssuer, signer: ClientAssertions, claim: str
) -> None:
    subject = jwt.encode(
        {**issuer.claims(), claim: None},
        issuer.keys[issuer.kid],
        algorithm="RS256",
        headers={"kid": issuer.kid},
    )
    assert_error(sts.exchange(subject), 400, "invalid_request")
    assertion = jwt.encode(
        {**signer.claims(), claim: None}, signer.key, algorithm="ES256", headers={"kid": signer.kid}
    )
    response = sts.exchange(issuer.token(), client_id=None, **signer.form(assertion))
    assert_error(response, 401, "invalid_client")


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("NaN", "NaN is not JSON"),
        ("Infinity", "Infinity is not JSON"),
        ("-Infinity", "-Infinity is not JSON"),
        ("1e999", "number out of range"),
        ('{"a":1,"a":2}', "duplicate member name"),
        ("[" * 40 + "]" * 40, "JSON nested too deeply"),
    ],
)
def test_authorization_details_are_rfc_8259_json_or_refused(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions, value: str, said: str
) -> None:
    details = f'[{{"type":"country_access","x":{value}}}]'
    # Six of them: before, each was sent on as invalid JSON, and five opened the breaker.
    for _ in range(6):
        response = sts.exchange(issuer.token(), authorization_details=details)
        body = assert_error(response, 400, "invalid_authorization_details")
        # Which rule it broke, in our words (never the caller's text).
        assert body["error_description"] == f"authorization_details is not RFC 8259 JSON: {said}"
    assert permissions_api.questions == []
    assert_issued(sts.exchange(issuer.token()))


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e999"])
def test_a_permissions_answer_with_nan_is_no_answer(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions, value: str
) -> None:
    permissions_api.reply('{"allow": true, "claims": {"x": ' + value + "}}")
    assert_error(sts.exchange(issuer.token()), 503, "temporarily_unavailable")


def test_a_minted_token_is_rfc_8259_json(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    permissions_api.reply({"allow": True, "claims": {"x": 1.5}})
    token = assert_issued(sts.exchange(issuer.token()))["access_token"]
    payload = token.split(".")[1]
    json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)),
        parse_constant=lambda name: pytest.fail(f"{name} in a minted token"),
    )


@pytest.mark.parametrize("authorization", ["Bearer é", "Bearer \u00ff\u00fe", "é"])
def test_dev_permissions_with_a_non_ascii_authorization_header_is_401(authorization: str) -> None:
    port = free_port()
    url, stop = serve(create_dev_app(port), port=port)
    try:
        response = requests.post(
            f"{url}/dev/permissions",
            json={"subject": "dev|alice"},
            headers={"Authorization": authorization.encode("latin-1")},  # type: ignore[dict-item]
            timeout=10,
        )
        assert response.status_code == 401, response.text
    finally:
        stop()
