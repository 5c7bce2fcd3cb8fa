"""Why a request was refused, as the audit log says: one ``reason`` per refusal, from the one
list (``token_exchange.oauth.reasons``), over real HTTP; and what every ``invalid_client`` tells the
caller (the same text, whatever went wrong)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import requests

from token_exchange.oauth.errors import INVALID_CLIENT_DESCRIPTION
from token_exchange.oauth.reasons import REASONS
from token_exchange.sources.keys import KeyStoreError
from token_exchange.sources.store import StoreUnavailable

from .fakes import (
    ACCESS_TOKEN,
    BACKEND_SECRET,
    COUNTRIES,
    COUNTRIES_API_SECRET,
    GRANT,
    PROJECTS,
    DpopKey,
    FakeIssuer,
    FakePermissions,
    Sts,
)
from .helpers import assert_error
from .test_clients import _basic
from .test_operations import audit_lines

Run = Callable[[Sts, FakeIssuer, FakePermissions, pytest.MonkeyPatch], requests.Response]


@dataclass(frozen=True)
class Case:
    """A request refused for one reason: its answer's status and error, and how to send it."""

    status: int
    error: str
    run: Run
    edit: Callable[[dict[str, Any]], None] | None = None
    #: The audit event of the refusal (``/token``'s unless said otherwise).
    event: str = "token_exchange"
    detail: str | None = None


def _post(sts: Sts, data: Any, **kwargs: Any) -> requests.Response:
    return requests.post(f"{sts.url}/token", data=data, timeout=10, **kwargs)


def _rate_limited(sts: Sts, issuer: FakeIssuer, *_: Any) -> requests.Response:
    sts.exchange(issuer.token())
    return sts.exchange(issuer.token())


def _no_signing_key(
    sts: Sts, issuer: FakeIssuer, _: Any, monkeypatch: pytest.MonkeyPatch
) -> requests.Response:
    def sign(claims: Any, **header: Any) -> Any:
        raise KeyStoreError("no key")

    monkeypatch.setattr(sts.services.exchange.signer, "sign", sign)
    return sts.exchange(issuer.token())


def _a_bug(
    sts: Sts, issuer: FakeIssuer, _: Any, monkeypatch: pytest.MonkeyPatch
) -> requests.Response:
    def exchange(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sts.services.exchange, "issue", exchange)  # the grant the endpoint calls
    return sts.exchange(issuer.token())


def _revocation_unrecorded(
    sts: Sts, issuer: FakeIssuer, _: Any, monkeypatch: pytest.MonkeyPatch
) -> requests.Response:
    token = sts.exchange(issuer.token()).json()["access_token"]

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("down")

    monkeypatch.setattr(sts.services.tokens.store, "set", unavailable)
    return requests.post(
        f"{sts.url}/revoke",
        data={"token": token},
        auth=("countries-api", COUNTRIES_API_SECRET),
        timeout=10,
    )


def _reader_may_ask_for_projects(config: dict[str, Any]) -> None:
    config["clients"][3]["audiences"].append(PROJECTS)  # with none of its scopes


def _per_subject(config: dict[str, Any]) -> None:
    config["rate_limits"] = {"per_subject": "1/minute"}


def _dpop_required(config: dict[str, Any]) -> None:
    config["clients"][0]["dpop"] = "required"


def _replayed_proof(sts: Sts, issuer: FakeIssuer, *_: Any) -> requests.Response:
    proof = DpopKey().proof()
    sts.exchange(issuer.token(), headers={"DPoP": proof})
    return sts.exchange(issuer.token(), headers={"DPoP": proof})


def _proof_without_ath(sts: Sts, issuer: FakeIssuer, *_: Any) -> requests.Response:
    key = DpopKey()
    return sts.exchange(issuer.token(cnf={"jkt": key.jkt}), headers={"DPoP": key.proof()})


def _bound_tokens_only(config: dict[str, Any]) -> None:
    config["upstreams"][0]["require_bound_tokens"] = True


#: One refused request per reason: every code but those in COVERED_ELSEWHERE.
CASES: dict[str, Case] = {
    # -- the request
    "content_type": Case(400, "invalid_request", lambda s, *_: _post(s, "{}", headers={
        "Content-Type": "application/json"})),
    "parameters_in_url": Case(400, "invalid_request", lambda s, i, *_: requests.post(
        f"{s.url}/token?subject_token=x", data={"grant_type": GRANT}, timeout=10)),
    "parameter_missing": Case(400, "invalid_request", lambda s, *_: s.exchange(None)),
    "parameter_repeated": Case(400, "invalid_request", lambda s, i, *_: _post(s, [
        ("grant_type", GRANT), ("client_id", "spa"), ("subject_token", i.token()),
        ("subject_token_type", ACCESS_TOKEN), ("audience", COUNTRIES),
        ("scope", "countries:read"), ("scope", "countries:write")])),
    "token_type_unsupported": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(), subject_token_type="urn:example:saml")),
    "body_too_large": Case(413, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(), padding="y" * 70_000)),
    "unsupported_grant_type": Case(400, "unsupported_grant_type", lambda s, i, *_: s.exchange(
        i.token(), grant_type="password")),
    # -- the client
    "client_id_missing": Case(400, "invalid_client", lambda s, i, *_: s.exchange(
        i.token(), client_id=None)),
    "unknown_client": Case(400, "invalid_client", lambda s, i, *_: s.exchange(
        i.token(), client_id="nobody")),
    "client_auth_failed": Case(400, "invalid_client", lambda s, i, *_: s.exchange(
        i.token(), client_id="backend", client_secret="wrong")),
    "client_credentials_missing": Case(400, "invalid_client", lambda s, i, *_: s.exchange(
        i.token(), client_id="backend")),
    "client_credentials_malformed": Case(401, "invalid_client", lambda s, i, *_: s.exchange(
        i.token(), client_id=None, headers={"Authorization": "Basic !!"})),
    "client_auth_method": Case(400, "invalid_client", lambda s, i, *_: s.exchange(
        i.token(), client_secret="a-public-client-has-none")),
    "client_auth_ambiguous": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(), client_id="backend", client_secret=BACKEND_SECRET,
        headers=_basic("backend", BACKEND_SECRET))),
    "client_id_mismatch": Case(401, "invalid_client", lambda s, i, *_: s.exchange(
        i.token(), client_id="spa", headers=_basic("backend", BACKEND_SECRET))),
    "client_assertion_invalid": Case(401, "invalid_client", lambda s, i, *_: s.exchange(
        i.token(), client_id=None, client_assertion="a.b.c",
        client_assertion_type="urn:example:saml")),
    "client_not_confidential": Case(400, "invalid_client", lambda s, *_: requests.post(
        f"{s.url}/introspect", data={"token": "x", "client_id": "spa"}, timeout=10),
        event="introspection_refused"),
    # -- the target
    "target_missing": Case(400, "invalid_target", lambda s, i, *_: s.exchange(
        i.token(), audience=None)),
    "unknown_audience": Case(400, "invalid_target", lambda s, i, *_: s.exchange(
        i.token(), audience="https://unknown.example.test")),
    "unknown_resource": Case(400, "invalid_target", lambda s, i, *_: s.exchange(
        i.token(), audience=None, resource="https://nowhere.example.test/x")),
    "resource_invalid": Case(400, "invalid_target", lambda s, i, *_: s.exchange(
        i.token(), audience=None, resource="not-a-uri")),
    "several_apis": Case(400, "invalid_target", lambda s, i, *_: s.exchange(
        i.token(), audience=[COUNTRIES, PROJECTS])),
    "target_not_allowed": Case(400, "invalid_target", lambda s, i, *_: s.exchange(
        i.token(), client_id="reader", audience=PROJECTS)),
    "permissions_denied": Case(400, "invalid_target", lambda s, i, p, _: (
        p.reply({"allow": False}), s.exchange(i.token()))[1]),
    # -- scopes and authorization details
    "scope_malformed": Case(400, "invalid_scope", lambda s, i, *_: s.exchange(
        i.token(), scope="  ")),
    "unknown_scope": Case(400, "invalid_scope", lambda s, i, *_: s.exchange(
        i.token(), scope="countries:delete")),
    "scope_not_allowed": Case(400, "invalid_scope", lambda s, i, *_: s.exchange(
        i.token(), client_id="reader", scope="countries:write")),
    "no_scope_allowed": Case(400, "invalid_scope", lambda s, i, *_: s.exchange(
        i.token(), client_id="reader", audience=PROJECTS), edit=_reader_may_ask_for_projects),
    "scope_not_granted": Case(400, "invalid_scope", lambda s, i, p, _: (
        p.reply({"allow": True, "scopes": ["countries:write"]}),
        s.exchange(i.token(), scope="countries:read"))[1]),
    "authorization_details_invalid": Case(
        400, "invalid_authorization_details", lambda s, i, *_: s.exchange(
            i.token(), authorization_details="{}")),
    "authorization_details_type": Case(
        400, "invalid_authorization_details", lambda s, i, *_: s.exchange(
            i.token(), authorization_details='[{"type": "other"}]')),
    # -- subject tokens (the codes tokens.TokenRejected had before this list)
    "malformed": Case(400, "invalid_request", lambda s, *_: s.exchange("forged")),
    "expired": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(iat=i.clock() - 600, exp=i.clock() - 300))),
    "audience": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(aud="https://elsewhere.example.test"))),
    "issuer_untrusted": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(iss="https://evil.example.test/"))),
    "not_yet_valid": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(nbf=i.clock() + 600))),
    "missing_claim": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(sub=None))),
    "too_large": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(padding="x" * 20_000))),
    "delegation_not_allowed": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(), actor_token=i.token(sub="service|batch"), actor_token_type=ACCESS_TOKEN)),
    "issued_in_future": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(iat=i.clock() + 600))),
    "invalid": Case(400, "invalid_request", lambda s, i, *_: s.exchange(i.token(sub=42))),
    "invalid_claim": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(sub="x" * 300))),
    "unknown_key": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(key=i.keys[i.kid], kid="not-published"))),
    "algorithm": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(key=DpopKey().private_key, alg="ES256"))),
    "signature": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(key=DpopKey("RS256").private_key))),
    # -- DPoP
    "dpop_required": Case(400, "invalid_dpop_proof", lambda s, i, *_: s.exchange(i.token()),
        edit=_dpop_required),
    "dpop_malformed": Case(400, "invalid_dpop_proof", lambda s, i, *_: s.exchange(
        i.token(), headers={"DPoP": "not-a-jwt"})),
    "dpop_htu": Case(400, "invalid_dpop_proof", lambda s, i, *_: s.exchange(
        i.token(), headers={"DPoP": DpopKey().proof("https://elsewhere.example.test/token")})),
    "dpop_replay": Case(400, "invalid_dpop_proof", _replayed_proof),
    "dpop_proof_missing": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(cnf={"jkt": DpopKey().jkt}))),
    "dpop_key_mismatch": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(cnf={"jkt": DpopKey().jkt}), headers={"DPoP": DpopKey().proof()})),
    "dpop_ath": Case(400, "invalid_request", _proof_without_ath),
    "dpop_unbound": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(), headers={"DPoP": DpopKey().proof()}), edit=_bound_tokens_only),
    "cnf_unsupported": Case(400, "invalid_request", lambda s, i, *_: s.exchange(
        i.token(cnf={"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}))),
    # -- limits, dependencies, ourselves
    "rate_limited": Case(429, "slow_down", _rate_limited, edit=_per_subject,
        detail="per_subject"),
    "permissions_unavailable": Case(503, "temporarily_unavailable", lambda s, i, p, _: (
        p.reply({"error": "boom"}, status=500), s.exchange(i.token()))[1]),
    "permissions_answer_invalid": Case(503, "temporarily_unavailable", lambda s, i, p, _: (
        p.reply({"allow": True, "authorization_details": [{"type": "unknown"}]}),
        s.exchange(i.token(), authorization_details='[{"type": "country_access"}]'))[1]),
    "signing_key_unavailable": Case(503, "temporarily_unavailable", _no_signing_key),
    "revocation_unavailable": Case(503, "temporarily_unavailable", _revocation_unrecorded,
        event="revocation_refused"),
    "internal_error": Case(500, "server_error", _a_bug),
}  # fmt: skip


@pytest.mark.parametrize("reason", sorted(CASES))
def test_each_refusal_is_audited_with_its_reason(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    reason: str,
) -> None:
    case = CASES[reason]
    sts = make_sts(case.edit)
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        response = case.run(sts, issuer, permissions_api, monkeypatch)
    assert_error(response, case.status, case.error)
    line = audit_lines(caplog)[-1]
    assert line["event"] == case.event
    assert line["outcome"] == case.error
    assert line["status"] == case.status
    assert line["reason"] == reason
    if case.detail is not None:
        assert line["detail"] == case.detail


def test_every_refusal_line_has_a_listed_reason(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """All the cases against one service: every refusal line, the intermediate ones included,
    names a reason from the list; an issued one names none."""
    sts = make_sts()
    patching = (_a_bug, _no_signing_key, _revocation_unrecorded)
    runs = [case for case in CASES.values() if case.edit is None and case.run not in patching]
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        for case in runs:
            case.run(sts, issuer, permissions_api, monkeypatch)
            permissions_api.reply({"allow": True})
        sts.exchange(issuer.token())
    lines = audit_lines(caplog)
    assert len(lines) > len(runs)
    for line in lines:
        if line.get("outcome") == "issued":
            assert "reason" not in line
        else:
            assert line["reason"] in REASONS, line


def test_a_refusal_says_what_was_asked_for(
    sts: Sts, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        sts.exchange(
            issuer.token(),
            audience=["https://unknown.example.test", COUNTRIES],
            resource=f"{COUNTRIES}/countries/nl",
            scope="countries:read",
        )
        sts.exchange(issuer.token(), client_id="nobody", scope="countries:read")
    target, client = audit_lines(caplog)
    assert target["reason"] == "unknown_audience"
    assert target["requested_audience"] == ["https://unknown.example.test", COUNTRIES]
    assert target["requested_resource"] == [f"{COUNTRIES}/countries/nl"]
    assert target["requested_scope"] == "countries:read"
    assert target["client_id"] == "spa"
    assert "attempted_client_id" not in target  # the client was authenticated
    assert client["reason"] == "unknown_client"
    assert client["client_id"] is None
    assert client["attempted_client_id"] == "nobody"
    assert client["requested_audience"] == [COUNTRIES]


def test_what_the_caller_wrote_is_capped_and_escaped(
    sts: Sts, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    forged = 'evil\n{"outcome": "issued"}\x1b[31m\u202e' + "x" * 500
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        sts.exchange(issuer.token(), client_id=forged, audience=[forged] * 20, scope="a\tb")
        pair = f"{quote(forged, safe='')}:secret".encode()
        basic = {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        sts.exchange(issuer.token(), client_id=None, headers=basic)
    body, basic = audit_lines(caplog)
    for line in (body, basic):
        attempted = line["attempted_client_id"]
        assert attempted.startswith("evil\\x0a{")
        for raw in ("\n", "\x1b", "\u202e"):
            assert raw not in attempted
        assert "\\x1b[31m\\u202e" in attempted
        assert attempted.endswith("...")
        assert len(attempted) < 230
    assert len(body["requested_audience"]) == 5
    assert body["requested_scope"] == "a\\x09b"
    # Never the secret, nor a token.
    assert "secret" not in json.dumps([body, basic])


@pytest.mark.parametrize("endpoint", ["introspect", "revoke"])
def test_refusals_at_introspect_and_revoke_are_audited(
    sts: Sts, caplog: pytest.LogCaptureFixture, endpoint: str
) -> None:
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        response = requests.post(
            f"{sts.url}/{endpoint}",
            data={"token": "x"},
            auth=("countries-api", "wrong"),
            timeout=10,
        )
    assert_error(response, 401, "invalid_client")
    (line,) = audit_lines(caplog)
    name = "introspection_refused" if endpoint == "introspect" else "revocation_refused"
    assert line["event"] == name
    assert line["reason"] == "client_auth_failed"
    assert line["attempted_client_id"] == "countries-api"
    assert line["request_id"] == response.headers["X-Request-ID"]


# -- invalid_client tells nothing about the client --------------------------------------------


def test_every_invalid_client_answer_is_the_same(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    def secret_post_only(config: dict[str, Any]) -> None:
        config["clients"][1]["token_endpoint_auth_method"] = "client_secret_post"

    sts = make_sts(secret_post_only)
    token = issuer.token()
    tries = {
        "unknown_client": ({"client_id": "nobody"}, None),
        "client_auth_failed": ({"client_id": "backend", "client_secret": "wrong"}, None),
        "client_auth_method": ({"client_id": "spa", "client_secret": "guess"}, None),
        "client_credentials_missing": ({"client_id": "backend"}, None),
        "client_id_missing": ({"client_id": None}, None),
    }
    basic_tries = [
        ("unknown_client", _basic("nobody", "x")),
        ("client_auth_failed", _basic("countries-api", "wrong")),
        ("client_auth_method", _basic("spa", "guess")),
        # The right secret, by a method this client may not use.
        ("client_auth_method", _basic("backend", BACKEND_SECRET)),
    ]
    bodies: dict[int, set[str]] = {400: set(), 401: set()}
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        for params, _ in tries.values():
            response = sts.exchange(token, **params)
            assert response.status_code == 400
            assert "WWW-Authenticate" not in response.headers
            bodies[400].add(response.text)
        for _, header in basic_tries:
            response = sts.exchange(token, client_id=None, headers=header)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"].startswith("Basic ")
            bodies[401].add(response.text)
    expected = {"error": "invalid_client", "error_description": INVALID_CLIENT_DESCRIPTION}
    assert [json.loads(b) for b in bodies[400]] == [expected]
    assert [json.loads(b) for b in bodies[401]] == [expected]
    # The audit line says which it was.
    reasons = [line["reason"] for line in audit_lines(caplog)]
    assert reasons == [*tries, *(reason for reason, _ in basic_tries)]
