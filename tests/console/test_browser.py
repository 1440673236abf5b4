"""The ops console in headless Chromium against a live gateway serving the shipped policy."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from gateway.ops.auth import fingerprint
from tests.console.conftest import ADMIN_ID, ARTIFACTS, TOKEN, click, wait
from tests.support.live import LiveGateway, live_gateway


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


def audited(gateway: LiveGateway, action: str) -> list[dict[str, Any]]:
    """The admin_action records of `action` so far."""
    status, body = call(gateway, "POST", "/api/ops/export", {
        "entities": ["audit"], "range": {"from": "2020-01-01T00:00:00Z"},
        "filter": {"type": "admin_action", "action": action}}, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    records: list[dict[str, Any]] = json.loads(body)["audit"]
    return records


def tile_names(page: WebDriver) -> list[str | None]:
    return [t.get_attribute("data-route") for t in page.find_elements(By.CSS_SELECTOR, "#tiles .tile")]


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
    # The fleet / this-instance switch: the same routes, read with ?scope=instance.
    Select(page.find_element(By.ID, "scope")).select_by_value("instance")
    wait(page).until(lambda d: "instance " in (d.find_element(By.ID, "scope").get_attribute("title") or ""))
    p95 = r"p95\s+[\d.]+ ms / target 300 ms"
    wait(page).until(lambda d: re.search(p95, tiles(d).get("daily_horoscopes", "")))


def test_opening_a_breaker_from_the_page_makes_the_next_proxied_request_503(
    page: WebDriver, gateway: LiveGateway
) -> None:
    assert call(gateway, "GET", "/api/horoscopes/daily")[0] == 200
    sign_in(page)
    wait(page).until(lambda d: visible(d, "console"))
    open_view(page, "breakers")
    row = '#breakers tr[data-breaker="app"]'
    wait(page).until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
    click(page, By.CSS_SELECTOR, f"{row} td.actions button.danger")  # Open
    confirm(page)
    wait(page).until(lambda d: "open (held)" in d.find_element(By.CSS_SELECTOR, row).text)
    status, body = call(gateway, "GET", "/api/horoscopes/daily")
    assert status == 503, body
    records = audited(gateway, "breaker.open")
    assert [r["principal"] for r in records] == [f"token:{fingerprint(TOKEN)}"]  # under the admin's identity


def first_429(gateway: LiveGateway, user: str) -> int:
    """How many POST /api/orders the user gets before the first 429."""
    for n in range(1, 100):
        status, _ = call(gateway, "POST", "/api/orders", {}, {"X-User-Id": user})
        if status == 429:
            return n - 1
        assert status == 200
    raise AssertionError("no 429")


def test_an_override_edited_on_the_page_moves_the_point_where_429s_start(
    page: WebDriver, gateway: LiveGateway
) -> None:
    assert first_429(gateway, "before-override") == 15  # rate_orders_per_hour: 15/h per user
    sign_in(page)
    wait(page).until(lambda d: visible(d, "console"))
    open_view(page, "limits")
    row = '#limits tr[data-limit="rate_orders_per_hour"]'
    wait(page).until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
    field = page.find_element(By.CSS_SELECTOR, f"{row} input.rate")
    field.clear()
    field.send_keys("20")
    click(page, By.XPATH, "//tr[@data-limit='rate_orders_per_hour']//button[text()='Set']")
    confirm(page)
    wait(page).until(lambda d: "override" in d.find_element(By.CSS_SELECTOR, row).text)
    wait(page).until(lambda d: "20 / 1h" in d.find_element(By.CSS_SELECTOR, row).text)
    assert first_429(gateway, "after-override") == 20


def test_a_broken_policy_file_shows_its_file_line_error_on_the_page(
    page: WebDriver, gateway: LiveGateway
) -> None:
    sign_in(page)
    wait(page).until(lambda d: visible(d, "console"))
    open_view(page, "policy")
    lines = gateway.policy.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.startswith("  rate_orders_per_hour:"))
    lines[line - 1] = lines[line - 1].replace("rate: 15", "rate: -15")
    gateway.policy.write_text("\n".join(lines) + "\n")
    page.find_element(By.ID, "reload").click()
    expected = f"{gateway.policy}:{line} rate_limits.rate_orders_per_hour.rate: "
    wait(page).until(lambda d: expected in d.find_element(By.ID, "policy-problems").text)
    assert "reload rejected" in page.find_element(By.ID, "policy-result").text
    assert call(gateway, "GET", "/api/horoscopes/daily")[0] == 200  # the running policy keeps serving


def test_a_new_audit_event_appears_within_2_s(page: WebDriver, gateway: LiveGateway) -> None:
    sign_in(page)
    wait(page).until(lambda d: visible(d, "console"))
    open_view(page, "audit")
    wait(page).until(lambda d: "shown" in d.find_element(By.ID, "audit-count").text)
    marker = f"marker-{time.monotonic_ns()}"
    assert call(gateway, "GET", f"/api/ops/breakers/{marker}")[0] == 401  # audited as auth_failed
    started = time.monotonic()
    wait(page, timeout=2.0).until(lambda d: marker in d.find_element(By.ID, "audit").text)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0
    row = page.find_element(By.XPATH, f"//table[@id='audit']//tr[contains(., '{marker}')]").text
    assert "admin_action" in row and "auth_failed" in row


PAYLOAD = """<img src=x onerror="window.__xss=1;document.title='pwned'"><script>window.__xss=2</script>"""


def test_script_payloads_in_attacker_controlled_fields_are_shown_as_text(
    page: WebDriver, gateway: LiveGateway
) -> None:
    hostile = {"User-Agent": PAYLOAD, "X-User-Id": PAYLOAD}
    for _ in range(16):  # the 16th is a 429: a rate_limit_hit whose actor is the payload
        call(gateway, "POST", "/api/orders", {}, hostile)
    quoted = urllib.parse.quote(PAYLOAD, safe="")
    assert call(gateway, "GET", f"/api/ops/breakers/{quoted}", headers=hostile)[0] in (401, 403)
    sign_in(page)
    wait(page).until(lambda d: visible(d, "console"))
    open_view(page, "audit")
    cells = f"//table[@id='audit']//td[contains(., {xpath_literal(PAYLOAD)})]"
    wait(page).until(lambda d: len(d.find_elements(By.XPATH, cells)) >= 2)  # the actor and the path
    audit = page.find_element(By.ID, "audit").text
    assert "rate_limit_hit" in audit and f"/api/ops/breakers/{PAYLOAD}" in audit
    open_view(page, "limits")  # top actors: the payload as an actor id
    wait(page).until(lambda d: PAYLOAD in d.find_element(By.ID, "actors").text)
    open_view(page, "policy")  # limit and route names in a candidate policy's problems
    candidate = (
        "version: 1\nupstreams:\n  a: {url: 'http://127.0.0.1:9'}\n"
        f"rate_limits:\n  {json.dumps(PAYLOAD)}: {{rate: 1, per: 1s}}\n"
        f"routes:\n  - {{name: {json.dumps(PAYLOAD)}, match: 'GET /x', upstream: a,"
        f" rate_limits: [{json.dumps(PAYLOAD)}]}}\n"
    )
    page.find_element(By.ID, "candidate").send_keys(candidate)
    click(page, By.ID, "validate")
    wait(page).until(lambda d: PAYLOAD in d.find_element(By.ID, "validate-problems").text)
    assert page.execute_script("return window.__xss") is None
    assert page.title == "Gateway ops console"
    assert page.find_elements(By.CSS_SELECTOR, "img") == []  # nothing was parsed as markup
    assert page.execute_script("return document.scripts.length") == 1  # app.js only


def xpath_literal(text: str) -> str:
    """An XPath string literal for text holding both quote kinds."""
    parts = text.split("'")
    return "concat('" + "', \"'\", '".join(parts) + "')" if len(parts) > 1 else f"'{text}'"


def test_a_thousand_routes_are_searched_and_paged(browser: WebDriver, tmp_path: Path) -> None:
    routes = "\n".join(f'  - {{name: route_{i:04d}, match: "GET /api/r/{i}", upstream: app,'
                       f" slo: {{p95: 300ms, error_rate: 1%}}}}" for i in range(1000))
    policy = ("version: 1\nadmin: {tokens_env: GW_CONSOLE_TOKENS}\nupstreams:\n  app: {url: '{upstream}'}\n"
              f"routes:\n{routes}\n")
    with live_gateway(tmp_path, policy, {"GW_CONSOLE_TOKENS": TOKEN}) as gateway:
        assert call(gateway, "GET", "/api/r/777")[0] == 200
        browser.get(gateway.url + "/ops/")
        try:
            sign_in(browser)
            wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tiles .tile")) == 24)
            assert "page 1 of 42 (1000 routes with an SLO)" in browser.find_element(By.ID, "page").text
            click(browser, By.ID, "next")
            wait(browser).until(lambda d: "page 2 of 42" in d.find_element(By.ID, "page").text)
            first = browser.find_element(By.CSS_SELECTOR, "#tiles .tile").get_attribute("data-route")
            assert first == "route_0024"
            browser.find_element(By.ID, "search").send_keys("route_0777")
            wait(browser).until(lambda d: tile_names(d) == ["route_0777"])
            tile = browser.find_element(By.CSS_SELECTOR, '#tiles .tile[data-route="route_0777"]').text
            assert re.search(r"p95\s+[\d.]+ ms / target 300 ms", tile) and "1 in 300 s" in tile
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / "test_a_thousand_routes_are_searched_and_paged.png"))
            browser.execute_script("sessionStorage.clear()")


def test_the_runbook_admin_id_signs_in_from_a_trusted_network_and_acts_as_that_user(
    page: WebDriver, gateway: LiveGateway
) -> None:
    page.find_element(By.ID, "as-user").click()
    sign_in(page, ADMIN_ID)  # the browser is on 127.0.0.1: in the shipped admin.trusted_networks
    wait(page).until(lambda d: visible(d, "console"))
    open_view(page, "limits")
    wait(page).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#limits tr[data-limit="per_ip"]'))
    click(page, By.ID, "reset-all")
    confirm(page)
    records = wait(page).until(lambda _: audited(gateway, "rate_limits.reset"))
    assert [r["principal"] for r in records] == [f"user:{ADMIN_ID}"]
