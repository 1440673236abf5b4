"""Retries end to end: which requests the gateway sends again, counted at the real provider."""

from __future__ import annotations

import random
from typing import Any

from gateway.app import GATEWAY
from tests.breaker.conftest import INTENT, GatewayStarter, Provider, Running

POLICY = """
version: 1
upstreams:
  payment_provider: {url: "PROVIDER", timeout: 1s BREAKER}
breakers:
  payment_provider: {consecutive_failures: 3, failure_rate: null}
routes:
  - {name: payments_egress, match: "* /egress/payments/{path:.*}", upstream: payment_provider,
     strip_prefix: /egress/payments, retries: {attempts: 3, backoff: 1ms, on: [connect_error, 502, 503, 504]}}
"""


async def started(
    start_gateway: GatewayStarter, provider: Provider, *, breaker: bool, **knobs: Any
) -> Running:
    """The gateway in front of the provider, its upstream behind the breaker or not; provider knobs set."""
    guarded = ", breaker: payment_provider" if breaker else ""
    gw = await start_gateway(POLICY, PROVIDER=provider.url, BREAKER=guarded)
    provider.knobs(**knobs)
    return gw


async def list_intents(gw: Running) -> int:
    """GET the provider's intents through the gateway: the status."""
    async with gw.client.get("/egress/payments/v1/intents") as response:
        return response.status


async def test_post_without_idempotency_key_is_never_retried(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await started(start_gateway, provider, breaker=False, failure_ratio=1.0)
    async with gw.client.post("/egress/payments/v1/intents", json=INTENT) as response:
        assert response.status == 503
    assert provider.calls == 1


async def test_post_with_idempotency_key_and_get_are_retried(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await started(start_gateway, provider, breaker=False, failure_ratio=1.0)
    async with gw.client.post("/egress/payments/v1/intents", json=INTENT,
                              headers={"Idempotency-Key": "order-1"}) as response:
        assert response.status == 503
    assert provider.calls == 3
    assert await list_intents(gw) == 503
    assert provider.calls == 6


def seed_failing_once() -> int:
    """A provider seed whose first draw at failure_ratio 0.5 fails and whose second succeeds."""
    for seed in range(1000):
        rng = random.Random(seed)
        if rng.random() < 0.5 <= rng.random():
            return seed
    raise AssertionError("no such seed")


async def test_a_retry_that_succeeds_replays_the_buffered_body(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await started(start_gateway, provider, breaker=False, failure_ratio=0.5, seed=seed_failing_once())
    async with gw.client.post("/egress/payments/v1/intents", json=INTENT,
                              headers={"Idempotency-Key": "order-1"}) as response:
        assert response.status == 201
        assert (await response.json())["amount_cents"] == INTENT["amount_cents"]  # the body was sent again
    assert provider.calls == 2


async def test_the_breaker_counts_the_final_outcome_only(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await started(start_gateway, provider, breaker=True, failure_ratio=1.0)
    assert await list_intents(gw) == 503
    assert provider.calls == 3
    breaker = gw.breaker("payment_provider")
    assert breaker.snapshot()["calls"] == 1 and breaker.state == "closed"


async def test_an_open_breaker_is_never_retried_into(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await started(start_gateway, provider, breaker=True, failure_ratio=1.0)
    assert [await list_intents(gw) for _ in range(3)] == [503] * 3
    assert gw.breaker("payment_provider").state == "open"
    calls = provider.calls
    gw.clock.advance(60)  # HALF_OPEN: the one probe fails and is not retried
    assert await list_intents(gw) == 503
    assert provider.calls == calls + 1


async def test_the_retry_budget_caps_retries_when_everything_fails(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    # No breaker: only the budget.
    gw = await started(start_gateway, provider, breaker=False, failure_ratio=1.0)
    assert [await list_intents(gw) for _ in range(200)] == [503] * 200
    # Without a budget: 600 calls. With 20% of 200 requests: 40 retries (the clock does not move).
    assert provider.calls == 240
    stats = gw.client.app[GATEWAY].current().retry_budgets["payment_provider"].stats()
    assert stats["retries"] == 40 and stats["requests"] == 200
