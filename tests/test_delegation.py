"""Delegation (RFC 8693 §1.1, §4.1, §4.4) as an attacker tries it, over real HTTP.

The holes a third-party attack suite found: actor tokens not bound to the client presenting
them, ``may_act`` without ``iss`` matching anyone of any issuer, and chained delegation through
our own tokens accepting cycles, never refusing long chains and losing ``may_act``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from token_exchange.grant.trust import CHAINED_ONLY, NOT_FOR_CLIENT
from token_exchange.oauth.jose import KeyNotFound, parse_jwks
from token_exchange.sources.store import MemoryStore, Store, StoreUnavailable
from token_exchange.web.app import Overrides

from .fakes import (
    ACCESS_TOKEN,
    BACKEND_SECRET,
    COUNTRIES,
    COUNTRIES_API_SECRET,
    ENV,
    PROJECTS,
    STS_AUDIENCE,
    STS_ISSUER,
    FakeIssuer,
    FakePermissions,
    Sts,
    quick_server,
)
from .helpers import assert_error, assert_issued
from .test_operations import audit_lines

AGENTS = ("agent-a", "agent-n", "agent-x")
#: The same agents' applications in another tenant (``two_tenants``): clients of their own.
AGENTS_US = ("agent-a-us", "agent-n-us")
SECRETS = {
    f"{a.upper().replace('-', '_')}_SECRET": f"{a}-secret-value" for a in (*AGENTS, *AGENTS_US)
}
#: The scopes of an agent's own API (an agent is an API as well as a client: a token minted
#: for it has aud = its client_id, and it presents that token back to act downstream).
TASK_SCOPES = ["task:read", "task:write"]


def app_id(agent: str) -> str:
    """The Auth0 application id of an agent's machine-to-machine application."""
    return f"{agent.removesuffix('-us')}-app"


def agent_client(agent: str, issuer: str, **extra: Any) -> dict[str, Any]:
    return {
        "client_id": agent,
        "type": "confidential",
        "secret_env": f"{agent.upper().replace('-', '_')}_SECRET",
        "audiences": [COUNTRIES, *AGENTS],
        "allow_delegation": True,
        # Its actor tokens are its own Auth0 application's client-credentials tokens, of the
        # one issuer; sub is what act states.
        "actor_conditions": {
            "iss": issuer,
            "azp": app_id(agent),
            "sub": f"{app_id(agent)}@clients",
            "gty": "client-credentials",
        },
        **extra,
    }


def agent_api(agent: str) -> dict[str, Any]:
    return {"audience": agent, "scopes": TASK_SCOPES, "permissions": "webapp"}


class OwnKeys:
    """Our own JWKS as the key source of our own issuer configured as an upstream.

    Read from the service's key store in-process: a key source that called the service itself
    over HTTP without a guard would hold the request's CPU gate while waiting for itself.
    """

    def __init__(self) -> None:
        self.keys: Any = None

    @property
    def loaded(self) -> bool:
        return True

    def ensure_loaded(self) -> bool:
        return True

    def find_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        document = {"keys": [dict(k.jwk) for k in self.keys.published()]}
        key = parse_jwks(document, [alg]).find(kid, alg)
        if key is None:
            raise KeyNotFound(kid)
        return key


class World:
    def __init__(self, sts: Sts, issuer: FakeIssuer) -> None:
        self.sts = sts
        self.issuer = issuer

    def actor(self, agent: str, issuer: FakeIssuer | None = None, **claims: Any) -> str:
        """An agent's Auth0 client-credentials token."""
        return (issuer or self.issuer).token(
            sub=f"{app_id(agent)}@clients",
            azp=app_id(agent),
            gty="client-credentials",
            given_name=None,
            family_name=None,
            email=None,
            **claims,
        )

    def exchange(
        self, agent: str, subject_token: str, actor_token: str | None, **params: Any
    ) -> requests.Response:
        return self.sts.exchange(
            subject_token,
            client_id=agent,
            client_secret=f"{agent}-secret-value",
            actor_token=actor_token,
            actor_token_type=ACCESS_TOKEN if actor_token else None,
            **params,
        )

    def decode(self, token: str) -> dict[str, Any]:
        """A minted token verified as the API it names (its aud) would."""
        return self.sts.decode(
            token, audience=jwt.decode(token, options={"verify_signature": False})["aud"]
        )

    def act(self, response: requests.Response) -> Any:
        return self.decode(assert_issued(response)["access_token"]).get("act")

    def to(self, agent: str, subject_token: str, actor: str, audience: str, **params: Any) -> str:
        """``agent``, acting with its own actor token, passes the task on to ``audience``."""
        response = self.exchange(agent, subject_token, actor, audience=audience, **params)
        return str(assert_issued(response)["access_token"])


def with_agents(
    issuer: str, edit: Callable[[dict[str, Any]], None] | None = None
) -> Callable[[dict[str, Any]], None]:
    """The config edit of this file's world: the agents as clients and APIs, then ``edit``."""

    def configure(config: dict[str, Any]) -> None:
        config["clients"].extend(agent_client(a, issuer) for a in AGENTS)
        config["apis"].extend(agent_api(a) for a in AGENTS)
        config["clients"][0]["audiences"] += AGENTS  # spa
        # Chained delegation: our own tokens for the agents' APIs are subject tokens too
        # (and those for the countries API, which no client may present back).
        config["upstreams"].append(
            {
                "issuer": STS_ISSUER,
                "audiences": [COUNTRIES, *AGENTS],
                "algorithms": ["ES256"],
                "jwks_uri": f"{STS_ISSUER}/.well-known/jwks.json",
            }
        )
        if edit:
            edit(config)

    return configure


@pytest.fixture
def make_world(make_sts: Callable[..., Sts], issuer: FakeIssuer) -> Callable[..., World]:
    def start(
        edit: Callable[[dict[str, Any]], None] | None = None, *, store: Store | None = None
    ) -> World:
        own = OwnKeys()
        overrides = Overrides(key_sources={STS_ISSUER: own}, store=store)
        configure = with_agents(issuer.issuer, edit)
        sts = make_sts(configure, env={**ENV, **SECRETS}, overrides=overrides)
        own.keys = sts.services.keys
        return World(sts, issuer)

    return start


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def refused(response: requests.Response, permissions_api: FakePermissions) -> dict[str, Any]:
    body = assert_error(response, 400, "invalid_request")
    assert permissions_api.questions == [], "no permission question for a refused delegation"
    return body


# -- actor tokens are bound to the client presenting them ----------------------------------------


def test_an_agent_acts_with_its_own_token(world: World, issuer: FakeIssuer) -> None:
    act = world.act(world.exchange("agent-a", issuer.token(), world.actor("agent-a")))
    # The actor as its issuer names it (OAuth Actor Profile §3.4: act.iss always).
    assert act == {"sub": "agent-a-app@clients", "iss": issuer.issuer}


def test_the_permissions_api_learns_who_acts_and_answers_per_agent(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    """Issue 24, 1: the actor (its issuer, subject, client and claims) and the act chain the
    token will carry are in the question; an answer for one agent is never another's."""
    permissions_api.reply({"allow": True, "ttl": 60})
    user = issuer.token()
    assert_issued(world.exchange("agent-a", user, world.actor("agent-a")))
    (question,) = permissions_api.questions
    actor = question["actor"]
    assert (actor["issuer"], actor["subject"]) == (issuer.issuer, "agent-a-app@clients")
    assert actor["client_id"] == "agent-a-app"  # the actor token's azp
    assert actor["claims"]["gty"] == "client-credentials"
    assert question["act"] == {"sub": "agent-a-app@clients", "iss": issuer.issuer}
    assert_issued(world.exchange("agent-a", user, world.actor("agent-a")))
    assert len(permissions_api.questions) == 1  # the same user and agent: answered before
    assert_issued(world.exchange("agent-n", user, world.actor("agent-n")))
    assert len(permissions_api.questions) == 2  # another agent: asked again
    assert permissions_api.questions[1]["actor"]["client_id"] == "agent-n-app"


def test_another_agents_token_is_not_an_actor_token(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    # agent-n holds agent-a's token (leaked, or passed to it): it cannot act as agent-a.
    body = refused(
        world.exchange("agent-n", issuer.token(), world.actor("agent-a")), permissions_api
    )
    assert body["error_description"] == "actor_token is not acceptable (policy)"


def test_the_users_own_token_is_not_an_actor_token(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    user = issuer.token(sub="alice-app", azp="spa-app")
    refused(world.exchange("agent-n", user, user), permissions_api)
    refused(world.exchange("agent-n", issuer.token(), user), permissions_api)


def test_may_act_does_not_let_another_client_present_the_named_actor(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    subject = issuer.token(may_act={"sub": "agent-a-app@clients"})
    refused(world.exchange("agent-n", subject, world.actor("agent-a")), permissions_api)
    assert_issued(world.exchange("agent-a", subject, world.actor("agent-a")))


def test_actor_refusal_is_audited(
    world: World, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        world.exchange("agent-n", issuer.token(), world.actor("agent-a"))
    (line,) = audit_lines(caplog)
    assert line["reason"] == "condition"
    assert line["policy"] == "clients.actor_conditions"
    assert line["parameter"] == "actor_token"
    assert (line["claim"], line["condition"]) == ("azp", "equals")
    assert line["client_id"] == "agent-n"
    assert line["actor"] == "agent-a-app@clients"
    assert line["sub"] == "auth0|42"


def test_actor_conditions_in_audit_mode(
    make_world: Callable[..., World], issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    def audit_only(config: dict[str, Any]) -> None:
        config["clients"][-1]["actor_conditions_mode"] = "audit"  # agent-x

    world = make_world(audit_only)
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        assert_issued(world.exchange("agent-x", issuer.token(), world.actor("agent-a")))
    (line,) = audit_lines(caplog)
    assert line["would_refuse"][0]["policy"] == "clients.actor_conditions"


def test_a_client_may_not_delegate_without_allow_delegation(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    response = world.sts.exchange(
        issuer.token(), actor_token=world.actor("agent-a"), actor_token_type=ACCESS_TOKEN
    )
    refused(response, permissions_api)


# -- may_act compares (issuer, sub) --------------------------------------------------------------


@pytest.fixture
def other_issuer(rsa_keys: list[rsa.RSAPrivateKey]) -> Iterator[FakeIssuer]:
    server = quick_server()
    yield FakeIssuer(server, rsa_keys[1:])
    server.clear()
    server.stop()


@pytest.fixture
def two_tenants(make_world: Callable[..., World], other_issuer: FakeIssuer) -> World:
    def second_tenant(config: dict[str, Any]) -> None:
        config["upstreams"][0]["subject_prefix"] = "eu|"
        config["upstreams"][-1]["audiences"] += AGENTS_US  # ours
        config["upstreams"].append(
            {"issuer": other_issuer.issuer, "audiences": [STS_AUDIENCE], "subject_prefix": "us|"}
        )
        # The agents' applications in the other tenant are other clients: one issuer each.
        config["clients"].extend(agent_client(a, other_issuer.issuer) for a in AGENTS_US)
        config["apis"].extend(agent_api(a) for a in AGENTS_US)
        for client in config["clients"]:
            if client["client_id"] in (*AGENTS, *AGENTS_US):
                client["audiences"] = [*client["audiences"], *AGENTS_US]

    return make_world(second_tenant)


def test_may_act_without_iss_means_the_subject_tokens_issuer(
    two_tenants: World,
    issuer: FakeIssuer,
    other_issuer: FakeIssuer,
    permissions_api: FakePermissions,
) -> None:
    subject = issuer.token(may_act={"sub": "agent-a-app@clients"})
    # The other tenant's agent-a-app@clients is someone else, whatever its sub says.
    body = refused(
        two_tenants.exchange("agent-a-us", subject, two_tenants.actor("agent-a-us", other_issuer)),
        permissions_api,
    )
    assert "may_act" in body["error_description"]
    act = two_tenants.act(two_tenants.exchange("agent-a", subject, two_tenants.actor("agent-a")))
    assert act == {"sub": "agent-a-app@clients", "iss": issuer.issuer}


def test_may_act_with_iss_names_that_issuer(
    two_tenants: World,
    issuer: FakeIssuer,
    other_issuer: FakeIssuer,
    permissions_api: FakePermissions,
) -> None:
    subject = issuer.token(may_act={"sub": "agent-a-app@clients", "iss": other_issuer.issuer})
    refused(two_tenants.exchange("agent-a", subject, two_tenants.actor("agent-a")), permissions_api)
    act = two_tenants.act(
        two_tenants.exchange("agent-a-us", subject, two_tenants.actor("agent-a-us", other_issuer))
    )
    assert act == {"sub": "agent-a-app@clients", "iss": other_issuer.issuer}


@pytest.mark.parametrize(
    "may_act",
    [
        "agent-a-app@clients",
        {"iss": "x"},
        {"sub": 7},
        {"sub": "a", "iss": 7},
        [],
        # An empty iss would be our namespace: agent-a-app@clients of any configured issuer.
        {"sub": "agent-a-app@clients", "iss": ""},
    ],
)
def test_a_malformed_may_act_is_refused(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions, may_act: Any
) -> None:
    refused(
        world.exchange("agent-a", issuer.token(may_act=may_act), world.actor("agent-a")),
        permissions_api,
    )


# -- chained delegation through our own tokens ---------------------------------------------------


def test_chained_delegation_nests_the_actors(world: World, issuer: FakeIssuer) -> None:
    # agent-a passes the task on to agent-n: a token for agent-n's API, which agent-n presents.
    first = world.to("agent-a", issuer.token(), world.actor("agent-a"), "agent-n")
    second = world.exchange("agent-n", first, world.actor("agent-n"))
    claims = world.sts.decode(assert_issued(second)["access_token"])
    assert claims["sub"] == "auth0|42"  # the same user at every hop
    assert claims["act"] == {
        "sub": "agent-n-app@clients", "iss": issuer.issuer,
        "act": {"sub": "agent-a-app@clients", "iss": issuer.issuer},
    }  # fmt: skip


def test_a_circular_chain_is_refused(
    world: World,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = world.to("agent-a", issuer.token(), world.actor("agent-a"), "agent-n")
    second = world.to("agent-n", first, world.actor("agent-n"), "agent-a")
    itself = world.to("agent-a", issuer.token(), world.actor("agent-a"), "agent-a")
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        # A -> N -> A
        body = refused(world.exchange("agent-a", second, world.actor("agent-a")), permissions_api)
        # A -> A
        refused(world.exchange("agent-a", itself, world.actor("agent-a")), permissions_api)
    assert body["error_description"] == "the delegation chain (act) is circular"
    assert [line["reason"] for line in audit_lines(caplog)] == ["act_cycle", "act_cycle"]


def test_acting_for_oneself_is_a_cycle(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    agent = world.actor("agent-a")
    refused(world.exchange("agent-a", agent, agent), permissions_api)


def test_a_chain_longer_than_the_limit_is_refused(
    make_world: Callable[..., World],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def short_chains(config: dict[str, Any]) -> None:
        config["clients"][-1]["max_delegation_depth"] = 2  # agent-x

    world = make_world(short_chains)
    first = world.to("agent-a", issuer.token(), world.actor("agent-a"), "agent-n")
    second = world.to("agent-n", first, world.actor("agent-n"), "agent-x")
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        body = refused(world.exchange("agent-x", second, world.actor("agent-x")), permissions_api)
    assert (
        body["error_description"] == "the delegation chain (act) is longer than this client allows"
    )
    (line,) = audit_lines(caplog)
    assert line["reason"] == "act_depth"


def test_a_subject_tokens_deep_act_is_refused_not_cut(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    # Before, the chain was silently cut at 10 levels, dropping the earliest actors.
    act: dict[str, Any] = {"sub": "svc|0"}
    for i in range(1, 12):
        act = {"sub": f"svc|{i}", "act": act}
    refused(sts.exchange(issuer.token(act=act)), permissions_api)
    within: dict[str, Any] = {"sub": "svc|0"}
    stated: dict[str, Any] = {"sub": "svc|0", "iss": issuer.issuer}
    for i in range(1, 4):
        within = {"sub": f"svc|{i}", "act": within}
        stated = {"sub": f"svc|{i}", "iss": issuer.issuer, "act": stated}
    claims = sts.decode(assert_issued(sts.exchange(issuer.token(act=within)))["access_token"])
    assert claims["act"] == stated


@pytest.mark.parametrize(
    "act",
    [
        {"sub": 5},
        {"client_id": "agent-a-app"},  # no sub
        {"sub": ""},
        {"sub": "agent-a-app@clients", "iss": 7},
        {"sub": "agent-a-app@clients", "iss": ""},  # our namespace, by another name
        "agent-a-app@clients",
        ["agent-a-app@clients"],
        [{"sub": "agent-a-app@clients"}],
        5,
        True,
        {},
        # Malformed deeper down.
        {"sub": "svc|a", "act": "svc|b"},
        {"sub": "svc|a", "act": {"sub": ["svc|b"]}},
        {"sub": "svc|a", "act": {"sub": "svc|b", "act": {"iss": "https://x.test/"}}},
    ],
)
def test_a_malformed_act_is_refused_not_dropped(
    sts: Sts,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
    act: Any,
) -> None:
    # Before, each of these was a 200 with no act at all: the actors vanished.
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        body = refused(sts.exchange(issuer.token(act=act)), permissions_api)
    assert body["error_description"] == "subject_token has an invalid act claim"
    (line,) = audit_lines(caplog)
    assert (line["reason"], line["parameter"]) == ("act_invalid", "subject_token")


def test_an_act_naming_our_issuer_is_refused_in_another_issuers_token(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    # Auth0 cannot say that one of ours acted: our namespace is ours to state.
    for act in (
        {"sub": "agent-a-app@clients", "iss": STS_ISSUER},
        {"sub": "svc|a", "act": {"sub": "agent-a-app@clients", "iss": STS_ISSUER}},
    ):
        refused(world.sts.exchange(issuer.token(act=act)), permissions_api)
        refused(
            world.exchange("agent-n", issuer.token(act=act), world.actor("agent-n")),
            permissions_api,
        )


def test_an_act_member_other_than_an_identity_is_ignored(sts: Sts, issuer: FakeIssuer) -> None:
    act = {
        "sub": "svc|a", "client_id": "x",
        "act": {
            "sub": "svc|b", "amr": ["pwd"], "sub_profile": "ai_agent",
            "act": {"sub": "svc|c", "sub_profile": "device"},  # no actor's kind: left out
        },
    }  # fmt: skip
    claims = sts.decode(assert_issued(sts.exchange(issuer.token(act=act)))["access_token"])
    # Identities, each with the issuer it is read in, and the kind an earlier hop stated.
    assert claims["act"] == {
        "sub": "svc|a", "iss": issuer.issuer,
        "act": {
            "sub": "svc|b", "iss": issuer.issuer, "sub_profile": "ai_agent",
            "act": {"sub": "svc|c", "iss": issuer.issuer},
        },
    }  # fmt: skip


def test_a_subject_tokens_act_with_a_cycle_is_refused(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    refused(
        sts.exchange(issuer.token(act={"sub": "svc|a", "act": {"sub": "svc|a"}})), permissions_api
    )
    refused(sts.exchange(issuer.token(act={"sub": "auth0|42"})), permissions_api)


def test_may_act_is_carried_on_to_the_next_hop(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    subject = issuer.token(may_act={"sub": "agent-a-app@clients"})
    first = world.to("agent-a", subject, world.actor("agent-a"), "agent-n")
    claims = world.decode(first)
    # In our namespace (the minted token's issuer is us), so it needs no iss.
    assert claims["may_act"] == {"sub": "agent-a-app@clients"}
    permissions_api.questions.clear()
    # The user let agent-a act for them, not whoever agent-a passes the token on to.
    body = refused(world.exchange("agent-n", first, world.actor("agent-n")), permissions_api)
    assert "may_act" in body["error_description"]


def test_may_act_ends_the_chain(
    world: World,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Deliberate, documented (README "Delegation"): the user named who may act for them; a
    token minted from it cannot be delegated any further, by anyone."""
    subject = issuer.token(may_act={"sub": "agent-a-app@clients"})
    first = {a: world.to("agent-a", subject, world.actor("agent-a"), a) for a in AGENTS}
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        for agent in AGENTS:
            # agent-a is the only actor may_act allows, and it is in the chain already.
            refused(world.exchange(agent, first[agent], world.actor(agent)), permissions_api)
    reasons = [line["reason"] for line in audit_lines(caplog)]
    assert reasons == ["act_cycle", "may_act", "may_act"]
    # Without may_act, the same hop is fine.
    plain = world.to("agent-a", issuer.token(), world.actor("agent-a"), "agent-n")
    assert_issued(world.exchange("agent-n", plain, world.actor("agent-n")))


def test_may_act_of_another_tenant_keeps_its_issuer(
    two_tenants: World, issuer: FakeIssuer, other_issuer: FakeIssuer
) -> None:
    subject = issuer.token(may_act={"sub": "agent-a-app@clients", "iss": other_issuer.issuer})
    first = two_tenants.exchange(
        "agent-a-us", subject, two_tenants.actor("agent-a-us", other_issuer)
    )
    claims = two_tenants.sts.decode(assert_issued(first)["access_token"])
    assert claims["may_act"] == {"sub": "us|agent-a-app@clients"}
    assert claims["sub"] == "eu|auth0|42"


def test_chains_compare_identities_across_tenants(
    two_tenants: World,
    issuer: FakeIssuer,
    other_issuer: FakeIssuer,
    permissions_api: FakePermissions,
) -> None:
    world = two_tenants
    first = world.to("agent-a", issuer.token(), world.actor("agent-a"), "agent-n-us")
    us_n = world.actor("agent-n-us", other_issuer)
    second = world.to("agent-n-us", first, us_n, "agent-a-us")
    claims = world.decode(second)
    assert claims["sub"] == "eu|auth0|42"
    assert claims["act"] == {
        "sub": "agent-n-app@clients", "iss": other_issuer.issuer,
        "act": {"sub": "agent-a-app@clients", "iss": issuer.issuer},
    }  # fmt: skip
    # The other tenant's agent-a is someone else: no cycle.
    third = world.exchange("agent-a-us", second, world.actor("agent-a-us", other_issuer))
    assert world.act(third)["sub"] == "agent-a-app@clients"
    assert world.act(third)["iss"] == other_issuer.issuer
    # The same tenant's agent-a again: A -> N -> A.
    back = world.to("agent-n-us", first, us_n, "agent-a")
    permissions_api.questions.clear()
    refused(world.exchange("agent-a", back, world.actor("agent-a")), permissions_api)


def test_an_act_entry_naming_a_configured_issuer_keeps_its_issuer(
    two_tenants: World, issuer: FakeIssuer, other_issuer: FakeIssuer
) -> None:
    act = {
        "sub": "svc",
        "iss": other_issuer.issuer,
        "act": {"sub": "job", "iss": "https://x.test/"},
    }
    body = two_tenants.sts.exchange(issuer.token(act=act))
    assert two_tenants.sts.decode(assert_issued(body)["access_token"])["act"] == {
        "sub": "svc",
        "iss": other_issuer.issuer,
        "act": {"sub": "job", "iss": "https://x.test/"},
    }


# -- our own tokens as subject tokens: revocation, typ, who may present them, scopes -------------


def first_hop(world: World, issuer: FakeIssuer, **params: Any) -> str:
    """agent-a acting for the user, passing the task on: a token of ours, with act, for
    agent-n's API (agent-n alone may present it back)."""
    return world.to("agent-a", issuer.token(), world.actor("agent-a"), "agent-n", **params)


def revoke(world: World, token: str, client: str = "countries-api") -> None:
    """RFC 7009, by ``client``: by default the countries API, which may revoke the tokens for
    it; an agent may revoke the tokens issued to it."""
    secret = COUNTRIES_API_SECRET if client == "countries-api" else f"{client}-secret-value"
    before = requests.post(
        f"{world.sts.url}/introspect", data={"token": token}, auth=(client, secret), timeout=5
    )
    assert before.json()["active"] is True, "a token the client may revoke"
    response = requests.post(
        f"{world.sts.url}/revoke", data={"token": token}, auth=(client, secret), timeout=5
    )
    assert response.status_code == 200
    introspected = requests.post(
        f"{world.sts.url}/introspect", data={"token": token}, auth=(client, secret), timeout=5
    )
    assert introspected.json() == {"active": False}


def test_a_token_of_ours_comes_back_only_from_the_client_its_aud_names(
    world: World,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 21, 1: agent-n presented a token we minted for aud agent-a (scope read) and got a
    read token for another API."""
    for_a = assert_issued(world.sts.exchange(issuer.token(), audience="agent-a", scope="task:read"))
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        for agent in ("agent-n", "agent-x"):
            body = refused(
                world.exchange(agent, for_a["access_token"], world.actor(agent)), permissions_api
            )
            assert body["error_description"] == NOT_FOR_CLIENT
    assert {line["reason"] for line in audit_lines(caplog)} == {"chained_token_wrong_client"}
    # agent-a, whose API it was minted for, acts for the user downstream.
    act = world.act(world.exchange("agent-a", for_a["access_token"], world.actor("agent-a")))
    assert act == {"sub": "agent-a-app@clients", "iss": issuer.issuer}


def test_revoking_a_token_of_ours_deactivates_the_tokens_derived_from_it(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    """Issue 21, 4: tokens derived by chained exchange lived on to their parent's exp."""
    first = first_hop(world, issuer)
    second = world.to("agent-n", first, world.actor("agent-n"), "agent-x")
    third = assert_issued(world.exchange("agent-x", second, world.actor("agent-x")))
    revoke(world, first, "agent-a")
    for client, token in (("agent-n", second), ("countries-api", third["access_token"])):
        secret = COUNTRIES_API_SECRET if client == "countries-api" else f"{client}-secret-value"
        response = requests.post(
            f"{world.sts.url}/introspect", data={"token": token}, auth=(client, secret), timeout=5
        )
        assert response.json() == {"active": False}, client
    permissions_api.questions.clear()
    body = refused(world.exchange("agent-x", second, world.actor("agent-x")), permissions_api)
    assert body["error_description"] == "subject_token has been revoked"


def test_a_revoked_token_of_ours_is_no_subject_token(
    world: World,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = first_hop(world, issuer)
    # Accepted, and so remembered as verified: revocation must still stop it at once.
    assert_issued(world.exchange("agent-n", first, world.actor("agent-n")))
    revoke(world, first, "agent-a")
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        body = refused(world.exchange("agent-n", first, world.actor("agent-n")), permissions_api)
    assert body["error_description"] == "subject_token has been revoked"
    (line,) = audit_lines(caplog)
    assert (line["reason"], line["parameter"]) == ("revoked", "subject_token")
    # Another token of ours is not affected.
    assert_issued(world.exchange("agent-n", first_hop(world, issuer), world.actor("agent-n")))


def test_an_actor_token_that_acts_for_someone_else_is_refused(
    make_world: Callable[..., World],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OAuth Actor Profile §6.5.2: an actor token carrying act is refused, its chain never
    merged; here it would make Bob, for whom agent-x acted, the actor for Alice."""

    def own_tokens_as_actor(config: dict[str, Any]) -> None:
        config["clients"][-1]["actor_conditions"] = {"iss": STS_ISSUER, "client_id": "agent-x"}

    world = make_world(own_tokens_as_actor)
    own = assert_issued(world.exchange("agent-x", world.actor("agent-x"), None, audience="agent-x"))
    for_bob = world.exchange("agent-x", issuer.token(sub="auth0|bob"), own["access_token"])
    for_bob_token = assert_issued(for_bob)["access_token"]
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        body = refused(world.exchange("agent-x", issuer.token(), for_bob_token), permissions_api)
    assert body["error_description"] == "actor_token is itself delegated (act)"
    (line,) = audit_lines(caplog)
    assert (line["reason"], line["parameter"]) == ("actor_delegated", "actor_token")


def test_a_revoked_token_of_ours_is_no_actor_token(
    make_world: Callable[..., World],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def own_tokens_as_actor(config: dict[str, Any]) -> None:
        # agent-x's tokens of ours (issued to it), not another issuer's with that client_id.
        config["clients"][-1]["actor_conditions"] = {"iss": STS_ISSUER, "client_id": "agent-x"}

    world = make_world(own_tokens_as_actor)
    # agent-x's own token from us (its client-credentials token exchanged, no delegation).
    own = world.exchange("agent-x", world.actor("agent-x"), None, audience="agent-x")
    actor = assert_issued(own)["access_token"]
    acting = assert_issued(world.exchange("agent-x", issuer.token(), actor))["access_token"]
    claims = world.decode(acting)
    # An actor token of ours: its sub is in our namespace.
    assert claims["act"] == {"sub": "agent-x-app@clients", "iss": STS_ISSUER}
    # Derived from the actor token too: revoking it deactivates this one (issue 21, 4).
    assert claims["derived_from"] == [world.decode(actor)["jti"]]
    revoke(world, actor, "agent-x")
    response = requests.post(
        f"{world.sts.url}/introspect",
        data={"token": acting},
        auth=("agent-x", "agent-x-secret-value"),
        timeout=5,
    )
    assert response.json() == {"active": False}
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        body = refused(world.exchange("agent-x", issuer.token(), actor), permissions_api)
    assert body["error_description"] == "actor_token has been revoked"
    (line,) = audit_lines(caplog)
    assert (line["reason"], line["parameter"]) == ("revoked", "actor_token")


class RevocationsUnreadable(MemoryStore):
    """A store whose revocation entries cannot be read while ``down``."""

    down = False

    def get(self, key: str) -> bytes | None:
        if self.down and key.startswith("revoked:"):
            raise StoreUnavailable("down")
        return super().get(key)


def test_a_token_of_ours_is_refused_503_while_revocations_cannot_be_read(
    make_world: Callable[..., World], issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    store = RevocationsUnreadable()
    world = make_world(store=store)
    first = first_hop(world, issuer)
    store.down = True
    permissions_api.questions.clear()
    response = world.exchange("agent-n", first, world.actor("agent-n"))
    # Fail closed: not knowing whether it is revoked is not knowing that it is not.
    assert_error(response, 503, "temporarily_unavailable")
    assert int(response.headers["Retry-After"]) >= 1
    assert permissions_api.questions == []
    # Exchanges that need no revocation state go on.
    assert_issued(world.exchange("agent-n", issuer.token(), world.actor("agent-n")))
    store.down = False
    assert_issued(world.exchange("agent-n", first, world.actor("agent-n")))


@pytest.mark.parametrize(
    ("header", "drop", "reason"),
    [
        ({"typ": "JWT"}, None, "type"),
        ({}, None, "type"),  # no typ at all
        ({"typ": "at+jwt"}, "jti", "missing_claim"),  # nothing to look its revocation up by
    ],
)
def test_a_token_of_ours_must_be_an_rfc9068_access_token(
    world: World,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
    header: dict[str, str],
    drop: str | None,
    reason: str,
) -> None:
    # Signed with our own key, for an audience our own issuer's upstream entry accepts, but
    # not one of our access tokens (an ID token, say, or a token for another purpose).
    claims = world.decode(first_hop(world, issuer))
    claims.pop(drop or "", None)
    key = world.sts.services.keys.signing_key()
    # PyJWT writes typ: JWT unless told otherwise; None leaves typ out.
    headers = {"kid": key.kid, **(header or {"typ": None})}
    forged = jwt.encode(claims, key.private_key, algorithm=key.alg, headers=headers)
    assert jwt.get_unverified_header(forged).get("typ") == header.get("typ")
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        refused(world.exchange("agent-n", forged, world.actor("agent-n")), permissions_api)
    (line,) = audit_lines(caplog)
    assert line["reason"] == reason


def test_a_token_of_ours_is_no_subject_token_for_a_client_that_may_not_delegate(
    world: World,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Whoever holds a token we minted (the API it was sent to, say) names the public client
    # spa and asks for it anew: for more scopes, or for another API.
    delegated = first_hop(world, issuer)
    own = assert_issued(world.sts.exchange(issuer.token(), scope="countries:read"))
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        for token in (delegated, own["access_token"]):
            for params in ({}, {"scope": "countries:read countries:write"}, {"audience": PROJECTS}):
                body = refused(world.sts.exchange(token, **params), permissions_api)
                assert body["error_description"] == CHAINED_ONLY
    reasons = {line["reason"] for line in audit_lines(caplog)}
    assert reasons == {"chained_token_not_allowed"}


def test_a_token_of_ours_needs_an_actor_token_even_from_a_delegating_client(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    # Without one, agent-n would get a token saying agent-a acts, for agent-n.
    first = first_hop(world, issuer)
    permissions_api.questions.clear()
    body = refused(world.exchange("agent-n", first, None), permissions_api)
    assert body["error_description"] == CHAINED_ONLY


def test_a_client_credentials_token_is_not_laundered_through_a_token_of_ours(
    make_world: Callable[..., World], issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    def spa_refuses_m2m(config: dict[str, Any]) -> None:
        config["clients"][0]["subject_conditions"] = {"gty": {"absent": True}}  # spa

    world = make_world(spa_refuses_m2m)
    m2m = issuer.token(sub="evil-app@clients", azp="evil-app", gty="client-credentials")
    refused(world.sts.exchange(m2m), permissions_api)
    # The backend may exchange it; the token we mint has no gty any more.
    minted = assert_issued(
        world.sts.exchange(m2m, client_id="backend", client_secret=BACKEND_SECRET)
    )["access_token"]
    assert "gty" not in world.sts.decode(minted)
    permissions_api.questions.clear()
    body = refused(world.sts.exchange(minted), permissions_api)
    assert body["error_description"] == CHAINED_ONLY
    refused(
        world.sts.exchange(minted, client_id="backend", client_secret=BACKEND_SECRET),
        permissions_api,
    )


def test_a_chained_exchange_for_the_same_api_only_narrows_the_scopes(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    first = first_hop(world, issuer, scope="task:read")
    assert world.decode(first)["scope"] == "task:read"
    n = {"audience": "agent-n"}  # agent-n's own API again: its scopes compare with the token's
    wider = world.exchange(
        "agent-n", first, world.actor("agent-n"), scope=" ".join(TASK_SCOPES), **n
    )
    assert assert_issued(wider)["scope"] == "task:read"
    assert permissions_api.questions[-1]["scopes"] == ["task:read"]
    # Scope omitted: what the token carries (of what the client may ask for), no more.
    default = world.exchange("agent-n", first, world.actor("agent-n"), **n)
    assert world.decode(assert_issued(default)["access_token"])["scope"] == "task:read"
    permissions_api.questions.clear()
    only_more = world.exchange("agent-n", first, world.actor("agent-n"), scope="task:write", **n)
    assert_error(only_more, 400, "invalid_scope")
    assert permissions_api.questions == []


def test_a_chained_exchange_for_another_api_is_decided_by_the_permissions_api(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    """Issue 21, 1: scopes of agent-n's API bound nothing of the countries API's by name."""
    first = first_hop(world, issuer, scope="task:read")
    downstream = world.exchange("agent-n", first, world.actor("agent-n"), scope="countries:write")
    assert assert_issued(downstream)["scope"] == "countries:write"
    question = permissions_api.questions[-1]
    assert (question["audience"], question["scopes"]) == (COUNTRIES, ["countries:write"])
    assert question["actor"]["subject"] == "agent-n-app@clients"
    permissions_api.reply({"allow": True, "scopes": ["countries:read"]})
    narrowed = world.exchange("agent-n", first, world.actor("agent-n"))
    assert assert_issued(narrowed)["scope"] == "countries:read"
