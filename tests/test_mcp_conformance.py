"""npm ``@modelcontextprotocol/conformance`` (code no one here wrote), its authorization-server
scenario ``authorization-server-metadata-endpoint`` run against our RFC 8414 metadata.

The scenario asks what MCP's authorization spec asks of an authorization server's metadata:
served at the RFC 8414 well-known URL with 200 and ``application/json``, ``issuer`` equal to the
URL it was asked under, ``authorization_endpoint`` and ``token_endpoint``, and (for the
authorization-code flow MCP's default clients use) ``response_types_supported`` with ``code``
and ``code_challenge_methods_supported`` with ``S256``. This service has no authorization-code
flow and its metadata does not pretend to: the test holds that those two, and nothing else, are
what the scenario finds missing. Its other scenario, ``authorization-code-grant``, needs a
browser and a code flow, and is not run.

The package needs Node 22 (``fs.globSync``); ``tests/mcp_conformance/package.json`` pins both,
Node through npm's ``node`` package, installed into the git-ignored ``.cache/mcp_conformance``.
Skipped, saying why, only when Node or npm is missing or the install fails.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fakes import FakeIssuer, FakePermissions
from .helpers import npm_project, serve_at_issuer

#: Starts processes (the service, Node, npm): the slow layer.
pytestmark = pytest.mark.slow

SOURCE = Path(__file__).resolve().parent / "mcp_conformance"
PACKAGE = "@modelcontextprotocol/conformance"
SCENARIO = "authorization-server-metadata-endpoint"
#: What only a server with an authorization-code flow can say (the scenario's own words).
CODE_FLOW_ONLY = [
    'Response body does not include valid "response_types_supported" claim',
    'Response body does not include valid "code_challenge_methods_supported" claim',
]


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    pinned = json.loads((SOURCE / "package.json").read_text())["dependencies"][PACKAGE]
    return npm_project(
        "mcp_conformance",
        SOURCE,
        manifests=("package.json",),
        files=(),
        version=str(pinned),
        package=PACKAGE,
    )


@pytest.fixture
def sts_url(issuer: FakeIssuer, permissions_api: FakePermissions, tmp_path: Path) -> Iterator[str]:
    """The service, its issuer its real loopback URL (the scenario compares them)."""
    url, _, stop = serve_at_issuer(issuer.issuer, permissions_api.url, tmp_path)
    try:
        yield url
    finally:
        stop()


def _checks(conformance_dir: Path, url: str, out: Path) -> dict[str, dict[str, str]]:
    """Run the scenario against ``url``; its checks by id."""
    node = conformance_dir / "node_modules" / ".bin" / "node"
    cli = conformance_dir / "node_modules" / PACKAGE / "dist" / "index.js"
    done = subprocess.run(
        [str(node), str(cli), "authorization", "--url", url, "--scenario", SCENARIO,
         "-o", str(out)],
        cwd=conformance_dir, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    (found,) = out.glob("*/checks.json")
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return {check["id"]: check for check in json.loads(found.read_text())}


def test_the_conformance_scenario_finds_only_the_code_flow_missing(
    conformance_dir: Path, sts_url: str, tmp_path: Path
) -> None:
    checks = _checks(conformance_dir, sts_url, tmp_path / "results")
    metadata = checks["authorization-server-metadata"]
    # It read our metadata (200, application/json) and checked its body.
    assert metadata["details"]["contentType"] == "application/json"
    assert metadata["details"]["body"]["issuer"] == sts_url
    # Issuer, authorization_endpoint and token_endpoint held; only the code flow is missing.
    assert metadata["status"] == "FAILURE"
    assert metadata["errorMessage"].split(", ") == CODE_FLOW_ONLY
    # Client ID Metadata Documents (a SHOULD for code-flow servers): not offered.
    assert checks["authorization-server-metadata-cimd"]["status"] == "WARNING"


def test_the_scenario_tells_a_wrong_issuer(
    conformance_dir: Path, sts_url: str, tmp_path: Path
) -> None:
    # The check above can fail: asked under another URL than its issuer, our metadata is refused
    # for that too (the issuer must be the URL the metadata was asked under, RFC 8414 §3.3).
    other = sts_url.replace("127.0.0.1", "localhost")
    checks = _checks(conformance_dir, other, tmp_path / "results")
    message = checks["authorization-server-metadata"]["errorMessage"]
    assert f"Invalid issuer: {sts_url}" in message.split(", ")
