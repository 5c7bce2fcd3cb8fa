"""The pure rules of ``policy``: which API a request targets (RFC 8693 §2.1, RFC 8707 §2),
which scopes it may ask for and is granted (RFC 6749 §3.3), which authorization details an
API accepts (RFC 9396 §5). Built from the test configuration, parsed as users' TOML is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from token_exchange.config.settings import ApiSettings, ClientSettings, Settings
from token_exchange.grant.policy import (
    api_for_resource,
    check_authorization_details,
    check_client_target,
    grant_scopes,
    parse_scope,
    resolve_api,
    select_scopes,
)
from token_exchange.oauth.errors import InvalidAuthorizationDetails, InvalidScope, InvalidTarget

from ..fakes import COUNTRIES, PROJECTS


def api(settings: Settings, audience: str) -> ApiSettings:
    return next(a for a in settings.apis if a.audience == audience)


def client(settings: Settings, client_id: str) -> ClientSettings:
    return next(c for c in settings.clients if c.client_id == client_id)


# -- the target: audience and resource ----------------------------------------------------------


def test_a_request_must_name_a_target(settings: Settings) -> None:
    with pytest.raises(InvalidTarget, match="audience or resource is required"):
        resolve_api(settings.apis, (), ())


def test_audience_names_an_api(settings: Settings) -> None:
    assert resolve_api(settings.apis, (COUNTRIES,), ()).audience == COUNTRIES


def test_an_unknown_audience_is_invalid_target(settings: Settings) -> None:
    with pytest.raises(InvalidTarget, match="audience is not a known API"):
        resolve_api(settings.apis, ("https://other.example.test",), ())


@pytest.mark.parametrize(
    "resource",
    [f"{COUNTRIES}/countries/nl", f"{COUNTRIES}/countries/", COUNTRIES],
)
def test_a_resource_under_an_api_or_its_audience_names_it(
    settings: Settings, resource: str
) -> None:
    assert resolve_api(settings.apis, (), (resource,)).audience == COUNTRIES


@pytest.mark.parametrize(
    "resource",
    [
        f"{COUNTRIES}/admin/",  # under the audience's host, but under none of its resources
        f"{COUNTRIES}/countries",  # the prefix without its trailing slash is not under it
        "https://elsewhere.example.test/countries/",
    ],
)
def test_a_resource_no_api_serves_is_invalid_target(settings: Settings, resource: str) -> None:
    assert api_for_resource(settings.apis, resource) is None
    with pytest.raises(InvalidTarget, match="resource is not served by a known API"):
        resolve_api(settings.apis, (), (resource,))


def test_audience_and_resource_of_one_api_agree(settings: Settings) -> None:
    resolved = resolve_api(settings.apis, (COUNTRIES,), (f"{COUNTRIES}/countries/nl",))
    assert resolved.audience == COUNTRIES


@pytest.mark.parametrize(
    ("audiences", "resources"),
    [
        ((COUNTRIES, PROJECTS), ()),
        ((COUNTRIES,), (f"{PROJECTS}/acme",)),
        ((), (f"{COUNTRIES}/countries/nl", f"{PROJECTS}/acme")),
    ],
)
def test_a_token_is_for_exactly_one_api(
    settings: Settings, audiences: tuple[str, ...], resources: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidTarget, match="exactly one API"):
        resolve_api(settings.apis, audiences, resources)


def test_a_client_obtains_tokens_only_for_its_audiences(settings: Settings) -> None:
    check_client_target(client(settings, "spa"), api(settings, PROJECTS))
    with pytest.raises(InvalidTarget, match="may not obtain tokens for that API"):
        check_client_target(client(settings, "backend"), api(settings, PROJECTS))


# -- scope: parsing ------------------------------------------------------------------------------


def test_an_omitted_scope_is_none() -> None:
    assert parse_scope(None) is None


def test_scope_tokens_are_unique_and_in_order() -> None:
    assert parse_scope("b a b") == ("b", "a")


def test_extra_spaces_between_scope_tokens_are_tolerated() -> None:
    assert parse_scope("a  b ") == ("a", "b")


@pytest.mark.parametrize("scope", ["", " ", "a\tb", 'a "b"', "a\\b", "caf\u00e9"])
def test_a_malformed_scope_is_invalid_scope(scope: str) -> None:
    # RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), separated by spaces.
    with pytest.raises(InvalidScope, match="scope is malformed"):
        parse_scope(scope)


# -- scope: selection and grant ------------------------------------------------------------------


def test_an_omitted_scope_means_every_scope_the_client_may_use(settings: Settings) -> None:
    countries = api(settings, COUNTRIES)
    assert select_scopes(countries, client(settings, "spa"), None) == (
        "countries:read",
        "countries:write",
    )
    # "reader" may use countries:read only.
    assert select_scopes(countries, client(settings, "reader"), None) == ("countries:read",)


def test_requested_scopes_are_kept_as_requested(settings: Settings) -> None:
    scopes = select_scopes(api(settings, COUNTRIES), client(settings, "spa"), ("countries:write",))
    assert scopes == ("countries:write",)


def test_a_scope_the_api_does_not_define_is_invalid_scope(settings: Settings) -> None:
    with pytest.raises(InvalidScope, match="not defined by that API"):
        select_scopes(api(settings, COUNTRIES), client(settings, "spa"), ("projects:read",))


def test_a_scope_the_client_may_not_use_is_invalid_scope(settings: Settings) -> None:
    with pytest.raises(InvalidScope, match="may not request one of those scopes"):
        select_scopes(api(settings, COUNTRIES), client(settings, "reader"), ("countries:write",))


def test_a_client_with_no_usable_scope_of_the_api_is_invalid_scope(
    make_settings: Callable[..., Settings],
) -> None:
    def reader_for_both(config: dict[str, Any]) -> None:
        reader = next(c for c in config["clients"] if c["client_id"] == "reader")
        reader["audiences"] = [COUNTRIES, PROJECTS]  # its scopes are all countries' ones

    settings = make_settings(reader_for_both)
    with pytest.raises(InvalidScope, match="may use no scope of that API"):
        select_scopes(api(settings, PROJECTS), client(settings, "reader"), None)


def test_no_decided_scopes_grant_the_request() -> None:
    assert grant_scopes(("a", "b"), None) == ("a", "b")


def test_decided_scopes_narrow_the_request_and_never_widen_it() -> None:
    assert grant_scopes(("a", "b"), ("b", "c")) == ("b",)


def test_a_decision_granting_none_of_the_request_is_invalid_scope() -> None:
    with pytest.raises(InvalidScope, match="none of the requested scopes"):
        grant_scopes(("a",), ("c",))
    with pytest.raises(InvalidScope):
        grant_scopes(("a",), ())


# -- authorization details -----------------------------------------------------------------------


def test_authorization_details_of_an_accepted_type_pass(settings: Settings) -> None:
    check_authorization_details(api(settings, COUNTRIES), [{"type": "country_access"}])
    check_authorization_details(api(settings, COUNTRIES), [])


@pytest.mark.parametrize(
    "details",
    [[{"type": "payment"}], [{"type": "country_access"}, {"type": "payment"}], [{}]],
)
def test_authorization_details_of_another_type_are_refused(
    settings: Settings, details: list[dict[str, str]]
) -> None:
    with pytest.raises(InvalidAuthorizationDetails):
        check_authorization_details(api(settings, COUNTRIES), details)


def test_an_api_accepting_no_type_refuses_every_detail(settings: Settings) -> None:
    with pytest.raises(InvalidAuthorizationDetails):
        check_authorization_details(api(settings, PROJECTS), [{"type": "country_access"}])


def test_only_prefixes_are_remembered_when_resources_are_matched() -> None:
    """A cache of the callers' resources would hold whatever they send (64 KiB each)."""
    from token_exchange.oauth import uris

    before = uris._cached_origin_and_path.cache_info().currsize
    for i in range(50):
        assert uris.resource_under(f"https://x.test/a/{i}" + "p" * 1000, "https://x.test/a/")
    assert uris._cached_origin_and_path.cache_info().currsize <= before + 1
