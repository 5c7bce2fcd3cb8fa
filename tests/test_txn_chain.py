"""A transaction's call chain over real HTTP, as the README draws it: the SPA's access token
reaches the countries API (``examples/countries_api.py``), which asks our service for a
Txn-Token as its workload (private_key_jwt) and calls the internal statistics service with it
(``examples/internal_service.py``, ``token_exchange.verify.TxnTokenAuth``; and
``examples/internal-node``, jose's ``jwtVerify``). The consumers' checks and the confusion
attacks: an access token sent as a Txn-Token and the reverse, two Txn-Tokens, a Txn-Token for
another trust domain, an expired one replayed."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from token_exchange.verify import InvalidToken, TxnTokenVerifier

from .devworld import load_example
from .fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    GRANT,
    ClientAssertions,
    FakeIssuer,
    FakePermissions,
)
from .helpers import free_port, npm_project, serve, serve_at_issuer

TRUST_DOMAIN = "trust-domain.example"
TXN_TOKEN = "urn:ietf:params:oauth:token-type:txn_token"
ROOT = Path(__file__).resolve().parent.parent
NODE_EXAMPLE = ROOT / "examples" / "internal-node"


@dataclass
class Chain:
    sts_url: str
    api_url: str
    internal_url: str
    issuer: FakeIssuer
    workload: ClientAssertions
    internal: Any  # examples/countries_api.InternalCalls

    def access_token(self, scope: str = "countries:read") -> str:
        """The SPA's token for the countries API, as the SPA gets it."""
        response = requests.post(
            f"{self.sts_url}/token",
            data={
                "grant_type": GRANT,
                "client_id": "spa",
                "subject_token": self.issuer.token(),
                "subject_token_type": ACCESS_TOKEN,
                "audience": COUNTRIES,
                "scope": scope,
            },
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def txn_token(self, access_token: str, code: str = "nl") -> str:
        response = self.internal.txn_token(access_token, code, "69.151.72.123")
        assert response.status_code == 200, response.text
        assert response.json()["token_type"] == "N_A"
        return str(response.json()["access_token"])


def start_sts(
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    base: Path,
    workload: ClientAssertions,
    trust_domain: str = TRUST_DOMAIN,
) -> tuple[str, Callable[[], None]]:
    """Our service at a loopback URL that is its issuer (discovery by RFC 8414), issuing
    Txn-Tokens for ``trust_domain`` to ``workload``."""
    base.mkdir()

    def txn_service(config: dict[str, Any]) -> None:
        config["transaction_tokens"] = {"audience": trust_domain, "permissions": "webapp"}
        config["clients"].append(
            {
                "client_id": workload.client_id,
                "type": "confidential",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": workload.jwks(),
                "transaction_tokens": True,
                # It is the countries API: the access tokens it receives are its to present.
                "introspects": [COUNTRIES],
            }
        )

    url, _, stop = serve_at_issuer(issuer.issuer, permissions_api.url, base, txn_service)
    return url, stop


@pytest.fixture
def chain(issuer: FakeIssuer, permissions_api: FakePermissions, tmp_path: Path) -> Iterator[Chain]:
    workload = ClientAssertions("countries-api-workload")
    sts_url, stop_sts = start_sts(issuer, permissions_api, tmp_path / "sts", workload)
    internal_service = load_example("internal_service")
    internal_url, stop_internal = serve(
        internal_service.create_service(sts_url, trust_domain=TRUST_DOMAIN)
    )
    countries = load_example("countries_api")
    calls = countries.InternalCalls(
        sts=sts_url,
        internal_url=internal_url,
        client_id=workload.client_id,
        key=workload.key,
        kid=workload.kid,
        trust_domain=TRUST_DOMAIN,
    )
    api_url, stop_api = serve(countries.create_api(sts_url, internal=calls))
    try:
        yield Chain(sts_url, api_url, internal_url, issuer, workload, calls)
    finally:
        stop_api()
        stop_internal()
        stop_sts()


def test_the_countries_api_calls_the_internal_service_with_a_txn_token(
    chain: Chain, permissions_api: FakePermissions
) -> None:
    access_token = chain.access_token()
    response = requests.get(
        f"{chain.api_url}/countries/nl/stats",
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["population"] == 17_900_000
    assert body["sub"] == "auth0|42"
    assert body["req_wl"] == "countries-api-workload"
    assert len(body["txn"]) == 36
    # The internal service decided from tctx: the permissions answer of this transaction.
    question = permissions_api.questions[-1]
    assert question["grant"] == "txn-token"
    assert question["request_details"] == {"action": "stats", "country": "nl"}
    assert question["client_id"] == "countries-api-workload"
    # The permissions API granted nl only: fr is refused by the internal service.
    refused = requests.get(
        f"{chain.api_url}/countries/fr/stats",
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
    )
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"


def get(url: str, headers: dict[str, str] | list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
    """GET ``url`` with ``headers``, which may repeat a name (``requests`` cannot send that)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        connection.putrequest("GET", parts.path)
        for name, value in headers.items() if isinstance(headers, dict) else headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def stats(chain: Chain, headers: dict[str, str] | list[tuple[str, str]]) -> tuple[int, Any]:
    return get(f"{chain.internal_url}/stats/nl", headers)


def test_the_internal_service_takes_exactly_one_txn_token_and_nothing_else(
    chain: Chain, issuer: FakeIssuer, permissions_api: FakePermissions, tmp_path: Path
) -> None:
    access_token = chain.access_token()
    txn = chain.txn_token(access_token)
    assert stats(chain, {"Txn-Token": txn})[0] == 200

    def refused(headers: Any) -> None:
        status, body = stats(chain, headers)
        assert status == 403, body
        assert body["error"] == "invalid_token"

    refused({})  # none
    refused({"Authorization": f"Bearer {txn}"})  # never from the Authorization header
    refused({"Txn-Token": access_token})  # an access token is no Txn-Token
    refused({"Txn-Token": f"{txn}, {txn}"})  # two, joined by a proxy
    refused([("Txn-Token", txn), ("Txn-Token", txn)])  # two headers
    refused({"Txn-Token": txn[:-4] + "AAAA"})  # forged

    # A Txn-Token is no access token: the countries API refuses it as a bearer token.
    as_bearer = requests.get(
        f"{chain.api_url}/countries/nl", headers={"Authorization": f"Bearer {txn}"}, timeout=10
    )
    assert as_bearer.status_code == 401

    # Another trust domain's Txn-Token, signed by another service of ours.
    other_workload = ClientAssertions("countries-api-workload")
    other_url, stop = start_sts(
        issuer, permissions_api, tmp_path / "other", other_workload, trust_domain="other.example"
    )
    try:
        calls = load_example("countries_api").InternalCalls(
            sts=other_url,
            internal_url=chain.internal_url,
            client_id=other_workload.client_id,
            key=other_workload.key,
            kid=other_workload.kid,
            trust_domain="other.example",
        )
        spa = requests.post(
            f"{other_url}/token",
            data={"grant_type": GRANT, "client_id": "spa", "subject_token": issuer.token(),
                  "subject_token_type": ACCESS_TOKEN, "audience": COUNTRIES},
            timeout=10,
        ).json()["access_token"]  # fmt: skip
        foreign = calls.txn_token(spa, "nl", None).json()["access_token"]
    finally:
        stop()
    refused({"Txn-Token": foreign})


def test_a_txn_token_for_another_purpose_is_insufficient(chain: Chain) -> None:
    access_token = chain.access_token(scope="countries:write")
    response = requests.post(
        f"{chain.sts_url}/token",
        data={
            "grant_type": GRANT,
            "requested_token_type": TXN_TOKEN,
            "audience": TRUST_DOMAIN,
            "scope": "countries:write",
            "subject_token": access_token,
            "subject_token_type": ACCESS_TOKEN,
            **chain.workload.form(aud=f"{chain.sts_url}/token"),
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    status, body = stats(chain, {"Txn-Token": response.json()["access_token"]})
    assert (status, body["error"]) == (403, "insufficient_scope")


def test_an_expired_txn_token_replayed_is_refused(chain: Chain) -> None:
    txn = chain.txn_token(chain.access_token())
    jwks_uri = f"{chain.sts_url}/.well-known/jwks.json"
    now = TxnTokenVerifier(issuer=chain.sts_url, trust_domain=TRUST_DOMAIN, jwks_uri=jwks_uri)
    assert now.verify(txn).sub == "auth0|42"
    later = TxnTokenVerifier(
        issuer=chain.sts_url,
        trust_domain=TRUST_DOMAIN,
        jwks_uri=jwks_uri,
        clock=lambda: time.time() + 120,
    )
    with pytest.raises(InvalidToken, match="expired"):
        later.verify(txn)


# -- the same checks in Node, with jose ------------------------------------------------------------


@pytest.fixture(scope="session")
def internal_node_dir() -> Path:
    lock = json.loads((NODE_EXAMPLE / "package-lock.json").read_text())
    return npm_project(
        "internal-node",
        NODE_EXAMPLE,
        manifests=("package.json", "package-lock.json"),
        files=("server.mjs", "txn-token.mjs"),
        version=lock["packages"]["node_modules/jose"]["version"],
        package="jose",
    )


@pytest.mark.slow
def test_a_node_service_checks_the_txn_token_with_jose(
    chain: Chain, internal_node_dir: Path
) -> None:
    node = shutil.which("node")
    assert node is not None
    port = free_port()
    process = subprocess.Popen(
        [node, "server.mjs", "--sts", chain.sts_url, "--trust-domain", TRUST_DOMAIN,
         "--port", str(port)],
        cwd=internal_node_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "internal service (Node)" in line, (
            line,
            process.stderr.read() if process.stderr else "",
        )
        url = f"http://127.0.0.1:{port}/stats/nl"
        access_token = chain.access_token()
        txn = chain.txn_token(access_token)
        accepted = requests.get(url, headers={"Txn-Token": txn}, timeout=10)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["sub"] == "auth0|42"
        assert accepted.json()["req_wl"] == "countries-api-workload"
        for headers in (
            {},
            {"Authorization": f"Bearer {txn}"},
            {"Txn-Token": access_token},
            [("Txn-Token", txn), ("Txn-Token", txn)],
            {"Txn-Token": txn[:-4] + "AAAA"},
        ):
            status, body = get(url, headers)
            assert status == 403, (headers, body)
        assert (
            requests.get(
                f"http://127.0.0.1:{port}/stats/fr", headers={"Txn-Token": txn}, timeout=10
            ).status_code
            == 403
        )
    finally:
        process.terminate()
        process.communicate(timeout=10)
