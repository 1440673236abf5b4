"""Orders: strict validation, persistence in SQLite across restarts, idempotency keys."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

AppClient = TestClient[Request, Application]
AppFactory = Callable[..., Awaitable[AppClient]]

ALICE = {"X-User-Id": "alice"}
BOB = {"X-User-Id": "bob"}
VALID = {"service": "tarot_reading", "quantity": 2, "notes": "about work"}


def _row_count(db_path: str) -> int:
    with sqlite3.connect(db_path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0])


async def test_create_order_returns_201_and_persists(client: AppClient, db_path: str) -> None:
    resp = await client.post("/api/orders", json=VALID, headers=ALICE)
    assert resp.status == 201
    body = await resp.json()
    assert body["status"] == "created"
    assert (body["user_id"], body["service"], body["quantity"], body["notes"]) == (
        "alice",
        "tarot_reading",
        2,
        "about work",
    )
    with sqlite3.connect(db_path) as conn:
        row = conn.execute("SELECT user_id, service, quantity, notes FROM orders WHERE id = ?", (body["id"],))
        assert row.fetchone() == ("alice", "tarot_reading", 2, "about work")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_order_requires_user_header(client: AppClient) -> None:
    resp = await client.post("/api/orders", json=VALID)
    assert resp.status == 401
    assert (await resp.json())["error"] == "unauthenticated"
    assert (await client.get("/api/orders")).status == 401


@pytest.mark.parametrize("user_id", ["", "   ", "a b", "x" * 129, "bob\tsmith"])
async def test_malformed_user_header_rejected(client: AppClient, user_id: str) -> None:
    resp = await client.post("/api/orders", json=VALID, headers={"X-User-Id": user_id})
    assert resp.status in (400, 401)
    assert "error" in await resp.json()


@pytest.mark.parametrize("raw", [b"{bad json", b"", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000])
async def test_malformed_json_is_400(client: AppClient, db_path: str, raw: bytes) -> None:
    resp = await client.post("/api/orders", data=raw, headers={**ALICE, "Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_json"
    assert _row_count(db_path) == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**VALID, "discount": 50}, "discount"),
        ({**VALID, "service": "palm_reading"}, "service"),
        ({"quantity": 1}, "service"),
        ({**VALID, "quantity": 0}, "quantity"),
        ({**VALID, "quantity": 11}, "quantity"),
        ({**VALID, "quantity": "2"}, "quantity"),
        ({**VALID, "quantity": True}, "quantity"),
        ({**VALID, "quantity": 2.0}, "quantity"),
        ({"service": "birth_chart"}, "quantity"),
        ({**VALID, "notes": "x" * 501}, "notes"),
        ({**VALID, "notes": 7}, "notes"),
    ],
)
async def test_invalid_order_is_422_with_field_detail(
    client: AppClient, db_path: str, payload: dict[str, Any], field: str
) -> None:
    resp = await client.post("/api/orders", json=payload, headers=ALICE)
    assert resp.status == 422
    body = await resp.json()
    assert body["error"] == "validation_error"
    assert field in body["detail"]
    assert _row_count(db_path) == 0


@pytest.mark.parametrize("document", [b'[{"service": "birth_chart"}]', b'"tarot"', b"3", b"null"])
async def test_non_object_body_is_422(client: AppClient, document: bytes) -> None:
    resp = await client.post(
        "/api/orders", data=document, headers={**ALICE, "Content-Type": "application/json"}
    )
    assert resp.status == 422
    assert (await resp.json())["detail"] == {"body": "must be a JSON object"}


async def test_boundary_values_are_accepted(client: AppClient) -> None:
    for payload in (
        {"service": "birth_chart", "quantity": 1},
        {"service": "horoscope_report", "quantity": 10, "notes": "n" * 500},
        {"service": "tarot_reading", "quantity": 3, "notes": None},
    ):
        resp = await client.post("/api/orders", json=payload, headers=ALICE)
        assert resp.status == 201, payload


async def test_list_orders_is_per_user_newest_first_and_capped_at_50(client: AppClient) -> None:
    ids = []
    for i in range(52):
        resp = await client.post(
            "/api/orders", json={"service": "tarot_reading", "quantity": 1 + i % 10}, headers=ALICE
        )
        ids.append((await resp.json())["id"])
    await client.post("/api/orders", json=VALID, headers=BOB)

    listed = await client.get("/api/orders", headers=ALICE)
    assert listed.status == 200
    orders = (await listed.json())["orders"]
    assert [o["id"] for o in orders] == ids[::-1][:50]
    assert {o["user_id"] for o in orders} == {"alice"}

    bob_orders = (await (await client.get("/api/orders", headers=BOB)).json())["orders"]
    assert len(bob_orders) == 1


async def test_orders_survive_app_restart(make_client: AppFactory) -> None:
    first = await make_client()
    created = await (await first.post("/api/orders", json=VALID, headers=ALICE)).json()
    await first.close()  # runs the cleanup context: the SQLite connection is closed

    second = await make_client()
    listed = await (await second.get("/api/orders", headers=ALICE)).json()
    assert [o["id"] for o in listed["orders"]] == [created["id"]]
    assert listed["orders"][0]["created_at"] == created["created_at"]


async def test_idempotency_key_replays_same_order(client: AppClient, db_path: str) -> None:
    headers = {**ALICE, "Idempotency-Key": "order-123"}
    first = await client.post("/api/orders", json=VALID, headers=headers)
    again = await client.post("/api/orders", json=VALID, headers=headers)
    assert (first.status, again.status) == (201, 200)
    assert (await first.json()) == (await again.json())
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _row_count(db_path) == 1


async def test_idempotency_key_is_scoped_per_user(client: AppClient, db_path: str) -> None:
    alice = await client.post("/api/orders", json=VALID, headers={**ALICE, "Idempotency-Key": "k"})
    bob = await client.post("/api/orders", json=VALID, headers={**BOB, "Idempotency-Key": "k"})
    assert (alice.status, bob.status) == (201, 201)
    assert (await alice.json())["id"] != (await bob.json())["id"]
    assert _row_count(db_path) == 2


async def test_idempotency_key_survives_restart(make_client: AppFactory, db_path: str) -> None:
    headers = {**ALICE, "Idempotency-Key": "restart-key"}
    first = await make_client()
    created = await (await first.post("/api/orders", json=VALID, headers=headers)).json()
    await first.close()
    second = await make_client()
    replay = await second.post("/api/orders", json=VALID, headers=headers)
    assert replay.status == 200
    assert (await replay.json())["id"] == created["id"]
    assert _row_count(db_path) == 1


async def test_idempotency_key_reuse_with_different_body_is_409(client: AppClient, db_path: str) -> None:
    headers = {**ALICE, "Idempotency-Key": "k2"}
    assert (await client.post("/api/orders", json=VALID, headers=headers)).status == 201
    clash = await client.post("/api/orders", json={**VALID, "quantity": 3}, headers=headers)
    assert clash.status == 409
    assert (await clash.json())["error"] == "idempotency_key_reused"
    assert _row_count(db_path) == 1


@pytest.mark.parametrize("key", ["", "has space", "k" * 256, "é"])
async def test_malformed_idempotency_key_is_400(client: AppClient, db_path: str, key: str) -> None:
    resp = await client.post("/api/orders", json=VALID, headers={**ALICE, "Idempotency-Key": key})
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_idempotency_key"
    assert _row_count(db_path) == 0
