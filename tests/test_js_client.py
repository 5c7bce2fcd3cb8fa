"""The JavaScript client (``clients/js``): its Node unit tests, and the service serving it.

``node --test clients/js/test/`` runs the library against a fake ``/token`` and a fake API on
loopback; it is run from here so that ``pytest`` covers it. Skipped, saying why, only when Node
is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from .devworld import DevWorld
from .fakes import COUNTRIES, STS_TOKEN_ENDPOINT, FakeIssuer, FakePermissions, Sts
from .helpers import serve_process, service_toml
from .test_cli import ENV, run

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "js" / "token-exchange-client.js"
PATH = "/js/token-exchange-client.js"
NODE = shutil.which("node") or shutil.which("nodejs")


def _node_major(node: str) -> int:
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    return int(version.stdout.strip().lstrip("v").split(".")[0])


@pytest.mark.skipif(NODE is None, reason="no Node.js: install Debian's nodejs (.ci/run does)")
def test_node_unit_tests_pass() -> None:
    assert NODE is not None
    # Node 18 (Debian 12's) has Web Crypto as a global only behind this flag; 19 and later
    # always. The files are named, not the directory: newer Nodes read arguments as globs.
    flags = ["--experimental-global-webcrypto"] if _node_major(NODE) < 19 else []
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "clients/js/test").glob("*.test.js"))
    assert files
    result = subprocess.run(
        [NODE, *flags, "--test", *files],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert "# fail 0" in result.stdout
    assert "# pass 0" not in result.stdout


def _assert_serves_the_module(url: str) -> None:
    origin = {"Origin": "https://app.example.test"}
    response = requests.get(f"{url}{PATH}", headers=origin, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.content == CLIENT.read_bytes()
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    # A public file, imported as a module from the SPA's own origin: CORS without credentials.
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    cache_control = response.headers["Cache-Control"]
    assert "public" in cache_control
    assert "max-age=" in cache_control
    assert "no-store" not in cache_control
    # Revalidated cheaply once stale.
    etag = response.headers["ETag"]
    again = requests.get(f"{url}{PATH}", headers={"If-None-Match": etag}, timeout=5)
    assert again.status_code == 304


def test_the_service_serves_the_module(sts: Sts) -> None:
    _assert_serves_the_module(sts.url)


def test_serve_serves_the_module(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    """``token-exchange serve``, the production server, as installed."""
    config = tmp_path / "config.toml"
    config.write_text(service_toml(issuer.issuer, permissions_api.url))
    run("keys", "generate", "--keys-dir", str(tmp_path / "keys"))
    with serve_process(config, ENV) as url:
        _assert_serves_the_module(url)


def test_dev_serves_the_module(dev_world: DevWorld) -> None:
    _assert_serves_the_module(dev_world.sts_url)


def test_only_the_module_is_served(sts: Sts) -> None:
    for path in ("/js/package.json", "/js/test/client.test.js", "/js/", "/js/../app.py"):
        response = requests.get(f"{sts.url}{path}", timeout=5)
        assert response.status_code == 404, path
        assert response.json()["error"] == "not_found"


def test_the_package_ships_the_module(tmp_path: Path) -> None:
    """``pip install .`` serves it: the wheel holds the module and the npm package's files, as
    package data."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("token_exchange-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("token_exchange/js/token-exchange-client.js") == CLIENT.read_bytes()
        # and what /js/token-exchange-client.tgz is built from: the package's manifest and files
        for name in ("package.json", "README.md", "token-exchange-client.d.ts"):
            assert archive.read(f"token_exchange/js/{name}") == (CLIENT.parent / name).read_bytes()
        names = archive.namelist()
    assert not [n for n in names if n.startswith("token_exchange/js/test")]


# Exchanges once with `dpop: true` at the service's public TOKEN_ENDPOINT, which a "proxy" (the
# fetch) forwards to where it listens, LISTENING; prints the token and the key's thumbprint.
_DPOP_EXCHANGE = """
import { createTokenExchangeClient } from "./clients/js/token-exchange-client.js";
const { TOKEN_ENDPOINT, LISTENING } = process.env;
const sts = createTokenExchangeClient({
  tokenEndpoint: TOKEN_ENDPOINT,
  fetch: (url, init) => fetch(String(url).replace(TOKEN_ENDPOINT, LISTENING), init),
  clientId: "spa",
  getSubjectToken: () => process.env.SUBJECT_TOKEN,
  dpop: true,
});
const token = await sts.tokenFor({ audience: process.env.AUDIENCE });
console.log(JSON.stringify({ token, jkt: await sts.dpopThumbprint() }));
"""


@pytest.mark.skipif(NODE is None, reason="no Node.js: install Debian's nodejs (.ci/run does)")
def test_the_client_gets_a_dpop_bound_token_through_the_services_nonce(
    make_sts: Callable[..., Sts], issuer: FakeIssuer
) -> None:
    """The real /token, with server nonces: the client's first proof is refused with
    ``use_dpop_nonce``, its one retry carries the nonce, and the token is bound to its key."""
    assert NODE is not None
    sts = make_sts(lambda c: c.update(dpop={"nonce": True}))
    statuses: list[int] = []
    inner = sts.app.wsgi_app

    def watched(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def recording(status: str, headers: Any, *args: Any) -> Any:
            if environ["PATH_INFO"] == "/token":
                statuses.append(int(status.split()[0]))
            return start_response(status, headers, *args)

        return inner(environ, recording)

    sts.app.wsgi_app = watched
    flags = ["--experimental-global-webcrypto"] if _node_major(NODE) < 19 else []
    env = {
        **os.environ,
        "TOKEN_ENDPOINT": STS_TOKEN_ENDPOINT,  # what the service's metadata says, and htu
        "LISTENING": f"{sts.url}/token",
        "SUBJECT_TOKEN": issuer.token(),
        "AUDIENCE": COUNTRIES,
    }
    result = subprocess.run(
        [NODE, *flags, "--input-type=module", "-e", _DPOP_EXCHANGE],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    answer = json.loads(result.stdout)
    assert statuses == [400, 200]
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": answer["jkt"]}
