"""Every ops command of the M41 runbook, in the shape it is written, against the shipped policies.yaml in
front of the real demo service and fake payment provider (as `make run` starts them), with its admin id.

curl -d sends `Content-Type: application/x-www-form-urlencoded`: the POST commands are sent exactly so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestServer

from gateway.audit import iso
from tests.conftest import GatewayFactory
from tests.ops.conftest import Client
from tests.support.upstream import base_url
from upstream_app.app import build_app as build_demo
from upstream_app.provider import Faults, build_provider_app

REPO = Path(__file__).resolve().parents[2]
ADMIN = {"X-User-Id": "6f1c2b9e-0a4d-4c1e-9b7a-2d3e4f5a6b7c"}  # the admin id policies.yaml ships
CURL_D = {"Content-Type": "application/x-www-form-urlencoded"}


async def curl_d(gw: Client, path: str, data: str) -> ClientResponse:
    """What `curl -X POST URL -H "X-User-Id: <admin-uuid>" -d DATA` sends: a form content type."""
    return await gw.post(path, headers={**ADMIN, **CURL_D}, data=data)


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """The fake payment provider and the demo service on loopback ports: (app url, provider url)."""
    provider = TestServer(build_provider_app(Faults(seed=7)))
    await provider.start_server()
    demo = TestServer(build_demo(str(tmp_path / "demo.sqlite3"), str(provider.make_url("/"))))
    await demo.start_server()
    yield base_url(demo), base_url(provider)
    await demo.close()
    await provider.close()


@pytest.fixture
async def gw(
    make_gateway: GatewayFactory, services: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> Client:
    """The gateway on the shipped policies.yaml, as `make run` runs it (no Redis)."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    app_url, provider_url = services
    text = (REPO / "policies.yaml").read_text()
    assert "http://127.0.0.1:8001" in text and "http://127.0.0.1:8002" in text
    text = text.replace("http://127.0.0.1:8001", app_url).replace("http://127.0.0.1:8002", provider_url)
    return await make_gateway(text)


async def traffic(gw: Client) -> None:
    """Some of everything: horoscopes, orders, a payment intent, and phone verifications past their limit."""
    assert (await gw.get("/api/horoscopes/daily")).status == 200
    order = await gw.post(
        "/api/orders", headers={"X-User-Id": "u1"}, json={"service": "tarot_reading", "quantity": 1}
    )
    assert order.status < 500
    await gw.post(
        "/api/payments/intent", headers={"X-User-Id": "u1"}, json={"amount": 1000, "currency": "USD"}
    )
    statuses = []
    for _ in range(5):  # rate_phone_verify_per_hour: 3 an hour per user
        resp = await gw.post(
            "/api/phone/verify", headers={"X-User-Id": "abuser"}, json={"phone": "+15555550100"}
        )
        statuses.append(resp.status)
        if resp.status == 429:
            assert int(resp.headers["Retry-After"]) >= 1  # "429 responses with Retry-After headers"
    assert statuses.count(429) == 2


async def test_health_check(gw: Client) -> None:
    # curl http://localhost:8000/api/ops/health
    resp = await gw.get("/api/ops/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and set(body["breakers"]) == {"app", "app_payments", "payment_provider"}


async def test_get_current_performance_metrics(gw: Client) -> None:
    await traffic(gw)
    # curl -H "X-User-Id: <admin-uuid>" "http://localhost:8000/api/ops/metrics"
    resp = await gw.get("/api/ops/metrics", headers=ADMIN)
    assert resp.status == 200
    metrics = (await resp.json())["metrics"]
    for key in (
        "latency_ms_p95_GET_/api/horoscopes/daily",
        "latency_ms_p95_POST_/api/orders",
        "latency_ms_p95_POST_/api/payments/intent",
        "error_rate_POST_/api/orders",
        "rate_limit_breaches_total",
        "circuit_breakers",
    ):
        assert key in metrics, key
    assert metrics["latency_ms_p95_GET_/api/horoscopes/daily"] > 0
    assert metrics["rate_limit_breaches_total"] >= 2
    # ... | jq .metrics.circuit_breakers
    assert metrics["circuit_breakers"]["payment_provider"]["state"] == "closed"
    # watch ... jq ".metrics | {p95_horoscopes, p95_orders, error_rates,
    #                          breaches: .rate_limit_breaches_total}"
    for key in ("p95_horoscopes", "p95_orders", "error_rates"):
        assert key in metrics, key


async def test_metrics_need_the_admin(gw: Client) -> None:
    assert (await gw.get("/api/ops/metrics")).status == 401
    assert (await gw.get("/api/ops/metrics", headers={"X-User-Id": "u1"})).status == 403


async def test_check_audit_logs_for_abuse_patterns(gw: Client) -> None:
    await traffic(gw)
    # curl -X POST "http://localhost:8000/api/ops/export" -H "X-User-Id: <admin-uuid>" \
    #   -d '{"entities": ["audit"], "range": {"from": "2025-09-13T00:00:00Z"}}'
    resp = await curl_d(
        gw,
        "/api/ops/export",
        '{"entities": ["audit"], "range": {"from": "2025-09-13T00:00:00Z"}}',
    )
    assert resp.status == 200
    hits = [r for r in (await resp.json())["audit"] if r["type"] == "rate_limit_hit"]
    assert [(h["actor"], h["limit"], h["route"]) for h in hits] == [
        ("abuser", "rate_phone_verify_per_hour", "phone_verify")
    ] * 2
    # "Look for repeated rate_limit_hit events from same actors": one call.
    resp = await curl_d(
        gw,
        "/api/ops/export",
        (
            '{"entities": ["audit"], "range": {"from": "2025-09-13T00:00:00Z"},'
            ' "filter": {"type": "rate_limit_hit"}, "group_by": "actor"}'
        ),
    )
    groups = (await resp.json())["audit"]["groups"]
    assert [(g["actor"], g["count"]) for g in groups] == [("abuser", 2)]


async def test_reset_rate_limits_to_defaults(gw: Client) -> None:
    # curl -X POST "http://localhost:8000/api/ops/rate_limits" -H "X-User-Id: <admin-uuid>" -d '{
    #     "rate_orders_per_hour": 15, "rate_phone_verify_per_hour": 3, "rate_assist_draft_per_hour": 8 }'
    resp = await curl_d(
        gw,
        "/api/ops/rate_limits",
        (
            '{\n    "rate_orders_per_hour": 15,\n    "rate_phone_verify_per_hour": 3,\n'
            '    "rate_assist_draft_per_hour": 8\n  }'
        ),
    )
    assert resp.status == 200
    current = await (await gw.get("/api/ops/rate_limits", headers=ADMIN)).json()
    rates = (
        {row["name"]: row["rate"] for row in current["limits"]}
        if isinstance(current["limits"], list)
        else {name: row["rate"] for name, row in current["limits"].items()}
    )
    assert (
        rates["rate_orders_per_hour"],
        rates["rate_phone_verify_per_hour"],
        rates["rate_assist_draft_per_hour"],
    ) == (15, 3, 8)
    # And the call is in the audit trail, with who made it (the policy's own rates: nothing changed, but the
    # attempt is on record all the same).
    export = await gw.post(
        "/api/ops/export",
        headers=ADMIN,
        json={
            "entities": ["audit"],
            "range": {"from": iso(0)},
            "filter": {"type": "admin_action", "principal": f"user:{ADMIN['X-User-Id']}"},
        },
    )
    actions = [r["action"] for r in (await export.json())["audit"]]
    assert actions[0] in ("rate_limits.set", "POST /api/ops/rate_limits")
    assert actions[1:] == ["GET /api/ops/rate_limits"]
