"""Client identification, authentication and CORS at /token (RFC 6749 §2.3, §3.2.1)."""

from __future__ import annotations

from collections.abc import Callable

import requests
from requests.auth import HTTPBasicAuth
from werkzeug.test import EnvironBuilder, run_wsgi_app

from .fakes import BACKEND_SECRET, COUNTRIES, ENV, PROJECTS, FakeIssuer, Sts
from .helpers import assert_error, assert_issued

APP_ORIGIN = "https://app.example.test"


def test_public_client_names_itself(sts: Sts, issuer: FakeIssuer) -> None:
    assert_issued(sts.exchange(issuer.token(), client_id="spa"))


def test_missing_client_is_invalid_client(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(issuer.token(), client_id=None)
    assert_error(response, 400, "invalid_client")
    assert "WWW-Authenticate" not in response.headers


def test_unknown_client_is_invalid_client(sts: Sts, issuer: FakeIssuer) -> None:
    assert_error(sts.exchange(issuer.token(), client_id="mallory"), 400, "invalid_client")


def test_public_client_sending_a_secret_is_refused(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(issuer.token(), client_id="spa", client_secret="guess")
    assert_error(response, 400, "invalid_client")


def test_confidential_client_secret_basic(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(
        issuer.token(), client_id=None, headers=_basic("backend", BACKEND_SECRET)
    )
    assert_issued(response)


def test_confidential_client_secret_post(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(issuer.token(), client_id="backend", client_secret=BACKEND_SECRET)
    assert_issued(response)


def test_basic_auth_failure_is_401_with_www_authenticate(sts: Sts, issuer: FakeIssuer) -> None:
    for user, password in [("backend", "wrong"), ("nobody", "x"), ("backend", "")]:
        response = sts.exchange(issuer.token(), client_id=None, headers=_basic(user, password))
        assert_error(response, 401, "invalid_client")
        assert response.headers["WWW-Authenticate"].startswith("Basic ")


def test_secret_post_failure_is_invalid_client(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(issuer.token(), client_id="backend", client_secret="wrong")
    assert_error(response, 400, "invalid_client")


def test_confidential_client_without_its_secret_is_refused(sts: Sts, issuer: FakeIssuer) -> None:
    body = assert_error(sts.exchange(issuer.token(), client_id="backend"), 400, "invalid_client")
    # What is missing is in the audit line, not in the answer (tests/test_refusals.py).
    assert body["error_description"] == "client authentication failed"


def test_two_authentication_methods_are_refused(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(
        issuer.token(),
        client_id="backend",
        client_secret=BACKEND_SECRET,
        headers=_basic("backend", BACKEND_SECRET),
    )
    assert_error(response, 400, "invalid_request")


def test_body_client_id_must_match_basic_credentials(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(
        issuer.token(), client_id="spa", headers=_basic("backend", BACKEND_SECRET)
    )
    assert_error(response, 401, "invalid_client")


def test_bearer_authorization_header_is_not_client_authentication(
    sts: Sts, issuer: FakeIssuer
) -> None:
    # SPAs often attach their token to every request; that is not a client credential.
    response = sts.exchange(issuer.token(), headers={"Authorization": "Bearer abc"})
    assert_issued(response)


def test_client_may_only_target_its_audiences(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(
        issuer.token(), client_id="reader", audience=PROJECTS, scope="projects:read"
    )
    assert_error(response, 400, "invalid_target")


def _basic(user: str, password: str) -> dict[str, str]:
    request = requests.Request("POST", "http://x", auth=HTTPBasicAuth(user, password)).prepare()
    return {"Authorization": request.headers["Authorization"]}


# -- CORS -----------------------------------------------------------------------------------


def test_cors_headers_for_an_allowed_origin(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(issuer.token(), headers={"Origin": APP_ORIGIN})
    assert_issued(response)
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "Origin" in response.headers["Vary"]


def test_cors_headers_on_errors_too(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange("garbage", headers={"Origin": APP_ORIGIN})
    assert_error(response, 400, "invalid_request")
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN


def test_cors_preflight_for_an_allowed_origin(sts: Sts) -> None:
    response = requests.options(
        f"{sts.url}/token",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=5,
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "content-type" in response.headers["Access-Control-Allow-Headers"].lower()


def test_no_cors_headers_for_another_origin(sts: Sts, issuer: FakeIssuer) -> None:
    evil = "https://evil.example.test"
    response = sts.exchange(issuer.token(), headers={"Origin": evil})
    # The request itself is judged on its merits; the browser just may not read the answer.
    assert_issued(response)
    preflight = requests.options(
        f"{sts.url}/token",
        headers={"Origin": evil, "Access-Control-Request-Method": "POST"},
        timeout=5,
    )
    for r in (response, preflight):
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]


def test_origin_matching_is_exact(sts: Sts, issuer: FakeIssuer) -> None:
    for origin in (f"{APP_ORIGIN}.evil.test", "http://app.example.test", f"{APP_ORIGIN}:8443"):
        response = sts.exchange(issuer.token(), headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in response.headers


def test_confidential_client_cannot_reach_other_api(sts: Sts, issuer: FakeIssuer) -> None:
    response = sts.exchange(
        issuer.token(),
        client_id="backend",
        client_secret=BACKEND_SECRET,
        audience=PROJECTS,
    )
    assert_error(response, 400, "invalid_target")
    assert_issued(
        sts.exchange(
            issuer.token(), client_id="backend", client_secret=BACKEND_SECRET, audience=COUNTRIES
        )
    )


def test_basic_credentials_that_are_not_utf8_are_invalid_client(
    sts: Sts, issuer: FakeIssuer
) -> None:
    import base64

    header = {"Authorization": "Basic " + base64.b64encode(b"\xff:\xff").decode()}
    response = sts.exchange(issuer.token(), client_id=None, headers=header)
    assert_error(response, 401, "invalid_client")


def test_public_client_presenting_a_wrong_basic_secret_is_refused(
    sts: Sts, issuer: FakeIssuer
) -> None:
    # Credentials that are presented must be right, even for a client that needs none.
    response = sts.exchange(issuer.token(), client_id="spa", headers=_basic("spa", "wrong"))
    assert_error(response, 401, "invalid_client")


def test_basic_credentials_are_form_urldecoded(
    make_sts: Callable[..., Sts], issuer: FakeIssuer
) -> None:
    # RFC 6749 §2.3.1: client_id and secret are form-urlencoded before Basic encoding.
    sts = make_sts(env={**ENV, "BACKEND_SECRET": "pa ss+word"})
    encoded = _basic("backend", "pa+ss%2Bword")
    assert_issued(sts.exchange(issuer.token(), client_id=None, headers=encoded))


def test_cors_headers_follow_the_path_as_it_is_routed(sts: Sts) -> None:
    # A PATH_INFO of "//token" is served by /token (werkzeug's request.path), and its answer
    # varies by Origin like that of /token. (Called as WSGI: HTTP servers differ on "//".)
    environ = EnvironBuilder(
        path="/token",
        method="OPTIONS",
        headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"},
    ).get_environ()
    environ["PATH_INFO"] = "//token"
    _, status, headers = run_wsgi_app(sts.app.wsgi_app, environ, buffered=True)
    assert status.startswith("204")
    assert headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert headers["Vary"] == "Origin"
