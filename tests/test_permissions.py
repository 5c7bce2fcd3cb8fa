"""The permissions API contract and static permissions, end to end and as pure parsing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from .fakes import COUNTRIES, PERMISSIONS_TOKEN, PROJECTS, FakeIssuer, FakePermissions, Sts
from .helpers import assert_error, assert_issued


def test_question_follows_the_contract(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    resource = f"{COUNTRIES}/countries/nl"
    assert_issued(
        sts.exchange(issuer.token(), audience=None, resource=resource, scope="countries:read")
    )
    question = permissions_api.questions[-1]
    assert question == {
        "subject": "auth0|42",
        "issuer": issuer.issuer,
        "client_id": "spa",
        "audience": COUNTRIES,
        "scopes": ["countries:read"],
        "resources": [resource],
        "authorization_details": [],
        "subject_claims": question["subject_claims"],
    }
    assert question["subject_claims"]["sub"] == "auth0|42"
    assert question["subject_claims"]["email"] == "john@example.test"
    headers = permissions_api.headers[-1]
    assert headers["Authorization"] == f"Bearer {PERMISSIONS_TOKEN}"
    assert headers["Content-Type"] == "application/json"


def test_claims_from_the_answer_are_minted(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    permissions_api.reply(
        {"allow": True, "claims": {"custom_access_to_countries": ["nl", "de", "be"],
                                   "permissions": [["org1", "proj1", "editor"]]}}
    )  # fmt: skip
    claims = sts.decode(assert_issued(sts.exchange(issuer.token()))["access_token"])
    assert claims["custom_access_to_countries"] == ["nl", "de", "be"]
    assert claims["permissions"] == [["org1", "proj1", "editor"]]


@pytest.mark.parametrize(
    ("status", "body"), [(200, {"allow": False}), (403, {"allow": False}), (403, "")]
)
def test_refusal_is_invalid_target(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions, status: int, body: Any
) -> None:
    permissions_api.reply(body, status)
    assert_error(sts.exchange(issuer.token()), 400, "invalid_target")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, {"allow": True}),
        (502, "bad gateway"),
        (401, {"error": "who are you"}),
        (404, {}),
        (302, ""),
        (200, "not json"),
        (200, ["allow"]),
        (200, {}),
        (200, {"allow": "yes"}),
        (200, {"allow": 1}),
        (200, {"allow": True, "scopes": "countries:read"}),
        (200, {"allow": True, "claims": ["x"]}),
        (200, {"allow": True, "ttl": -1}),
        (200, {"allow": True, "authorization_details": {"type": "x"}}),
    ],
)
def test_bad_answers_are_503_and_never_a_token(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions, status: int, body: Any
) -> None:
    permissions_api.reply(body, status)
    response = sts.exchange(issuer.token())
    assert_error(response, 503, "temporarily_unavailable")
    assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    "claim", ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "scope", "act", "cnf"]
)
def test_answer_can_never_set_a_registered_claim(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions, claim: str
) -> None:
    permissions_api.reply({"allow": True, "claims": {claim: "attacker"}})
    assert_error(sts.exchange(issuer.token()), 503, "temporarily_unavailable")


def test_permissions_api_down_is_503(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    permissions_api.server.stop()
    response = sts.exchange(issuer.token())
    assert_error(response, 503, "temporarily_unavailable")
    assert "Retry-After" in response.headers
    permissions_api.server.start()  # the fixture stops it again


def test_permissions_api_timeout_is_503(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    def slow(question: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        time.sleep(1.5)  # the configured timeout is 1.0 s
        return 200, {"allow": True}, {}

    permissions_api.answer = slow
    started = time.monotonic()
    assert_error(sts.exchange(issuer.token()), 503, "temporarily_unavailable")
    assert time.monotonic() - started < 1.4


def test_redirects_are_not_followed(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    permissions_api.reply("", 307, {"Location": permissions_api.server.url_for("/elsewhere")})
    assert_error(sts.exchange(issuer.token()), 503, "temporarily_unavailable")
    assert len(permissions_api.questions) == 1


def test_static_permissions_source(sts: Sts, issuer: FakeIssuer) -> None:
    body = assert_issued(sts.exchange(issuer.token(), audience=PROJECTS))
    claims = sts.decode(body["access_token"], audience=PROJECTS)
    assert claims["projects"] == [["acme", "web", "editor"]]
    # No rule for this subject: refused.
    response = sts.exchange(issuer.token(sub="auth0|7"), audience=PROJECTS)
    assert_error(response, 400, "invalid_target")


# -- parsing, without HTTP ----------------------------------------------------------------------
