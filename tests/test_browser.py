"""The example SPA in headless Chromium against ``token-exchange dev`` and the countries API.

The page is loaded from ``http://localhost:<port>/spa/`` while it talks to the token service at
``http://127.0.0.1:<port>``: a different origin, so every call is a real cross-origin request
and CORS must work as it would between app.example.com and sts.example.com.

The page exchanges through the JavaScript client (``clients/js``); what it does is counted on
the servers' side (``Watched``), never taken from the page: one exchange for a burst of calls,
a fresh one for a new user, one retry after a 401, and ``Retry-After`` honoured after a 503.

Uses Debian's ``chromium`` and ``chromium-driver`` through Selenium; nothing is downloaded at run
time. Skipped, with the reason, only when no Chromium is installed.
"""

from __future__ import annotations

import io
import itertools
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest

from token_exchange.oauth.dpop import Nonces, token_hash
from token_exchange.oauth.jose import thumbprint
from token_exchange.serve.devmode import COUNTRIES_PREFIX, DEMO_USERS, create_dev_app
from token_exchange.web.headers import ResponseHeaders
from token_exchange.web.overload import LoadShedder

from .devworld import DevWorld, load_example
from .helpers import free_port, serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    # Starts a browser and the service: the slow layer.
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="no Chromium: install Debian's chromium and chromium-driver packages (.ci/run does)",
    ),
]


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver: Any, condition: Any, timeout: float = 15) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _open(driver: Any, sts_url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(sts_url.replace("127.0.0.1", "localhost") + "/spa/")
    _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))


def _sign_in(driver: Any, user: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"button[data-user={user}]").click()
    _wait(driver, lambda d: d.find_element(By.ID, "user").get_attribute("data-user") == user)


def _grants_of(driver: Any, user: str) -> str:
    """The page's "who may see what" line, once it is there for ``user``."""
    from selenium.webdriver.common.by import By

    _wait(driver, lambda d: d.find_element(By.ID, "grants").get_attribute("data-user") == user)
    return str(driver.find_element(By.ID, "grants").text)


def _outcome_of(driver: Any, country: str) -> tuple[str, str]:
    from selenium.webdriver.common.by import By

    result = driver.find_element(By.ID, "result")
    before = result.text
    driver.find_element(By.CSS_SELECTOR, f"#countries button[data-country={country}]").click()
    _wait(
        driver,
        lambda d: (
            d.find_element(By.ID, "result").get_attribute("data-country") == country
            and d.find_element(By.ID, "result").text != before
        ),
    )
    return str(result.get_attribute("data-outcome")), str(result.text)


def test_spa_exchanges_per_call_across_origins(browser: Any, dev_world: DevWorld) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, dev_world.sts_url)
    _sign_in(browser, "alice")

    outcome, text = _outcome_of(browser, "nl")
    assert outcome == "allowed", (text, browser.get_log("browser"))
    assert "Amsterdam" in text
    claims = browser.find_element(By.ID, "claims").text
    assert '"custom_access_to_countries": [\n    "nl"\n  ]' in claims
    assert '"aud": "https://countries.example.test"' in claims
    # exp and iat as dates and times too, not only as numbers (examples/spa/claims.js).
    assert re.search(r'\n  "exp": \d+,  // \S.* \(in ', claims), claims
    assert re.search(r'\n  "iat": \d+,  // \S', claims), claims

    outcome, text = _outcome_of(browser, "fr")
    assert outcome == "refused"
    assert "Refused by /token: invalid_target" in text  # by the permissions API at the exchange

    outcome, text = _outcome_of(browser, "de")
    assert outcome == "allowed"
    assert "Berlin" in text


def test_spa_says_who_may_see_what(browser: Any, dev_world: DevWorld) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, dev_world.sts_url)
    assert "Sign in to see" in browser.find_element(By.ID, "grants").text
    for user, profile in DEMO_USERS.items():
        _sign_in(browser, user)
        text = _grants_of(browser, user)
        # Read from the token the service minted, i.e. from the demo permissions API's data.
        assert f"{user} may see: {', '.join(profile['countries'])} " in text, text
        assert f"scopes: {' '.join(profile['scopes'])}" in text
        grants = browser.find_element(By.ID, "grants")
        assert grants.get_attribute("data-countries") == ",".join(profile["countries"])


def test_spa_forgets_the_previous_user(browser: Any, dev_world: DevWorld) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, dev_world.sts_url)
    _sign_in(browser, "alice")
    outcome, text = _outcome_of(browser, "nl")
    assert outcome == "allowed", (text, browser.get_log("browser"))
    assert "dev|alice" in text

    _sign_in(browser, "bob")
    result = browser.find_element(By.ID, "result")
    assert result.get_attribute("data-outcome") == "none"
    assert result.text == "No call yet."
    assert "Amsterdam" not in browser.find_element(By.TAG_NAME, "body").text
    assert browser.find_element(By.ID, "claims").text == "-"
    assert "bob may see: fr " in _grants_of(browser, "bob")

    # Alice's cached token for nl is gone: bob's call is exchanged afresh, and refused.
    outcome, text = _outcome_of(browser, "nl")
    assert outcome == "refused"
    assert "Refused by /token: invalid_target" in text
    outcome, text = _outcome_of(browser, "fr")
    assert outcome == "allowed"
    assert "Paris" in text
    assert "dev|bob" in text


# Wraps the page's client so that bob signs in just as alice's call, its answer already in,
# asks for the token it was made with (the second tokenFor of that call, counting from now).
_SWITCH_USER_DURING_A_CALL = """
const client = window.tokenExchangeDemo.client;
const tokenFor = client.tokenFor;
let calls = 0;
client.tokenFor = async (request) => {
  const token = await tokenFor(request);
  calls += 1;
  if (calls === 2) {
    document.querySelector("button[data-user=bob]").click();
    setTimeout(() => { window.switchedDuringCall = true; }, 100);
  }
  return token;
};
"""


def test_spa_never_shows_the_previous_user_an_answer_that_arrives_late(
    browser: Any, dev_world: DevWorld
) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, dev_world.sts_url)
    _sign_in(browser, "alice")
    _grants_of(browser, "alice")  # her grants' exchange is done: the next tokenFor is nl's
    browser.execute_script(_SWITCH_USER_DURING_A_CALL)
    browser.find_element(By.CSS_SELECTOR, "#countries button[data-country=nl]").click()
    _wait(browser, lambda d: d.execute_script("return window.switchedDuringCall === true"))
    _wait(browser, lambda d: d.find_element(By.ID, "user").get_attribute("data-user") == "bob")
    result = browser.find_element(By.ID, "result")
    assert result.get_attribute("data-outcome") == "none", result.text
    assert result.text == "No call yet."
    assert "Amsterdam" not in browser.find_element(By.TAG_NAME, "body").text
    assert browser.find_element(By.ID, "claims").text == "-"


@pytest.fixture
def sts_without_api() -> Iterator[str]:
    """``token-exchange dev`` on loopback, configured with a countries API that is not running."""
    sts_port, api_port = free_port(), free_port()
    app = create_dev_app(sts_port, countries_api_url=f"http://127.0.0.1:{api_port}")
    url, stop = serve(app, port=sts_port)
    try:
        yield url
    finally:
        stop()


def test_spa_says_the_countries_api_is_unreachable(browser: Any, sts_without_api: str) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, sts_without_api)
    _sign_in(browser, "alice")
    assert "alice may see: nl, de, be " in _grants_of(browser, "alice")

    outcome, text = _outcome_of(browser, "nl")
    assert outcome == "unreachable", text
    assert "The countries API is unreachable at http://127.0.0.1:" in text
    assert "Refused" not in text
    assert "countries_api.py" in text
    # The exchange itself succeeded: the minted token is shown.
    assert '"nl"' in browser.find_element(By.ID, "claims").text

    # A refusal by /token is still told apart from the unreachable API.
    outcome, text = _outcome_of(browser, "fr")
    assert outcome == "refused"
    assert "Refused by /token: invalid_target" in text


# -- the JavaScript client in the page, watched from the servers' side --------------------------


@dataclass
class Exchange:
    """One ``POST /token`` as the token service received it."""

    user: str  # the subject token's sub
    resource: str
    audience: str
    at: float
    status: int = 0
    dpop: bool = False  # it came with a DPoP proof


@dataclass
class Watched:
    """Counts what reaches the token service and the countries API; injects failures."""

    exchanges: list[Exchange] = field(default_factory=list)
    api_calls: list[str] = field(default_factory=list)  # each call's Authorization header
    api_proofs: list[str] = field(default_factory=list)  # each call's DPoP header ("": none)
    api_statuses: list[int] = field(default_factory=list)  # the countries API's answers
    #: The next this many ``POST /token`` get the service's own 503 (``Retry-After: 1``).
    unavailable: int = 0
    #: The next this many API calls present a broken token, so the real API answers 401.
    unauthorized: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The token service's ``Services`` (to switch DPoP nonces on).
    services: Any = None

    def of(self, user: str, country: str) -> list[Exchange]:
        resource = f"{COUNTRIES_PREFIX}{country}"
        return [e for e in self.exchanges if e.user == f"dev|{user}" and e.resource == resource]


def _watch_sts(app: Any, watched: Watched) -> Callable[..., Any]:
    services = app.extensions["token_exchange"]
    # The load shedder's refusal, as the service sends it when overloaded: a real 503, with
    # the headers of every answer.
    shed = ResponseHeaders(LoadShedder(app.wsgi_app, max_in_flight=0), services)
    inner = app.wsgi_app

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["PATH_INFO"] != "/token" or environ["REQUEST_METHOD"] != "POST":
            return inner(environ, start_response)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        form = urllib.parse.parse_qs(body.decode())
        subject = form.get("subject_token", [""])[0]
        claims = jwt.decode(subject, options={"verify_signature": False}) if subject else {}
        seen = Exchange(
            user=str(claims.get("sub", "")),
            resource=form.get("resource", [""])[0],
            audience=form.get("audience", [""])[0],
            at=time.monotonic(),
            dpop="HTTP_DPOP" in environ,
        )

        def recording(status: str, headers: Any, *args: Any) -> Any:
            seen.status = int(status.split()[0])
            return start_response(status, headers, *args)

        with watched.lock:
            watched.exchanges.append(seen)
            refuse = watched.unavailable > 0
            watched.unavailable -= 1 if refuse else 0
        return (shed if refuse else inner)(environ, recording)

    return wsgi


def _watch_api(app: Any, watched: Watched) -> Callable[..., Any]:
    inner = app.wsgi_app

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["REQUEST_METHOD"] != "GET":
            return inner(environ, start_response)
        with watched.lock:
            watched.api_calls.append(environ.get("HTTP_AUTHORIZATION", ""))
            watched.api_proofs.append(environ.get("HTTP_DPOP", ""))
            broken = watched.unauthorized > 0
            watched.unauthorized -= 1 if broken else 0
        if broken:  # as if the token had been revoked or its key rotated away
            environ["HTTP_AUTHORIZATION"] = "Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln"

        def recording(status: str, headers: Any, *args: Any) -> Any:
            with watched.lock:
                watched.api_statuses.append(int(status.split()[0]))
            return start_response(status, headers, *args)

        return inner(environ, recording)

    return wsgi


@pytest.fixture
def watched_world() -> Iterator[tuple[str, Watched]]:
    """``token-exchange dev`` and the countries API, each behind a ``Watched``."""
    watched = Watched()
    sts_port, api_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    sts_app = create_dev_app(sts_port, countries_api_url=api_url)
    sts_app.wsgi_app = _watch_sts(sts_app, watched)  # type: ignore[method-assign]
    watched.services = sts_app.extensions["token_exchange"]
    origins = (f"http://127.0.0.1:{sts_port}", f"http://localhost:{sts_port}")
    api_app = load_example("countries_api").create_api(
        f"http://127.0.0.1:{sts_port}", allowed_origins=origins
    )
    api_app.wsgi_app = _watch_api(api_app, watched)
    sts_url, stop_sts = serve(sts_app, port=sts_port)
    _, stop_api = serve(api_app, port=api_port)
    try:
        yield sts_url, watched
    finally:
        stop_api()
        stop_sts()


def _burst(driver: Any, country: str, n: int) -> Any:
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.tokenExchangeDemo.burst(arguments[0], arguments[1])"
        ".then(done, (e) => done(String(e)));",
        country,
        n,
    )


def test_spa_a_burst_of_calls_for_one_key_makes_one_exchange(
    browser: Any, watched_world: tuple[str, Watched]
) -> None:
    sts_url, watched = watched_world
    _open(browser, sts_url)
    _sign_in(browser, "alice")
    _grants_of(browser, "alice")
    calls_before = len(watched.api_calls)

    statuses = _burst(browser, "nl", 20)
    assert statuses == [200] * 20, (statuses, browser.get_log("browser"))
    assert len(watched.of("alice", "nl")) == 1
    assert len(watched.api_calls) - calls_before == 20
    assert len(set(watched.api_calls[calls_before:])) == 1  # all with the one minted token

    # And the cached token serves the next burst without any exchange.
    assert _burst(browser, "nl", 5) == [200] * 5
    assert len(watched.of("alice", "nl")) == 1


def test_spa_a_changed_user_gets_a_fresh_exchange(
    browser: Any, watched_world: tuple[str, Watched]
) -> None:
    sts_url, watched = watched_world
    _open(browser, sts_url)
    _sign_in(browser, "alice")
    assert _outcome_of(browser, "nl")[0] == "allowed"
    assert _outcome_of(browser, "de")[0] == "allowed"
    assert _outcome_of(browser, "nl")[0] == "allowed"
    assert len(watched.of("alice", "nl")) == 1  # the second call used the cached token
    alice_token = watched.api_calls[-1]

    _sign_in(browser, "bob")
    outcome, text = _outcome_of(browser, "nl")
    assert outcome == "refused", text  # bob's own exchange, refused: never alice's token
    assert len(watched.of("bob", "nl")) == 1
    assert watched.api_calls[-1] == alice_token  # the API saw no call for bob

    _sign_in(browser, "alice")  # a new sign-in token for alice: a fresh exchange too
    assert _outcome_of(browser, "nl")[0] == "allowed"
    assert len(watched.of("alice", "nl")) == 2
    assert watched.api_calls[-1] != alice_token


def test_spa_a_401_is_retried_once_with_a_fresh_exchange(
    browser: Any, watched_world: tuple[str, Watched]
) -> None:
    sts_url, watched = watched_world
    _open(browser, sts_url)
    _sign_in(browser, "alice")
    assert _outcome_of(browser, "nl")[0] == "allowed"
    calls = len(watched.api_calls)

    watched.unauthorized = 1
    outcome, text = _outcome_of(browser, "be")
    assert outcome == "allowed", (text, browser.get_log("browser"))
    assert len(watched.of("alice", "be")) == 2  # exchanged again after the 401
    assert len(watched.api_calls) - calls == 2  # and retried once
    assert watched.api_calls[-1] != watched.api_calls[-2]  # with the new token

    # Refused twice: one retry only, and the page shows the API's 401.
    watched.unauthorized = 2
    outcome, text = _outcome_of(browser, "de")
    assert outcome == "refused"
    assert "Refused by the countries API: 401" in text
    assert len(watched.of("alice", "de")) == 2
    assert len(watched.api_calls) - calls == 4


def test_spa_honours_retry_after_from_a_503(
    browser: Any, watched_world: tuple[str, Watched]
) -> None:
    sts_url, watched = watched_world
    _open(browser, sts_url)
    _sign_in(browser, "alice")
    _grants_of(browser, "alice")

    watched.unavailable = 1
    outcome, text = _outcome_of(browser, "nl")
    assert outcome == "allowed", (text, browser.get_log("browser"))
    first, second = watched.of("alice", "nl")
    assert (first.status, second.status) == (503, 200)
    assert second.at - first.at >= 1.0  # Retry-After: 1, never earlier
    assert second.at - first.at < 3.0

    # Unavailable on every try: a bounded number of them, then the page says so.
    watched.unavailable = 10
    outcome, text = _outcome_of(browser, "de")
    assert outcome == "unavailable", text
    assert "temporarily_unavailable" in text
    tries = watched.of("alice", "de")
    assert [t.status for t in tries] == [503, 503, 503]
    assert all(b.at - a.at >= 1.0 for a, b in itertools.pairwise(tries))


def _bound_call(watched: Watched, call: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The claims of API call ``call``'s DPoP-bound token and of its proof, checked as bound:
    the DPoP scheme, and a proof by the key the token names (``cnf.jkt``) with its ``ath``."""
    scheme, token = watched.api_calls[call].split(" ", 1)
    assert scheme == "DPoP", watched.api_calls[call][:20]
    claims = jwt.decode(token, options={"verify_signature": False})
    proof = watched.api_proofs[call]
    header = jwt.get_unverified_header(proof)
    assert header["typ"] == "dpop+jwt"
    assert header["alg"] == "ES256"
    assert "d" not in header["jwk"]
    assert thumbprint(header["jwk"]) == claims["cnf"]["jkt"]
    proof_claims = jwt.decode(proof, key=jwt.PyJWK(header["jwk"]), algorithms=["ES256"])
    assert proof_claims["ath"] == token_hash(token)
    return claims, proof_claims


def test_spa_calls_the_api_with_dpop_bound_tokens(
    browser: Any, watched_world: tuple[str, Watched]
) -> None:
    """The page's default: the JS client's non-extractable key binds every minted token
    (``cnf.jkt``), and the real countries API accepts it only with the key's proofs."""
    from selenium.webdriver.common.by import By

    sts_url, watched = watched_world
    _open(browser, sts_url)
    assert browser.find_element(By.ID, "dpop").is_selected()
    _sign_in(browser, "alice")
    _grants_of(browser, "alice")
    outcome, text = _outcome_of(browser, "nl")
    assert outcome == "allowed", (text, browser.get_log("browser"))
    assert "Amsterdam" in text
    (exchange,) = watched.of("alice", "nl")
    assert exchange.dpop
    assert exchange.status == 200
    assert watched.api_statuses[-1] == 200
    claims, proof = _bound_call(watched, -1)
    assert claims["custom_access_to_countries"] == ["nl"]
    assert proof["htm"] == "GET"
    assert proof["htu"].endswith("/countries/nl")
    alice_jkt = claims["cnf"]["jkt"]
    key = browser.find_element(By.ID, "dpop-key")
    assert key.get_attribute("data-jkt") == alice_jkt
    assert '"jkt"' in browser.find_element(By.ID, "claims").text

    # Every call its own proof: a burst with the one cached token, each proof accepted once.
    assert _burst(browser, "nl", 3) == [200] * 3
    assert len(watched.of("alice", "nl")) == 1
    assert len(set(watched.api_proofs[-4:])) == 4
    for call in (-3, -2, -1):
        assert _bound_call(watched, call)[0]["cnf"]["jkt"] == alice_jkt

    # Another user: a new key (the old one went with clear()), so new bindings.
    _sign_in(browser, "bob")
    outcome, text = _outcome_of(browser, "fr")
    assert outcome == "allowed", (text, browser.get_log("browser"))
    bob_jkt = _bound_call(watched, -1)[0]["cnf"]["jkt"]
    assert bob_jkt != alice_jkt
    assert browser.find_element(By.ID, "dpop-key").get_attribute("data-jkt") == bob_jkt

    # DPoP off: bearer tokens, no proofs, no cnf.
    browser.find_element(By.ID, "dpop").click()
    _sign_in(browser, "alice")
    outcome, text = _outcome_of(browser, "de")
    assert outcome == "allowed", (text, browser.get_log("browser"))
    assert watched.api_calls[-1].startswith("Bearer ")
    assert watched.api_proofs[-1] == ""
    bearer = jwt.decode(watched.api_calls[-1][7:], options={"verify_signature": False})
    assert "cnf" not in bearer
    assert not watched.of("alice", "de")[-1].dpop


def test_spa_follows_the_services_dpop_nonce_across_origins(
    browser: Any, watched_world: tuple[str, Watched]
) -> None:
    """With ``[dpop] nonce = true`` (switched on here in the running service): the page reads
    the ``DPoP-Nonce`` of the ``use_dpop_nonce`` refusal across origins (CORS exposes it),
    retries once with it, and sends it at once in its later proofs."""
    sts_url, watched = watched_world
    exchange = watched.services.exchange
    exchange.nonces = Nonces(exchange.replay, lifetime=300, clock=time.time)
    _open(browser, sts_url)
    _sign_in(browser, "alice")
    _grants_of(browser, "alice")
    assert [e.status for e in watched.exchanges] == [400, 200]
    outcome, text = _outcome_of(browser, "nl")
    assert outcome == "allowed", (text, browser.get_log("browser"))
    assert [e.status for e in watched.exchanges] == [400, 200, 200]  # the nonce sent at once
    claims, _ = _bound_call(watched, -1)
    assert claims["custom_access_to_countries"] == ["nl"]
