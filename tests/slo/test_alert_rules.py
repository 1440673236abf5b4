"""Alert rules and the Grafana dashboard rendered from the policy: promtool, and the names /metrics has."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from aiohttp.test_utils import TestServer

from gateway.alert_rules import render, render_yaml
from gateway.dashboard import render_json
from gateway.policy.loader import load_policy
from gateway.policy.model import Policy
from tests.conftest import GatewayFactory
from tests.slo.test_metrics_http import policy

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=CONFIG)


def test_shipped_rules_are_the_rendering_of_the_shipped_policy() -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "alerts", "policies.yaml"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (CONFIG / "alerts.yml").read_text(), "regenerate: python -m gateway alerts ..."
    assert result.stdout == render_yaml(load_policy(ROOT / "policies.yaml").policy)


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    check = promtool("check", "rules", "alerts.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_rules_follow_the_policy_targets(tmp_path: Path) -> None:
    text = """
version: 1
slo: {count_429_as_error: true}
upstreams: {api: {url: "http://127.0.0.1:9"}}
routes:
  - {name: checkout, match: "POST /checkout", upstream: api, slo: {p99: 1200ms, error_rate: 0.1%}}
  - {name: search, match: "GET /search", upstream: api, slo: {p50: 80ms}}
  - {name: default, match: "* /{path:.*}", upstream: api}
"""
    model = Policy.model_validate(yaml.safe_load(text))
    rules = {(r.get("alert"), r.get("labels", {}).get("route"), r.get("labels", {}).get("quantile")): r
             for group in render(model)["groups"] for r in group["rules"] if "alert" in r}
    assert rules[("HighLatency", "checkout", "p99")]["expr"].startswith("histogram_quantile(0.99,")
    assert rules[("HighLatency", "checkout", "p99")]["expr"].endswith("> 1.2")
    assert rules[("HighLatency", "search", "p50")]["expr"].endswith("> 0.08")
    assert rules[("HighErrorRate", "checkout", None)]["expr"].endswith("> 0.001")
    assert "> 0.0144 and" in rules[("ErrorBudgetBurnFast", "checkout", None)]["expr"]
    assert ("HighErrorRate", "search", None) not in rules  # no error_rate target, no error alert
    assert not any(route == "default" for _, route, _ in rules)
    path = tmp_path / "rules.yml"
    path.write_text(render_yaml(model))
    check = promtool("check", "rules", str(path))
    assert check.returncode == 0, check.stdout + check.stderr


async def test_rules_and_dashboard_only_use_metrics_the_gateway_exposes(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    client = await make_gateway(policy(upstream.port))
    async with client.get("/slow", params={"s": "0.001"}) as response:
        assert response.status == 200
    exposition = await (await client.get("/metrics")).text()
    exposed = set(re.findall(r"^# TYPE (\S+) (\S+)", exposition, re.M))
    names = set()
    for name, kind in exposed:
        names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else {name}
    # Exposed only when the rate limiter has a Redis (this test policy has none).
    names |= {"gateway_redis_errors_total"}
    rules_text = (CONFIG / "alerts.yml").read_text()
    recorded = set(re.findall(r"record: (\S+)", rules_text))
    dashboard = json.loads((CONFIG / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += re.findall(r"expr: (.+)", rules_text)
    used = {m for e in exprs for m in re.findall(r"\b(gateway[:_][A-Za-z0-9_:]+)", e)}
    assert used, "no metric found in the rules or the dashboard"
    unknown = used - names - recorded
    assert not unknown, unknown
    assert "gateway_rate_limit_breaches_total" in exposition  # the family is there even before a breach
    shipped = load_policy(ROOT / "policies.yaml").policy
    assert (CONFIG / "grafana-dashboard.json").read_text() == render_json(shipped)
