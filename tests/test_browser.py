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

from .conftest import DevWorld

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


def test_spa_exchanges_per_call_across_origins(browser: Any, dev_world: DevWorld) -> None:
    from selenium.webdriver.common.by import By

    page = dev_world.sts_url.replace("127.0.0.1", "localhost") + "/spa/"
    browser.get(page)
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))

    browser.find_element(By.CSS_SELECTOR, "button[data-user=alice]").click()
    _wait(browser, lambda d: d.find_element(By.ID, "user").get_attribute("data-user") == "alice")

    def outcome_of(country: str) -> tuple[str, str]:
        result = browser.find_element(By.ID, "result")
        before = result.text
        browser.find_element(By.CSS_SELECTOR, f"#countries button[data-country={country}]").click()
        _wait(
            browser,
            lambda d: (
                d.find_element(By.ID, "result").get_attribute("data-country") == country
                and d.find_element(By.ID, "result").text != before
            ),
        )
        return str(result.get_attribute("data-outcome")), str(result.text)

    outcome, text = outcome_of("nl")
    assert outcome == "allowed", (text, browser.get_log("browser"))
    assert "Amsterdam" in text
    claims = browser.find_element(By.ID, "claims").text
    assert '"custom_access_to_countries": [\n    "nl"\n  ]' in claims
    assert '"aud": "https://countries.example.test"' in claims

    outcome, text = outcome_of("fr")
    assert outcome == "refused"
    assert "invalid_target" in text  # refused by the permissions API at the exchange

    outcome, text = outcome_of("de")
    assert outcome == "allowed"
    assert "Berlin" in text
