"""One ``serve`` with several workers and no Redis (issue 21): the default store, a SQLite file,
is shared by the workers, so revocations, single-use proofs and assertions and rate limits hold
across all of them, and revocations outlive a restart. ``memory://`` with several workers is
refused at start.

Each request opens its own connection, which the kernel hands to either worker; with a store
per worker, some of 16 requests would reach a worker that knows nothing of the others'.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from token_exchange.serve.cli import default_workers

from .fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    COUNTRIES_API_SECRET,
    GRANT,
    PERMISSIONS_TOKEN,
    ClientAssertions,
    DpopKey,
    FakeIssuer,
    FakePermissions,
)
from .helpers import CLI, free_port, serve_process, service_toml

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow

ENV = {"PERMS_TOKEN": PERMISSIONS_TOKEN, "COUNTRIES_API_SECRET": COUNTRIES_API_SECRET}
TRIES = 16
AUTH = ("countries-api", COUNTRIES_API_SECRET)


def _toml(value: Any) -> str:
    """A TOML value (inline tables for dicts), for the JWK Set of a private_key_jwt client."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def write_config(
    directory: Path,
    issuer: FakeIssuer,
    permissions: FakePermissions,
    signer: ClientAssertions,
    store: str | None = None,
) -> Path:
    subprocess.run(
        [*CLI, "keys", "generate", "--keys-dir", str(directory / "keys")],
        check=True, capture_output=True,
    )  # fmt: skip
    extra = f"""
[rate_limits]
per_subject = "6/minute"
[[clients]]
client_id = "countries-api"
type = "confidential"
secret_env = "COUNTRIES_API_SECRET"
audiences = []
introspects = ["{COUNTRIES}"]
[[clients]]
client_id = "{signer.client_id}"
type = "confidential"
token_endpoint_auth_method = "private_key_jwt"
jwks = {_toml(signer.jwks())}
audiences = ["{COUNTRIES}"]
"""
    text = service_toml(issuer.issuer, permissions.url, extra=extra)
    if store is None:  # the default store: no [store] url at all
        text = text.replace('[store]\nurl = "sqlite:state/store.db"\n', "")
        assert "[store]" not in text
    else:
        text = text.replace('url = "sqlite:state/store.db"', f'url = "{store}"')
    path = directory / "config.toml"
    path.write_text(text)
    return path


def exchange(url: str, subject_token: str, **extra: Any) -> requests.Response:
    data = {
        "grant_type": GRANT,
        "client_id": "spa",
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN,
        "audience": COUNTRIES,
    }
    headers = extra.pop("headers", {})
    data.update(extra)
    data = {k: v for k, v in data.items() if v is not None}
    # A new connection per request (no session): the kernel picks the worker each time.
    return requests.post(f"{url}/token", data=data, headers=headers, timeout=10)


def introspect(url: str, token: str) -> dict[str, Any]:
    answer = requests.post(f"{url}/introspect", data={"token": token}, auth=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_two_workers_without_redis_share_revocations_replays_and_limits(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    permissions_api.reply({"allow": True, "ttl": 60})
    signer = ClientAssertions("signer")
    config = write_config(tmp_path, issuer, permissions_api, signer)
    port = free_port()
    with serve_process(config, ENV, workers=2, port=port) as url:
        # A revoked token is inactive at every worker.
        token = exchange(url, issuer.token(sub="auth0|revoked")).json()["access_token"]
        assert introspect(url, token)["active"] is True
        revoked = requests.post(f"{url}/revoke", data={"token": token}, auth=AUTH, timeout=10)
        assert revoked.status_code == 200
        assert [introspect(url, token)["active"] for _ in range(TRIES)] == [False] * TRIES

        # A DPoP proof is accepted once (RFC 9449 §11.1), whichever worker sees it.
        proof = DpopKey().proof()
        statuses = [
            exchange(url, issuer.token(), headers={"DPoP": proof}).status_code for _ in range(TRIES)
        ]
        assert sorted(statuses) == [200] + [400] * (TRIES - 1), statuses

        # A client assertion is accepted once (RFC 7523 §3).
        form = signer.form()
        statuses = [
            exchange(url, issuer.token(), client_id=None, **form).status_code for _ in range(TRIES)
        ]
        assert sorted(statuses) == [200] + [401] * (TRIES - 1), statuses

        # A rate limit counts across the workers: 6 per minute for one subject, not 6 each.
        subject = issuer.token(sub="auth0|limited")
        statuses = [exchange(url, subject).status_code for _ in range(TRIES)]
        assert sorted(statuses) == [200] * 6 + [429] * (TRIES - 6), statuses

    assert (tmp_path / "state" / "store.db").is_file()  # next to the config, by default
    # Restarted on the same file: the revocation holds until the token expires.
    with serve_process(config, ENV, workers=2, port=port) as url:
        assert [introspect(url, token)["active"] for _ in range(TRIES)] == [False] * TRIES


def test_memory_store_with_several_workers_is_refused_at_start(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    config = write_config(
        tmp_path, issuer, permissions_api, ClientAssertions("signer"), store="memory://"
    )
    started = subprocess.run(
        [*CLI, "serve", "--config", str(config), "--host", "127.0.0.1",
         "--port", str(free_port()), "--workers", "2"],
        capture_output=True, text=True, timeout=60, env={**_env(), **ENV},
    )  # fmt: skip
    assert started.returncode == 2
    assert "memory://" in started.stderr
    assert "--workers 1" in started.stderr
    assert "Traceback" not in started.stderr
    checked = subprocess.run(
        [*CLI, "check-config", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={**_env(), **ENV},
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    if default_workers() > 1:  # check-config can know what serve would start by default
        assert "memory://" in checked.stderr
        assert "--workers 1" in checked.stderr


def test_an_unwritable_state_directory_stops_serve_with_one_message(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    (tmp_path / "not-a-directory").write_text("")
    store = f"sqlite://{tmp_path}/not-a-directory/store.db"
    config = write_config(tmp_path, issuer, permissions_api, ClientAssertions("signer"), store)
    started = subprocess.run(
        [*CLI, "serve", "--config", str(config), "--host", "127.0.0.1",
         "--port", str(free_port()), "--workers", "2"],
        capture_output=True, text=True, timeout=60, env={**_env(), **ENV},
    )  # fmt: skip
    assert started.returncode == 2
    assert "cannot open the store" in started.stderr
    assert "Traceback" not in started.stderr


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_EXCHANGE_")}
