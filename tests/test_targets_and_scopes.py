"""Which API a request targets and which scopes it gets (RFC 8693 §2.1, RFC 8707, RFC 6749 §3.3)."""

from __future__ import annotations

import json

import pytest

from .fakes import COUNTRIES, PROJECTS, FakeIssuer, FakePermissions, Sts
from .helpers import assert_error, assert_issued


def test_audience_selects_the_api(sts: Sts, issuer: FakeIssuer) -> None:
    body = assert_issued(sts.exchange(issuer.token(), audience=COUNTRIES))
    assert sts.decode(body["access_token"])["aud"] == COUNTRIES


def test_resource_under_a_prefix_selects_the_api(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    resource = f"{COUNTRIES}/countries/nl"
    body = assert_issued(sts.exchange(issuer.token(), audience=None, resource=resource))
    assert sts.decode(body["access_token"])["aud"] == COUNTRIES
    assert permissions_api.questions[-1]["resources"] == [resource]


def test_resource_equal_to_the_audience_selects_the_api(sts: Sts, issuer: FakeIssuer) -> None:
    assert_issued(sts.exchange(issuer.token(), audience=None, resource=COUNTRIES))


@pytest.mark.parametrize(
    "resource",
    [
        "https://countries.example.test.evil/countries/nl",  # another host
        "https://countries.example.test/countriesnl",  # not at a path boundary
        "https://countries.example.test/admin",  # outside every prefix
        "http://countries.example.test/countries/nl",  # another scheme
        "https://countries.example.test:8443/countries/nl",  # another port
        "https://unknown.example.test/",
    ],
)
def test_resource_outside_every_api_is_invalid_target(
    sts: Sts, issuer: FakeIssuer, resource: str
) -> None:
    assert_error(
        sts.exchange(issuer.token(), audience=None, resource=resource), 400, "invalid_target"
    )


def test_resource_prefix_matching_ignores_host_case_and_default_port(
    sts: Sts, issuer: FakeIssuer
) -> None:
    resource = "https://COUNTRIES.example.test:443/countries/nl"
    assert_issued(sts.exchange(issuer.token(), audience=None, resource=resource))


def test_unknown_audience_is_invalid_target(sts: Sts, issuer: FakeIssuer) -> None:
    assert_error(sts.exchange(issuer.token(), audience="https://nope.test"), 400, "invalid_target")


def test_no_audience_or_resource_is_invalid_target(sts: Sts, issuer: FakeIssuer) -> None:
    assert_error(sts.exchange(issuer.token(), audience=None), 400, "invalid_target")


def test_two_apis_in_one_request_are_invalid_target(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(issuer.token(), audience=COUNTRIES, resource=f"{PROJECTS}/p/1")
    assert_error(response, 400, "invalid_target")


def test_undefined_scope_is_invalid_scope(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(issuer.token(), scope="countries:read projects:read")
    assert_error(response, 400, "invalid_scope")


@pytest.mark.parametrize("scope", ["countries:read\x7f", 'a"b', "a\\b", "   "])
def test_malformed_scope_is_invalid_scope(sts: Sts, issuer: FakeIssuer, scope: str) -> None:
    assert_error(sts.exchange(issuer.token(), scope=scope), 400, "invalid_scope")


def test_omitted_scope_asks_for_all_of_the_apis_scopes(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    body = assert_issued(sts.exchange(issuer.token()))
    assert permissions_api.questions[-1]["scopes"] == ["countries:read", "countries:write"]
    assert body["scope"] == "countries:read countries:write"


def test_omitted_scope_asks_only_for_what_the_client_may_use(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    body = assert_issued(sts.exchange(issuer.token(), client_id="reader"))
    assert permissions_api.questions[-1]["scopes"] == ["countries:read"]
    assert body["scope"] == "countries:read"


def test_client_scope_limits_explicit_requests(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(issuer.token(), client_id="reader", scope="countries:write")
    assert_error(response, 400, "invalid_scope")


def test_permissions_api_narrows_scopes(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    permissions_api.reply({"allow": True, "scopes": ["countries:read"]})
    body = assert_issued(sts.exchange(issuer.token()))
    assert body["scope"] == "countries:read"
    assert sts.decode(body["access_token"])["scope"] == "countries:read"


def test_permissions_api_cannot_widen_scopes(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    permissions_api.reply({"allow": True, "scopes": ["countries:read", "countries:write", "admin"]})
    body = assert_issued(sts.exchange(issuer.token(), scope="countries:read"))
    assert body["scope"] == "countries:read"


def test_scopes_narrowed_to_nothing_are_invalid_scope(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    permissions_api.reply({"allow": True, "scopes": []})
    assert_error(sts.exchange(issuer.token()), 400, "invalid_scope")


def test_authorization_details_are_passed_on_and_minted(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    details = [{"type": "country_access", "countries": ["nl"]}]
    body = assert_issued(sts.exchange(issuer.token(), authorization_details=json.dumps(details)))
    assert permissions_api.questions[-1]["authorization_details"] == details
    assert sts.decode(body["access_token"])["authorization_details"] == details


def test_permissions_api_can_narrow_authorization_details(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    granted = [{"type": "country_access", "countries": ["nl"]}]
    permissions_api.reply({"allow": True, "authorization_details": granted})
    asked = [{"type": "country_access", "countries": ["nl", "de"]}]
    body = assert_issued(sts.exchange(issuer.token(), authorization_details=json.dumps(asked)))
    assert sts.decode(body["access_token"])["authorization_details"] == granted


@pytest.mark.parametrize(
    "details",
    ['{"type": "country_access"}', "[1]", '[{"countries": []}]', "not json", '[{"type": ""}]'],
)
def test_malformed_authorization_details(sts: Sts, issuer: FakeIssuer, details: str) -> None:
    response = sts.exchange(issuer.token(), authorization_details=details)
    body = assert_error(response, 400, "invalid_authorization_details")
    if details == "not json":
        # Where the parser stopped, never the text itself.
        expected = "authorization_details is not RFC 8259 JSON: Expecting value at character 0"
    else:
        expected = "authorization_details must be a JSON array of objects, each with a type"
    assert body["error_description"] == expected


def test_unknown_authorization_details_type(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(
        issuer.token(), authorization_details=json.dumps([{"type": "payment_initiation"}])
    )
    assert_error(response, 400, "invalid_authorization_details")


def test_deeply_nested_authorization_details(sts: Sts, issuer: FakeIssuer) -> None:
    details = "[" * 5000 + "]" * 5000
    response = sts.exchange(issuer.token(), authorization_details=details)
    assert_error(response, 400, "invalid_authorization_details")


def test_answer_with_an_unaccepted_authorization_details_type_is_503(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    permissions_api.reply({"allow": True, "authorization_details": [{"type": "payment"}]})
    asked = json.dumps([{"type": "country_access"}])
    assert_error(
        sts.exchange(issuer.token(), authorization_details=asked), 503, "temporarily_unavailable"
    )
