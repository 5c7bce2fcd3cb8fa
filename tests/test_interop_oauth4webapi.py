"""A DPoP client no one here wrote: oauth4webapi (panva), used as its documentation says.

``tests/interop/o4w_dpop.mjs`` discovers our metadata (RFC 8414), makes a ``DPoP()`` handle on an
ES256 key, exchanges a subject token at /token with ``genericTokenEndpointRequest`` (retrying
once on ``use_dpop_nonce``, as documented) and calls the example countries API with
``protectedResourceRequest``. It runs under Node against the service and the API on loopback;
oauth4webapi is installed by npm into the git-ignored ``.cache/interop`` (the version pinned in
``tests/interop/package.json``). Skipped, saying why, only when Node or npm is missing or the
install fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.wrappers import Request, Response

from .devworld import load_example
from .fakes import (
    ACCESS_TOKEN,
    BACKEND_SECRET,
    COUNTRIES,
    GRANT,
    FakeIssuer,
    FakePermissions,
)
from .helpers import npm_project, serve, serve_at_issuer

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow

INTEROP = Path(__file__).resolve().parent / "interop"
SCRIPT = "o4w_dpop.mjs"


def _pinned_version() -> str:
    return str(json.loads((INTEROP / "package.json").read_text())["dependencies"]["oauth4webapi"])


@pytest.fixture(scope="session")
def o4w_dir() -> Path:
    """``.cache/interop`` with the pinned oauth4webapi installed and the script beside it."""
    return npm_project(
        "interop", INTEROP, manifests=("package.json",), files=(SCRIPT,), version=_pinned_version()
    )


class World:
    """The service (its issuer its real loopback URL, as discovery requires) and the example
    countries API verifying its tokens."""

    def __init__(self, sts_url: str, api_url: str, issuer: FakeIssuer) -> None:
        self.sts_url = sts_url
        self.api_url = api_url
        self.issuer = issuer

    def run(self, o4w_dir: Path, subject_token: str, **options: Any) -> dict[str, Any]:
        """Run the script with node; its one JSON line of output."""
        node = shutil.which("node")
        assert node is not None
        script_input = {
            "issuer": self.sts_url,
            "subjectToken": subject_token,
            "audience": COUNTRIES,
            "scope": "countries:read",
            "apiUrl": f"{self.api_url}/countries/nl",
            "clientId": "spa",
            **options,
        }
        done = subprocess.run(
            [node, SCRIPT, json.dumps(script_input)],
            cwd=o4w_dir, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return dict(json.loads(done.stdout))


@pytest.fixture
def make_world(
    issuer: FakeIssuer, permissions_api: FakePermissions, tmp_path: Path
) -> Iterator[Callable[..., World]]:
    stops: list[Callable[[], None]] = []

    def start(dpop: dict[str, Any] | None = None) -> World:
        def with_dpop(config: dict[str, Any]) -> None:
            if dpop is not None:
                config["dpop"] = dpop

        sts_url, _, stop = serve_at_issuer(issuer.issuer, permissions_api.url, tmp_path, with_dpop)
        stops.append(stop)
        api_url, stop = serve(load_example("countries_api").create_api(sts_url))
        stops.append(stop)
        return World(sts_url, api_url, issuer)

    yield start
    for stop in reversed(stops):
        stop()


def rfc7638(jwk: dict[str, Any]) -> str:
    """An EC key's RFC 7638 thumbprint, computed here rather than by the code under test."""
    canonical = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]},
        separators=(",", ":"),
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a minted token (its signature the API has verified already)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def token_requests(out: dict[str, Any], phase: str = "main") -> list[dict[str, Any]]:
    return [r for r in out["sent"] if r["url"].endswith("/token") and r["phase"] == phase]


def assert_bound_and_used(out: dict[str, Any], world: World) -> dict[str, Any]:
    """oauth4webapi got a DPoP-bound token for its key and the API accepted it with a proof."""
    assert out["metadata"]["issuer"] == world.sts_url
    assert out["metadata"]["token_endpoint"] == f"{world.sts_url}/token"
    assert "ES256" in out["metadata"]["dpop_signing_alg_values_supported"]
    # As we sent it (oauth4webapi lowercases token_type in its result).
    assert token_requests(out)[-1]["status"] == 200
    assert token_requests(out)[-1]["body"]["token_type"] == "DPoP"
    assert out["token"]["token_type"] == "dpop"
    assert out["token"]["issued_token_type"] == ACCESS_TOKEN
    jkt = rfc7638(out["public_jwk"])
    assert jkt == out["jkt"]  # oauth4webapi's own thumbprint agrees
    claims = claims_of(out["token"]["access_token"])
    assert claims["cnf"] == {"jkt": jkt}
    assert claims["iss"] == world.sts_url
    assert out["api"]["status"] == 200, out["api"]
    assert out["api"]["body"]["code"] == "nl"
    assert api_call(out, world)["authorization_scheme"] == "DPoP"
    return claims


def api_call(out: dict[str, Any], world: World) -> dict[str, Any]:
    return next(r for r in out["sent"] if r["url"].startswith(world.api_url))


def replay_token_request(world: World, subject_token: str, proof: str) -> requests.Response:
    return requests.post(
        f"{world.sts_url}/token",
        data={
            "grant_type": GRANT,
            "client_id": "spa",
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN,
            "audience": COUNTRIES,
            "scope": "countries:read",
        },
        headers={"DPoP": proof},
        timeout=10,
    )


def test_oauth4webapi_gets_a_bound_token_and_calls_the_api(
    make_world: Callable[..., World], o4w_dir: Path
) -> None:
    world = make_world()
    subject_token = world.issuer.token()
    out = world.run(o4w_dir, subject_token)
    assert_bound_and_used(out, world)
    assert len(token_requests(out)) == 1  # no nonce asked for, none needed

    # Its proofs are single-use: the one it sent to /token, and the one it sent to the API.
    proof = token_requests(out)[0]["dpop"]
    replayed = replay_token_request(world, subject_token, proof)
    assert replayed.status_code == 400
    assert replayed.json()["error"] == "invalid_dpop_proof"
    api_proof = api_call(out, world)["dpop"]
    again = requests.get(
        f"{world.api_url}/countries/nl",
        headers={"Authorization": f"DPoP {out['token']['access_token']}", "DPoP": api_proof},
        timeout=10,
    )
    assert again.status_code == 401
    assert 'error="invalid_dpop_proof"' in again.headers["WWW-Authenticate"]


def test_bad_proofs_from_oauth4webapi_are_refused_by_the_api(
    make_world: Callable[..., World], o4w_dir: Path
) -> None:
    """Proofs signed by oauth4webapi, changed by its ``modifyAssertion`` hook before signing."""
    world = make_world()
    out = world.run(o4w_dir, world.issuer.token())
    assert_bound_and_used(out, world)
    assert set(out["attacks"]) == {
        "other_url", "other_method", "stale_iat", "no_ath", "wrong_ath", "other_key",
    }  # fmt: skip
    for case, answer in out["attacks"].items():
        assert answer["status"] == 401, (case, answer)
        dpop = [c for c in answer["challenges"] if c["scheme"] == "dpop"]
        assert dpop, (case, answer)
        assert dpop[0]["parameters"]["error"] == "invalid_dpop_proof", (case, answer)


def test_oauth4webapi_retries_with_our_nonce(
    make_world: Callable[..., World], o4w_dir: Path
) -> None:
    world = make_world({"nonce": True})
    out = world.run(o4w_dir, world.issuer.token())
    assert_bound_and_used(out, world)
    first, second = token_requests(out)
    assert first["status"] == 400
    assert first["body"]["error"] == "use_dpop_nonce"
    assert first["dpop_nonce"]
    nonce = claims_of(second["dpop"])["nonce"]
    assert nonce == first["dpop_nonce"]
    assert "nonce" not in claims_of(first["dpop"])


def test_a_confidential_client_with_client_secret_post(
    make_world: Callable[..., World], o4w_dir: Path
) -> None:
    world = make_world()
    out = world.run(o4w_dir, world.issuer.token(), clientId="backend", clientSecret=BACKEND_SECRET)
    claims = assert_bound_and_used(out, world)
    assert claims["client_id"] == "backend"


def test_a_dpop_bound_subject_token_from_oauth4webapi(
    make_world: Callable[..., World], o4w_dir: Path
) -> None:
    """A subject token bound to oauth4webapi's key (as Auth0's DPoP tokens are) is exchanged
    only with a proof by that key carrying its ``ath`` (added with ``modifyAssertion``: the
    library puts ``ath`` in resource requests only), and the minted token stays bound to it."""
    world = make_world()

    def mint(request: Request) -> Response:
        return Response(world.issuer.token(cnf={"jkt": request.args["jkt"]}))

    world.issuer.server.expect_request("/mint").respond_with_handler(mint)
    out = world.run(o4w_dir, world.issuer.token(), mintUrl=world.issuer.server.url_for("/mint"))
    assert_bound_and_used(out, world)
    bound = out["bound_subject"]
    assert bound["with_ath"]["status"] == 200, bound["with_ath"]
    assert bound["with_ath"]["token_type"] == "dpop"
    claims = claims_of(bound["with_ath"]["access_token"])
    assert claims["cnf"] == {"jkt": rfc7638(out["public_jwk"])}
    for case in ("no_ath", "wrong_ath", "other_key"):
        assert bound[case]["status"] == 400, (case, bound[case])
        assert bound[case]["error"] == "invalid_request", (case, bound[case])
    assert len(token_requests(out, "bound_subject")) == 4
