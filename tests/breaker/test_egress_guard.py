"""The shipped egress route is no open relay: only the app's address may use it, only the provider's API, at a
limited rate. Before, any client could reach /egress/payments/... (the provider's fault knobs included) and
open the payment_provider breaker for everyone."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.breaker.conftest import INTENT, GatewayStarter, Provider, Running
from tests.support.upstream import recording_app

SHIPPED = Path(__file__).resolve().parents[2] / "policies.yaml"


@pytest.fixture
async def app_upstream() -> TestServer:
    server = TestServer(recording_app())
    await server.start_server()
    yield server  # type: ignore[misc]
    await server.close()


async def status_from(port: int, source: str, method: str, path: str) -> int:
    """One request to the gateway from the loopback address `source` (127.0.0.2 is not the app's)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.request(method, f"http://127.0.0.1:{port}{path}", json=INTENT) as response:
            await response.read()
            return response.status


@pytest.fixture
async def shipped(
    start_gateway: GatewayStarter, provider: Provider, app_upstream: TestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Running:
    """The shipped policies.yaml, its upstreams pointed at the test's app and provider (no Redis)."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    app_url = str(app_upstream.make_url("")).rstrip("/")
    return await start_gateway(
        SHIPPED.read_text(), **{"http://127.0.0.1:8001": app_url, "http://127.0.0.1:8002": provider.url}
    )


async def test_the_shipped_egress_route_serves_only_the_app_and_only_the_providers_api(
    shipped: Running, provider: Provider
) -> None:
    gw = shipped
    port = gw.client.port
    assert port is not None
    # Another address on the host (or beyond it): refused before the provider sees anything.
    for _ in range(10):
        assert await status_from(port, "127.0.0.2", "POST", "/egress/payments/v1/intents") == 403
    assert provider.calls == 0
    assert gw.breaker("payment_provider").state == "closed"
    # The app (127.0.0.1) gets through.
    assert await status_from(port, "127.0.0.1", "POST", "/egress/payments/v1/intents") in (200, 201)
    assert provider.calls == 1
    # The fault knobs are not the provider's API: not routed to it, whoever asks.
    await status_from(port, "127.0.0.1", "POST", "/egress/payments/_faults")
    async with aiohttp.ClientSession() as session, session.get(f"{provider.url}/_faults") as response:
        assert (await response.json())["down"] is False
    assert provider.calls == 1


async def test_the_shipped_egress_route_is_rate_limited(shipped: Running, provider: Provider) -> None:
    gw = shipped
    statuses = []
    for _ in range(250):  # more than the shipped burst (200) at once, from the app's own address
        async with gw.client.get("/egress/payments/v1/ping") as response:
            statuses.append(response.status)
    assert 429 in statuses
    assert provider.calls < 250
