"""Payment intents against a real fake-provider server: happy path and honest failure pass-through."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from pytest_aiohttp import AiohttpClient, AiohttpServer

from upstream_app.app import build_app

AppClient = TestClient[Request, Application]
ProviderClient = TestClient[Request, None]
AppFactory = Callable[..., Awaitable[AppClient]]
ALICE = {"X-User-Id": "alice"}


async def _order(client: AppClient, headers: dict[str, str] = ALICE) -> str:
    resp = await client.post("/api/orders", json={"service": "birth_chart", "quantity": 1}, headers=headers)
    assert resp.status == 201
    order_id: str = (await resp.json())["id"]
    return order_id


async def _faults(provider_client: ProviderClient, **knobs: Any) -> dict[str, Any]:
    resp = await provider_client.post("/_faults", json=knobs)
    assert resp.status == 200
    state: dict[str, Any] = await resp.json()
    return state


async def _pay(
    client: AppClient, order_id: str, amount_cents: int = 100, currency: str = "USD"
) -> ClientResponse:
    """Alice asks for a payment intent for `order_id`."""
    body = {"order_id": order_id, "amount_cents": amount_cents, "currency": currency}
    return await client.post("/api/payments/intent", json=body, headers=ALICE)


def _intents(db_path: str) -> list[tuple[str, str, str, int, str]]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT id, order_id, user_id, amount_cents, currency FROM payment_intents")
        return list(rows.fetchall())


async def test_payment_intent_happy_path(
    client: AppClient, provider_client: ProviderClient, db_path: str
) -> None:
    order_id = await _order(client)
    resp = await _pay(client, order_id, 2500, "EUR")
    assert resp.status == 201
    body = await resp.json()
    assert body["id"].startswith("pi_")
    assert body["client_secret"].startswith(body["id"] + "_secret_")
    assert (body["order_id"], body["amount_cents"], body["currency"]) == (order_id, 2500, "EUR")
    assert _intents(db_path) == [(body["id"], order_id, "alice", 2500, "EUR")]
    assert (await _faults(provider_client))["calls"] == 1


async def test_provider_failure_status_becomes_502(
    client: AppClient, provider_client: ProviderClient, db_path: str
) -> None:
    order_id = await _order(client)
    await _faults(provider_client, failure_ratio=1.0, status=500)
    resp = await _pay(client, order_id)
    assert resp.status == 502
    body = await resp.json()
    assert (body["error"], body["provider_status"]) == ("payment_provider_error", 500)
    assert _intents(db_path) == []


async def test_provider_503_is_passed_through_with_retry_after(
    client: AppClient, provider_client: ProviderClient
) -> None:
    order_id = await _order(client)
    await _faults(provider_client, failure_ratio=1.0, status=503)
    resp = await _pay(client, order_id)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["provider_status"] == 503


async def test_provider_down_becomes_502(
    client: AppClient, provider_client: ProviderClient, db_path: str
) -> None:
    order_id = await _order(client)
    await _faults(provider_client, down=True)
    resp = await _pay(client, order_id)
    assert resp.status == 502
    assert (await resp.json())["error"] == "payment_provider_unreachable"
    assert (await _faults(provider_client))["calls"] == 1, "no retries: the gateway owns those"
    assert _intents(db_path) == []


async def test_provider_timeout_becomes_504(make_client: AppFactory, provider_client: ProviderClient) -> None:
    client = await make_client(provider_timeout=0.05)
    order_id = await _order(client)
    await _faults(provider_client, latency_ms=100)
    resp = await _pay(client, order_id)
    assert resp.status == 504
    assert (await resp.json())["error"] == "payment_provider_timeout"


async def test_unreachable_provider_port_becomes_502(
    aiohttp_client: AiohttpClient, unused_tcp_port: int, db_path: str
) -> None:
    client = await aiohttp_client(build_app(db_path, f"http://127.0.0.1:{unused_tcp_port}"))
    order_id = await _order(client)
    resp = await _pay(client, order_id)
    assert resp.status == 502


async def test_malformed_provider_success_body_becomes_502(
    aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, db_path: str
) -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(status=201, text="not json")

    bad = web.Application()
    bad.router.add_post("/v1/intents", garbage)
    server = await aiohttp_server(bad)
    client = await aiohttp_client(build_app(db_path, str(server.make_url("/"))))
    order_id = await _order(client)
    resp = await _pay(client, order_id)
    assert resp.status == 502
    assert (await resp.json())["error"] == "payment_provider_error"
    assert _intents(db_path) == []


@pytest.mark.parametrize("order_owner", ["bob", None])
async def test_foreign_or_missing_order_is_404_and_provider_not_called(
    client: AppClient, provider_client: ProviderClient, order_owner: str | None
) -> None:
    order_id = await _order(client, {"X-User-Id": order_owner}) if order_owner else "no-such-order"
    resp = await _pay(client, order_id, currency="EUR")
    assert resp.status == 404
    assert (await resp.json())["error"] == "order_not_found"
    assert (await _faults(provider_client))["calls"] == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"amount_cents": 100, "currency": "EUR"}, "order_id"),
        ({"order_id": "x", "amount_cents": 0, "currency": "EUR"}, "amount_cents"),
        ({"order_id": "x", "amount_cents": -5, "currency": "EUR"}, "amount_cents"),
        ({"order_id": "x", "amount_cents": 1.5, "currency": "EUR"}, "amount_cents"),
        ({"order_id": "x", "amount_cents": 100, "currency": "eur"}, "currency"),
        ({"order_id": "x", "amount_cents": 100, "currency": "EURO"}, "currency"),
        ({"order_id": "x", "amount_cents": 100, "currency": "EUR", "tip": 1}, "tip"),
    ],
)
async def test_invalid_payment_request_is_422(
    client: AppClient, provider_client: ProviderClient, payload: dict[str, Any], field: str
) -> None:
    resp = await client.post("/api/payments/intent", json=payload, headers=ALICE)
    assert resp.status == 422
    assert field in (await resp.json())["detail"]
    assert (await _faults(provider_client))["calls"] == 0


async def test_payment_requires_user(client: AppClient) -> None:
    resp = await client.post(
        "/api/payments/intent", json={"order_id": "x", "amount_cents": 1, "currency": "EUR"}
    )
    assert resp.status == 401
