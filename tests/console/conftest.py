"""The ops console in a real browser: Debian's headless Chromium driven by Selenium through Debian's
chromedriver (`make test` installs both; nothing downloads a browser or a driver).

Every test gets its own gateway process serving the shipped policies.yaml (upstreams pointed at a recording
upstream, in-memory limits) and saves a screenshot to tmp/artifacts/console/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.live import LiveGateway, live_gateway

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tmp" / "artifacts" / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "console-test-token-0123456789abcdef"
ADMIN_ID = "6f1c2b9e-0a4d-4c1e-9b7a-2d3e4f5a6b7c"  # the shipped policy's admin id


def shipped_policy() -> str:
    """policies.yaml as shipped, its two upstreams pointed at the test's recording upstream."""
    text = (ROOT / "policies.yaml").read_text()
    for port in ("8001", "8002"):
        text = text.replace(f"http://127.0.0.1:{port}", "{upstream}")
    return text


def start_browser(profile: str) -> WebDriver:
    """Debian's Chromium, headless, through Debian's chromedriver, with its profile in `profile`."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} is missing: `make test` installs the Debian packages chromium and"
                               " chromium-driver (make test-tools)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a driver or a browser
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    return driver


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="gw-chromium-")
    driver = start_browser(profile)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[LiveGateway]:
    with live_gateway(tmp_path, shipped_policy(), {"GATEWAY_ADMIN_TOKENS": TOKEN, "REDIS_URL": ""}) as live:
        yield live


@pytest.fixture
def page(browser: WebDriver, gateway: LiveGateway, request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    """The browser on the console's sign-in page; a screenshot of the last state is saved after the test."""
    browser.get(gateway.url + "/ops/")
    yield browser
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"{request.node.name}.png"))
    browser.execute_script("sessionStorage.clear()")


def wait(driver: WebDriver, timeout: float = 10) -> WebDriverWait[WebDriver]:
    """A wait that looks again when the page re-rendered the element under it (it refreshes every second)."""
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException))


def click(driver: WebDriver, by: str, selector: str) -> None:
    """Click what `selector` finds, looking it up again if a refresh replaced it meanwhile."""

    def attempt(d: WebDriver) -> bool:
        d.find_element(by, selector).click()
        return True

    wait(driver).until(attempt)
