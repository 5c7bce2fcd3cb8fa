"""Run by tests/test_agent_clients.py in LiteLLM's own virtual environment (.cache/litellm):
LiteLLM's MCP gateway obtains a token for an MCP server the way its ``oauth2_token_exchange``
mode does (``outbound_credentials``), twice. Prints one JSON line per exchange.

argv: the JSON of {"token_endpoint", "client_id", "client_secret", "audience", "scopes",
"subject_token", "auth_method"}.
"""

import asyncio
import json
import sys

from litellm.proxy.mcp_server.outbound_credentials.token_exchange_provider import (
    build_token_exchanger,
)
from litellm.proxy.mcp_server.outbound_credentials.types import ServerSpec, TokenExchangeConfig
from pydantic import SecretStr


async def main(args: dict) -> None:
    config = TokenExchangeConfig(
        token_exchange_endpoint=args["token_endpoint"],
        client_id=args["client_id"],
        client_secret=SecretStr(args["client_secret"]),
        audience=args["audience"],
        scopes=tuple(args["scopes"]),
        token_endpoint_auth_method=args["auth_method"],
    )
    spec = ServerSpec(server_id="countries", resource=args["audience"], config=config)
    exchanger = build_token_exchanger()
    for _ in range(2):
        result = await exchanger.exchange(args["subject_token"], spec, config)
        if result.is_ok():
            print(json.dumps({"access_token": result.ok.access_token}), flush=True)
        else:
            print(json.dumps({"error": str(result.error)}), flush=True)


asyncio.run(main(json.loads(sys.argv[1])))
