"""The runbook scenario end to end: the real demo service calls the real fake provider through the gateway's
egress route, with the shipped policies.yaml (only the upstream addresses changed).

Provider down -> `POST /api/payments/intent` fails fast with 503 once the payment_provider breaker is open,
while orders and horoscopes keep working (the shared `app` breaker stays closed) -> provider back -> the
breaker closes by itself after its reset timeout (moved on the injected clock, not slept).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from perf.local import free_port
from tests.breaker.conftest import GatewayStarter, Provider, Running
from tests.support.upstream import base_url
from upstream_app.app import build_app as build_demo_app

SHIPPED = Path(__file__).resolve().parents[2] / "policies.yaml"
USER = {"X-User-Id": "runbook-user"}


async def run_scenario(
    text: str, start_gateway: GatewayStarter, provider: Provider, tmp_path: Path
) -> AsyncIterator[tuple[Running, ClientSession]]:
    demo_port = free_port()
    gw = await start_gateway(text, **{"http://127.0.0.1:8001": f"http://127.0.0.1:{demo_port}",
                                      "http://127.0.0.1:8002": provider.url})
    gateway_url = base_url(gw.client)
    demo = TestServer(build_demo_app(str(tmp_path / "demo.sqlite3"), f"{gateway_url}/egress/payments"),
                      port=demo_port)
    await demo.start_server()
    async with ClientSession(base_url=gateway_url) as session:
        yield gw, session
    await demo.close()


@pytest.fixture
async def scenario(
    start_gateway: GatewayStarter, provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Running, ClientSession]]:
    monkeypatch.delenv("REDIS_URL", raising=False)  # the shipped policy's in-process default
    async for running in run_scenario(SHIPPED.read_text(), start_gateway, provider, tmp_path):
        yield running


@pytest.fixture
async def trap(
    start_gateway: GatewayStarter, provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Running, ClientSession]]:
    """The shipped policy without payment_intent's own breaker: the design trap the policy avoids."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    text = SHIPPED.read_text()
    assert ", breaker: app_payments}" in text
    async for running in run_scenario(text.replace(", breaker: app_payments}", "}"), start_gateway, provider,
                                      tmp_path):
        yield running


async def pay(session: ClientSession, order_id: str) -> tuple[int, dict[str, object], str | None]:
    async with session.post("/api/payments/intent", headers=USER,
                            json={"order_id": order_id, "amount_cents": 1200, "currency": "EUR"}) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


async def new_order(session: ClientSession, service: str = "tarot_reading") -> str:
    async with session.post("/api/orders", headers=USER, json={"service": service, "quantity": 1}) as r:
        assert r.status == 201
        order_id: str = (await r.json())["id"]
        return order_id


async def others_work(session: ClientSession) -> None:
    async with session.get("/api/horoscopes/daily", headers=USER) as r:
        assert r.status == 200
    await new_order(session, "birth_chart")


async def test_provider_down_payments_fail_fast_others_unaffected_then_recovery(
    scenario: tuple[Running, ClientSession], provider: Provider
) -> None:
    gw, session = scenario
    order_id = await new_order(session)
    assert (await pay(session, order_id))[0] == 201

    provider.knobs(down=True)
    started = time.perf_counter()
    failures = []
    while True:
        status, body, retry_after = await pay(session, order_id)
        if status == 503:
            break
        failures.append(status)
        assert len(failures) < 50, "the payment_provider breaker never opened"
    time_to_open = time.perf_counter() - started
    assert failures == [502] * 5  # consecutive_failures: 5 in the shipped policy
    assert body["error"] == "payment_provider_unavailable" and retry_after == "60"
    assert gw.breaker("payment_provider").state == "open"

    calls = provider.calls
    latencies = []
    for _ in range(100):  # the gateway's own fast-fail answer, as the demo service gets it
        began = time.perf_counter()
        async with session.post("/egress/payments/v1/intents", json={"amount_cents": 1, "currency": "EUR"}) \
                as r:
            await r.read()
            assert r.status == 503
        latencies.append(time.perf_counter() - began)
    for _ in range(10):
        assert (await pay(session, order_id))[0] == 503
    assert provider.calls == calls  # the provider saw none of it

    await others_work(session)
    assert gw.breaker("app").state == "closed"
    assert gw.breaker("app_payments").state == "closed"

    provider.knobs(down=False)
    gw.clock.advance(60)  # the shipped reset_timeout
    assert (await pay(session, order_id))[0] == 201  # the probe goes through and closes the breaker
    assert gw.breaker("payment_provider").state == "closed"
    assert [(c["to"], c["cause"]) for c in gw.of_type("circuit_state_change")] == [
        ("open", "consecutive_failures"), ("half_open", "reset_timeout"), ("closed", "probes_succeeded"),
    ]
    print(f"\nrunbook: time-to-open {time_to_open * 1000:.1f} ms over {len(failures)} failed payments; "
          f"fast-fail at the egress p50 {statistics.median(latencies) * 1000:.2f} ms "
          f"max {max(latencies) * 1000:.2f} ms over {len(latencies)} requests")


async def test_without_its_own_breaker_payment_failures_would_open_the_app_breaker(
    trap: tuple[Running, ClientSession], provider: Provider
) -> None:
    gw, session = trap
    order_id = await new_order(session)
    provider.knobs(down=True)
    statuses = [(await pay(session, order_id))[0] for _ in range(20)]  # the app breaker: 20 in a row
    assert statuses == [502] * 5 + [503] * 15
    assert gw.breaker("app").state == "open"
    async with session.get("/api/horoscopes/daily", headers=USER) as r:
        assert r.status == 503 and (await r.json())["breaker"] == "app"  # horoscopes down with payments
