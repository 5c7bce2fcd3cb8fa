"""The grant (RFC 8693 §2): verify -> policy -> permissions -> mint, without HTTP.

``TokenExchange`` is built from static parts (the upstream's keys in-process, memory stores, the
configuration's static permission source and a recording one) and a clock that stands still, so
every time claim is known to the second.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jwt
import pytest

from token_exchange.config.settings import ClientSettings, Settings
from token_exchange.grant.minting import IssuedToken
from token_exchange.grant.record import RequestRecord
from token_exchange.grant.request import ExchangeRequest, single_values
from token_exchange.grant.rfc8693 import TokenExchange
from token_exchange.oauth.clock import ManualClock
from token_exchange.oauth.errors import (
    InvalidAuthorizationDetails,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    TemporarilyUnavailable,
    UpstreamUnavailable,
)
from token_exchange.sources.keys import MemoryKeyStore
from token_exchange.sources.permissions import Decision, PermissionRequest

from ..fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    JWT_TYPE,
    PROJECTS,
    STS_ISSUER,
    T0,
    TENANT,
    RecordingPermissions,
    TokenMaker,
    audited,
    build_exchange,
    signing_key,
)


def request(token: str, **params: str | Sequence[str]) -> ExchangeRequest:
    """An exchange request of subject ``token`` as the view parses it, for COUNTRIES unless
    ``params`` say otherwise; an empty value counts as omitted."""
    form: dict[str, Any] = {
        "subject_token": token,
        "subject_token_type": ACCESS_TOKEN,
        "audience": COUNTRIES,
        **params,
    }
    return ExchangeRequest.from_form(
        {k: [v] if isinstance(v, str) else list(v) for k, v in form.items()}
    )


def client(settings: Settings, client_id: str = "spa") -> ClientSettings:
    return next(c for c in settings.clients if c.client_id == client_id)


def claims_of(exchange: TokenExchange, issued: IssuedToken) -> dict[str, Any]:
    """The minted token's claims, its signature checked with our published key."""
    header = jwt.get_unverified_header(issued.access_token)
    key = next(k for k in exchange.signer.keys.published() if k.kid == header["kid"])
    assert header["typ"] == "at+jwt"  # RFC 9068 §2.1
    return dict(
        jwt.decode(
            issued.access_token,
            jwt.PyJWK(dict(key.jwk), algorithm=key.alg),
            algorithms=[key.alg],
            audience=COUNTRIES,
            issuer=STS_ISSUER,
            # The clock is fixed; the times are checked exactly below, not against today.
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    )


def test_a_token_is_minted_at_the_clocks_time(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings
) -> None:
    record = RequestRecord()
    issued = exchange.exchange(request(upstream.token()), client(settings), record)
    audit = audited(record)
    claims = claims_of(exchange, issued)
    assert claims["iat"] == T0
    assert claims["exp"] == T0 + settings.signing.token_ttl
    assert issued.expires_in == settings.signing.token_ttl
    assert claims["iss"] == STS_ISSUER
    assert claims["sub"] == "auth0|42"
    assert claims["aud"] == COUNTRIES
    assert claims["client_id"] == "spa"
    assert claims["scope"] == issued.scope == "countries:read countries:write"
    # The API's copy_claims, and what the permissions source decided.
    assert claims["given_name"] == "John"
    assert claims["custom_access_to_countries"] == ["nl"]
    assert issued.issued_token_type == ACCESS_TOKEN
    assert audit == {
        "audience": COUNTRIES,
        "issuer": TENANT,
        "sub": "auth0|42",
        "jti": claims["jti"],
        "kid": jwt.get_unverified_header(issued.access_token)["kid"],
        "scope": claims["scope"],
    }


def test_the_response_is_rfc_8693s(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings
) -> None:
    issued = exchange.exchange(request(upstream.token()), client(settings))
    assert issued.response() == {
        "access_token": issued.access_token,
        "issued_token_type": ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "countries:read countries:write",
    }


def test_the_requested_token_type_is_echoed(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings
) -> None:
    issued = exchange.exchange(
        request(upstream.token(), requested_token_type=JWT_TYPE), client(settings)
    )
    assert issued.issued_token_type == JWT_TYPE


def test_a_minted_token_never_outlives_the_subject_token(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings
) -> None:
    issued = exchange.exchange(request(upstream.token(exp=int(T0) + 100)), client(settings))
    assert issued.expires_in == 100
    assert claims_of(exchange, issued)["exp"] == T0 + 100


def test_the_permissions_question_names_subject_client_audience_and_scopes(
    exchange: TokenExchange,
    upstream: TokenMaker,
    settings: Settings,
    permissions: RecordingPermissions,
) -> None:
    exchange.exchange(
        request(upstream.token(), scope="countries:read", resource=f"{COUNTRIES}/countries/nl"),
        client(settings),
    )
    [question] = permissions.questions
    assert (question.subject, question.issuer, question.client_id, question.audience) == (
        "auth0|42",
        TENANT,
        "spa",
        COUNTRIES,
    )
    assert question.scopes == ("countries:read",)
    assert question.resources == (f"{COUNTRIES}/countries/nl",)
    assert question.valid_until == T0 + 3600


def test_the_permissions_answer_narrows_the_scopes(
    exchange: TokenExchange,
    upstream: TokenMaker,
    settings: Settings,
    permissions: RecordingPermissions,
) -> None:
    permissions.decision = Decision(allow=True, scopes=("countries:read", "countries:admin"))
    issued = exchange.exchange(request(upstream.token()), client(settings))
    assert issued.scope == "countries:read"


def test_a_refusal_from_the_permissions_source_is_invalid_target(
    exchange: TokenExchange,
    upstream: TokenMaker,
    settings: Settings,
    permissions: RecordingPermissions,
) -> None:
    permissions.decision = Decision(allow=False)
    with pytest.raises(InvalidTarget, match="refused"):
        exchange.exchange(request(upstream.token()), client(settings))


def test_a_permissions_source_that_is_down_is_temporarily_unavailable(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings
) -> None:
    class Down:
        def decide(self, request: PermissionRequest) -> Decision:
            raise UpstreamUnavailable("permissions API unreachable", retry_after=7)

    exchange.permission_sources = {**exchange.permission_sources, "webapp": Down()}
    with pytest.raises(TemporarilyUnavailable) as unavailable:
        exchange.exchange(request(upstream.token()), client(settings))
    assert unavailable.value.retry_after == 7


def test_the_static_permission_source_decides_from_the_configuration(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings
) -> None:
    # The projects API's permissions are the configuration's static rules: auth0|42 only.
    issued = exchange.exchange(request(upstream.token(), audience=PROJECTS), client(settings))
    token = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert token["projects"] == [["acme", "web", "editor"]]
    with pytest.raises(InvalidTarget, match="refused"):
        exchange.exchange(
            request(upstream.token(sub="auth0|43"), audience=PROJECTS), client(settings)
        )


def test_a_client_is_refused_an_api_it_may_not_target_before_any_question(
    exchange: TokenExchange,
    upstream: TokenMaker,
    settings: Settings,
    permissions: RecordingPermissions,
) -> None:
    with pytest.raises(InvalidTarget):
        exchange.exchange(request(upstream.token(), audience=PROJECTS), client(settings, "backend"))
    with pytest.raises(InvalidScope):
        exchange.exchange(
            request(upstream.token(), scope="countries:write"), client(settings, "reader")
        )
    assert permissions.questions == []


# -- the subject token, judged at the clock's time ----------------------------------------------


def test_an_expired_subject_token_is_refused(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings, clock: ManualClock
) -> None:
    token = upstream.token()  # valid for an hour from T0
    clock.advance(3600 + 31)  # past exp and the 30 s leeway
    record = RequestRecord()
    with pytest.raises(InvalidRequest, match="subject_token has expired"):
        exchange.exchange(request(token), client(settings), record)
    audit = audited(record)
    assert audit["reason"] == "expired"


def test_a_subject_token_within_the_leeway_mints_nothing_past_its_expiry(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings, clock: ManualClock
) -> None:
    token = upstream.token()
    clock.advance(3600 + 10)  # within the leeway, but the token has expired
    with pytest.raises(InvalidRequest, match="subject_token has expired"):
        exchange.exchange(request(token), client(settings))


def test_a_subject_token_issued_in_the_future_is_refused(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings
) -> None:
    with pytest.raises(InvalidRequest, match="issued in the future"):
        exchange.exchange(request(upstream.token(iat=int(T0) + 120)), client(settings))


def test_a_token_from_an_untrusted_issuer_is_refused_with_its_iss_audited(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings
) -> None:
    record = RequestRecord()
    forged = upstream.token(iss="https://tenant.example.test")  # no trailing slash
    with pytest.raises(InvalidRequest, match="not from a trusted issuer"):
        exchange.exchange(request(forged), client(settings), record)
    audit = audited(record)
    assert audit["reason"] == "issuer_untrusted"
    assert audit["token_iss"] == "https://tenant.example.test"


def test_a_token_for_another_audience_is_refused(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings
) -> None:
    with pytest.raises(InvalidRequest, match="not meant for this audience"):
        exchange.exchange(
            request(upstream.token(aud="https://other.example.test")), client(settings)
        )


def test_a_key_the_issuer_does_not_publish_is_refused(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings, rsa_keys: list[Any]
) -> None:
    unpublished = upstream.add_key(rsa_keys[1], publish=False)
    with pytest.raises(InvalidRequest, match="key the issuer does not publish"):
        exchange.exchange(request(upstream.token(kid=unpublished)), client(settings))


def test_an_issuer_whose_keys_cannot_be_had_is_temporarily_unavailable(
    settings: Settings, upstream: TokenMaker, clock: ManualClock
) -> None:
    class Unreachable:
        loaded = False

        def ensure_loaded(self) -> bool:
            return False

        def find_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
            raise UpstreamUnavailable("JWKS unreachable", retry_after=11)

    exchange = build_exchange(
        settings,
        clock=clock,
        key_sources={TENANT: Unreachable()},
        permission_sources={"webapp": RecordingPermissions()},
    )
    with pytest.raises(TemporarilyUnavailable) as unavailable:
        exchange.exchange(request(upstream.token()), client(settings))
    assert unavailable.value.retry_after == 11


def test_an_actor_token_from_a_client_that_may_not_delegate_is_refused(
    exchange: TokenExchange, upstream: TokenMaker, settings: Settings
) -> None:
    record = RequestRecord()
    with pytest.raises(InvalidRequest, match="may not present an actor_token"):
        exchange.exchange(
            request(upstream.token(), actor_token=upstream.token(), actor_token_type=JWT_TYPE),
            client(settings),
            record,
        )
    audit = audited(record)
    assert audit["reason"] == "delegation_not_allowed"


def test_without_an_active_signing_key_the_grant_is_unavailable(
    settings: Settings, upstream: TokenMaker, clock: ManualClock
) -> None:
    later = MemoryKeyStore([signing_key(now=T0 + 60)], clock=clock)  # not active yet
    exchange = build_exchange(
        settings,
        clock=clock,
        key_sources={TENANT: upstream.key_source()},
        permission_sources={"webapp": RecordingPermissions()},
        keys=later,
    )
    with pytest.raises(TemporarilyUnavailable, match="no signing key"):
        exchange.exchange(request(upstream.token()), client(settings))
    clock.advance(60)
    assert exchange.exchange(request(upstream.token()), client(settings)).expires_in == 300


# -- the request's parameters (RFC 8693 §2.1) -----------------------------------------------------


def test_a_repeated_parameter_is_invalid_request_but_audience_may_repeat() -> None:
    with pytest.raises(InvalidRequest, match="scope must not be repeated"):
        single_values({"scope": ["a", "b"]})
    assert single_values({"audience": ["x", "y"], "scope": ["", "a"]}) == {
        "audience": "x",
        "scope": "a",
    }
    assert single_values({"unknown": ["a", "b"]}) == {}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"subject_token": ""}, "subject_token is required"),
        ({"subject_token_type": ""}, "subject_token_type is required"),
        ({"subject_token_type": "urn:x"}, "subject_token_type must be"),
        ({"actor_token": "t"}, "must be sent together"),
        ({"actor_token_type": ACCESS_TOKEN}, "must be sent together"),
        ({"actor_token": "t", "actor_token_type": "urn:x"}, "actor_token_type must be"),
        (
            {"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
            "refresh tokens are not issued",
        ),
        ({"requested_token_type": "urn:x"}, "requested_token_type must be"),
    ],
)
def test_malformed_requests_are_invalid_request(params: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        request("token", **params)


def test_a_relative_resource_is_invalid_target() -> None:
    with pytest.raises(InvalidTarget):
        request("token", resource="/countries/nl")


def test_authorization_details_must_be_an_array_of_typed_objects() -> None:
    parsed = request("token", authorization_details='[{"type": "country_access"}]')
    assert parsed.authorization_details == ({"type": "country_access"},)
    for bad in ('{"type": "x"}', "[1]", '[{"type": ""}]', "not json", "[" * 10_000):
        with pytest.raises(InvalidAuthorizationDetails):
            request("token", authorization_details=bad)


def test_audiences_and_resources_repeat_without_duplicates() -> None:
    parsed = request("token", audience=[COUNTRIES, COUNTRIES, ""], scope="a a")
    assert parsed.audiences == (COUNTRIES,)
    assert parsed.scopes == ("a",)
