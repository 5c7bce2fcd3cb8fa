"""``examples/mcp_server.py``: an MCP server built with PyPI ``mcp`` (its bearer middleware, its
RFC 9728 route, its challenges), trusting our tokens through ``token_exchange.verify``. The
``mcp`` client calls its tool with a token our service minted for it; the user's own token
(passed through), a token for another API and one without the tool's scope are refused."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx2
import pytest
import requests
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from .devworld import load_example
from .fakes import COUNTRIES, STS_ISSUER, FakeIssuer, Sts
from .helpers import assert_issued, free_port

#: The MCP server's resource identifier: the audience of the tokens minted for it.
MCP = "https://mcp.example.test/mcp"


def with_mcp_api(config: dict[str, Any]) -> None:
    """The MCP server as an API the SPA's (public) client may get tokens for."""
    config["apis"].append(
        {"audience": MCP, "scopes": ["countries:read", "tools:admin"], "permissions": "webapp"}
    )
    config["clients"][0]["audiences"].append(MCP)


@pytest.fixture
def sts(make_sts: Callable[..., Sts]) -> Sts:
    return make_sts(with_mcp_api)


@pytest.fixture
def mcp_url(sts: Sts) -> Iterator[str]:
    """The example MCP server, on uvicorn in a thread, on a loopback port."""
    example = load_example("mcp_server")
    app = example.create_server(
        STS_ISSUER, MCP, jwks_uri=f"{sts.url}/.well-known/jwks.json"
    ).streamable_http_app()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the MCP server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(10)


def call_tool(url: str, token: str, code: str) -> Any:
    async def run() -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=10) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            return await client.call_tool("country", {"code": code})

    return anyio.run(run)


def test_the_mcp_client_calls_a_tool_with_a_token_minted_for_the_server(
    sts: Sts, issuer: FakeIssuer, mcp_url: str
) -> None:
    token = assert_issued(sts.exchange(issuer.token(), audience=MCP, scope="countries:read"))[
        "access_token"
    ]
    result = call_tool(mcp_url, token, "nl")
    assert not result.is_error, result
    assert result.structured_content["capital"] == "Amsterdam"
    # The permissions API granted nl only: the token carries that answer to the tool.
    assert call_tool(mcp_url, token, "fr").is_error


def test_the_server_publishes_its_metadata_and_points_every_challenge_at_it(
    mcp_url: str,
) -> None:
    document = requests.get(
        mcp_url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"), timeout=5
    ).json()
    assert document["resource"] == MCP
    assert document["authorization_servers"] == [STS_ISSUER]
    missing = requests.post(mcp_url, json={}, timeout=5)
    assert missing.status_code == 401
    assert (
        'resource_metadata="https://mcp.example.test/.well-known/oauth-protected-resource/mcp"'
        in missing.headers["WWW-Authenticate"]
    )


def post(url: str, token: str) -> requests.Response:
    return requests.post(
        url,
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
        },
        timeout=5,
    )


def test_the_users_own_token_is_never_accepted(issuer: FakeIssuer, mcp_url: str) -> None:
    # MCP forbids token passthrough: the Auth0 token is not ours, nor for this server.
    refused = post(mcp_url, issuer.token())
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]


def test_a_token_for_another_api_is_refused(sts: Sts, issuer: FakeIssuer, mcp_url: str) -> None:
    token = assert_issued(sts.exchange(issuer.token(), audience=COUNTRIES))["access_token"]
    assert post(mcp_url, token).status_code == 401


def test_a_token_without_the_servers_scope_is_403(
    sts: Sts, issuer: FakeIssuer, mcp_url: str
) -> None:
    token = assert_issued(sts.exchange(issuer.token(), audience=MCP, scope="tools:admin"))[
        "access_token"
    ]
    refused = post(mcp_url, token)
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]


def test_the_servers_uri_in_another_form_selects_it_and_aud_is_its_identifier(
    sts: Sts, issuer: FakeIssuer
) -> None:
    # RFC 8707 as MCP clients send it: upper-case host, a trailing slash.
    response = sts.exchange(
        issuer.token(),
        audience=None,
        resource="HTTPS://MCP.EXAMPLE.TEST/mcp/",
        scope="countries:read",
    )
    token = assert_issued(response)["access_token"]
    assert sts.decode(token, audience=MCP)["aud"] == MCP
