"""Published agent clients no one here wrote, against our /token (issue 24, point 4).

kagent's STS client (PyPI ``agentsts-core``) exchanges a user's token with the pod's
service-account token as ``actor_token``, as kagent's agents do; a real Cerbos decides, over
AuthZEN, what the user may do intersected with what the agent may (examples/cerbos/policies).
LiteLLM's MCP gateway (PyPI ``litellm``, its ``oauth2_token_exchange`` mode, in its own virtual
environment) exchanges the user's token as the gateway client, the permissions API deciding per
user and per client.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agentsts.core import STSIntegrationBase, TokenType
from agentsts.core.client import TokenExchangeError
from werkzeug.wrappers import Response

from .cerbos import CerbosProcess
from .fakes import COUNTRIES, ENV, STS_AUDIENCE, FakeIssuer, FakePermissions, Sts, quick_server
from .litellm_env import ROOT, litellm_python
from .test_authzen import ALICE, BOB, PREFIX, authzen_source
from .test_workload_actors import SERVICE_ACCOUNT, service_account_token

SECRET = "kagent-secret-value"
OTHER_AGENT = "system:serviceaccount:agents:other"


@pytest.fixture
def kagent_sts(make_sts: Callable[..., Sts], cluster: FakeIssuer, cerbos: CerbosProcess) -> Sts:
    def edit(config: dict[str, Any]) -> None:
        config["upstreams"][0]["subject_prefix"] = "eu|"
        config["upstreams"].append(
            {
                "issuer": cluster.issuer, "audiences": [STS_AUDIENCE], "subject_prefix": "k8s|",
                "actor_only": True,
            }
        )  # fmt: skip
        config["clients"].append(
            {
                "client_id": "kagent", "type": "confidential", "secret_env": "KAGENT_SECRET",
                "audiences": [COUNTRIES], "allow_delegation": True,
                "actor_conditions": {
                    "iss": cluster.issuer, "sub": [SERVICE_ACCOUNT, OTHER_AGENT],
                    "/kubernetes.io/namespace": "agents",
                },
                "actor_sub_profile": "ai_agent",
                "require_actor_token": True,
            }
        )  # fmt: skip
        config["permissions"]["pdp"] = authzen_source(cerbos.url)
        config["apis"][0]["permissions"] = "pdp"

    return make_sts(edit, env={**ENV, "KAGENT_SECRET": SECRET})


@pytest.fixture
def well_known(kagent_sts: Sts) -> Iterator[str]:
    """Our metadata where the agent finds it, its token_endpoint on the loopback address the
    service listens on (as an ingress would publish it)."""
    metadata = kagent_sts.http.get(
        f"{kagent_sts.url}/.well-known/oauth-authorization-server", timeout=5
    ).json()
    metadata["token_endpoint"] = f"{kagent_sts.url}/token"
    server = quick_server()
    server.expect_request("/.well-known/oauth-authorization-server").respond_with_handler(
        lambda _: Response(json.dumps(metadata), content_type="application/json")
    )
    yield server.url_for("/.well-known/oauth-authorization-server")
    server.clear()
    server.stop()


def kagent_exchange(
    well_known: str, tmp_path: Path, user_token: str, service_account: str, country: str
) -> str:
    """What a kagent agent does per call: its service-account token (read from the projected
    token file) acts for the user whose token it holds."""
    token_file = tmp_path / "token"
    token_file.write_text(service_account + "\n")
    sts = STSIntegrationBase(well_known, service_account_token_path=str(token_file))

    async def exchange() -> str:
        try:
            return await sts.exchange_token(
                user_token,
                actor_token=sts._actor_token,  # as agentsts-adk's plugin passes it
                actor_token_type=TokenType.JWT,
                audience=COUNTRIES,
                resource=PREFIX + country,
                scope="countries:read countries:write",
                # agentsts sends no client authentication of its own: client_secret_post.
                additional_parameters={"client_id": "kagent", "client_secret": SECRET},
            )
        finally:
            await sts.sts_client.close()

    return asyncio.run(exchange())


@pytest.mark.parametrize(
    ("user", "agent", "country", "granted"),
    [
        # Alice may read nl, de and be; the summarizer reads nl and fr: she gets nl through it.
        (ALICE, SERVICE_ACCOUNT, "nl", ["nl"]),
        (ALICE, SERVICE_ACCOUNT, "de", None),
        # Bob may read fr only; through the summarizer, fr.
        (BOB, SERVICE_ACCOUNT, "fr", ["fr"]),
        # Another agent of the same namespace may read nothing, whoever it acts for.
        (ALICE, OTHER_AGENT, "nl", None),
    ],
)
def test_kagents_sts_client_gets_the_user_intersected_with_the_agent(
    kagent_sts: Sts,
    issuer: FakeIssuer,
    cluster: FakeIssuer,
    well_known: str,
    tmp_path: Path,
    user: str,
    agent: str,
    country: str,
    granted: list[str] | None,
) -> None:
    user_token = issuer.token(sub=user)
    service_account = service_account_token(cluster, sub=agent)
    if granted is None:
        with pytest.raises(TokenExchangeError) as refused:
            kagent_exchange(well_known, tmp_path, user_token, service_account, country)
        assert refused.value.error in ("invalid_target", "invalid_scope")
        return
    token = kagent_exchange(well_known, tmp_path, user_token, service_account, country)
    claims = kagent_sts.decode(token)
    assert claims["sub"] == f"eu|{user}"
    assert claims["act"] == {"sub": agent, "iss": cluster.issuer, "sub_profile": "ai_agent"}
    # Write is the user's alone: an agent never gets it, even for Alice.
    assert claims["scope"] == "countries:read"
    assert claims["custom_access_to_countries"] == granted


def test_without_an_agent_the_user_gets_what_the_user_may(
    kagent_sts: Sts, issuer: FakeIssuer
) -> None:
    response = kagent_sts.exchange(
        issuer.token(sub=ALICE), resource=PREFIX + "de", scope="countries:read countries:write"
    )
    claims = kagent_sts.decode(response.json()["access_token"])
    assert (claims["scope"], claims["custom_access_to_countries"]) == (
        "countries:read countries:write",
        ["de"],
    )


# -- LiteLLM's MCP gateway, in its oauth2_token_exchange mode -----------------------------------

GATEWAY_SECRET = "litellm-gateway-secret"
#: What the gateway may obtain for anyone (its own grant), and what each user may.
GATEWAY_COUNTRIES = {"nl", "de"}
USER_COUNTRIES = {"auth0|alice": {"nl", "be"}, "auth0|bob": {"be"}}


@pytest.fixture
def gateway_sts(make_sts: Callable[..., Sts], permissions_api: FakePermissions) -> Sts:
    def decide(question: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        # Per user and per agent: this user's countries, intersected with this client's.
        allowed = USER_COUNTRIES.get(question["subject"], set())
        if question["client_id"] == "litellm":
            allowed = allowed & GATEWAY_COUNTRIES
        if not allowed:
            return 200, {"allow": False}, {}
        return 200, {"allow": True, "claims": {"custom_access_to_countries": sorted(allowed)}}, {}

    permissions_api.answer = decide

    def edit(config: dict[str, Any]) -> None:
        config["clients"].append(
            {
                "client_id": "litellm", "type": "confidential", "secret_env": "LITELLM_SECRET",
                "token_endpoint_auth_method": "client_secret_basic", "audiences": [COUNTRIES],
            }
        )  # fmt: skip

    return make_sts(edit, env={**ENV, "LITELLM_SECRET": GATEWAY_SECRET})


def litellm_exchanges(python: Path, sts: Sts, subject_token: str) -> list[dict[str, Any]]:
    args = {
        "token_endpoint": f"{sts.url}/token", "client_id": "litellm",
        "client_secret": GATEWAY_SECRET, "audience": COUNTRIES, "scopes": ["countries:read"],
        "subject_token": subject_token, "auth_method": "client_secret_basic",
    }  # fmt: skip
    done = subprocess.run(
        [str(python), str(ROOT / "tests" / "interop" / "litellm_exchange.py"), json.dumps(args)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_litellms_mcp_gateway_gets_a_downscoped_token_per_user_and_agent(
    gateway_sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    python, why = litellm_python()
    if python is None:
        pytest.skip(why)
    alice = litellm_exchanges(python, gateway_sts, issuer.token(sub="auth0|alice"))
    assert len(alice) == 2
    assert alice[0] == alice[1]  # the second from LiteLLM's cache
    claims = gateway_sts.decode(alice[0]["access_token"])
    assert (claims["sub"], claims["client_id"], claims["scope"]) == (
        "auth0|alice", "litellm", "countries:read",
    )  # fmt: skip
    # Alice may read nl and be; through the gateway, nl.
    assert claims["custom_access_to_countries"] == ["nl"]
    assert [q["client_id"] for q in permissions_api.questions] == ["litellm"]
    # Bob may read be only, which the gateway may not: refused, and LiteLLM says so.
    bob = litellm_exchanges(python, gateway_sts, issuer.token(sub="auth0|bob"))
    assert all("error" in outcome for outcome in bob), bob
