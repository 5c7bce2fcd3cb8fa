"""The example SPA in headless Chromium against ``token-exchange dev`` and the countries API.

The page is loaded from ``http://localhost:<port>/spa/`` while it talks to the token service at
``http://127.0.0.1:<port>``: a different origin, so every call is a real cross-origin request
and CORS must work as it would between app.example.com and sts.example.com.

Uses Debian's ``chromium`` and ``chromium-driver`` through Selenium; nothing is downloaded at run
time. Skipped, with the reason, only when no Chromium is installed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from token_exchange.devmode import DEMO_USERS, create_dev_app

from .devworld import DevWorld
from .helpers import free_port, serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no Chromium: install Debian's chromium and chromium-driver packages (.ci/run does)",
)


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
