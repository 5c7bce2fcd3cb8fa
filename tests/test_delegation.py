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

from token_exchange.app import Overrides
from token_exchange.exchange import CHAINED_ONLY
from token_exchange.jwks import KeyNotFound, parse_jwks
from token_exchange.settings import ConfigError
from token_exchange.store import MemoryStore, Store, StoreUnavailable

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
SECRETS = {f"{a.upper().replace('-', '_')}_SECRET": f"{a}-secret-value" for a in AGENTS}


def app_id(agent: str) -> str:
    """The Auth0 application id of an agent's machine-to-machine application."""
    return f"{agent}-app"


def agent_client(agent: str, **extra: Any) -> dict[str, Any]:
    return {
        "client_id": agent,
        "type": "confidential",
        "secret_env": f"{agent.upper().replace('-', '_')}_SECRET",
        "audiences": [COUNTRIES],
        "allow_delegation": True,
        # Its actor tokens are its own Auth0 application's client-credentials tokens.
        "actor_conditions": {"azp": app_id(agent), "gty": "client-credentials"},
        **extra,
    }


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

    def act(self, response: requests.Response) -> Any:
        return self.sts.decode(assert_issued(response)["access_token"]).get("act")


@pytest.fixture
def make_world(make_sts: Callable[..., Sts], issuer: FakeIssuer) -> Callable[..., World]:
    def start(
        edit: Callable[[dict[str, Any]], None] | None = None, *, store: Store | None = None
    ) -> World:
        own = OwnKeys()

        def configure(config: dict[str, Any]) -> None:
            config["clients"].extend(agent_client(a) for a in AGENTS)
            # Chained delegation: our own tokens for the countries API are subject tokens too.
            config["upstreams"].append(
                {
                    "issuer": STS_ISSUER,
                    "audiences": [COUNTRIES],
                    "algorithms": ["ES256"],
                    "jwks_uri": f"{STS_ISSUER}/.well-known/jwks.json",
                }
            )
            if edit:
                edit(config)

        overrides = Overrides(key_sources={STS_ISSUER: own}, store=store)
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
    assert act == {"sub": "agent-a-app@clients"}


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


def test_actor_conditions_that_name_nobody_stop_the_service_from_starting(
    make_world: Callable[..., World],
) -> None:
    # gty alone holds for every client-credentials token of the tenant: agent-n would accept
    # agent-a's token as its own.
    def gty_only(config: dict[str, Any]) -> None:
        config["clients"][-2]["actor_conditions"] = {"gty": "client-credentials"}  # agent-n

    with pytest.raises(ConfigError) as raised:
        make_world(gty_only)
    (problem,) = raised.value.problems
    assert "must bind the actor tokens of client agent-n to its own identity" in problem


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
        config["upstreams"].append(
            {"issuer": other_issuer.issuer, "audiences": [STS_AUDIENCE], "subject_prefix": "us|"}
        )

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
        two_tenants.exchange("agent-a", subject, two_tenants.actor("agent-a", other_issuer)),
        permissions_api,
    )
    assert "may_act" in body["error_description"]
    act = two_tenants.act(two_tenants.exchange("agent-a", subject, two_tenants.actor("agent-a")))
    assert act == {"sub": "eu|agent-a-app@clients"}


def test_may_act_with_iss_names_that_issuer(
    two_tenants: World,
    issuer: FakeIssuer,
    other_issuer: FakeIssuer,
    permissions_api: FakePermissions,
) -> None:
    subject = issuer.token(may_act={"sub": "agent-a-app@clients", "iss": other_issuer.issuer})
    refused(two_tenants.exchange("agent-a", subject, two_tenants.actor("agent-a")), permissions_api)
    act = two_tenants.act(
        two_tenants.exchange("agent-a", subject, two_tenants.actor("agent-a", other_issuer))
    )
    assert act == {"sub": "us|agent-a-app@clients"}


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
    first = assert_issued(world.exchange("agent-a", issuer.token(), world.actor("agent-a")))
    second = world.exchange("agent-n", first["access_token"], world.actor("agent-n"))
    claims = world.sts.decode(assert_issued(second)["access_token"])
    assert claims["sub"] == "auth0|42"  # the same user at every hop
    assert claims["act"] == {"sub": "agent-n-app@clients", "act": {"sub": "agent-a-app@clients"}}


def test_a_circular_chain_is_refused(
    world: World,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = assert_issued(world.exchange("agent-a", issuer.token(), world.actor("agent-a")))
    second = assert_issued(world.exchange("agent-n", first["access_token"], world.actor("agent-n")))
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        # A -> N -> A
        body = refused(
            world.exchange("agent-a", second["access_token"], world.actor("agent-a")),
            permissions_api,
        )
        # A -> A
        refused(
            world.exchange("agent-a", first["access_token"], world.actor("agent-a")),
            permissions_api,
        )
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
    first = assert_issued(world.exchange("agent-a", issuer.token(), world.actor("agent-a")))
    second = assert_issued(world.exchange("agent-n", first["access_token"], world.actor("agent-n")))
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        body = refused(
            world.exchange("agent-x", second["access_token"], world.actor("agent-x")),
            permissions_api,
        )
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
    for i in range(1, 4):
        within = {"sub": f"svc|{i}", "act": within}
    claims = sts.decode(assert_issued(sts.exchange(issuer.token(act=within)))["access_token"])
    assert claims["act"] == within


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
    act = {"sub": "svc|a", "client_id": "x", "act": {"sub": "svc|b", "amr": ["pwd"]}}
    claims = sts.decode(assert_issued(sts.exchange(issuer.token(act=act)))["access_token"])
    assert claims["act"] == {"sub": "svc|a", "act": {"sub": "svc|b"}}


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
    first = assert_issued(world.exchange("agent-a", subject, world.actor("agent-a")))
    claims = world.sts.decode(first["access_token"])
    # In our namespace (the minted token's issuer is us), so it needs no iss.
    assert claims["may_act"] == {"sub": "agent-a-app@clients"}
    permissions_api.questions.clear()
    # The user let agent-a act for them, not whoever agent-a passes the token on to.
    body = refused(
        world.exchange("agent-n", first["access_token"], world.actor("agent-n")), permissions_api
    )
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
    first = assert_issued(world.exchange("agent-a", subject, world.actor("agent-a")))
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        for agent in AGENTS:
            # agent-a is the only actor may_act allows, and it is in the chain already.
            refused(
                world.exchange(agent, first["access_token"], world.actor(agent)), permissions_api
            )
    reasons = [line["reason"] for line in audit_lines(caplog)]
    assert reasons == ["act_cycle", "may_act", "may_act"]
    # Without may_act, the same hop is fine.
    plain = assert_issued(world.exchange("agent-a", issuer.token(), world.actor("agent-a")))
    assert_issued(world.exchange("agent-n", plain["access_token"], world.actor("agent-n")))


def test_may_act_of_another_tenant_keeps_its_issuer(
    two_tenants: World, issuer: FakeIssuer, other_issuer: FakeIssuer
) -> None:
    subject = issuer.token(may_act={"sub": "agent-a-app@clients", "iss": other_issuer.issuer})
    first = two_tenants.exchange("agent-a", subject, two_tenants.actor("agent-a", other_issuer))
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
    first = assert_issued(world.exchange("agent-a", issuer.token(), world.actor("agent-a")))
    second = world.exchange("agent-n", first["access_token"], world.actor("agent-n", other_issuer))
    claims = world.sts.decode(assert_issued(second)["access_token"])
    assert claims["sub"] == "eu|auth0|42"
    assert claims["act"] == {
        "sub": "us|agent-n-app@clients",
        "act": {"sub": "eu|agent-a-app@clients"},
    }
    # The other tenant's agent-a is someone else: no cycle.
    third = world.exchange(
        "agent-a", assert_issued(second)["access_token"], world.actor("agent-a", other_issuer)
    )
    assert world.act(third)["sub"] == "us|agent-a-app@clients"
    permissions_api.questions.clear()
    # The same tenant's agent-a again: A -> N -> A.
    refused(
        world.exchange("agent-a", assert_issued(second)["access_token"], world.actor("agent-a")),
        permissions_api,
    )


def test_an_act_entry_naming_a_configured_issuer_is_stated_in_our_namespace(
    two_tenants: World, issuer: FakeIssuer, other_issuer: FakeIssuer
) -> None:
    act = {
        "sub": "svc",
        "iss": other_issuer.issuer,
        "act": {"sub": "job", "iss": "https://x.test/"},
    }
    body = two_tenants.sts.exchange(issuer.token(act=act))
    assert two_tenants.sts.decode(assert_issued(body)["access_token"])["act"] == {
        "sub": "us|svc",
        "act": {"sub": "job", "iss": "https://x.test/"},
    }


# -- our own tokens as subject tokens: revocation, typ, who may present them, scopes -------------


def first_hop(world: World, issuer: FakeIssuer, **params: Any) -> str:
    """agent-a acting for the user: a token of ours, with act, for the countries API."""
    body = assert_issued(
        world.exchange("agent-a", issuer.token(), world.actor("agent-a"), **params)
    )
    return str(body["access_token"])


def revoke(world: World, token: str) -> None:
    """RFC 7009, by the countries API, which may revoke the tokens for it."""
    response = requests.post(
        f"{world.sts.url}/revoke",
        data={"token": token},
        auth=("countries-api", COUNTRIES_API_SECRET),
        timeout=5,
    )
    assert response.status_code == 200
    introspected = requests.post(
        f"{world.sts.url}/introspect",
        data={"token": token},
        auth=("countries-api", COUNTRIES_API_SECRET),
        timeout=5,
    )
    assert introspected.json() == {"active": False}


def test_a_revoked_token_of_ours_is_no_subject_token(
    world: World,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = first_hop(world, issuer)
    # Accepted, and so remembered as verified: revocation must still stop it at once.
    assert_issued(world.exchange("agent-n", first, world.actor("agent-n")))
    revoke(world, first)
    permissions_api.questions.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        body = refused(world.exchange("agent-n", first, world.actor("agent-n")), permissions_api)
    assert body["error_description"] == "subject_token has been revoked"
    (line,) = audit_lines(caplog)
    assert (line["reason"], line["parameter"]) == ("revoked", "subject_token")
    # Another token of ours is not affected.
    assert_issued(world.exchange("agent-n", first_hop(world, issuer), world.actor("agent-n")))


def test_a_revoked_token_of_ours_is_no_actor_token(
    make_world: Callable[..., World],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def own_tokens_as_actor(config: dict[str, Any]) -> None:
        config["clients"][-1]["actor_conditions"] = {"client_id": "agent-x"}  # agent-x

    world = make_world(own_tokens_as_actor)
    # agent-x's own token from us (its client-credentials token exchanged, no delegation).
    actor = assert_issued(world.exchange("agent-x", world.actor("agent-x"), None))["access_token"]
    act = world.act(world.exchange("agent-x", issuer.token(), actor))
    assert act == {"sub": "agent-x-app@clients"}
    revoke(world, actor)
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
    claims = world.sts.decode(first_hop(world, issuer))
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


def test_a_chained_exchange_only_narrows_the_scopes(
    world: World, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    first = first_hop(world, issuer, scope="countries:read")
    assert world.sts.decode(first)["scope"] == "countries:read"
    wider = world.exchange(
        "agent-n", first, world.actor("agent-n"), scope="countries:read countries:write"
    )
    assert assert_issued(wider)["scope"] == "countries:read"
    assert permissions_api.questions[-1]["scopes"] == ["countries:read"]
    # Scope omitted: what the token carries (of what the client may ask for), no more.
    default = world.exchange("agent-x", first, world.actor("agent-x"))
    assert world.sts.decode(assert_issued(default)["access_token"])["scope"] == "countries:read"
    permissions_api.questions.clear()
    only_more = world.exchange("agent-x", first, world.actor("agent-x"), scope="countries:write")
    assert_error(only_more, 400, "invalid_scope")
    assert permissions_api.questions == []
