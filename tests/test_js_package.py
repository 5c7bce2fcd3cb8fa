"""The JavaScript client as an npm package, ``@token-exchange/client``: the tarball the service
serves (``/js/token-exchange-client.tgz``), installed by npm and imported by Node; the path
install from a checkout; and the README's quickstart against ``token-exchange dev``, run as
written.

npm needs no registry here: the package has no dependencies (``--prefer-offline``, a fresh
cache per test). Skipped, saying why, only when Node or npm is not installed.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests

from token_exchange.web.jsclient import build_tarball

from .devworld import DevWorld
from .fakes import Sts

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "js"
README = PACKAGE / "README.md"
NAME = "@token-exchange/client"
NODE = shutil.which("node")
NPM = shutil.which("npm")
needs_npm = pytest.mark.skipif(
    NODE is None or NPM is None, reason="no Node.js/npm: install Debian's nodejs and npm"
)
# Prints what the installed package exports, imported by its name as a user's code would.
IMPORT = """
import * as client from "@token-exchange/client";
console.log(JSON.stringify(Object.keys(client).sort()));
"""
EXPORTS = ["TokenExchangeError", "TokenExchangeUnavailableError", "createTokenExchangeClient"]


def _version() -> str:
    return str(json.loads((PACKAGE / "package.json").read_text())["version"])


def _members(data: bytes) -> dict[str, tuple[int, bytes]]:
    """A tarball's files: name -> (mode, contents)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {}
        for member in tar.getmembers():
            assert member.isfile(), member.name
            extracted = tar.extractfile(member)
            assert extracted is not None
            members[member.name] = (member.mode, extracted.read())
        return members


def _npm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert NPM is not None
    env = {**os.environ, "npm_config_cache": str(cwd.parent / "npm-cache")}
    return subprocess.run(
        [NPM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _install(spec: str, project: Path) -> None:
    project.mkdir()
    done = _npm("install", "--prefer-offline", "--no-audit", "--no-fund", spec, cwd=project)
    assert done.returncode == 0, done.stderr[-3000:]


def _node(script: str, cwd: Path) -> str:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", script],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_package_is_scoped() -> None:
    """An unscoped name is free for anyone to take on the registry; a scope is not."""
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert manifest["name"] == NAME
    assert not manifest.get("dependencies")  # so that npm installs it offline
    assert "npm install token-exchange-client" not in README.read_text()


def test_the_tarball_is_deterministic() -> None:
    _, first = build_tarball(PACKAGE)
    _, second = build_tarball(PACKAGE)
    assert first == second


@needs_npm
def test_the_tarball_holds_what_npm_pack_packs(tmp_path: Path) -> None:
    """A differential test against npm itself: the same files, modes and contents."""
    out = tmp_path / "out"
    out.mkdir()
    done = _npm("pack", "--json", "--pack-destination", str(out), str(PACKAGE), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [packed] = json.loads(done.stdout)
    version, ours = build_tarball(PACKAGE)
    assert packed["filename"] == f"token-exchange-client-{version}.tgz"
    assert _members(ours) == _members((out / packed["filename"]).read_bytes())


def test_the_service_serves_the_tarball(sts: Sts) -> None:
    version = _version()
    response = requests.get(f"{sts.url}/js/token-exchange-client.tgz", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/gzip"
    assert response.content == build_tarball(PACKAGE)[1]
    assert f"token-exchange-client-{version}.tgz" in response.headers["Content-Disposition"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "max-age=" in response.headers["Cache-Control"]
    members = _members(response.content)
    assert (
        members["package/token-exchange-client.js"][1]
        == (PACKAGE / "token-exchange-client.js").read_bytes()
    )
    assert not [name for name in members if name.startswith("package/test/")]
    again = requests.get(
        f"{sts.url}/js/token-exchange-client.tgz",
        headers={"If-None-Match": response.headers["ETag"]},
        timeout=5,
    )
    assert again.status_code == 304
    # The versioned URL (for lockfiles) serves the same bytes, and only for this version.
    pinned = requests.get(f"{sts.url}/js/token-exchange-client-{version}.tgz", timeout=5)
    assert pinned.status_code == 200
    assert pinned.content == response.content
    other = requests.get(f"{sts.url}/js/token-exchange-client-9.9.9.tgz", timeout=5)
    assert other.status_code == 404
    assert other.json()["error"] == "not_found"


@needs_npm
def test_npm_installs_the_served_tarball(sts: Sts, tmp_path: Path) -> None:
    project = tmp_path / "app"
    _install(f"{sts.url}/js/token-exchange-client.tgz", project)
    installed = project / "node_modules" / "@token-exchange" / "client"
    assert json.loads((installed / "package.json").read_text())["version"] == _version()
    assert json.loads(_node(IMPORT, project)) == EXPORTS


@needs_npm
def test_npm_installs_the_checkout(tmp_path: Path) -> None:
    project = tmp_path / "app"
    _install(str(PACKAGE), project)
    assert json.loads(_node(IMPORT, project)) == EXPORTS


def _quickstart() -> tuple[str, str]:
    """The README's quickstart: its shell commands and its quickstart.mjs."""
    text = README.read_text()
    section = text[text.index("## Try it against `token-exchange dev`") :]
    section = section[: section.index("\n## ", 1)]
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    script = re.search(r"```js\n(.*?)```", section, re.S)
    assert shell is not None
    assert script is not None
    return shell.group(1), script.group(1)


@needs_npm
def test_the_readme_quickstart_runs_against_dev(dev_world: DevWorld, tmp_path: Path) -> None:
    """As written, with dev's and the example API's ports (8080, 8081) replaced by the test's."""
    shell, script = _quickstart()
    assert len(script.strip().splitlines()) <= 10

    def ports(text: str) -> str:
        text = text.replace("http://127.0.0.1:8080", dev_world.sts_url)
        return text.replace("http://127.0.0.1:8081", dev_world.api_url)

    install = re.search(r"npm install (\S+)", shell)
    assert install is not None
    project = tmp_path / "try"
    _install(ports(install.group(1)), project)
    (project / "quickstart.mjs").write_text(ports(script))
    assert NODE is not None
    done = subprocess.run(
        [NODE, "quickstart.mjs"], cwd=project, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("200 {")
    assert "capital: 'Amsterdam'" in done.stdout
    assert "viewer: 'dev|alice'" in done.stdout
