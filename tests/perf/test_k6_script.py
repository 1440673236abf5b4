"""The runbook's `k6 run perf/load_test.js`: valid JavaScript, and its thresholds are the policy's SLOs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from gateway.policy.loader import load_policy

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "perf" / "load_test.js"
ENDPOINT_ROUTES = {"daily_horoscopes": "daily_horoscopes", "orders": "orders", "payments": "payment_intent"}


def test_script_is_valid_javascript() -> None:
    node = shutil.which("node")
    assert node is not None, "node is part of this machine image; it checks the k6 script's syntax"
    run = subprocess.run([node, "--input-type=module", "--check"], input=SCRIPT.read_text(), text=True,
                         capture_output=True)
    assert run.returncode == 0, run.stderr


def test_thresholds_are_the_policy_slos_and_rates_fit_the_per_ip_limit() -> None:
    text = SCRIPT.read_text()
    policy = load_policy(ROOT / "policies.yaml").policy
    routes = {r.name: r for r in policy.routes}
    thresholds = dict(re.findall(r'"http_req_duration\{endpoint:(\w+)\}": \["p\(95\)<(\d+)"\]', text))
    assert set(thresholds) == set(ENDPOINT_ROUTES)
    for endpoint, route in ENDPOINT_ROUTES.items():
        slo = routes[route].slo
        assert slo is not None and slo.p95 is not None
        assert int(thresholds[endpoint]) == round(slo.p95 * 1000)
    assert re.search(r'"http_req_failed": \["rate<0\.01"\]', text)
    # Every iteration of `payments` sends two requests (an order, then the intent).
    rates = dict(re.findall(r'exec: "(\w+)", rate: (\d+)', text))
    per_second = int(rates["horoscopes"]) + int(rates["orders"]) + 2 * int(rates["payments"])
    assert per_second < policy.rate_limits["per_ip"].rate
