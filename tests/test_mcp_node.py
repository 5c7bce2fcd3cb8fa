"""``examples/mcp-node``: an MCP server on npm ``@modelcontextprotocol/sdk`` whose own
``requireBearerAuth`` middleware takes our tokens (verified with ``jose``) and refuses foreign
ones; PyPI ``mcp``'s client calls its tool. Two implementations no one here wrote, one on each
side of our token.

The example runs under Node from the git-ignored ``.cache/mcp-node`` (``npm ci`` of the pinned
lock file). Skipped, saying why, only when Node or npm is missing or the install fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from .fakes import STS_ISSUER, DpopKey, FakeIssuer, Sts
from .helpers import assert_issued, free_port, npm_project
from .test_mcp_server import MCP, call_tool, with_mcp_api

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mcp-node"
SDK = "@modelcontextprotocol/sdk"


@pytest.fixture(scope="session")
def mcp_node_dir() -> Path:
    lock = json.loads((EXAMPLE / "package-lock.json").read_text())
    return npm_project(
        "mcp-node",
        EXAMPLE,
        manifests=("package.json", "package-lock.json"),
        files=("server.mjs",),
        package=SDK,
        version=lock["packages"][f"node_modules/{SDK}"]["version"],
    )


@pytest.fixture
def sts(make_sts: Callable[..., Sts]) -> Sts:
    return make_sts(with_mcp_api)


@pytest.fixture
def mcp_url(sts: Sts, mcp_node_dir: Path) -> Iterator[str]:
    node = shutil.which("node")
    assert node is not None
    port = free_port()
    server = subprocess.Popen(
        [node, "server.mjs", "--sts", STS_ISSUER, "--port", str(port), "--resource", MCP,
         "--jwks-uri", f"{sts.url}/.well-known/jwks.json"],
        cwd=mcp_node_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # printed once it listens
        assert "MCP server (Node)" in line, (line, server.stderr.read() if server.stderr else "")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.communicate(timeout=10)


def post(url: str, token: str | None) -> requests.Response:
    headers = {"Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    return requests.post(url, json=body, headers=headers, timeout=10)


POINTER = 'resource_metadata="https://mcp.example.test/.well-known/oauth-protected-resource/mcp"'


def test_the_sdk_middleware_takes_our_token_and_the_python_client_calls_the_tool(
    sts: Sts, issuer: FakeIssuer, mcp_url: str
) -> None:
    token = assert_issued(sts.exchange(issuer.token(), audience=MCP, scope="countries:read"))[
        "access_token"
    ]
    result = call_tool(mcp_url, token, "nl")
    assert not result.is_error, result
    assert result.structured_content["capital"] == "Amsterdam"
    assert call_tool(mcp_url, token, "fr").is_error  # the permissions API granted nl only


def test_foreign_tokens_are_refused_pointing_at_the_metadata(
    sts: Sts, issuer: FakeIssuer, mcp_url: str
) -> None:
    for token in (
        None,
        issuer.token(),  # the user's own token, passed through
        assert_issued(sts.exchange(issuer.token()))["access_token"],  # for another API
    ):
        refused = post(mcp_url, token)
        assert refused.status_code == 401, refused.text
        assert POINTER in refused.headers["WWW-Authenticate"]
    document = requests.get(
        mcp_url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"), timeout=5
    ).json()
    assert document["resource"] == MCP
    assert document["authorization_servers"] == [STS_ISSUER]


def test_a_missing_scope_is_403_and_a_bound_token_is_not_a_bearer_token(
    sts: Sts, issuer: FakeIssuer, mcp_url: str
) -> None:
    unscoped = assert_issued(sts.exchange(issuer.token(), audience=MCP, scope="tools:admin"))
    refused = post(mcp_url, unscoped["access_token"])
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    key = DpopKey()
    bound = sts.exchange(
        issuer.token(), audience=MCP, scope="countries:read", headers={"DPoP": key.proof()}
    )
    assert bound.json()["token_type"] == "DPoP"
    assert post(mcp_url, bound.json()["access_token"]).status_code == 401
