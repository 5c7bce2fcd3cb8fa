"""Delegation in the grant (RFC 8693 §1.1, §4.1, §4.4), in-process: whom the actor token must
be, and the ``act`` and ``may_act`` claims of what is minted. The end-to-end attacks are in
``tests/test_delegation.py``; these are the rules, one at a time."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from token_exchange.config.settings import ClientSettings, ConfigError, Settings, parse_settings
from token_exchange.grant.introspection import OwnKeySource
from token_exchange.grant.record import RequestRecord
from token_exchange.grant.request import ExchangeRequest
from token_exchange.grant.rfc8693 import TokenExchange
from token_exchange.oauth.clock import ManualClock
from token_exchange.oauth.errors import InvalidRequest, InvalidScope
from token_exchange.oauth.profile import MAX_DERIVED_FROM
from token_exchange.sources.keys import MemoryKeyStore

from ..fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    ENV,
    JWT_TYPE,
    TENANT,
    UNREACHABLE_PERMISSIONS,
    RecordingPermissions,
    TokenMaker,
    base_config,
    build_exchange,
    signing_key,
)
from ..test_delegation import SECRETS, with_agents

#: The backend client's own service accounts: its actor tokens are theirs (base_config).
BATCH = "service|batch"


def delegate(subject_token: str, actor_token: str) -> ExchangeRequest:
    return ExchangeRequest.from_form(
        {
            "subject_token": [subject_token],
            "subject_token_type": [ACCESS_TOKEN],
            "actor_token": [actor_token],
            "actor_token_type": [JWT_TYPE],
            "audience": [COUNTRIES],
        }
    )


@pytest.fixture
def backend(settings: Settings) -> ClientSettings:
    backend = next(c for c in settings.clients if c.client_id == "backend")
    assert backend.allow_delegation
    return backend


def minted(exchange: TokenExchange, request: ExchangeRequest, client: ClientSettings) -> Any:
    issued = exchange.exchange(request, client)
    return jwt.decode(issued.access_token, options={"verify_signature": False})


def refusal(
    exchange: TokenExchange, request: ExchangeRequest, client: ClientSettings
) -> dict[str, Any]:
    """The audit fields of a refused delegation (invalid_request)."""
    record = RequestRecord()
    with pytest.raises(InvalidRequest):
        exchange.exchange(request, client, record)
    return record.as_audit()


def reason(exchange: TokenExchange, subject: str, actor: str, client: ClientSettings) -> str:
    """Why the delegation of ``subject`` to ``actor`` is refused: the audit line's reason."""
    return str(refusal(exchange, delegate(subject, actor), client)["reason"])


def test_the_actor_is_stated_in_act(
    exchange: TokenExchange, upstream: TokenMaker, backend: ClientSettings
) -> None:
    claims = minted(exchange, delegate(upstream.token(), upstream.token(sub=BATCH)), backend)
    assert claims["sub"] == "auth0|42"
    # The actor as its own issuer states it (OAuth Actor Profile §3.4: act.iss always).
    assert claims["act"] == {"sub": BATCH, "iss": upstream.issuer}


def test_an_actor_the_client_does_not_own_is_refused(
    exchange: TokenExchange, upstream: TokenMaker, backend: ClientSettings
) -> None:
    audit = refusal(exchange, delegate(upstream.token(), upstream.token(sub="auth0|7")), backend)
    assert audit["reason"] == "condition"
    assert audit["policy"] == "clients.actor_conditions"
    assert audit["claim"] == "sub"


def test_may_act_must_name_the_actor(
    exchange: TokenExchange, upstream: TokenMaker, backend: ClientSettings
) -> None:
    subject = upstream.token(may_act={"sub": "service|other"})
    assert reason(exchange, subject, upstream.token(sub=BATCH), backend) == "may_act"


def test_may_act_naming_the_actor_is_carried_on(
    exchange: TokenExchange, upstream: TokenMaker, backend: ClientSettings
) -> None:
    subject = upstream.token(may_act={"sub": BATCH, "iss": TENANT})
    claims = minted(exchange, delegate(subject, upstream.token(sub=BATCH)), backend)
    assert claims["may_act"] == {"sub": BATCH}


@pytest.mark.parametrize("may_act", ["service|batch", {"iss": TENANT}, {"sub": BATCH, "iss": ""}])
def test_a_malformed_may_act_is_refused(
    exchange: TokenExchange, upstream: TokenMaker, backend: ClientSettings, may_act: Any
) -> None:
    subject = upstream.token(may_act=may_act)
    assert reason(exchange, subject, upstream.token(sub=BATCH), backend) == "may_act"


def test_prior_actors_nest_under_the_new_one(
    exchange: TokenExchange, upstream: TokenMaker, backend: ClientSettings
) -> None:
    subject = upstream.token(act={"sub": "service|other"})
    claims = minted(exchange, delegate(subject, upstream.token(sub=BATCH)), backend)
    # An earlier actor without iss was named in the subject token's issuer's namespace.
    assert claims["act"] == {
        "sub": BATCH, "iss": upstream.issuer,
        "act": {"sub": "service|other", "iss": upstream.issuer},
    }  # fmt: skip


def test_acting_for_oneself_or_in_a_circle_is_refused(
    exchange: TokenExchange, upstream: TokenMaker, backend: ClientSettings
) -> None:
    itself = upstream.token(sub=BATCH)
    assert reason(exchange, itself, upstream.token(sub=BATCH), backend) == "act_cycle"
    circle = upstream.token(act={"sub": BATCH})
    assert reason(exchange, circle, upstream.token(sub=BATCH), backend) == "act_cycle"


def test_a_chain_longer_than_the_client_allows_is_refused(
    exchange: TokenExchange, upstream: TokenMaker, backend: ClientSettings
) -> None:
    act: dict[str, Any] | None = None
    for i in range(backend.max_delegation_depth):  # with the new actor, one too many
        act = {"sub": f"service|hop-{i}", **({"act": act} if act else {})}
    subject = upstream.token(act=act)
    assert reason(exchange, subject, upstream.token(sub=BATCH), backend) == "act_depth"


@pytest.mark.parametrize(
    "act", ["service|other", {"iss": TENANT}, {"sub": ""}, {"sub": "x", "act": []}]
)
def test_a_malformed_act_is_refused_not_dropped(
    exchange: TokenExchange, upstream: TokenMaker, backend: ClientSettings, act: Any
) -> None:
    subject = upstream.token(act=act)
    assert reason(exchange, subject, upstream.token(sub=BATCH), backend) == "act_invalid"


def test_an_act_may_not_name_our_own_issuer_in_another_issuers_token(
    exchange: TokenExchange, upstream: TokenMaker, backend: ClientSettings, settings: Settings
) -> None:
    subject = upstream.token(act={"sub": "x", "iss": settings.issuer})
    assert reason(exchange, subject, upstream.token(sub=BATCH), backend) == "act_invalid"


# -- chained delegation: our own tokens come back (issue 21) -------------------------------------

#: Agents that are APIs as well as clients: a token minted for one (aud = its client_id) is
#: what it receives, and presents back to act for the user downstream (on-behalf-of).
AGENT_A, AGENT_N = "agent-a", "agent-n"
#: An API beside the countries API, with scope names of its own that the agents' APIs share.
API = "https://api.example.test"
#: An API whose own client (it introspects its tokens) may present them back.
REPORTS = "https://reports.example.test"


def agent_app(agent: str) -> str:
    """The sub of an agent's Auth0 client-credentials tokens."""
    return f"{agent}-app@clients"


def chain_config(config: dict[str, Any]) -> None:
    """Our own issuer as an upstream, for the APIs that are agents; agents bound per issuer."""
    config["upstreams"].append(
        {
            "issuer": config["issuer"],
            "audiences": [AGENT_A, AGENT_N, REPORTS],
            "algorithms": ["ES256"],
            "jwks_uri": config["issuer"] + "/.well-known/jwks.json",
        }
    )
    scopes = {"scopes": ["read", "write"], "permissions": "webapp"}
    config["apis"] += [{"audience": a, **scopes} for a in (AGENT_A, AGENT_N, API, REPORTS)]
    config["clients"][0]["audiences"] += [AGENT_A, AGENT_N, REPORTS]  # spa
    agent = {"type": "confidential", "secret_env": "BACKEND_SECRET", "allow_delegation": True}
    config["clients"] += [
        {
            "client_id": a,
            **agent,
            "audiences": [API, COUNTRIES, AGENT_A, AGENT_N],
            "actor_conditions": {"iss": TENANT, "sub": agent_app(a)},
        }
        for a in (AGENT_A, AGENT_N)
    ]
    config["clients"].append(
        {
            "client_id": "reports-api",
            **agent,
            "audiences": [API, AGENT_N],
            "introspects": [REPORTS],
            "actor_conditions": {"iss": TENANT, "sub": agent_app("reports")},
        }
    )


class Chain:
    """The grant with our own issuer as an upstream, and the clients of ``chain_config``."""

    def __init__(self, exchange: TokenExchange, upstream: TokenMaker) -> None:
        self.exchange = exchange
        self.upstream = upstream
        self.settings = exchange.settings

    def client(self, client_id: str) -> ClientSettings:
        return next(c for c in self.settings.clients if c.client_id == client_id)

    def actor(self, agent: str, **claims: Any) -> str:
        """An agent's Auth0 client-credentials token."""
        return self.upstream.token(
            sub=agent_app(agent), azp=f"{agent}-app", gty="client-credentials", **claims
        )

    def request(
        self, subject: str, actor: str | None, audience: str, scope: str | None = None
    ) -> ExchangeRequest:
        form = {"subject_token": [subject], "subject_token_type": [ACCESS_TOKEN]}
        form["audience"] = [audience]
        if actor is not None:
            form |= {"actor_token": [actor], "actor_token_type": [JWT_TYPE]}
        if scope is not None:
            form["scope"] = [scope]
        return ExchangeRequest.from_form(form)

    def mint(
        self,
        client_id: str,
        subject: str,
        actor: str | None,
        audience: str,
        scope: str | None = None,
    ) -> str:
        request = self.request(subject, actor, audience, scope)
        return self.exchange.exchange(request, self.client(client_id)).access_token

    def refusal(
        self, client_id: str, subject: str, actor: str | None, audience: str, **kw: Any
    ) -> dict[str, Any]:
        return refusal(
            self.exchange, self.request(subject, actor, audience, **kw), self.client(client_id)
        )

    def for_agent(self, agent: str, scope: str = "read") -> str:
        """The user's token for the agent's API, as the SPA obtains it (a token of ours)."""
        return self.mint("spa", self.upstream.token(), None, agent, scope)


def claims_of(token: str) -> Any:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.fixture
def chain(
    make_settings: Callable[..., Settings],
    upstream: TokenMaker,
    permissions: RecordingPermissions,
    clock: ManualClock,
) -> Chain:
    settings = make_settings(chain_config)
    keys = MemoryKeyStore([signing_key(now=clock() - 60)], clock=clock)
    exchange = build_exchange(
        settings,
        clock=clock,
        keys=keys,
        key_sources={TENANT: upstream.key_source(), settings.issuer: OwnKeySource(keys)},
        permission_sources={"webapp": permissions},
    )
    return Chain(exchange, upstream)


def test_a_token_of_ours_comes_back_only_from_the_client_its_aud_names(chain: Chain) -> None:
    """Issue 21, 1: agent-n presented a token minted for aud agent-a and got a token for API."""
    for_a = chain.for_agent(AGENT_A)
    audit = chain.refusal(AGENT_N, for_a, chain.actor(AGENT_N), API)
    assert (audit["reason"], audit["parameter"]) == ("chained_token_wrong_client", "subject_token")
    # Nor from the client it was issued to (the SPA is no delegating client anyway): only the
    # API it was minted for holds it by design.
    minted = claims_of(chain.mint(AGENT_A, for_a, chain.actor(AGENT_A), API))
    assert minted["act"] == {"sub": agent_app(AGENT_A), "iss": chain.upstream.issuer}
    assert minted["sub"] == "auth0|42"


def test_an_apis_own_client_may_present_its_tokens_back(chain: Chain) -> None:
    """``introspects`` names the API a client is (README "Revocation and introspection")."""
    for_reports = chain.for_agent(REPORTS)
    minted = claims_of(chain.mint("reports-api", for_reports, chain.actor("reports"), API))
    assert minted["act"] == {"sub": agent_app("reports"), "iss": chain.upstream.issuer}
    refused = chain.refusal(AGENT_A, for_reports, chain.actor(AGENT_A), API)
    assert refused["reason"] == "chained_token_wrong_client"


def test_scopes_narrow_only_against_the_same_apis_scopes(
    chain: Chain, permissions: RecordingPermissions
) -> None:
    """Issue 21, 1: the scope "read" of agent-a's API is not the scope "read" of API."""
    for_a = chain.for_agent(AGENT_A, scope="read")
    # The same API: at most what the token carries.
    record = RequestRecord()
    same = chain.request(for_a, chain.actor(AGENT_A), AGENT_A, scope="write")
    with pytest.raises(InvalidScope):
        chain.exchange.exchange(same, chain.client(AGENT_A), record)
    audit = record.as_audit()
    assert audit["reason"] == "scope_not_carried"
    # Another API: agent-a's scopes say nothing of API's, whatever their names; what the client
    # may ask for and the permissions API decide, as at the first hop.
    minted = chain.mint(AGENT_A, for_a, chain.actor(AGENT_A), API, scope="write")
    assert claims_of(minted)["scope"] == "write"
    assert permissions.questions[-1].scopes == ("write",)
    assert permissions.questions[-1].actor is not None


def test_revoking_a_token_of_ours_deactivates_those_derived_from_it(chain: Chain) -> None:
    """Issue 21, 4: tokens derived by chained exchange lived on to their parent's exp."""
    reports_api, agent_n = chain.client("reports-api"), chain.client(AGENT_N)
    registry = chain.exchange.revocations
    first = chain.for_agent(REPORTS)
    second = chain.mint("reports-api", first, chain.actor("reports"), AGENT_N)
    third = chain.mint(AGENT_N, second, chain.actor(AGENT_N), API)
    jtis = [claims_of(t)["jti"] for t in (first, second, third)]
    # Each names the tokens of ours it was derived from, nearest first.
    assert "derived_from" not in claims_of(first)
    assert claims_of(second)["derived_from"] == jtis[:1]
    assert claims_of(third)["derived_from"] == [jtis[1], jtis[0]]
    assert registry.introspect(third, agent_n)["active"] is True

    registry.revoke(first, reports_api)  # the reports API revokes the token it received
    assert registry.introspect(second, reports_api) == {"active": False}
    assert registry.introspect(third, agent_n) == {"active": False}
    audit = chain.refusal(AGENT_N, second, chain.actor(AGENT_N), API)
    assert (audit["reason"], audit["parameter"]) == ("revoked", "subject_token")
    # Only the revoked token's descendants: another chain of the same user is untouched.
    other = chain.mint("reports-api", chain.for_agent(REPORTS), chain.actor("reports"), AGENT_N)
    assert registry.introspect(chain.mint(AGENT_N, other, chain.actor(AGENT_N), API), agent_n)[
        "active"
    ]


def test_a_client_binding_no_issuer_has_no_actor_tokens_when_several_issuers_are_trusted(
    chain: Chain,
) -> None:
    """Issue 21, 3: the settings refuse such a client; one built some other way is refused
    every actor token, since another issuer's token with the same sub is someone else's."""
    agent_a = chain.client(AGENT_A)
    without_iss = dataclasses.replace(
        agent_a.actor_conditions,
        conditions=tuple(c for c in agent_a.actor_conditions.conditions if c.claim != "iss"),
    )
    unbound = agent_a.model_copy(update={"actor_conditions": without_iss})
    request = chain.request(chain.upstream.token(), chain.actor(AGENT_A), API)
    assert refusal(chain.exchange, request, unbound)["reason"] == "actor_unbound"
    assert claims_of(chain.exchange.exchange(request, agent_a).access_token)["act"]


def test_a_token_derived_from_a_chain_too_long_to_record_is_refused(
    chain: Chain, permissions: RecordingPermissions
) -> None:
    """A dropped ancestor would be a revocation that no longer reaches the token."""
    first = claims_of(chain.for_agent(AGENT_N))
    key = chain.exchange.signer.keys.signing_key()
    long = {**first, "derived_from": [f"j{i}" for i in range(MAX_DERIVED_FROM)]}
    token = jwt.encode(
        long, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"}
    )
    audit = chain.refusal(AGENT_N, token, chain.actor(AGENT_N), API)
    assert audit["reason"] == "derived_too_long"
    malformed = {**first, "derived_from": "j0"}
    token = jwt.encode(
        malformed, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"}
    )
    assert chain.refusal(AGENT_N, token, chain.actor(AGENT_N), API)["reason"] == "invalid_claim"
    assert permissions.questions[-1].audience == AGENT_N  # only the first hop was asked


def test_actor_conditions_that_name_nobody_stop_the_service_from_starting(
    tmp_path: Path,
) -> None:
    # gty alone holds for every client-credentials token of the tenant: agent-n would accept
    # agent-a's token as its own.
    def gty_only(config: dict[str, Any]) -> None:
        config["clients"][-2]["actor_conditions"] = {"gty": "client-credentials"}  # agent-n

    config = base_config(TENANT, UNREACHABLE_PERMISSIONS)
    with_agents(TENANT, gty_only)(config)
    with pytest.raises(ConfigError) as raised:
        parse_settings(config, env={**ENV, **SECRETS}, base_dir=tmp_path)
    (problem,) = raised.value.problems
    assert "must bind the actor tokens of client agent-n to its own identity" in problem
