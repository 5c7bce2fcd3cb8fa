"""``examples/node-api``: a Node downstream API (oauth4webapi's ``validateJwtAccessToken``, plus
a record of used proofs) honours DPoP for tokens minted by our service, as our Python verifier
does: a bound token without its proof is refused, with a proof by its key for this request it
is accepted, and a replayed proof or one by another key is refused.

The example runs under Node from the git-ignored ``.cache/node-api``, where npm installs the
versions ``examples/node-api/package-lock.json`` pins (``npm ci``). Skipped, saying why, only
when Node or npm is missing or the install fails.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from .fakes import (
    DpopKey,
    FakeIssuer,
    FakePermissions,
)
from .helpers import free_port, npm_project, serve_at_issuer

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "node-api"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture(scope="session")
def node_api_dir() -> Path:
    """``.cache/node-api``: the example's files, and its pinned dependencies installed."""
    lock = json.loads((EXAMPLE / "package-lock.json").read_text())
    return npm_project(
        "node-api",
        EXAMPLE,
        manifests=("package.json", "package-lock.json"),
        files=("server.mjs", "verify.mjs"),
        version=lock["packages"]["node_modules/oauth4webapi"]["version"],
    )


@dataclass
class World:
    sts_url: str
    api_url: str
    issuer: FakeIssuer

    def exchange(self, proof: str | None = None) -> dict[str, str]:
        """A token minted by the service for the countries API; bound when given a proof."""
        response = requests.post(
            f"{self.sts_url}/token",
            data={
                "grant_type": GRANT,
                "client_id": "spa",
                "subject_token": self.issuer.token(),
                "subject_token_type": ACCESS_TOKEN,
                "audience": "https://countries.example.test",
                "scope": "countries:read",
            },
            headers={"DPoP": proof} if proof else {},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def call(
        self, path: str, token: str | None, *, scheme: str = "DPoP", proof: str | None = None
    ) -> requests.Response:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"{scheme} {token}"
        if proof is not None:
            headers["DPoP"] = proof
        return requests.get(f"{self.api_url}{path}", headers=headers, timeout=10)


@pytest.fixture
def world(
    issuer: FakeIssuer, permissions_api: FakePermissions, tmp_path: Path, node_api_dir: Path
) -> Iterator[World]:
    """The service (its issuer its loopback URL, as RFC 8414 discovery wants) and the Node API
    verifying its tokens, as a process."""
    stops: list[Callable[[], None]] = []
    sts_url, _, stop = serve_at_issuer(issuer.issuer, permissions_api.url, tmp_path)
    stops.append(stop)
    api_port = free_port()
    node = shutil.which("node")
    assert node is not None
    api = subprocess.Popen(
        [node, "server.mjs", "--sts", sts_url, "--port", str(api_port)],
        cwd=node_api_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert api.stdout is not None
        line = api.stdout.readline()  # printed once it listens
        assert "countries API (Node)" in line, (line, api.stderr.read() if api.stderr else "")
        yield World(sts_url, f"http://127.0.0.1:{api_port}", issuer)
    finally:
        api.terminate()
        api.communicate(timeout=10)
        for stop in reversed(stops):
            stop()


def _challenge(response: requests.Response) -> str:
    return response.headers.get("WWW-Authenticate", "")


def test_a_bound_token_needs_its_proof(world: World) -> None:
    key = DpopKey()
    answer = world.exchange(key.proof(f"{world.sts_url}/token"))
    assert answer["token_type"] == "DPoP"
    token = answer["access_token"]
    url = f"{world.api_url}/countries/nl"

    # As a bearer token (the README's old `jose` verifier accepted this): refused.
    refused = world.call("/countries/nl", token, scheme="Bearer")
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_dpop_proof"
    assert 'DPoP error="invalid_dpop_proof"' in _challenge(refused)
    # With the DPoP scheme but no proof: refused.
    assert world.call("/countries/nl", token).status_code == 401

    # With a proof by its key, for this request: accepted.
    proof = key.proof(url, "GET", token=token)
    accepted = world.call("/countries/nl", token, proof=proof)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["capital"] == "Amsterdam"

    # The same proof again: a replay, refused.
    replayed = world.call("/countries/nl", token, proof=proof)
    assert replayed.status_code == 401
    assert replayed.json()["error"] == "invalid_dpop_proof"

    # A new proof by the same key is fine; as Bearer, even with a valid proof, it is not.
    assert world.call("/countries/nl", token, proof=key.proof(url, "GET", token=token)).ok
    as_bearer = world.call(
        "/countries/nl", token, scheme="Bearer", proof=key.proof(url, "GET", token=token)
    )
    assert as_bearer.status_code == 401


@pytest.mark.parametrize(
    "case", ["other_key", "other_url", "other_method", "no_ath", "wrong_ath", "stale_iat"]
)
def test_a_wrong_proof_is_refused(world: World, case: str) -> None:
    key = DpopKey()
    token = world.exchange(key.proof(f"{world.sts_url}/token"))["access_token"]
    url = f"{world.api_url}/countries/nl"
    proofs: dict[str, Callable[[], str]] = {
        "other_key": lambda: DpopKey().proof(url, "GET", token=token),
        "other_url": lambda: key.proof(f"{world.api_url}/countries/de", "GET", token=token),
        "other_method": lambda: key.proof(url, "POST", token=token),
        "no_ath": lambda: key.proof(url, "GET"),
        "wrong_ath": lambda: key.proof(url, "GET", token=token, ath="A" * 43),
        "stale_iat": lambda: key.proof(url, "GET", token=token, iat=int(key.clock()) - 600),
    }
    response = world.call("/countries/nl", token, proof=proofs[case]())
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_dpop_proof"


def test_a_bearer_token_is_still_a_bearer_token(world: World) -> None:
    answer = world.exchange()
    assert answer["token_type"] == "Bearer"
    token = answer["access_token"]
    response = world.call("/countries/nl", token, scheme="Bearer")
    assert response.status_code == 200, response.text
    assert response.json()["viewer"] == "auth0|42"
    # The permissions API granted nl only.
    assert world.call("/countries/fr", token, scheme="Bearer").status_code == 403
    # An unbound token cannot pose as a bound one.
    assert world.call("/countries/nl", token, scheme="DPoP").status_code == 401


#: RFC 9728 §5.1: every challenge of the example names its protected-resource metadata.
POINTER = 'resource_metadata="https://countries.example.test/.well-known/oauth-protected-resource"'


def test_no_token_and_a_bad_token(world: World) -> None:
    missing = world.call("/countries/nl", None)
    assert missing.status_code == 401
    assert _challenge(missing).startswith(f'Bearer scope="countries:read", {POINTER}, DPoP algs=')
    forged = world.call("/countries/nl", "a.b.c", scheme="Bearer")
    assert forged.status_code == 401
    assert forged.json()["error"] == "invalid_token"
    assert _challenge(forged) == f'Bearer error="invalid_token", scope="countries:read", {POINTER}'


def test_the_api_publishes_its_protected_resource_metadata(world: World) -> None:
    response = requests.get(f"{world.api_url}/.well-known/oauth-protected-resource", timeout=10)
    assert response.status_code == 200
    assert response.json() == {
        "resource": "https://countries.example.test",
        "authorization_servers": [world.sts_url],
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": ["ES256", "RS256", "PS256", "EdDSA"],
        "scopes_supported": ["countries:read"],
    }


def test_the_url_a_proof_is_checked_against_is_never_the_callers(world: World) -> None:
    """An absolute-form request line (``GET http://evil.test/... HTTP/1.1``) must not make the
    API compare a proof's htu with the caller's origin: a proof made for another API with the
    same path would pass."""
    key = DpopKey()
    token = world.exchange(key.proof(f"{world.sts_url}/token"))["access_token"]
    elsewhere = "http://evil.test/countries/nl"
    proof = key.proof(elsewhere, "GET", token=token)
    host, port = world.api_url.removeprefix("http://").split(":")
    request = (
        f"GET {elsewhere} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: DPoP {token}\r\n"
        f"DPoP: {proof}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request.encode())
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 401), answer[:300]


def test_the_replay_cache_is_bounded(node_api_dir: Path) -> None:
    """Proofs made up by a holder of a bound token cannot grow the example's replay record
    (nor the work per request) without bound: when full of live proofs it refuses (503)."""
    script = """
    import { memoryReplayCache } from "./verify.mjs";
    let t = 0;
    const cache = memoryReplayCache(() => t, 2);
    const out = [await cache.firstUse("a", 10), await cache.firstUse("a", 10)];
    await cache.firstUse("b", 10);
    try { await cache.firstUse("c", 10); out.push("stored"); } catch { out.push("full"); }
    t = 10_001;  // a and b have expired: room again
    out.push(await cache.firstUse("c", 10));
    console.log(JSON.stringify(out));
    """
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, "--input-type=module", "-e", script],
        cwd=node_api_dir, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [True, False, "full", True]
