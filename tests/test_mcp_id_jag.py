"""PyPI ``mcp``'s ``IdentityAssertionOAuthProvider`` (SEP-990, MCP's Enterprise-Managed
Authorization), a client no one here wrote, redeems an ID-JAG at our ``/token`` with the
jwt-bearer grant and calls the example
MCP server's tool with the token; the MCP server verifies it with ``token_exchange.verify``.

Through the SDK's own discovery: after the MCP server's 401 it reads our RFC 8414 metadata at
the issuer it was configured with and finds our token endpoint there. (Its metadata model
requires an ``authorization_endpoint``: ours refuses every request, ``web.views.authorize``.)

Our issuer is the service's loopback URL here (the provider sends the ID-JAG only to the token
endpoint on the configured issuer's origin). The ID-JAG is signed by the fake IdP as Okta would
sign one (draft-ietf-oauth-identity-assertion-authz-grant-04 §3.1's claims).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.auth.extensions.identity_assertion import IdentityAssertionOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from .devworld import load_example
from .fakes import ENV, FakeIssuer, FakePermissions
from .helpers import free_port, serve_at_issuer

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
SECRET = "agent-secret-value"


class Memory:
    """``mcp``'s ``TokenStorage``, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


@pytest.fixture
def world(
    issuer: FakeIssuer, permissions_api: FakePermissions, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """(our issuer URL, the MCP server's URL): the service and the example MCP server."""
    mcp_port = free_port()
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"

    def agents(config: dict[str, Any]) -> None:
        config["upstreams"][0]["assertions"] = ["id-jag"]
        config["apis"].append(
            {"audience": mcp_url, "scopes": ["countries:read"], "permissions": "webapp"}
        )
        config["clients"].append(
            {"client_id": "agent", "type": "confidential", "secret_env": "AGENT_SECRET",
             "audiences": [mcp_url], "grant_types": [EXCHANGE, JWT_BEARER]}
        )  # fmt: skip

    sts_url, _, stop = serve_at_issuer(
        issuer.issuer, permissions_api.url, tmp_path, agents, {**ENV, "AGENT_SECRET": SECRET}
    )
    mcp_app = load_example("mcp_server").create_server(sts_url, mcp_url).streamable_http_app()
    server = uvicorn.Server(
        uvicorn.Config(mcp_app, host="127.0.0.1", port=mcp_port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the MCP server did not start"
        time.sleep(0.02)
    try:
        yield sts_url, mcp_url
    finally:
        server.should_exit = True
        thread.join(10)
        stop()


def test_the_mcp_sdk_redeems_an_id_jag_and_calls_the_tool(
    world: tuple[str, str], issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    sts_url, mcp_url = world
    asked: list[tuple[str, str]] = []
    sent: list[tuple[str, str]] = []

    async def id_jag(audience: str, resource: str) -> str:
        # The IdP's leg (out of the SDK's scope): an ID-JAG for this client and this server.
        asked.append((audience, resource))
        return issuer.token(
            headers={"typ": "oauth-id-jag+jwt"}, aud=audience, client_id="agent",
            jti=uuid.uuid4().hex, exp=int(time.time()) + 300, resource=resource,
            scope="countries:read", given_name=None, family_name=None, email=None,
        )  # fmt: skip

    async def run() -> Any:
        auth = IdentityAssertionOAuthProvider(
            server_url=mcp_url,
            storage=Memory(),
            client_id="agent",
            client_secret=SECRET,
            issuer=sts_url,
            assertion_provider=id_jag,
            token_endpoint_auth_method="client_secret_basic",
        )

        async def seen(request: httpx2.Request) -> None:
            sent.append((request.method, str(request.url)))

        async with (
            httpx2.AsyncClient(auth=auth, timeout=10, event_hooks={"request": [seen]}) as http,
            Client(streamable_http_client(mcp_url, http_client=http)) as client,
        ):
            return await client.call_tool("country", {"code": "nl"})

    result = anyio.run(run)
    assert not result.is_error, result
    assert result.structured_content["capital"] == "Amsterdam"
    assert asked == [(sts_url, mcp_url)]
    # The SDK found our token endpoint itself, in our RFC 8414 metadata, after the MCP server's
    # 401, and redeemed the ID-JAG there.
    metadata_url = f"{sts_url}/.well-known/oauth-authorization-server"
    token_url = f"{sts_url}/token"
    assert ("GET", metadata_url) in sent
    assert ("POST", token_url) in sent
    assert sent.index(("GET", metadata_url)) < sent.index(("POST", token_url))
    (question,) = permissions_api.questions
    assert question["grant"] == "jwt-bearer"
    assert question["audience"] == mcp_url
