"""Manual breaker control through the ops API, as the runbook's "Circuit Breaker Stuck OPEN" needs it."""

from __future__ import annotations

import pytest

from tests.breaker.conftest import ADMIN, GatewayStarter, Provider
from tests.breaker.test_breaker_e2e import intent, open_breaker, start

AS_ADMIN = {"X-User-Id": ADMIN}


async def test_manual_close_of_an_open_breaker(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await start(start_gateway, provider)
    await open_breaker(gw, provider)
    provider.knobs(failure_ratio=0.0)
    async with gw.client.post("/api/ops/breakers/payment_provider", json={"action": "close"},
                              headers=AS_ADMIN) as response:
        assert response.status == 200
        assert (await response.json())["state"] == "closed"
    assert await intent(gw) == 201
    action = gw.of_type("admin_action")[-1]
    assert action["action"] == "breaker.close" and action["principal"] == f"user:{ADMIN}"
    assert action["before"] == {"breaker": "payment_provider", "state": "open"}
    assert action["after"] == {"breaker": "payment_provider", "state": "closed"}
    assert gw.of_type("circuit_state_change")[-1]["cause"] == "manual"


async def test_manual_open_stops_traffic_until_closed(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await start(start_gateway, provider)
    async with gw.client.post("/api/ops/breakers/payment_provider", json={"action": "open"},
                              headers=AS_ADMIN) as response:
        assert response.status == 200
        body = await response.json()
        assert body["state"] == "open" and body["held"] is True
    gw.clock.advance(3600)  # a manual open does not half-open by itself
    assert await intent(gw) == 503
    assert provider.calls == 0
    async with gw.client.get("/api/ops/breakers", headers=AS_ADMIN) as response:
        listed = {b["name"]: b for b in (await response.json())["breakers"]}
        assert listed["payment_provider"]["state"] == "open"
    async with gw.client.post("/api/ops/breakers/payment_provider", json={"action": "reset"},
                              headers=AS_ADMIN) as response:
        assert (await response.json())["state"] == "closed"
    assert await intent(gw) == 201


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error"),
    [
        ("/api/ops/breakers/nope", {"action": "close"}, AS_ADMIN, 404, "unknown_breaker"),
        ("/api/ops/breakers/payment_provider", {"action": "explode"}, AS_ADMIN, 400, "bad_action"),
        ("/api/ops/breakers/payment_provider", {"action": "close", "x": 1}, AS_ADMIN, 400, "bad_action"),
        ("/api/ops/breakers/payment_provider", ["close"], AS_ADMIN, 400, "bad_action"),
        ("/api/ops/breakers/payment_provider", {"action": "close"}, {}, 401, "unauthorized"),
        ("/api/ops/breakers/payment_provider", {"action": "close"}, {"X-User-Id": "someone"}, 403,
         "forbidden"),
    ],
)
async def test_bad_calls_get_a_json_reason_and_change_nothing(
    start_gateway: GatewayStarter, provider: Provider, path: str, body: object, headers: dict[str, str],
    status: int, error: str,
) -> None:
    gw = await start(start_gateway, provider)
    await open_breaker(gw, provider)
    async with gw.client.post(path, json=body, headers=headers) as response:
        assert response.status == status
        assert (await response.json())["error"] == error
    assert gw.breaker("payment_provider").state == "open"


async def test_bearer_token_admin_from_the_environment(
    start_gateway: GatewayStarter, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKENS", "a-long-enough-test-token-1234")
    gw = await start(start_gateway, provider)
    async with gw.client.get("/api/ops/breakers/payment_provider",
                             headers={"Authorization": "Bearer a-long-enough-test-token-1234"}) as response:
        assert response.status == 200
        snapshot = await response.json()
    assert snapshot["state"] == "closed" and snapshot["retry_in"] is None and snapshot["opened_at"] is None
