"""The downstream side: ``token_exchange.verify`` and the example countries API, end to end.

Dev issuer token -> /token -> countries API, all over real HTTP on loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from token_exchange.serve.devmode import COUNTRIES_API
from token_exchange.verify import InvalidToken, TokenVerifier

from .devworld import DevWorld


def claims(world: DevWorld, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": world.sts_url,
        "sub": "dev|alice",
        "aud": COUNTRIES_API,
        "exp": now + 300,
        "iat": now,
        "jti": "j1",
        "client_id": "spa",
        "scope": "countries:read",
        "custom_access_to_countries": ["nl"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# -- the chain the issue names ------------------------------------------------------------------


def test_allowed_country_is_served(dev_world: DevWorld) -> None:
    minted = dev_world.exchange(dev_world.login("alice"), "nl")
    assert minted.status_code == 200, minted.text
    response = dev_world.call("/countries/nl", minted.json()["access_token"])
    assert response.status_code == 200, response.text
    assert response.json()["capital"] == "Amsterdam"


def test_refused_country_gets_no_token(dev_world: DevWorld) -> None:
    response = dev_world.exchange(dev_world.login("alice"), "fr")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


def test_token_for_one_country_does_not_open_another(dev_world: DevWorld) -> None:
    token = dev_world.exchange(dev_world.login("alice"), "nl").json()["access_token"]
    response = dev_world.call("/countries/de", token)  # alice may see de, but not with this token
    assert response.status_code == 403


def test_token_minted_for_another_audience_is_refused(dev_world: DevWorld) -> None:
    token = dev_world.sign(claims(dev_world, aud="https://projects.example.test"))
    response = dev_world.call("/countries/nl", token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_expired_token_is_refused(dev_world: DevWorld) -> None:
    now = int(time.time())
    token = dev_world.sign(claims(dev_world, exp=now - 120, iat=now - 420))
    response = dev_world.call("/countries/nl", token)
    assert response.status_code == 401
    assert "expired" in response.headers["WWW-Authenticate"]


def test_token_signed_by_a_key_not_in_our_jwks_is_refused(dev_world: DevWorld) -> None:
    real = dev_world.exchange(dev_world.login("alice"), "nl").json()["access_token"]
    forged = jwt.encode(
        claims(dev_world),
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"typ": "at+jwt", "kid": jwt.get_unverified_header(real)["kid"]},
    )
    response = dev_world.call("/countries/nl", forged)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_permission_triples_route(dev_world: DevWorld) -> None:
    token = dev_world.exchange(dev_world.login("alice"), "nl").json()["access_token"]
    assert dev_world.call("/orgs/acme/projects/website", token).json()["roles"] == ["editor"]
    assert dev_world.call("/orgs/globex/projects/intranet", token).status_code == 403


# -- RFC 6750 answers ---------------------------------------------------------------------------


def test_missing_token_is_401_without_an_error_code(dev_world: DevWorld) -> None:
    response = dev_world.call("/countries/nl", None)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer realm=")
    assert "error=" not in challenge  # RFC 6750 §3.1


def test_missing_scope_is_403_insufficient_scope(dev_world: DevWorld) -> None:
    token = dev_world.sign(claims(dev_world, scope="countries:write"))
    response = dev_world.call("/countries/nl", token)
    assert response.status_code == 403
    challenge = response.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="countries:read"' in challenge


def test_subject_token_is_not_an_access_token_for_the_api(dev_world: DevWorld) -> None:
    # The sign-in token must never work at the API: wrong issuer, wrong typ, wrong audience.
    response = dev_world.call("/countries/nl", dev_world.login("alice"))
    assert response.status_code == 401


def test_our_key_with_the_wrong_typ_is_refused(dev_world: DevWorld) -> None:
    key = dev_world.sts_app.extensions["token_exchange"].keys.signing_key()
    token = jwt.encode(
        claims(dev_world), key.private_key, algorithm=key.alg, headers={"kid": key.kid}
    )  # typ "JWT": an ID token or other JWT, not an RFC 9068 access token
    assert dev_world.call("/countries/nl", token).status_code == 401


@pytest.mark.parametrize("missing", ["jti", "client_id", "iat", "sub", "exp"])
def test_rfc9068_claims_are_required(dev_world: DevWorld, missing: str) -> None:
    token = dev_world.sign(claims(dev_world, **{missing: None}))
    assert dev_world.call("/countries/nl", token).status_code == 401


# -- the verifier on its own ----------------------------------------------------------------------


def test_verifier_discovers_the_jwks_from_rfc8414_metadata(dev_world: DevWorld) -> None:
    verifier = TokenVerifier(issuer=dev_world.sts_url, audience=COUNTRIES_API)
    token = dev_world.exchange(dev_world.login(), "nl").json()["access_token"]
    assert verifier.verify(token)["custom_access_to_countries"] == ["nl"]
    with pytest.raises(InvalidToken, match="aud"):
        TokenVerifier(issuer=dev_world.sts_url, audience="https://other.test").verify(token)


def test_verifier_caches_keys_and_limits_refetches(dev_world: DevWorld) -> None:
    fetches = []
    verifier = TokenVerifier(
        issuer=dev_world.sts_url,
        audience=COUNTRIES_API,
        jwks_uri=f"{dev_world.sts_url}/.well-known/jwks.json",
    )
    original = verifier.keys._fetch

    def counting() -> Any:
        fetches.append(1)
        return original()

    verifier.keys._fetch = counting  # type: ignore[method-assign]
    token = dev_world.exchange(dev_world.login(), "nl").json()["access_token"]
    for _ in range(10):
        verifier.verify(token)
    header = jwt.get_unverified_header(token)
    for i in range(10):
        forged = jwt.encode(
            claims(dev_world), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
            headers={**header, "kid": f"unknown-{i}"},
        )  # fmt: skip
        with pytest.raises(InvalidToken):
            verifier.verify(forged)
    assert len(fetches) == 1


def test_sts_down_is_503_not_401(dev_world: DevWorld) -> None:
    from token_exchange.verify import BearerAuth

    from .helpers import free_port

    app = __import__("flask").Flask("t")
    auth = BearerAuth(
        TokenVerifier(
            issuer="http://127.0.0.1:1", audience=COUNTRIES_API,
            jwks_uri=f"http://127.0.0.1:{free_port()}/jwks.json",
        )
    )  # fmt: skip

    @app.get("/x")
    @auth.require()
    def view(claims: dict[str, Any]) -> str:
        return "ok"

    token = dev_world.exchange(dev_world.login(), "nl").json()["access_token"]
    response = app.test_client().get("/x", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503


@pytest.mark.slow
def test_the_downstream_library_stands_alone() -> None:
    """An API that verifies our tokens imports ``token_exchange.verify`` and nothing of the
    service: not the configuration (nor pydantic), not the grant, not the app."""
    probe = (
        "import sys, token_exchange.verify, json; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('token_exchange', "
        "'pydantic')))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert "token_exchange.verify" in loaded
    assert not any(m.startswith("pydantic") for m in loaded), loaded
    assert not any(
        m.startswith(("token_exchange.config", "token_exchange.grant", "token_exchange.web",
                      "token_exchange.serve"))
        for m in loaded
    ), loaded  # fmt: skip


def test_the_example_api_publishes_its_protected_resource_metadata(dev_world: DevWorld) -> None:
    document = dev_world.call("/.well-known/oauth-protected-resource", None).json()
    assert document["resource"] == COUNTRIES_API
    assert document["authorization_servers"] == [dev_world.sts_url]
    assert "countries:read" in document["scopes_supported"]
    challenge = dev_world.call("/countries/nl", None).headers["WWW-Authenticate"]
    assert f'resource_metadata="{COUNTRIES_API}/.well-known/oauth-protected-resource"' in challenge
    assert 'scope="countries:read"' in challenge
