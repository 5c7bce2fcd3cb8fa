"""DPoP at /token (RFC 9449 §4-§8), over real HTTP: proofs bind the minted token, bad proofs
are ``invalid_dpop_proof``, DPoP-bound subject tokens need a proof by their key with ``ath``."""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from jwt.algorithms import ECAlgorithm

from token_exchange.serve.devmode import COUNTRIES_API

from .devworld import DevWorld
from .fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    COUNTRIES_API_SECRET,
    GRANT,
    PERMISSIONS_TOKEN,
    STS_ISSUER,
    DpopKey,
    FakeIssuer,
    FakePermissions,
    Sts,
)
from .helpers import assert_error, serve_process, service_toml


def dpop_exchange(sts: Sts, subject_token: str, proof: str | None, **params: Any) -> Any:
    headers = {"DPoP": proof} if proof is not None else {}
    return sts.exchange(subject_token, headers=headers, **params)


def assert_bound(response: requests.Response, sts: Sts, key: DpopKey) -> dict[str, Any]:
    """A DPoP-bound token (RFC 9449 §5, §6.1): token_type DPoP, cnf.jkt the key's thumbprint."""
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "DPoP"
    claims = sts.decode(body["access_token"])
    assert claims["cnf"] == {"jkt": key.jkt}
    return claims


def refused(response: requests.Response, code: str = "invalid_dpop_proof") -> str:
    return str(assert_error(response, 400, code)["error_description"])


# -- binding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA"])
def test_a_valid_proof_binds_the_token(sts: Sts, issuer: FakeIssuer, alg: str) -> None:
    key = DpopKey(alg)
    assert_bound(dpop_exchange(sts, issuer.token(), key.proof()), sts, key)


def test_without_a_proof_the_token_is_a_bearer_token(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(issuer.token())
    assert response.json()["token_type"] == "Bearer"
    assert "cnf" not in sts.decode(response.json()["access_token"])


def test_metadata_advertises_the_proof_algorithms(sts: Sts) -> None:
    metadata = sts.http.get(f"{sts.url}/.well-known/oauth-authorization-server", timeout=5).json()
    assert metadata["dpop_signing_alg_values_supported"] == ["ES256", "RS256", "PS256", "EdDSA"]


def test_configured_algorithms_only(make_sts: Callable[..., Sts], issuer: FakeIssuer) -> None:
    sts = make_sts(lambda c: c.update(dpop={"algorithms": ["ES256"]}))
    metadata = sts.http.get(f"{sts.url}/.well-known/oauth-authorization-server", timeout=5).json()
    assert metadata["dpop_signing_alg_values_supported"] == ["ES256"]
    refused(dpop_exchange(sts, issuer.token(), DpopKey("RS256").proof()))


def test_browsers_may_send_the_dpop_header(sts: Sts) -> None:
    response = sts.http.options(
        f"{sts.url}/token",
        headers={
            "Origin": "https://app.example.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "dpop, content-type",
        },
        timeout=5,
    )
    allowed = [
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    ]
    assert "dpop" in allowed
    assert "DPoP-Nonce" in response.headers["Access-Control-Expose-Headers"]


def test_a_client_that_requires_dpop(make_sts: Callable[..., Sts], issuer: FakeIssuer) -> None:
    sts = make_sts(lambda c: c["clients"][0].update(dpop="required"))
    assert "required" in refused(sts.exchange(issuer.token()))
    key = DpopKey()
    assert_bound(dpop_exchange(sts, issuer.token(), key.proof()), sts, key)


# -- bad proofs ---------------------------------------------------------------------------------


def test_a_replayed_proof_is_refused(sts: Sts, issuer: FakeIssuer) -> None:
    key = DpopKey()
    proof = key.proof()
    assert_bound(dpop_exchange(sts, issuer.token(), proof), sts, key)
    assert "used before" in refused(dpop_exchange(sts, issuer.token(), proof))


def test_a_proof_for_another_url_is_refused(sts: Sts, issuer: FakeIssuer) -> None:
    key = DpopKey()
    # The address the request reached is not what clients know our endpoint by (issuer).
    for htu in (f"{sts.url}/token", f"{STS_ISSUER}/introspect", "https://evil.example.test/token"):
        assert "htu" in refused(dpop_exchange(sts, issuer.token(), key.proof(htu)))


def test_a_proof_for_another_method_is_refused(sts: Sts, issuer: FakeIssuer) -> None:
    assert "htm" in refused(dpop_exchange(sts, issuer.token(), DpopKey().proof(htm="GET")))


@pytest.mark.parametrize("offset", [-300, 300])
def test_a_stale_or_future_iat_is_refused(sts: Sts, issuer: FakeIssuer, offset: int) -> None:
    key = DpopKey()
    proof = key.proof(iat=int(key.clock()) + offset)
    assert "iat" in refused(dpop_exchange(sts, issuer.token(), proof))


def test_a_private_key_in_the_jwk_is_refused(sts: Sts, issuer: FakeIssuer) -> None:
    key = DpopKey()
    private = ECAlgorithm.to_jwk(key.private_key, as_dict=True)
    proof = key.proof(headers={"jwk": private})
    assert "public key" in refused(dpop_exchange(sts, issuer.token(), proof))


def test_hs256_and_none_are_refused(sts: Sts, issuer: FakeIssuer) -> None:
    key = DpopKey()
    hs256 = key.proof(alg="HS256", key=b"a shared secret of thirty-two bytes!")
    assert "alg" in refused(dpop_exchange(sts, issuer.token(), hs256))
    # The same proof, its header saying alg none, without a signature.
    payload = key.proof().split(".")[1]
    none_header = _b64({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk})
    assert "alg" in refused(dpop_exchange(sts, issuer.token(), f"{none_header}.{payload}."))


def _b64(value: dict[str, Any]) -> str:
    raw = json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_wrong_typ_is_refused(sts: Sts, issuer: FakeIssuer) -> None:
    proof = DpopKey().proof(headers={"typ": "JWT"})
    assert "typ" in refused(dpop_exchange(sts, issuer.token(), proof))


def test_two_dpop_headers_are_refused(sts: Sts, issuer: FakeIssuer) -> None:
    key = DpopKey()
    body = urlencode(
        {
            "grant_type": GRANT,
            "client_id": "spa",
            "subject_token": issuer.token(),
            "subject_token_type": ACCESS_TOKEN,
            "audience": COUNTRIES,
        }
    )
    parts = urlsplit(sts.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.putrequest("POST", "/token")
        connection.putheader("Content-Type", "application/x-www-form-urlencoded")
        connection.putheader("Content-Length", str(len(body)))
        connection.putheader("DPoP", key.proof())
        connection.putheader("DPoP", key.proof())
        connection.endheaders(body.encode())
        response = connection.getresponse()
        assert response.status == 400
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert answer["error"] == "invalid_dpop_proof"
    assert "exactly one" in answer["error_description"]


def test_an_empty_dpop_header_is_refused(sts: Sts, issuer: FakeIssuer) -> None:
    refused(dpop_exchange(sts, issuer.token(), ""))


# -- DPoP-bound subject tokens (RFC 9449 §6.1, §7.1) ---------------------------------------------


def test_a_bound_subject_token_with_a_proof_by_its_key_and_ath(
    sts: Sts, issuer: FakeIssuer
) -> None:
    key = DpopKey()
    token = issuer.token(cnf={"jkt": key.jkt})
    assert_bound(dpop_exchange(sts, token, key.proof(token=token)), sts, key)


def test_a_bound_subject_token_needs_a_matching_proof(sts: Sts, issuer: FakeIssuer) -> None:
    key, other = DpopKey(), DpopKey()
    token = issuer.token(cnf={"jkt": key.jkt})
    cases = {
        "no proof": None,
        "another key": other.proof(token=token),
        "no ath": key.proof(),
        "wrong ath": key.proof(token=issuer.token()),
    }
    for case, proof in cases.items():
        description = refused(dpop_exchange(sts, token, proof), "invalid_request")
        assert "DPoP" in description or "ath" in description, case


def test_an_upstream_that_requires_bound_tokens(
    make_sts: Callable[..., Sts], issuer: FakeIssuer
) -> None:
    sts = make_sts(lambda c: c["upstreams"][0].update(require_bound_tokens=True))
    key = DpopKey()
    assert "DPoP-bound" in refused(
        dpop_exchange(sts, issuer.token(), key.proof()), "invalid_request"
    )
    token = issuer.token(cnf={"jkt": key.jkt})
    assert_bound(dpop_exchange(sts, token, key.proof(token=token)), sts, key)


# -- replicas -----------------------------------------------------------------------------------


def test_a_proof_is_used_once_across_replicas(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions, redis_url: str
) -> None:
    subprocess.run(
        [sys.executable, "-m", "token_exchange.serve.cli", "keys", "generate", "--keys-dir",
         str(tmp_path / "keys")],
        check=True, capture_output=True,
    )  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text(service_toml(issuer.issuer, permissions_api.url, store_url=redis_url))
    key = DpopKey()
    proof = key.proof()
    data = {
        "grant_type": GRANT,
        "client_id": "spa",
        "subject_token": issuer.token(),
        "subject_token_type": ACCESS_TOKEN,
        "audience": COUNTRIES,
    }
    env = {"PERMS_TOKEN": PERMISSIONS_TOKEN}
    with serve_process(config, env) as first, serve_process(config, env) as second:
        answer = requests.post(f"{first}/token", data=data, headers={"DPoP": proof}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["token_type"] == "DPoP"
        again = requests.post(f"{second}/token", data=data, headers={"DPoP": proof}, timeout=10)
        assert "used before" in refused(again)


# -- nonces (RFC 9449 §8) ------------------------------------------------------------------------


def test_with_nonces_a_proof_must_carry_the_current_one(
    make_sts: Callable[..., Sts], issuer: FakeIssuer
) -> None:
    sts = make_sts(lambda c: c.update(dpop={"nonce": True}))
    key = DpopKey()
    first = dpop_exchange(sts, issuer.token(), key.proof())
    assert "nonce" in refused(first, "use_dpop_nonce")
    nonce = first.headers["DPoP-Nonce"]
    made_up = dpop_exchange(sts, issuer.token(), key.proof(nonce="made-up"))
    assert "nonce" in refused(made_up, "use_dpop_nonce")
    answer = dpop_exchange(sts, issuer.token(), key.proof(nonce=nonce))
    assert_bound(answer, sts, key)
    assert answer.headers["DPoP-Nonce"] == nonce
    # A bearer request needs no nonce.
    assert sts.exchange(issuer.token()).status_code == 200


# -- introspection (RFC 9449 §6.2) ---------------------------------------------------------------


def test_introspection_returns_the_binding(sts: Sts, issuer: FakeIssuer) -> None:
    key = DpopKey()
    token = dpop_exchange(sts, issuer.token(), key.proof()).json()["access_token"]
    answer = requests.post(
        f"{sts.url}/introspect",
        data={"token": token},
        auth=("countries-api", COUNTRIES_API_SECRET),
        timeout=5,
    ).json()
    assert answer["active"] is True
    assert answer["cnf"] == {"jkt": key.jkt}
    assert answer["token_type"] == "DPoP"


# -- the downstream API (token_exchange.verify, examples/countries_api.py; RFC 9449 §7) ----------


NL = "/countries/nl"


def bound_token(world: DevWorld, key: DpopKey) -> str:
    response = world.http.post(
        f"{world.sts_url}/token",
        data={
            "grant_type": GRANT,
            "client_id": "spa",
            "subject_token": world.login("alice"),
            "subject_token_type": ACCESS_TOKEN,
            "resource": f"{COUNTRIES_API}/countries/nl",
            "scope": "countries:read",
        },
        headers={"DPoP": key.proof(f"{world.sts_url}/token")},
        timeout=5,
    )
    assert response.json()["token_type"] == "DPoP", response.text
    return str(response.json()["access_token"])


def call(
    world: DevWorld, token: str, proof: str | None, *, scheme: str = "DPoP", path: str = NL
) -> requests.Response:
    headers = {"Authorization": f"{scheme} {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return world.http.get(f"{world.api_url}{path}", headers=headers, timeout=5)


def dpop_challenge(response: requests.Response, error: str) -> str:
    assert response.status_code == 401, response.text
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP "), challenge
    assert f'error="{error}"' in challenge
    assert "algs=" in challenge
    return challenge


def test_the_api_accepts_a_bound_token_with_its_proof(dev_world: DevWorld) -> None:
    key = DpopKey()
    token = bound_token(dev_world, key)
    url = f"{dev_world.api_url}{NL}"
    response = call(dev_world, token, key.proof(url, "GET", token=token))
    assert response.status_code == 200, response.text
    # A query is not part of htu.
    response = call(dev_world, token, key.proof(url, "GET", token=token), path=f"{NL}?x=1")
    assert response.status_code == 200, response.text


def test_a_bound_token_sent_as_bearer_is_refused(dev_world: DevWorld) -> None:
    key = DpopKey()
    token = bound_token(dev_world, key)
    url = f"{dev_world.api_url}{NL}"
    response = call(dev_world, token, key.proof(url, "GET", token=token), scheme="Bearer")
    assert "DPoP scheme" in dpop_challenge(response, "invalid_token")


def test_the_api_refuses_bad_proofs(dev_world: DevWorld) -> None:
    key, other = DpopKey(), DpopKey()
    token = bound_token(dev_world, key)
    url = f"{dev_world.api_url}{NL}"
    replayed = key.proof(url, "GET", token=token)
    assert call(dev_world, token, replayed).status_code == 200
    cases = {
        "no proof": None,
        "replayed": replayed,
        "another URL": key.proof(f"{dev_world.api_url}/countries/de", "GET", token=token),
        "another method": key.proof(url, "POST", token=token),
        "stale iat": key.proof(url, "GET", token=token, iat=int(time.time()) - 600),
        "another key": other.proof(url, "GET", token=token),
        "no ath": key.proof(url, "GET"),
        "wrong ath": key.proof(url, "GET", token="another token"),
    }
    for case, proof in cases.items():
        response = call(dev_world, token, proof)
        assert response.status_code == 401, case
        dpop_challenge(response, "invalid_dpop_proof")


def test_an_unbound_token_with_the_dpop_scheme_is_refused(dev_world: DevWorld) -> None:
    key = DpopKey()
    token = dev_world.exchange(dev_world.login("alice"), "nl").json()["access_token"]
    url = f"{dev_world.api_url}{NL}"
    dpop_challenge(call(dev_world, token, key.proof(url, "GET", token=token)), "invalid_token")
    # ...and it still works as the bearer token it is.
    assert call(dev_world, token, None, scheme="Bearer").status_code == 200


def test_without_credentials_both_schemes_are_offered(dev_world: DevWorld) -> None:
    response = dev_world.http.get(f"{dev_world.api_url}{NL}", timeout=5)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="countries"')
    assert 'DPoP realm="countries", algs="ES256 RS256 PS256 EdDSA"' in challenge
    assert "error=" not in challenge


def test_a_nonce_challenge_is_no_failure_of_the_address(
    make_sts: Callable[..., Sts], issuer: FakeIssuer
) -> None:
    # Every client meets one at each new nonce: many users behind one NAT must not be limited.
    sts = make_sts(
        lambda c: c.update(dpop={"nonce": True}, rate_limits={"failures_per_address": "1/minute"})
    )
    key = DpopKey()
    for _ in range(3):
        refused(dpop_exchange(sts, issuer.token(), key.proof()), "use_dpop_nonce")
