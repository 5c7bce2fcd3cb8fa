"""dev's issuer stands in for Auth0 (issue 21, item 8): OIDC discovery, ``azp`` on users' tokens,
client-credentials tokens shaped as Auth0's, so that config.starter.toml's trust conditions (and
the README's Auth0 recipe) can be rehearsed against a running dev."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from token_exchange.config.settings import parse_settings
from token_exchange.serve.devmode import (
    DEV_M2M_CLIENT_ID,
    DEV_SPA_AUTH0_CLIENT_ID,
    STS_AUDIENCE,
    create_dev_app,
)
from token_exchange.web.app import create_app

from .fakes import ACCESS_TOKEN, GRANT, make_signing_key
from .helpers import free_port, serve, store_in_service

ROOT = Path(__file__).resolve().parent.parent
STARTER = ROOT / "config.starter.toml"
STARTER_API = "https://api.example.com"


@pytest.fixture(scope="module")
def dev() -> Iterator[str]:
    port = free_port()
    app = create_dev_app(port)
    url, stop = serve(app, port)
    yield url
    stop()
    app.extensions["token_exchange"].store.close()


def user_token(dev: str) -> str:
    answer = requests.post(f"{dev}/dev/login", data={"user": "alice"}, timeout=10)
    return str(answer.json()["access_token"])


def m2m_token(dev: str) -> str:
    metadata = requests.get(f"{dev}/dev/issuer/.well-known/openid-configuration", timeout=10)
    answer = requests.post(
        metadata.json()["token_endpoint"],
        data={"grant_type": "client_credentials", "client_id": DEV_M2M_CLIENT_ID},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def test_devs_issuer_has_openid_connect_discovery(dev: str) -> None:
    issuer = f"{dev}/dev/issuer"
    answer = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=10)
    assert answer.status_code == 200
    metadata = answer.json()
    assert metadata["issuer"] == issuer
    assert metadata["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert metadata["token_endpoint"] == f"{issuer}/oauth/token"
    assert requests.get(metadata["jwks_uri"], timeout=10).json()["keys"]


def test_user_tokens_carry_azp_and_no_gty(dev: str) -> None:
    claims = jwt.decode(user_token(dev), options={"verify_signature": False})
    assert claims["azp"] == DEV_SPA_AUTH0_CLIENT_ID
    assert len(DEV_SPA_AUTH0_CLIENT_ID) == 32  # as Auth0 makes them
    assert DEV_SPA_AUTH0_CLIENT_ID.isalnum()
    assert "gty" not in claims


def test_m2m_tokens_are_shaped_as_auth0s(dev: str) -> None:
    claims = jwt.decode(m2m_token(dev), options={"verify_signature": False})
    assert claims["gty"] == "client-credentials"
    assert claims["sub"] == f"{DEV_M2M_CLIENT_ID}@clients"
    assert claims["azp"] == DEV_M2M_CLIENT_ID
    assert claims["aud"] == STS_AUDIENCE
    assert claims["iss"] == f"{dev}/dev/issuer"


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        ({"grant_type": "password", "client_id": DEV_M2M_CLIENT_ID}, 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "client_id": "other"}, 401, "invalid_client"),
    ],
)
def test_the_token_endpoint_refuses_what_it_does_not_grant(
    dev: str, data: dict[str, str], status: int, error: str
) -> None:
    answer = requests.post(f"{dev}/dev/issuer/oauth/token", data=data, timeout=10)
    assert answer.status_code == status
    assert answer.json()["error"] == error


def starter_against(dev: str, *, bind_azp: bool) -> str:
    """config.starter.toml pointed at dev's issuer, as the README's rehearsal says: the issuer
    (keys found by discovery, as for Auth0), its audience and, uncommented, the azp binding."""
    text = STARTER.read_text()
    text = text.replace("https://your-tenant.eu.auth0.com/", f"{dev}/dev/issuer")
    text = text.replace(
        'audiences = ["https://sts.example.com"]', f'audiences = ["{STS_AUDIENCE}"]'
    )
    if bind_azp:
        text = text.replace("# [clients.subject_conditions]", "[clients.subject_conditions]")
        text = text.replace(
            '# azp = ["your-auth0-spa-client-id"]', f'azp = ["{DEV_SPA_AUTH0_CLIENT_ID}"]'
        )
        assert DEV_SPA_AUTH0_CLIENT_ID in text
    return text


@pytest.fixture
def starter_sts(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    stops: list[Callable[[], None]] = []

    def start(text: str) -> str:
        base = tmp_path / str(len(stops))
        base.mkdir()
        config: dict[str, Any] = tomllib.loads(text)
        assert "jwks_uri" not in config["upstreams"][0]  # discovery, as with Auth0
        make_signing_key(base / "keys", "ES256")
        settings = parse_settings(config, env={}, base_dir=base)
        store_in_service(settings.store.url)
        app = create_app(settings)
        url, stop = serve(app)
        stops.append(stop)
        return url

    yield start
    for stop in stops:
        stop()


def exchange(sts: str, subject_token: str) -> requests.Response:
    return requests.post(
        f"{sts}/token",
        data={
            "grant_type": GRANT,
            "client_id": "spa",
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN,
            "audience": STARTER_API,
            "scope": "read",
        },
        timeout=10,
    )


@pytest.mark.parametrize("bind_azp", [False, True], ids=["as-shipped", "azp-bound"])
def test_the_starter_configs_conditions_rehearse_against_dev(
    dev: str, starter_sts: Callable[[str], str], bind_azp: bool
) -> None:
    sts = starter_sts(starter_against(dev, bind_azp=bind_azp))
    granted = exchange(sts, user_token(dev))
    assert granted.status_code == 200, granted.text
    assert granted.json()["scope"] == "read"
    refused = exchange(sts, m2m_token(dev))
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_request"
