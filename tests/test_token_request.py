"""POST /token request rules (RFC 8693 §2.1, RFC 6749 §3.1-§3.2), over real HTTP."""

from __future__ import annotations

import pytest
import requests

from .fakes import ACCESS_TOKEN, COUNTRIES, GRANT, JWT_TYPE, FakeIssuer, Sts
from .helpers import assert_error, assert_issued


def test_exchange_issues_an_access_token(sts: Sts, issuer: FakeIssuer) -> None:
    body = assert_issued(sts.exchange(issuer.token(), scope="countries:read"))
    assert body["issued_token_type"] == ACCESS_TOKEN
    assert body["scope"] == "countries:read"
    assert 295 <= body["expires_in"] <= 300


def test_subject_token_type_jwt_is_accepted(sts: Sts, issuer: FakeIssuer) -> None:
    assert_issued(sts.exchange(issuer.token(), subject_token_type=JWT_TYPE))


def test_requested_token_type_jwt_is_echoed(sts: Sts, issuer: FakeIssuer) -> None:
    body = assert_issued(sts.exchange(issuer.token(), requested_token_type=JWT_TYPE))
    assert body["issued_token_type"] == JWT_TYPE


@pytest.mark.parametrize(
    "requested",
    [
        "urn:ietf:params:oauth:token-type:refresh_token",
        "urn:ietf:params:oauth:token-type:id_token",
        "urn:ietf:params:oauth:token-type:saml2",
        "bearer",
    ],
)
def test_other_requested_token_types_are_invalid_request(
    sts: Sts, issuer: FakeIssuer, requested: str
) -> None:
    assert_error(
        sts.exchange(issuer.token(), requested_token_type=requested), 400, "invalid_request"
    )


@pytest.mark.parametrize(
    "subject_token_type",
    ["urn:ietf:params:oauth:token-type:id_token", "urn:ietf:params:oauth:token-type:saml2", "x"],
)
def test_unsupported_subject_token_type(
    sts: Sts, issuer: FakeIssuer, subject_token_type: str
) -> None:
    response = sts.exchange(issuer.token(), subject_token_type=subject_token_type)
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("missing", ["subject_token", "subject_token_type", "grant_type"])
def test_missing_required_parameter(sts: Sts, issuer: FakeIssuer, missing: str) -> None:
    params = {"subject_token": issuer.token(), missing: None}
    body = assert_error(sts.exchange(**params), 400, "invalid_request")
    assert missing in body["error_description"]


def test_empty_parameter_counts_as_omitted(sts: Sts, issuer: FakeIssuer) -> None:
    assert_error(sts.exchange(issuer.token(), subject_token_type=""), 400, "invalid_request")
    # ...and an empty optional one is simply ignored (RFC 6749 §3.1).
    assert_issued(sts.exchange(issuer.token(), actor_token="", actor_token_type=""))


def test_unknown_grant_type(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(issuer.token(), grant_type="client_credentials")
    assert_error(response, 400, "unsupported_grant_type")


def test_form_encoding_only(sts: Sts, issuer: FakeIssuer) -> None:
    body = {
        "grant_type": GRANT,
        "client_id": "spa",
        "subject_token": issuer.token(),
        "subject_token_type": ACCESS_TOKEN,
        "audience": COUNTRIES,
    }
    response = requests.post(f"{sts.url}/token", json=body, timeout=5)
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("charset", ["UTF-8", "utf-8", "ISO-8859-1"])
def test_any_charset_parameter_is_accepted(sts: Sts, issuer: FakeIssuer, charset: str) -> None:
    response = sts.exchange(
        issuer.token(),
        headers={"Content-Type": f"application/x-www-form-urlencoded; charset={charset}"},
    )
    assert_issued(response)


def test_body_size_limit(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(issuer.token(), padding="x" * 70_000)
    assert_error(response, 413, "invalid_request")


def test_subject_token_over_the_size_limit_is_refused(sts: Sts, issuer: FakeIssuer) -> None:
    big = issuer.token(filler="y" * 20_000)
    assert_error(sts.exchange(big), 400, "invalid_request")


@pytest.mark.parametrize(
    "name", ["subject_token", "scope", "client_id", "subject_token_type", "grant_type"]
)
def test_repeated_parameter_is_invalid_request(sts: Sts, issuer: FakeIssuer, name: str) -> None:
    token = issuer.token()
    data = [
        ("grant_type", GRANT),
        ("client_id", "spa"),
        ("subject_token", token),
        ("subject_token_type", ACCESS_TOKEN),
        ("audience", COUNTRIES),
        ("scope", "countries:read"),
    ]
    value = dict(data)[name]
    response = requests.post(f"{sts.url}/token", data=[*data, (name, value)], timeout=5)
    body = assert_error(response, 400, "invalid_request")
    assert name in body["error_description"]


def test_audience_and_resource_may_repeat(sts: Sts, issuer: FakeIssuer) -> None:
    data = [
        ("grant_type", GRANT),
        ("client_id", "spa"),
        ("subject_token", issuer.token()),
        ("subject_token_type", ACCESS_TOKEN),
        ("audience", COUNTRIES),
        ("audience", COUNTRIES),
        ("resource", f"{COUNTRIES}/countries/nl"),
        ("resource", f"{COUNTRIES}/countries/de"),
    ]
    assert_issued(requests.post(f"{sts.url}/token", data=data, timeout=5))


@pytest.mark.parametrize(
    "params",
    [
        {"actor_token": "abc"},
        {"actor_token_type": ACCESS_TOKEN},
    ],
)
def test_actor_token_and_type_come_together(
    sts: Sts, issuer: FakeIssuer, params: dict[str, str]
) -> None:
    body = assert_error(sts.exchange(issuer.token(), **params), 400, "invalid_request")
    assert "actor_token" in body["error_description"]


@pytest.mark.parametrize(
    "resource",
    [
        "/countries/nl",  # relative
        "countries.example.test/countries/nl",  # no scheme
        f"{COUNTRIES}/countries/nl#frag",  # fragment
        f"{COUNTRIES}/countries/nl#",  # empty fragment
        "https://user:pw@countries.example.test/countries/nl",
        f"{COUNTRIES}/countries/../admin",
        f"{COUNTRIES}/countries/%2e%2e/admin",
        f"{COUNTRIES}/countries/nl/..;/admin",  # ".." to servers that strip ;parameters
        f"{COUNTRIES}/countries/nl/.;x/stats",
        "https://[::1/countries",  # unparseable
        f"{COUNTRIES}/countries/..%2fadmin",  # an encoded slash hides a dot segment
        f"{COUNTRIES}/countries/..%5Cadmin",
        f"{COUNTRIES}/countries/..\\admin",  # a backslash, which WHATWG parsers read as /
        f"{COUNTRIES}/countries/n l",
        f"{COUNTRIES}/countries/nl\t",
        f" {COUNTRIES}/countries/nl",
        f"{COUNTRIES}/countries/nl\x00",
    ],
)
def test_malformed_resource_is_invalid_target(sts: Sts, issuer: FakeIssuer, resource: str) -> None:
    # RFC 8707 §2: "invalid_target: the requested resource is invalid, missing, unknown, or
    # malformed".
    assert_error(
        sts.exchange(issuer.token(), audience=None, resource=resource), 400, "invalid_target"
    )


def test_get_is_405(sts: Sts) -> None:
    response = requests.get(f"{sts.url}/token", timeout=5)
    assert_error(response, 405, "invalid_request")
    assert "POST" in response.headers["Allow"]


def test_parameters_in_the_url_are_refused(sts: Sts, issuer: FakeIssuer) -> None:
    token = issuer.token()
    response = requests.post(
        f"{sts.url}/token",
        params={"subject_token": token},
        data={"grant_type": GRANT, "client_id": "spa", "subject_token_type": ACCESS_TOKEN},
        timeout=5,
    )
    assert_error(response, 400, "invalid_request")


def test_error_descriptions_never_echo_the_token(sts: Sts, issuer: FakeIssuer) -> None:
    token = issuer.token(exp=1)
    response = sts.exchange(token)
    assert_error(response, 400, "invalid_request")
    for part in token.split("."):
        assert part not in response.text


def test_unknown_path_is_json_404(sts: Sts) -> None:
    assert_error(requests.get(f"{sts.url}/nope", timeout=5), 404, "not_found")
