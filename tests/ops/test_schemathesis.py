"""The OpenAPI document stays true: schemathesis (property-based, from the document alone) against a live
gateway with a valid bearer token: no server error, no response outside its schema, no undocumented status
code, content type or header, a JSON 405 for undocumented methods, schema-violating requests refused and
schema-valid ones accepted, in every phase (examples, coverage, fuzzing, stateful)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.live import live_gateway

SPEC = Path(__file__).resolve().parents[2] / "gateway" / "ops" / "openapi.yaml"
TOKEN = "schemathesis-token-0123456789abcdef"
POLICY = """
version: 1
admin:
  user_ids: ["6f1c2b9e-0a4d-4c1e-9b7a-2d3e4f5a6b7c"]
  trusted_networks: [127.0.0.1/32]
  tokens_env: GW_SCHEMATHESIS_TOKENS
audit: {dir: "audit"}
upstreams:
  app: {url: "{upstream}", connect_timeout: 1s, timeout: 2s, breaker: app}
breakers:
  app: {consecutive_failures: 5, reset_timeout: 60s}
rate_limits:
  rate_orders_per_hour: {rate: 15, per: 1h, key: user}
  per_ip: {rate: 50, per: 1s, burst: 100, key: ip}
routes:
  - {name: daily, match: "GET /api/horoscopes/daily", upstream: app, slo: {p95: 300ms, error_rate: 1%}}
  - {name: orders, match: "POST /api/orders", upstream: app, rate_limits: [rate_orders_per_hour]}
  - {name: default, match: "* /{path:.*}", upstream: app, rate_limits: [per_ip]}
"""
# Every response check, and the request checks that hold for this API. Left out: the auth probes (each refused
# attempt counts toward the 10-a-minute lockout of the client address, which would then refuse the whole run)
# and the stateful resource checks (the API has no created resources). positive_data_acceptance is off where
# the server checks what a schema cannot say: limit names come from the running policy, and an export's range
# must run forwards.
CONFIG = """
[checks]
ignored_auth.enabled = false
missing_required_header.enabled = false
use_after_free.enabled = false
ensure_resource_availability.enabled = false
object_level_authorization.enabled = false

[[operations]]
include-path = "/api/ops/export"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path = "/api/ops/rate_limits"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"""


def test_the_ops_api_answers_as_its_openapi_document_says(tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    with live_gateway(tmp_path, POLICY, {"GW_SCHEMATHESIS_TOKENS": TOKEN}) as gateway:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", str(SPEC),
             "--url", gateway.url, "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", "20",
             "--seed", "1", "--generation-database", "none", "--suppress-health-check", "all",
             "--no-color", "--output-sanitize", "true"],
            capture_output=True, text=True, cwd=tmp_path, timeout=540,
        )
        assert gateway.proc.poll() is None, "the gateway died under the run"
    summary = run.stdout[-6000:]
    assert run.returncode == 0, summary + run.stderr[-2000:]
    assert "13 selected / 13 total" in run.stdout  # every documented operation was exercised
    assert " passed" in summary and "failure" not in summary.split("SUMMARY")[-1]
