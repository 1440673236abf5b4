"""The README's picture of the console: `python -m tests.console.screenshot [docs/img/console.png]`.

Serves the shipped policy against the recording upstream, sends a minute of mixed traffic while the console's
overview is open (so its charts have samples), and saves a screenshot. Not a test; the browser tests save
their own screenshots under tmp/artifacts/console/.
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from selenium.webdriver.common.by import By

from tests.console.conftest import ROOT, TOKEN, shipped_policy, start_browser
from tests.console.test_browser import call, sign_in
from tests.support.live import LiveGateway, live_gateway

SECONDS = 60


def traffic(gateway: LiveGateway, stop: threading.Event) -> None:
    paths = [("GET", "/api/horoscopes/daily", None), ("POST", "/api/orders", {}),
             ("POST", "/api/payments/intent", {})]
    while not stop.is_set():
        method, path, body = random.choice(paths)
        call(gateway, method, path, body, {"X-User-Id": f"user-{random.randint(1, 40)}"})
        time.sleep(random.uniform(0.005, 0.05) * (2 + (time.monotonic() // 10) % 3))


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp, \
            live_gateway(Path(tmp), shipped_policy(), {"GATEWAY_ADMIN_TOKENS": TOKEN, "REDIS_URL": ""}) as gw:
        driver = start_browser(tmp + "/profile")
        stop = threading.Event()
        sender = threading.Thread(target=traffic, args=(gw, stop), daemon=True)
        sender.start()
        driver.get(gw.url + "/ops/")
        sign_in(driver)
        time.sleep(SECONDS)
        driver.set_window_size(1400, 560)
        assert driver.find_elements(By.CSS_SELECTOR, "#tiles .tile")
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        stop.set()
        sender.join()
        driver.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "img" / "console.png")
