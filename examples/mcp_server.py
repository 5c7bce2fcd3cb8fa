"""An example MCP server (PyPI ``mcp``, Streamable HTTP) that trusts only tokens minted by
token-exchange for it.

MCP's authorization spec makes an MCP server an OAuth resource server: it publishes RFC 9728
metadata naming its authorization server, takes only tokens whose audience is itself (never the
user's own token passed through), and answers 401 with ``resource_metadata`` and 403
``insufficient_scope``. The ``mcp`` package does the HTTP side (its bearer middleware, the
metadata route, the challenges); ``TokenExchangeVerifier`` plugs ``token_exchange.verify`` into
it, so signature, ``typ: at+jwt``, issuer, audience, expiry and algorithm are checked as for any
downstream API. The token service needs an ``[[apis]]`` entry whose ``audience`` is this
server's URL (its resource identifier).

Run it next to ``token-exchange`` (an API with audience ``http://127.0.0.1:8083/mcp``)::

    python examples/mcp_server.py --sts http://127.0.0.1:8080 --port 8083

Tool ``country(code)`` needs scope ``countries:read`` and ``code`` in the token's
``custom_access_to_countries`` claim: the per-request permissions answer the token carries.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import anyio
from mcp.server import MCPServer
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings

from token_exchange.oauth.errors import UpstreamUnavailable
from token_exchange.verify import InvalidToken, TokenVerifier, scopes_of

log = logging.getLogger("mcp_server")

SCOPE = "countries:read"
COUNTRIES = {
    "nl": {"name": "Netherlands", "capital": "Amsterdam"},
    "de": {"name": "Germany", "capital": "Berlin"},
    "be": {"name": "Belgium", "capital": "Brussels"},
    "fr": {"name": "France", "capital": "Paris"},
}


class TokenExchangeVerifier:
    """``mcp``'s ``TokenVerifier`` protocol over ``token_exchange.verify.TokenVerifier``: the
    claims of a valid token for ``resource``, or None (the middleware answers 401)."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            # verify() may fetch our JWKS (bounded by its timeout): off the event loop.
            claims = await anyio.to_thread.run_sync(self.verifier.verify, token)
        except InvalidToken as e:
            log.info("token refused: %s", e.description)
            return None
        except UpstreamUnavailable:
            # Fail closed: a token that cannot be checked now is not accepted.
            log.warning("token service keys unavailable")
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id", "")),
            scopes=sorted(scopes_of(claims)),
            expires_at=int(claims["exp"]),
            # verify() checked that aud contains this server: report it so the middleware's own
            # resource check (validate_token_resource) agrees.
            resource=self.verifier.audience,
            subject=str(claims["sub"]),
            claims=claims,
        )


def create_server(sts: str, resource: str, *, jwks_uri: str | None = None) -> MCPServer:
    """The MCP server at ``resource`` (its URL, e.g. ``https://mcp.example.com/mcp``), trusting
    tokens of the token exchange service at ``sts`` (keys from its metadata, or ``jwks_uri``)."""
    verifier = TokenExchangeVerifier(
        TokenVerifier(issuer=sts, audience=resource, jwks_uri=jwks_uri)
    )
    server = MCPServer(
        "countries",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=sts,  # type: ignore[arg-type]  # pydantic parses the URL
            resource_server_url=resource,  # type: ignore[arg-type]
            required_scopes=[SCOPE],
            validate_token_resource=True,
        ),
    )

    @server.tool()
    def country(code: str) -> dict[str, Any]:
        """A country the signed-in user may see (by ISO code)."""
        token = get_access_token()
        claims = (token.claims or {}) if token is not None else {}
        if code not in claims.get("custom_access_to_countries", []):
            raise ValueError(f"no access to {code}")
        if code not in COUNTRIES:
            raise ValueError(f"unknown country {code}")
        return {"code": code, **COUNTRIES[code], "viewer": claims["sub"]}

    return server


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sts", default="http://127.0.0.1:8080")
    parser.add_argument("--port", type=int, default=8083)
    parser.add_argument("--resource", help="this server's URL (default: http://127.0.0.1:PORT/mcp)")
    args = parser.parse_args()
    resource = args.resource or f"http://127.0.0.1:{args.port}/mcp"
    app = create_server(args.sts, resource).streamable_http_app()
    uvicorn.run(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
