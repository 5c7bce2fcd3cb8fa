"""Delegation in the grant (RFC 8693 §1.1, §4.1, §4.4), in-process: whom the actor token must
be, and the ``act`` and ``may_act`` claims of what is minted. The end-to-end attacks are in
``tests/test_delegation.py``; these are the rules, one at a time."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from token_exchange.errors import InvalidRequest
from token_exchange.exchange import ExchangeRequest, TokenExchange
from token_exchange.settings import ClientSettings, Settings

from ..fakes import ACCESS_TOKEN, COUNTRIES, JWT_TYPE, TENANT, TokenMaker

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
    audit: dict[str, Any] = {}
    with pytest.raises(InvalidRequest):
        exchange.exchange(request, client, audit)
    return audit


def reason(exchange: TokenExchange, subject: str, actor: str, client: ClientSettings) -> str:
    """Why the delegation of ``subject`` to ``actor`` is refused: the audit line's reason."""
    return str(refusal(exchange, delegate(subject, actor), client)["reason"])


def test_the_actor_is_stated_in_act(
    exchange: TokenExchange, upstream: TokenMaker, backend: ClientSettings
) -> None:
    claims = minted(exchange, delegate(upstream.token(), upstream.token(sub=BATCH)), backend)
    assert claims["sub"] == "auth0|42"
    # An actor of a configured issuer is in our namespace: its sub alone.
    assert claims["act"] == {"sub": BATCH}


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
    assert claims["act"] == {"sub": BATCH, "act": {"sub": "service|other"}}


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
