"""RFC 8707 resource indicators as MCP uses them: a server's canonical URI (lower-case scheme
and host, no default port, no fragment) selects its API, with or without a trailing slash
unless the API says that slash is significant; the minted ``aud`` is the API's identifier."""

from __future__ import annotations

from typing import Any

import pytest

from token_exchange.config.settings import ApiSettings
from token_exchange.grant.policy import api_for_resource
from token_exchange.oauth.uris import canonical_resource

MCP = "https://mcp.example.test/mcp"


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("HTTPS://MCP.Example.TEST/mcp", MCP),
        ("https://mcp.example.test:443/mcp", MCP),
        ("https://mcp.example.test:8443/mcp", "https://mcp.example.test:8443/mcp"),
        ("http://LOCALHOST:80/", "http://localhost/"),
        ("https://mcp.example.test/MCP", "https://mcp.example.test/MCP"),  # the path keeps case
        ("https://[::1]:8443/x?a=1", "https://[::1]:8443/x?a=1"),
        ("urn:example:API", "urn:example:API"),  # no host: as it is
    ],
)
def test_the_canonical_form(value: str, canonical: str) -> None:
    assert canonical_resource(value) == canonical


def api(**fields: Any) -> ApiSettings:
    return ApiSettings.model_validate(
        {"audience": MCP, "scopes": ["tools:call"], "permissions": "web", **fields}
    )


@pytest.mark.parametrize(
    "resource",
    [MCP, "HTTPS://MCP.EXAMPLE.TEST/mcp", f"{MCP}/", "https://mcp.example.test:443/mcp/"],
)
def test_the_servers_uri_in_any_of_its_forms_selects_its_api(resource: str) -> None:
    assert api_for_resource([api()], resource) is not None


@pytest.mark.parametrize(
    "resource",
    [
        "https://mcp.example.test/MCP",
        "https://mcp.example.test/mcp2",
        "https://mcp.example.test.evil/mcp",
        "http://mcp.example.test/mcp",
        "https://mcp.example.test:8443/mcp",
    ],
)
def test_other_uris_select_nothing(resource: str) -> None:
    assert api_for_resource([api()], resource) is None


def test_a_significant_trailing_slash_is_another_resource() -> None:
    strict = api(trailing_slash_significant=True)
    assert api_for_resource([strict], f"{MCP}/") is None
    assert api_for_resource([strict], "HTTPS://MCP.EXAMPLE.TEST/mcp") is strict
