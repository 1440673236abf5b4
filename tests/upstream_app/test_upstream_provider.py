"""The fake payment provider: intents, fault knobs (validation, ratio, latency, down) and call counting."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request

from upstream_app.provider import Faults, main

ProviderClient = TestClient[Request, None]
INTENT = {"amount_cents": 1999, "currency": "EUR"}


async def _set(client: ProviderClient, **knobs: Any) -> dict[str, Any]:
    resp = await client.post("/_faults", json=knobs)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def _calls(client: ProviderClient) -> int:
    return int((await (await client.get("/_faults")).json())["calls"])


async def test_create_intent_and_count_only_v1_calls(provider_client: ProviderClient) -> None:
    resp = await provider_client.post("/v1/intents", json=INTENT)
    assert resp.status == 201
    body = await resp.json()
    assert body["id"].startswith("pi_")
    assert body["client_secret"].startswith(body["id"] + "_secret_")
    assert (body["amount_cents"], body["currency"]) == (1999, "EUR")
    await provider_client.get("/healthz")
    assert await _calls(provider_client) == 1


@pytest.mark.parametrize(
    "payload", [{"amount_cents": 0, "currency": "EUR"}, {"amount_cents": 5, "currency": "eu"}]
)
async def test_create_intent_rejects_bad_input(
    provider_client: ProviderClient, payload: dict[str, Any]
) -> None:
    resp = await provider_client.post("/v1/intents", json=payload)
    assert resp.status == 400


async def test_faults_default_and_partial_update(provider_client: ProviderClient) -> None:
    state = await (await provider_client.get("/_faults")).json()
    assert state == {
        "failure_ratio": 0.0,
        "latency_ms": 0,
        "down": False,
        "status": 503,
        "seed": 1234,
        "calls": 0,
    }
    state = await _set(provider_client, latency_ms=5)
    assert (state["latency_ms"], state["failure_ratio"], state["status"]) == (5, 0.0, 503)
    state = await _set(provider_client, status=500, failure_ratio=1)
    assert (state["latency_ms"], state["failure_ratio"], state["status"]) == (5, 1.0, 500)


@pytest.mark.parametrize(
    "knobs",
    [
        {"failure_ratio": 1.5},
        {"failure_ratio": -0.1},
        {"failure_ratio": "0.5"},
        {"failure_ratio": True},
        {"latency_ms": -1},
        {"latency_ms": 1.5},
        {"down": "yes"},
        {"status": 200},
        {"status": 600},
        {"seed": "abc"},
        {"explode": True},
        {"latency_ms": 10, "status": 99},  # one bad field rejects the whole update
    ],
)
async def test_invalid_knobs_are_400_and_change_nothing(
    provider_client: ProviderClient, knobs: dict[str, Any]
) -> None:
    before = await (await provider_client.get("/_faults")).json()
    resp = await provider_client.post("/_faults", json=knobs)
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_faults"
    assert await (await provider_client.get("/_faults")).json() == before


@pytest.mark.parametrize("raw", [b"{nope", b"[1, 2]"])
async def test_malformed_knob_body_is_400(provider_client: ProviderClient, raw: bytes) -> None:
    resp = await provider_client.post("/_faults", data=raw)
    assert resp.status == 400


async def test_failure_ratio_one_fails_every_call_with_configured_status(
    provider_client: ProviderClient,
) -> None:
    await _set(provider_client, failure_ratio=1.0, status=500)
    statuses = [(await provider_client.post("/v1/intents", json=INTENT)).status for _ in range(20)]
    assert statuses == [500] * 20
    assert await _calls(provider_client) == 20


async def test_failure_ratio_zero_never_fails(provider_client: ProviderClient) -> None:
    await _set(provider_client, failure_ratio=0.0)
    statuses = [(await provider_client.post("/v1/intents", json=INTENT)).status for _ in range(20)]
    assert statuses == [201] * 20


async def test_injected_503_carries_retry_after(provider_client: ProviderClient) -> None:
    await _set(provider_client, failure_ratio=1.0)
    resp = await provider_client.post("/v1/intents", json=INTENT)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"


async def test_seeded_partial_failures_are_reproducible(provider_client: ProviderClient) -> None:
    async def run() -> list[int]:
        await _set(provider_client, failure_ratio=0.5, seed=42)
        return [(await provider_client.post("/v1/intents", json=INTENT)).status for _ in range(30)]

    first, second = await run(), await run()
    assert first == second
    assert set(first) == {201, 503}


def test_fault_draws_follow_the_seed() -> None:
    constructed, updated = Faults(failure_ratio=0.3, seed=7), Faults(failure_ratio=0.3)
    updated.update({"seed": 7})
    draws = [constructed.should_fail() for _ in range(100)]
    assert draws == [updated.should_fail() for _ in range(100)]
    assert True in draws and False in draws


async def test_latency_knob_delays_v1_calls(provider_client: ProviderClient) -> None:
    await _set(provider_client, latency_ms=80)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await provider_client.post("/v1/intents", json=INTENT)).status == 201
    assert loop.time() - started >= 0.08


async def test_down_closes_connection_without_response(
    provider: TestServer, provider_client: ProviderClient
) -> None:
    await _set(provider_client, down=True)
    # A fresh session so the failure cannot be blamed on a stale pooled connection.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.post(provider.make_url("/v1/intents"), json=INTENT)
    assert await _calls(provider_client) == 1
    await _set(provider_client, down=False)
    assert (await provider_client.post("/v1/intents", json=INTENT)).status == 201


def test_cli_rejects_invalid_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--failure-ratio", "2"])
    assert exc.value.code == 2
    assert "failure_ratio" in capsys.readouterr().err
