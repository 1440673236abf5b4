"""The ops console in headless Chromium against a live gateway serving the shipped policy."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.console.conftest import TOKEN, wait
from tests.support.live import LiveGateway


def call(gateway: LiveGateway, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request to the gateway from the test (not the browser)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(gateway.url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def sign_in(page: WebDriver, token: str = TOKEN) -> None:
    field = page.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    page.find_element(By.CSS_SELECTOR, "#signin-form button[type=submit]").click()


def visible(page: WebDriver, element_id: str) -> bool:
    return bool(page.find_element(By.ID, element_id).is_displayed())


def open_view(page: WebDriver, name: str) -> None:
    page.find_element(By.CSS_SELECTOR, f'#tabs [data-view="{name}"]').click()
    wait(page).until(lambda d: visible(d, f"view-{name}"))


def confirm(page: WebDriver) -> None:
    wait(page).until(lambda d: d.find_element(By.ID, "confirm").is_displayed())
    page.find_element(By.ID, "confirm-yes").click()


def test_refuses_without_credentials_and_loads_with_them(page: WebDriver, gateway: LiveGateway) -> None:
    wait(page).until(lambda d: visible(d, "signin"))
    assert not visible(page, "console")
    sign_in(page, "not-the-token-0123456789")
    wait(page).until(lambda d: "unknown bearer token" in d.find_element(By.ID, "signin-error").text)
    assert not visible(page, "console")
    token_in_storage = page.execute_script("return sessionStorage.length")
    assert token_in_storage == 0
    sign_in(page)
    wait(page).until(lambda d: visible(d, "console"))
    assert TOKEN not in page.current_url
    wait(page).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tiles .tile"))


def test_the_shipped_routes_appear_with_their_p95(page: WebDriver, gateway: LiveGateway) -> None:
    for _ in range(5):
        assert call(gateway, "GET", "/api/horoscopes/daily")[0] == 200
        assert call(gateway, "POST", "/api/orders", {}, {"X-User-Id": "u1"})[0] == 200
    sign_in(page)

    def tiles(d: WebDriver) -> dict[str, str]:
        found = d.find_elements(By.CSS_SELECTOR, "#tiles .tile")
        return {t.get_attribute("data-route"): t.text for t in found}

    wait(page).until(lambda d: {"daily_horoscopes", "orders", "payment_intent"} <= set(tiles(d)))
    shown = tiles(page)
    assert re.search(r"p95\s+[\d.]+ ms / target 300 ms", shown["daily_horoscopes"]), shown["daily_horoscopes"]
    assert re.search(r"p95\s+[\d.]+ ms / target 500 ms", shown["orders"])
    assert "p95\n– / target 500 ms" in shown["payment_intent"]  # no traffic yet: no number made up
