"""The token endpoint's pipeline without HTTP (``grant/pipeline.py``): the form, headers and
method in; an issued token and its record, or an OAuth error carrying the record, out. Built
from the unit layer's static grant (``build_exchange``), a memory store and a fixed clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from token_exchange.config.settings import ClientSettings, Settings
from token_exchange.grant.clients import ClientRegistry
from token_exchange.grant.minting import IssuedToken
from token_exchange.grant.pipeline import GrantRegistry, RequestFailed, TokenEndpoint
from token_exchange.grant.ratelimit import RateLimiter
from token_exchange.grant.record import MAX_LOGGED_VALUE, RequestRecord
from token_exchange.grant.rfc8693 import TokenExchange
from token_exchange.oauth.clock import ManualClock
from token_exchange.oauth.dpop import Proof
from token_exchange.oauth.errors import (
    InvalidClient,
    InvalidRequest,
    OAuthError,
    RateLimited,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from token_exchange.sources.store import MemoryStore
from token_exchange.web.app import authorization_server_metadata

from ..fakes import ACCESS_TOKEN, COUNTRIES, GRANT, TENANT, TokenMaker, build_exchange

ADDRESS = "192.0.2.7"


class Echo:
    """A second grant on the pipeline: it issues its parameter ``x`` as the token."""

    grant_type = "urn:example:grant-type:echo"
    parameters = frozenset({"grant_type", "client_id", "x"})

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.issued: list[tuple[str, str, Proof | None]] = []

    def parse(self, form: Mapping[str, Sequence[str]], values: Mapping[str, str]) -> str:
        if "x" not in values:
            raise InvalidRequest("x is required")
        return values["x"]

    def issue(
        self, request: str, client: ClientSettings, proof: Proof | None, record: RequestRecord
    ) -> IssuedToken:
        if self.fail is not None:
            raise self.fail
        self.issued.append((request, client.client_id, proof))
        record.audience, record.scope = "urn:example:echo", "echo"
        return IssuedToken(request, ACCESS_TOKEN, 60, "echo")


def endpoint_of(settings: Settings, clock: ManualClock, *grants: Any) -> TokenEndpoint:
    exchange = next(g for g in grants if isinstance(g, TokenExchange))
    # Every client is registered for every grant here (RFC 7591 grant_types).
    names = tuple(g.grant_type for g in grants)
    clients = [c.model_copy(update={"grant_types": names}) for c in settings.clients]
    return TokenEndpoint(
        GrantRegistry(grants),
        clients=ClientRegistry(clients),
        limiter=RateLimiter(MemoryStore(clock=clock), settings.rate_limits, clock=clock),
        proofs=exchange.proofs,
    )


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
def endpoint(
    settings: Settings, exchange: TokenExchange, echo: Echo, clock: ManualClock
) -> TokenEndpoint:
    return endpoint_of(settings, clock, exchange, echo)


def form(**params: str | list[str]) -> dict[str, list[str]]:
    return {k: v if isinstance(v, list) else [v] for k, v in params.items()}


def exchange_form(token: str, **params: str | list[str]) -> dict[str, list[str]]:
    return form(
        grant_type=GRANT,
        client_id="spa",
        subject_token=token,
        subject_token_type=ACCESS_TOKEN,
        audience=COUNTRIES,
        **params,
    )


def refusal(endpoint: TokenEndpoint, body: Mapping[str, Sequence[str]]) -> OAuthError:
    with pytest.raises(OAuthError) as refused:
        endpoint.token_response(body, {}, "POST", ADDRESS)
    return refused.value


def test_a_token_exchange_is_issued_with_its_record(
    endpoint: TokenEndpoint, upstream: TokenMaker
) -> None:
    issued, record = endpoint.token_response(exchange_form(upstream.token()), {}, "POST", ADDRESS)
    assert issued.scope == "countries:read countries:write"
    assert record.client_id == "spa"
    assert list(record.as_audit()) == [
        "client_id",
        "audience",
        "issuer",
        "sub",
        "jti",
        "kid",
        "scope",
    ]
    assert record.as_audit()["issuer"] == TENANT
    assert record.reason is None


def test_grant_type_picks_the_grant(endpoint: TokenEndpoint, echo: Echo) -> None:
    issued, record = endpoint.token_response(
        form(grant_type=Echo.grant_type, client_id="spa", x="hello"), {}, "POST", ADDRESS
    )
    assert issued.access_token == "hello"
    assert echo.issued == [("hello", "spa", None)]
    assert record.as_audit() == {
        "client_id": "spa",
        "audience": "urn:example:echo",
        "scope": "echo",
    }
    # The endpoint reads every grant's parameters and client authentication's.
    assert {"x", "subject_token", "client_assertion"} <= endpoint.parameters


def test_the_registry_states_the_grant_types_supported(
    endpoint: TokenEndpoint, settings: Settings, exchange: TokenExchange
) -> None:
    assert endpoint.grants.grant_types == [GRANT, Echo.grant_type]
    alone = GrantRegistry([exchange])
    metadata = authorization_server_metadata(settings, alone.grant_types)
    assert metadata["grant_types_supported"] == [GRANT]
    assert authorization_server_metadata(settings) == metadata


def test_the_grant_type_is_required_and_must_be_token_exchange(exchange: TokenExchange) -> None:
    check_grant_type = GrantRegistry([exchange]).select
    check_grant_type({"grant_type": GRANT})
    with pytest.raises(InvalidRequest, match="grant_type is required"):
        check_grant_type({})
    with pytest.raises(UnsupportedGrantType):
        check_grant_type({"grant_type": "client_credentials"})


def test_an_unsupported_grant_type_is_refused_with_the_record(endpoint: TokenEndpoint) -> None:
    error = refusal(endpoint, form(grant_type="client_credentials", client_id="spa"))
    assert isinstance(error, UnsupportedGrantType)
    assert error.description_text == (f"the supported grant types are {GRANT}, {Echo.grant_type}")
    # Dispatch comes before client authentication: the client is only the one it claims.
    assert error.record.as_audit() == {
        "client_id": None,
        "reason": "unsupported_grant_type",
        "attempted_client_id": "spa",
    }


def test_one_grant_alone_names_itself(
    settings: Settings, exchange: TokenExchange, clock: ManualClock
) -> None:
    error = refusal(endpoint_of(settings, clock, exchange), form(grant_type="password"))
    assert error.description_text == f"only the {GRANT} grant type is supported"


def test_a_refused_token_carries_what_the_grant_learnt_and_what_was_asked(
    endpoint: TokenEndpoint, upstream: TokenMaker
) -> None:
    forged = upstream.token(iss="https://tenant.example.test")  # not the trusted issuer
    error = refusal(endpoint, exchange_form(forged, scope="countries:read"))
    assert isinstance(error, InvalidRequest)
    audit = error.record.as_audit()
    assert audit["client_id"] == "spa"
    assert audit["audience"] == COUNTRIES
    assert (audit["reason"], audit["parameter"]) == ("issuer_untrusted", "subject_token")
    assert audit["token_iss"] == "https://tenant.example.test"
    assert audit["requested_audience"] == [COUNTRIES]
    assert audit["requested_scope"] == "countries:read"
    assert "attempted_client_id" not in audit  # the client was authenticated


def test_what_the_caller_wrote_is_logged_cut(endpoint: TokenEndpoint, upstream: TokenMaker) -> None:
    long_scope = "s" * (MAX_LOGGED_VALUE + 50)
    error = refusal(endpoint, exchange_form(upstream.token(), scope=long_scope))
    assert error.record.reason == "unknown_scope"
    assert error.record.requested_scope is not None
    assert len(error.record.requested_scope) < len(long_scope)


def test_a_client_authentication_failure_names_the_client_claimed(
    endpoint: TokenEndpoint,
) -> None:
    error = refusal(endpoint, form(grant_type=Echo.grant_type, client_id="nobody", x="y"))
    assert isinstance(error, InvalidClient)
    audit = error.record.as_audit()
    assert (audit["client_id"], audit["attempted_client_id"]) == (None, "nobody")
    assert audit["reason"] == "unknown_client"
    assert audit["detail"] == error.detail


def test_a_bug_is_no_oauth_error_but_keeps_the_record(
    settings: Settings, exchange: TokenExchange, clock: ManualClock
) -> None:
    endpoint = endpoint_of(settings, clock, exchange, Echo(fail=RuntimeError("bug")))
    with pytest.raises(RequestFailed) as failed:
        endpoint.token_response(
            form(grant_type=Echo.grant_type, client_id="spa", x="y"), {}, "POST", ADDRESS
        )
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert failed.value.record.client_id == "spa"
    assert failed.value.record.reason is None  # the view names it
    assert failed.value.refused("internal_error").as_audit() == {
        "client_id": "spa",
        "reason": "internal_error",
    }


def test_the_form_is_read_only_once_the_address_is_admitted(
    make_settings: Callable[..., Settings], clock: ManualClock, upstream: TokenMaker
) -> None:
    settings = make_settings(
        lambda config: config.update(rate_limits={"failures_per_address": "1/minute"})
    )
    exchange = build_exchange(settings, clock=clock, key_sources={TENANT: upstream.key_source()})
    endpoint = endpoint_of(settings, clock, exchange)
    reads: list[int] = []

    def read() -> dict[str, list[str]]:
        reads.append(1)
        return form(grant_type=GRANT, client_id="nobody")

    with pytest.raises(InvalidClient):  # counts against the address
        endpoint.token_response(read, {}, "POST", ADDRESS)
    with pytest.raises(RateLimited) as limited:
        endpoint.token_response(read, {}, "POST", ADDRESS)
    assert len(reads) == 1
    assert limited.value.record.reason == "rate_limited"


def test_the_dpop_header_is_the_proof(endpoint: TokenEndpoint, upstream: TokenMaker) -> None:
    error = refusal_with_headers(endpoint, exchange_form(upstream.token()), {"DPoP": "not.a.jwt"})
    assert error.error == "invalid_dpop_proof"
    assert error.record.client_id == "spa"
    assert error.record.reason is not None


def refusal_with_headers(
    endpoint: TokenEndpoint, body: Mapping[str, Sequence[str]], headers: Mapping[str, str]
) -> OAuthError:
    with pytest.raises(OAuthError) as refused:
        endpoint.token_response(body, headers, "POST", ADDRESS)
    return refused.value


def test_the_record_logs_client_id_and_what_is_known() -> None:
    record = RequestRecord()
    assert record.as_audit() == {"client_id": None}
    record.would_have_refused("clients.subject_conditions", "gty", "absent")
    record.settle("condition", "first")
    record.settle("other", "second")  # the first reason and detail stay
    assert record.as_audit() == {
        "client_id": None,
        "reason": "condition",
        "would_refuse": [
            {
                "reason": "condition",
                "policy": "clients.subject_conditions",
                "claim": "gty",
                "condition": "absent",
            }
        ],
        "detail": "first",
    }


def test_a_client_uses_only_the_grants_it_is_registered_for(
    settings: Settings, exchange: TokenExchange, echo: Echo, clock: ManualClock
) -> None:
    endpoint = TokenEndpoint(
        GrantRegistry([exchange, echo]),
        clients=ClientRegistry(settings.clients),  # grant_types: token exchange only
        limiter=RateLimiter(MemoryStore(clock=clock), settings.rate_limits, clock=clock),
        proofs=exchange.proofs,
    )
    error = refusal(endpoint, form(grant_type=Echo.grant_type, client_id="spa", x="hello"))
    assert isinstance(error, UnauthorizedClient)
    assert (error.error, error.reason) == ("unauthorized_client", "grant_type_not_allowed")
    assert echo.issued == []
