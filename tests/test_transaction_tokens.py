"""Transaction tokens (draft-ietf-oauth-transaction-tokens-10) at /token, end to end over HTTP:
a workload (private_key_jwt) exchanges a user's Auth0 token or one of our access tokens for a
Txn-Token; the permissions question carries ``"grant": "txn-token"`` and ``request_details``,
its answer's claims become ``tctx``; each refusal; replacement; and the token checked by PyJWT
from our JWKS, as a workload that no one here wrote would."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests

from .fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    GRANT,
    STS_ISSUER,
    ClientAssertions,
    FakeIssuer,
    FakePermissions,
    Sts,
)
from .helpers import assert_error, assert_issued
from .test_operations import audit_lines

TXN_TOKEN = "urn:ietf:params:oauth:token-type:txn_token"
TRUST_DOMAIN = "trust-domain.example"
REFRESH_TOKEN = "urn:ietf:params:oauth:token-type:refresh_token"
BACKEND = {"client_id": "backend", "client_secret": "s3cret-backend-secret"}


@pytest.fixture
def orders() -> ClientAssertions:
    """The workload that asks for Txn-Tokens: the API gateway in front of the orders service."""
    return ClientAssertions("orders-gateway")


@pytest.fixture
def billing() -> ClientAssertions:
    """An internal workload further down the call chain, which replaces Txn-Tokens."""
    return ClientAssertions("billing")


#: The gateway fronts the countries API: the access tokens of ours it presents are that API's.
FRONTS_COUNTRIES = {"orders-gateway": {"introspects": [COUNTRIES]}}


def configure(
    *workloads: ClientAssertions,
    clients: dict[str, dict[str, Any]] | None = None,
    **section: Any,
) -> Callable[[dict[str, Any]], None]:
    """``[transaction_tokens]`` (``section``) and each workload as a private_key_jwt client that
    may ask for Txn-Tokens, with the settings ``clients`` gives it by client_id."""

    def edit(config: dict[str, Any]) -> None:
        config["transaction_tokens"] = {
            "audience": TRUST_DOMAIN,
            "permissions": "webapp",
            **section,
        }
        config["clients"] += [
            {
                "client_id": w.client_id,
                "type": "confidential",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": w.jwks(),
                "transaction_tokens": True,
                **(clients or {}).get(w.client_id, {}),
            }
            for w in workloads
        ]

    return edit


@pytest.fixture
def sts(make_sts: Callable[..., Sts], orders: ClientAssertions, billing: ClientAssertions) -> Sts:
    return make_sts(configure(orders, billing, clients=FRONTS_COUNTRIES))


def txn_request(
    sts: Sts, workload: ClientAssertions | None, subject_token: str | None, **params: Any
) -> requests.Response:
    data: dict[str, Any] = {
        "grant_type": GRANT,
        "requested_token_type": TXN_TOKEN,
        "audience": TRUST_DOMAIN,
        "scope": "countries:read",
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN,
        **(workload.form() if workload is not None else {}),
    }
    data.update(params)
    data = {k: v for k, v in data.items() if v is not None}
    return sts.http.post(f"{sts.url}/token", data=data, timeout=10)


def issued_txn(response: requests.Response) -> dict[str, Any]:
    """A Txn-Token Response (§6.4): N_A, the txn_token type, never a refresh token."""
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "N_A"
    assert body["issued_token_type"] == TXN_TOKEN
    assert "refresh_token" not in body
    return dict(body)


def verify_txn(sts: Sts, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a Txn-Token, verified with PyJWT and our published JWKS, as a
    workload of the trust domain does (§7.2: signature, aud, exp)."""
    header = jwt.get_unverified_header(token)
    jwk = next(k for k in sts.jwks()["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk),
        algorithms=[jwk["alg"]],
        audience=TRUST_DOMAIN,
        options={"require": ["iat", "exp", "aud", "txn", "sub", "scope", "req_wl"]},
    )
    return header, dict(claims)


def user_token(issuer: FakeIssuer, **claims: Any) -> str:
    """An Auth0 access token with the scope the SPA was granted."""
    return issuer.token(**{"scope": "countries:read countries:write openid", **claims})


def test_a_workload_gets_a_txn_token_carrying_the_permissions_answer(
    sts: Sts, issuer: FakeIssuer, orders: ClientAssertions, permissions_api: FakePermissions
) -> None:
    permissions_api.reply(
        {"allow": True, "claims": {"custom_access_to_countries": ["nl", "be"], "tier": "gold"}}
    )
    subject = user_token(issuer)
    response = txn_request(
        sts,
        orders,
        subject,
        request_context=json.dumps({"req_ip": "69.151.72.123", "authn": "face"}),
        request_details=json.dumps({"action": "read", "country": "nl"}),
    )
    body = issued_txn(response)
    assert body["scope"] == "countries:read"
    assert 0 < body["expires_in"] <= 60
    header, claims = verify_txn(sts, body["access_token"])
    assert header["typ"] == "txntoken+jwt"
    assert header["kid"] in {k["kid"] for k in sts.jwks()["keys"]}
    assert claims["aud"] == TRUST_DOMAIN
    assert claims["iss"] == STS_ISSUER
    assert claims["sub"] == "auth0|42"
    assert claims["scope"] == "countries:read"
    assert claims["req_wl"] == "orders-gateway"
    assert claims["exp"] - claims["iat"] == 60
    assert claims["tctx"] == {"custom_access_to_countries": ["nl", "be"], "tier": "gold"}
    assert claims["rctx"] == {"req_ip": "69.151.72.123", "authn": "face", "req_wl_ip": "127.0.0.1"}
    assert len(claims["txn"]) == 36  # a UUID
    # §10.6: never the token it was made from.
    assert subject not in body["access_token"]
    assert subject not in json.dumps(claims)

    (question,) = permissions_api.questions
    assert question["grant"] == "txn-token"
    assert question["audience"] == TRUST_DOMAIN
    assert question["client_id"] == "orders-gateway"
    assert question["scopes"] == ["countries:read"]
    assert question["request_details"] == {"action": "read", "country": "nl"}
    assert question["resources"] == []


def test_each_transaction_has_its_own_txn_and_its_own_question(
    sts: Sts, issuer: FakeIssuer, orders: ClientAssertions, permissions_api: FakePermissions
) -> None:
    subject = user_token(issuer)
    first = issued_txn(txn_request(sts, orders, subject, request_details='{"country":"nl"}'))
    second = issued_txn(txn_request(sts, orders, subject, request_details='{"country":"de"}'))
    _, a = verify_txn(sts, first["access_token"])
    _, b = verify_txn(sts, second["access_token"])
    assert a["txn"] != b["txn"]
    # Other details are another question (never an answer cached for other details).
    assert [q["request_details"] for q in permissions_api.questions] == [
        {"country": "nl"},
        {"country": "de"},
    ]


def test_one_of_our_access_tokens_is_a_subject_token(
    sts: Sts, issuer: FakeIssuer, orders: ClientAssertions
) -> None:
    """The countries API received our at+jwt and asks for a Txn-Token for its internal call."""
    minted = assert_issued(sts.exchange(issuer.token(), scope="countries:read"))["access_token"]
    body = issued_txn(txn_request(sts, orders, minted))
    _, claims = verify_txn(sts, body["access_token"])
    assert claims["sub"] == "auth0|42"
    assert claims["scope"] == "countries:read"
    # It cannot ask for more than the access token carries.
    assert_error(txn_request(sts, orders, minted, scope="countries:write"), 400, "invalid_scope")

    # Revoked, it is no subject any more.
    revoked = sts.http.post(
        f"{sts.url}/revoke",
        data={"token": minted},
        auth=("countries-api", "countries-api-secret"),
        timeout=10,
    )
    assert revoked.status_code == 200
    assert_error(txn_request(sts, orders, minted), 400, "invalid_request")


def test_an_access_token_of_ours_is_only_its_apis_to_present(
    sts: Sts, issuer: FakeIssuer, billing: ClientAssertions
) -> None:
    """Billing fronts no API: an access token of ours for the countries API in its hands was
    handed to it, and would turn that API's token into a transaction anywhere."""
    minted = assert_issued(sts.exchange(issuer.token(), scope="countries:read"))["access_token"]
    body = assert_error(txn_request(sts, billing, minted), 400, "invalid_request")
    assert "not issued for this client" in body["error_description"]


def test_an_agents_token_keeps_its_agent_through_the_call_chain(
    sts: Sts,
    issuer: FakeIssuer,
    orders: ClientAssertions,
    billing: ClientAssertions,
    permissions_api: FakePermissions,
) -> None:
    """A token of ours that an agent got for the user (act): the Txn-Token's question names
    the agent, and the Txn-Token and its replacements carry it, so that the permissions API
    can hold the agent to its limits at every step (not answer as for the user alone)."""
    delegated = assert_issued(
        sts.exchange(
            user_token(issuer),
            scope="countries:read",
            actor_token=issuer.token(sub="service|batch"),
            actor_token_type=ACCESS_TOKEN,
            **BACKEND,
        )
    )["access_token"]
    agent = {"sub": "service|batch", "iss": issuer.issuer}
    assert jwt.decode(delegated, options={"verify_signature": False})["act"] == agent

    first = issued_txn(txn_request(sts, orders, delegated))["access_token"]
    assert permissions_api.questions[-1]["act"] == agent
    assert permissions_api.questions[-1]["grant"] == "txn-token"
    assert verify_txn(sts, first)[1]["act"] == agent

    replaced = issued_txn(replace(sts, billing, first))["access_token"]
    assert permissions_api.questions[-1]["act"] == agent
    assert verify_txn(sts, replaced)[1]["act"] == agent
    # A user's own token has no act, and its Txn-Token none either.
    plain = issued_txn(txn_request(sts, orders, user_token(issuer)))["access_token"]
    assert "act" not in verify_txn(sts, plain)[1]
    assert "act" not in permissions_api.questions[-1]


def test_a_workload_asks_only_for_its_own_scopes(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, orders: ClientAssertions
) -> None:
    sts = make_sts(configure(orders, clients={"orders-gateway": {"scopes": ["countries:read"]}}))
    refused = txn_request(sts, orders, user_token(issuer), scope="countries:read countries:write")
    assert_error(refused, 400, "invalid_scope")
    issued_txn(txn_request(sts, orders, user_token(issuer), scope="countries:read"))


def test_a_dpop_bound_subject_token_needs_a_binding_we_can_read(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, orders: ClientAssertions
) -> None:
    """The API that received a DPoP-bound token checked its proof; presenting it here, that
    API (the workload) authenticates with its own key and cannot prove the user's. A binding
    we cannot read is refused, and an upstream that issues bound tokens only takes no other."""
    sts = make_sts(configure(orders))
    bound = user_token(issuer, cnf={"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"})
    issued_txn(txn_request(sts, orders, bound))
    unreadable = user_token(issuer, cnf={"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"})
    body = assert_error(txn_request(sts, orders, unreadable), 400, "invalid_request")
    assert "cnf" in body["error_description"]

    def bound_only(config: dict[str, Any]) -> None:
        configure(orders)(config)
        config["upstreams"][0]["require_bound_tokens"] = True

    strict = make_sts(bound_only)
    body = assert_error(txn_request(strict, orders, user_token(issuer)), 400, "invalid_request")
    assert "DPoP-bound" in body["error_description"]
    issued_txn(txn_request(strict, orders, bound))


def test_a_txn_token_too_large_for_its_verifiers_is_refused(
    sts: Sts, issuer: FakeIssuer, orders: ClientAssertions, permissions_api: FakePermissions
) -> None:
    """Non-ASCII grows sixfold as JSON escapes: a Txn-Token past what any verifier of ours
    reads is refused here, not left to fail at the first internal service."""
    permissions_api.reply({"allow": True, "claims": {"notes": ["é" * 100] * 30}})
    body = assert_error(txn_request(sts, orders, user_token(issuer)), 400, "invalid_request")
    assert "too large" in body["error_description"]


def test_the_scope_never_exceeds_the_subject_tokens_and_an_unknown_one_is_refused(
    sts: Sts, issuer: FakeIssuer, orders: ClientAssertions, permissions_api: FakePermissions
) -> None:
    wider = txn_request(sts, orders, user_token(issuer, scope="countries:read"), scope="admin")
    assert_error(wider, 400, "invalid_scope")
    unknown = txn_request(sts, orders, issuer.token())  # no scope claim at all
    body = assert_error(unknown, 400, "invalid_scope")
    assert "no scope" in body["error_description"]
    # scp, as Okta and Entra write it, is a known scope.
    issued_txn(txn_request(sts, orders, issuer.token(scp=["countries:read"])))
    # The permissions answer narrows it further, never widens it.
    permissions_api.reply({"allow": True, "scopes": ["countries:read", "admin"]})
    both = txn_request(sts, orders, user_token(issuer), scope="countries:read countries:write")
    assert issued_txn(both)["scope"] == "countries:read"


def test_refusals(
    sts: Sts, issuer: FakeIssuer, orders: ClientAssertions, permissions_api: FakePermissions
) -> None:
    subject = user_token(issuer)
    # audience must be the trust domain.
    assert_error(txn_request(sts, orders, subject, audience=COUNTRIES), 400, "invalid_target")
    assert_error(txn_request(sts, orders, subject, audience=None), 400, "invalid_request")
    assert_error(txn_request(sts, orders, subject, scope=None), 400, "invalid_request")
    # Malformed, oversized or too deeply nested context is invalid_request.
    for bad in ("not json", "[1, 2]", '{"a": NaN}', json.dumps({"x": "y" * 5000}), "[" * 20):
        response = txn_request(sts, orders, subject, request_context=bad)
        assert_error(response, 400, "invalid_request")
        assert_error(txn_request(sts, orders, subject, request_details=bad), 400, "invalid_request")
    deep: Any = {}
    for _ in range(10):
        deep = {"a": deep}
    assert_error(
        txn_request(sts, orders, subject, request_details=json.dumps(deep)), 400, "invalid_request"
    )
    # Refresh tokens are never a subject, and the request takes no actor or resource.
    assert_error(
        txn_request(sts, orders, subject, subject_token_type=REFRESH_TOKEN),
        400,
        "invalid_request",
    )
    assert_error(
        txn_request(sts, orders, subject, resource=f"{COUNTRIES}/countries/nl"),
        400,
        "invalid_request",
    )
    # Hostile subject tokens: garbage, a payload nested past any parser's stack.
    deep_payload = base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode().rstrip("=")
    for garbage in ("a.!!.c", f"eyJhbGciOiJFUzI1NiJ9.{deep_payload}.c", "x" * 20000):
        assert_error(txn_request(sts, orders, garbage), 400, "invalid_request")
    # Expired or forged subject tokens.
    expired = user_token(issuer, exp=int(time.time()) - 120, iat=int(time.time()) - 600)
    assert_error(txn_request(sts, orders, expired), 400, "invalid_request")
    assert_error(txn_request(sts, orders, subject[:-4] + "AAAA"), 400, "invalid_request")
    # A refusal of the permissions API is the exchange's invalid_target.
    permissions_api.reply({"allow": False})
    assert_error(txn_request(sts, orders, subject), 400, "invalid_target")


def test_only_workloads_allowed_may_ask(sts: Sts, issuer: FakeIssuer) -> None:
    subject = user_token(issuer)
    # The SPA (public) and the backend (a secret) are not workloads with transaction_tokens.
    spa = txn_request(sts, None, subject, client_id="spa")
    assert_error(spa, 400, "unauthorized_client")
    backend = txn_request(sts, None, subject, **BACKEND)
    assert_error(backend, 400, "unauthorized_client")
    # An unauthenticated workload.
    stranger = ClientAssertions("orders-gateway")  # its own key, not the registered one
    assert_error(txn_request(sts, stranger, subject), 401, "invalid_client")


def test_without_the_section_no_txn_token_is_issued(
    make_sts: Callable[..., Sts], issuer: FakeIssuer
) -> None:
    sts = make_sts()
    response = txn_request(sts, None, user_token(issuer), **BACKEND)
    assert_error(response, 400, "invalid_request")
    metadata = sts.http.get(f"{sts.url}/.well-known/oauth-authorization-server", timeout=5).json()
    assert TXN_TOKEN not in metadata["requested_token_types_supported"]


def test_the_metadata_lists_the_txn_token_type(sts: Sts) -> None:
    metadata = sts.http.get(f"{sts.url}/.well-known/oauth-authorization-server", timeout=5).json()
    assert TXN_TOKEN in metadata["requested_token_types_supported"]
    assert ACCESS_TOKEN in metadata["requested_token_types_supported"]


# -- replacement (§10.7) ------------------------------------------------------------------------


def replace(
    sts: Sts, workload: ClientAssertions, txn_token: str, **params: Any
) -> requests.Response:
    return txn_request(sts, workload, txn_token, subject_token_type=TXN_TOKEN, **params)


def test_a_replacement_keeps_txn_sub_and_aud_and_extends_the_call_chain(
    sts: Sts,
    issuer: FakeIssuer,
    orders: ClientAssertions,
    billing: ClientAssertions,
    permissions_api: FakePermissions,
) -> None:
    permissions_api.reply({"allow": True, "claims": {"countries": ["nl", "be"], "tier": "gold"}})
    first = issued_txn(
        txn_request(
            sts,
            orders,
            user_token(issuer),
            scope="countries:read countries:write",
            request_context='{"req_ip": "69.151.72.123"}',
        )
    )["access_token"]
    _, original = verify_txn(sts, first)

    # The permissions API narrows what billing may do in this transaction; it cannot add.
    permissions_api.reply(
        {"allow": True, "claims": {"countries": ["be", "fr"], "tier": "platinum", "admin": True}}
    )
    body = issued_txn(
        replace(
            sts,
            billing,
            first,
            scope="countries:read",
            request_context='{"req_ip": "10.0.0.1", "step": "billing"}',
            request_details='{"invoice": 7}',
        )
    )
    _, claims = verify_txn(sts, body["access_token"])
    assert (claims["txn"], claims["sub"], claims["aud"]) == (
        original["txn"],
        original["sub"],
        original["aud"],
    )
    assert claims["scope"] == "countries:read"
    assert claims["req_wl"] == "billing"
    assert claims["req_wl_chain"] == ["orders-gateway"]
    assert claims["tctx"] == {"countries": ["be"], "tier": "gold"}
    # The context asserted at the start stays; a later workload can only add to it.
    assert claims["rctx"] == {**original["rctx"], "step": "billing"}
    assert claims["exp"] <= original["exp"]
    question = permissions_api.questions[-1]
    assert question["grant"] == "txn-token"
    assert question["client_id"] == "billing"
    assert question["subject"] == "auth0|42"
    assert question["subject_claims"]["txn"] == original["txn"]
    assert question["request_details"] == {"invoice": 7}

    # Never wider than the Txn-Token it replaces.
    wider = replace(sts, billing, body["access_token"], scope="countries:write")
    assert_error(wider, 400, "invalid_scope")


def test_a_workloads_subject_conditions_hold_for_the_txn_tokens_it_replaces(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    orders: ClientAssertions,
    billing: ClientAssertions,
) -> None:
    """Billing takes Txn-Tokens that the gateway requested, nobody else's."""
    only_gateway = {"billing": {"subject_conditions": {"req_wl": "orders-gateway"}}}
    sts = make_sts(configure(orders, billing, clients=only_gateway))
    first = issued_txn(txn_request(sts, orders, user_token(issuer)))["access_token"]
    second = issued_txn(replace(sts, billing, first))["access_token"]
    body = assert_error(replace(sts, billing, second), 400, "invalid_request")
    assert "subject_token" in body["error_description"]


def test_replacements_are_limited_and_never_of_an_expired_token(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    orders: ClientAssertions,
    billing: ClientAssertions,
) -> None:
    sts = make_sts(configure(orders, billing, max_replacements=2, token_ttl=2))
    token = issued_txn(txn_request(sts, orders, user_token(issuer)))["access_token"]
    for _ in range(2):
        token = issued_txn(replace(sts, billing, token))["access_token"]
    _, claims = verify_txn(sts, token)
    assert claims["req_wl_chain"] == ["orders-gateway", "billing"]
    refused = assert_error(replace(sts, billing, token), 400, "invalid_request")
    assert "replaced" in refused["error_description"]

    fresh = issued_txn(txn_request(sts, orders, user_token(issuer)))["access_token"]
    time.sleep(2.1)
    assert_error(replace(sts, billing, fresh), 400, "invalid_request")


def test_token_confusion_is_refused(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    orders: ClientAssertions,
    billing: ClientAssertions,
) -> None:
    sts = make_sts(configure(orders, billing))
    txn = issued_txn(txn_request(sts, orders, user_token(issuer)))["access_token"]
    access = assert_issued(sts.exchange(issuer.token(), scope="countries:read"))["access_token"]
    # A Txn-Token is no access token: neither exchanged for one, nor its subject as one.
    assert_error(sts.exchange(txn), 400, "invalid_request")
    assert_error(txn_request(sts, orders, txn), 400, "invalid_request")
    # An access token is no Txn-Token to replace.
    assert_error(replace(sts, billing, access), 400, "invalid_request")
    # A Txn-Token of another trust domain (same keys: another configuration of ours).
    other = make_sts(configure(orders, billing, audience="other-domain.example"))
    foreign = issued_txn(
        txn_request(other, orders, user_token(issuer), audience="other-domain.example")
    )["access_token"]
    assert_error(replace(sts, billing, foreign), 400, "invalid_request")


def test_txn_token_requests_are_audited(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    orders: ClientAssertions,
    billing: ClientAssertions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sts = make_sts(configure(orders, billing, max_replacements=0))
    subject = user_token(issuer)
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        body = issued_txn(txn_request(sts, orders, subject))
        txn_request(sts, orders, subject, scope="admin")
        txn_request(sts, orders, issuer.token())
        txn_request(sts, orders, subject, request_context="[]")
        txn_request(sts, None, subject, **BACKEND)
        replace(sts, billing, body["access_token"])
    issued, *refused = audit_lines(caplog)
    _, claims = verify_txn(sts, body["access_token"])
    assert issued["outcome"] == "issued"
    assert issued["grant"] == "txn-token"
    assert issued["client_id"] == "orders-gateway"
    assert issued["audience"] == TRUST_DOMAIN
    assert issued["txn"] == claims["txn"]
    assert issued["sub"] == "auth0|42"
    assert [line["reason"] for line in refused] == [
        "scope_exceeds_subject",
        "subject_scope_unknown",
        "txn_context_invalid",
        "txn_token_not_allowed",
        "txn_replacements",
    ]
    assert refused[-1]["txn"] == claims["txn"]
    for line in (issued, *refused):
        assert subject not in json.dumps(line)
        assert body["access_token"] not in json.dumps(line)
