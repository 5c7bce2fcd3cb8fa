"""The form body parser of /token (``views.parse_form``): werkzeug's results, without werkzeug."""

from __future__ import annotations

import requests

from .fakes import COUNTRIES, FakeIssuer, Sts
from .helpers import assert_error, assert_issued

FORM = "application/x-www-form-urlencoded"


def post(sts: Sts, body: bytes | str) -> requests.Response:
    """POST /token with ``body`` exactly as given."""
    return sts.http.post(f"{sts.url}/token", data=body, headers={"Content-Type": FORM}, timeout=10)


def request_body(subject_token: str, **params: str) -> str:
    """A token request, each value already percent-encoded as the caller wants it."""
    values = {
        "grant_type": "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange",
        "client_id": "spa",
        "subject_token_type": "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token",
        "audience": COUNTRIES,
        "subject_token": subject_token,
        **params,
    }
    return "&".join(f"{name}={value}" for name, value in values.items())


def test_plus_is_a_space(sts: Sts, issuer: FakeIssuer) -> None:
    response = post(sts, request_body(issuer.token(), scope="countries:read+countries%3Awrite"))
    assert assert_issued(response)["scope"] == "countries:read countries:write"


def test_unencoded_and_percent_encoded_values_are_equal(sts: Sts, issuer: FakeIssuer) -> None:
    plain = request_body(
        issuer.token(),
        grant_type="urn:ietf:params:oauth:grant-type:token-exchange",
        audience="https%3A%2F%2Fcountries.example.test",
        client_id="%73pa",
    )
    assert assert_issued(post(sts, plain))["scope"] == "countries:read countries:write"


def test_a_body_that_is_not_utf8_is_invalid_request(sts: Sts, issuer: FakeIssuer) -> None:
    response = post(sts, request_body(issuer.token()).encode() + b"&scope=countries:read\xff")
    body = assert_error(response, 400, "invalid_request")
    # Said as it is (RFC 6749 Appendix B: UTF-8), not as a grant_type missing.
    assert "UTF-8" in body["error_description"]


def test_percent_encoded_bytes_that_are_not_utf8_are_refused(sts: Sts, issuer: FakeIssuer) -> None:
    assert_error(post(sts, request_body(issuer.token(), client_id="sp%FFa")), 400, "invalid_client")
    assert_error(post(sts, request_body("eyJ%FF.e30.e30")), 400, "invalid_request")


def test_a_parameter_repeated_with_an_empty_value_is_not_a_repeat(
    sts: Sts, issuer: FakeIssuer
) -> None:
    response = sts.http.post(
        f"{sts.url}/token",
        data=[
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("client_id", "spa"),
            ("client_id", ""),
            ("subject_token", issuer.token()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ("audience", COUNTRIES),
        ],
        timeout=10,
    )
    assert_issued(response)
