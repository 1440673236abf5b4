"""Breakers end to end: the real gateway in front of the real fake payment provider, faults set by its knobs.

The gateway reads a clock the test moves, so OPEN -> HALF_OPEN takes no waiting.
"""

from __future__ import annotations

import asyncio

from aiohttp import ClientTimeout

from tests.breaker.conftest import ADMIN, INTENT, GatewayStarter, Provider, Running
from tests.support.wait import until

POLICY = """
version: 1
admin: {user_ids: ["ADMIN"]}
upstreams:
  payment_provider: {url: "PROVIDER", timeout: 1s, breaker: payment_provider}
breakers:
  payment_provider:
    consecutive_failures: CONSECUTIVE
    failure_rate: 50%
    window: 20
    min_calls: 10
    reset_timeout: 60s
    half_open_requests: PROBES
routes:
  - {name: payments_egress, match: "* /egress/payments/{path:.*}", upstream: payment_provider,
     strip_prefix: /egress/payments}
"""


async def start(start_gateway: GatewayStarter, provider: Provider, consecutive: str = "3",
                probes: str = "1", policy: str = POLICY) -> Running:
    return await start_gateway(policy, PROVIDER=provider.url, CONSECUTIVE=consecutive, PROBES=probes,
                               ADMIN=ADMIN)


async def intent(gw: Running) -> int:
    async with gw.client.post("/egress/payments/v1/intents", json=INTENT) as response:
        await response.read()
        return response.status


async def open_breaker(gw: Running, provider: Provider, failures: int = 3) -> None:
    provider.knobs(failure_ratio=1.0)
    assert [await intent(gw) for _ in range(failures)] == [503] * failures
    assert gw.breaker("payment_provider").state == "open"


async def opened(start_gateway: GatewayStarter, provider: Provider, probes: str = "1") -> Running:
    """A started gateway whose payment_provider breaker three failures have just opened."""
    gw = await start(start_gateway, provider, probes=probes)
    await open_breaker(gw, provider)
    return gw


async def test_opens_after_n_consecutive_failures(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await start(start_gateway, provider)
    provider.knobs(failure_ratio=1.0)
    assert [await intent(gw) for _ in range(2)] == [503, 503]
    assert gw.breaker("payment_provider").state == "closed"
    assert await intent(gw) == 503
    assert gw.breaker("payment_provider").state == "open"
    assert provider.calls == 3
    change = gw.of_type("circuit_state_change")
    assert [(c["from"], c["to"], c["cause"]) for c in change] == [("closed", "open", "consecutive_failures")]


async def test_failure_rate_opens_only_after_min_calls(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await start(start_gateway, provider, consecutive="100")
    statuses = []
    for failing in (True, False) * 4 + (True,):  # 9 calls, 5 failed: over 50%, but under min_calls
        provider.knobs(failure_ratio=1.0 if failing else 0.0)
        statuses.append(await intent(gw))
    assert statuses.count(201) == 4
    assert gw.breaker("payment_provider").state == "closed"
    provider.knobs(failure_ratio=0.0)
    assert await intent(gw) == 201  # the 10th call: 5 of 10 failed
    assert gw.breaker("payment_provider").state == "open"
    assert gw.of_type("circuit_state_change")[-1]["cause"] == "failure_rate"
    assert provider.calls == 10


async def test_opens_on_slow_calls(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    slow_policy = POLICY.replace("    reset_timeout",
                                 "    slow_call: 100ms\n    slow_call_rate: 80%\n    reset_timeout")
    slow_policy = slow_policy.replace("window: 20", "window: 5").replace("min_calls: 10", "min_calls: 5")
    gw = await start(start_gateway, provider, consecutive="100", policy=slow_policy)
    provider.knobs(latency_ms=150)
    assert [await intent(gw) for _ in range(5)] == [201] * 5  # slow, not failed
    assert gw.breaker("payment_provider").state == "open"
    assert gw.of_type("circuit_state_change")[-1]["cause"] == "slow_call_rate"


async def test_open_answers_503_with_retry_after_and_the_upstream_sees_nothing(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await opened(start_gateway, provider)
    calls = provider.calls
    gw.clock.advance(10.5)
    for _ in range(20):
        async with gw.client.get("/egress/payments/v1/anything") as response:
            body = await response.json()
            assert response.status == 503
            assert response.headers["Retry-After"] == "50"  # ceil(60 - 10.5)
            assert body["error"] == "breaker_open" and body["breaker"] == "payment_provider"
            assert body["route"] == "payments_egress"
    assert provider.calls == calls


async def test_half_open_lets_exactly_the_probes_through_a_burst_of_50(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await opened(start_gateway, provider, probes="2")
    provider.knobs(failure_ratio=0.0, latency_ms=300)  # probes stay in flight while the burst arrives
    calls = provider.calls
    gw.clock.advance(60)
    statuses = await asyncio.gather(*(intent(gw) for _ in range(50)))
    assert sorted(statuses).count(201) == 2
    assert statuses.count(503) == 48
    assert provider.calls == calls + 2
    assert gw.breaker("payment_provider").state == "closed"  # both probes succeeded
    provider.knobs(latency_ms=0)
    assert await intent(gw) == 201
    causes = [(c["to"], c["cause"]) for c in gw.of_type("circuit_state_change")]
    assert causes[-2:] == [("half_open", "reset_timeout"), ("closed", "probes_succeeded")]


async def test_a_failed_probe_reopens_and_restarts_the_timer(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await opened(start_gateway, provider)
    gw.clock.advance(60)
    assert await intent(gw) == 503  # the probe reached the failing provider
    async with gw.client.get("/egress/payments/v1/x") as response:
        assert response.status == 503 and response.headers["Retry-After"] == "60"
    assert gw.of_type("circuit_state_change")[-1]["cause"] == "probe_failed"


async def test_a_probe_whose_client_went_away_does_not_freeze_the_breaker(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await opened(start_gateway, provider)
    provider.knobs(failure_ratio=0.0, latency_ms=900)
    gw.clock.advance(60)
    try:
        async with gw.client.post("/egress/payments/v1/intents", json=INTENT,
                                  timeout=ClientTimeout(total=0.2)):
            raise AssertionError("the slow probe answered before the client gave up")
    except TimeoutError:
        pass
    snapshot = gw.breaker("payment_provider").snapshot
    # The server notices the disconnect asynchronously: wait for the handler to unwind.
    await until(lambda: snapshot()["half_open_in_flight"] == 0, what="the abandoned probe is released")
    assert snapshot()["state"] == "half_open" and snapshot()["half_open_in_flight"] == 0
    provider.knobs(latency_ms=0)
    assert await intent(gw) == 201  # the next request became the probe
    assert snapshot()["state"] == "closed"


async def test_a_timeout_is_a_504_and_a_breaker_failure(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await start(start_gateway, provider, consecutive="2")
    provider.knobs(latency_ms=1500)  # the upstream timeout is 1s
    async with gw.client.post("/egress/payments/v1/intents", json=INTENT) as response:
        assert response.status == 504
        assert (await response.json())["error"] == "timeout"
    assert gw.breaker("payment_provider").snapshot()["consecutive_failures"] == 1
    assert await intent(gw) == 504
    assert gw.breaker("payment_provider").state == "open"


async def test_a_hard_down_provider_opens_the_breaker(
    start_gateway: GatewayStarter, provider: Provider
) -> None:
    gw = await start(start_gateway, provider)
    provider.knobs(down=True)  # the connection is dropped: a reset, a 5xx-class failure
    assert [await intent(gw) for _ in range(3)] == [502, 502, 502]
    assert await intent(gw) == 503
    assert gw.breaker("payment_provider").state == "open"
