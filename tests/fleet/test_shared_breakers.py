"""Shared breakers: three gateway processes (one with --workers 2) on one Redis share one provider breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fleet.conftest import Gw, fleet_policy, wait_until
from tests.support.redis import RedisProcess


class Provider:
    """A payment provider on loopback: fails (500) or answers after `delay`; remembers when each call came."""

    def __init__(self) -> None:
        self.failing = False
        self.delay = 0.0
        self.arrivals: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        if self.failing:
            return web.Response(status=500, text="down")
        await asyncio.sleep(self.delay)
        return web.Response(text="paid")


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, TestServer]]:
    state = Provider()
    app = web.Application()
    app.router.add_route("*", "/{p:.*}", state.handle)
    server = TestServer(app)
    await server.start_server()
    yield state, server
    await server.close()


def policy_text(app_port: int, provider_port: int, redis_url: str) -> str:
    extra = (
        f'  provider: {{url: "http://127.0.0.1:{provider_port}", timeout: 2s, breaker: pp}}\n'
        "breakers:\n"
        "  pp: {consecutive_failures: 3, failure_rate: null, reset_timeout: 2s, half_open_requests: 1,"
        " shared: true}\n"
    )
    text = fleet_policy(app_port, redis_url, fleet="br")
    text = text.replace("storage: {", "storage: {timeout: 200ms, retry_interval: 200ms, ")
    text = text.replace("\nroutes:\n", "\n" + extra + "routes:\n", 1)
    # The provider upstream belongs under `upstreams:`: put it there, and a route to it first.
    text = text.replace(f'upstreams: {{app: {{url: "http://127.0.0.1:{app_port}"}}}}\n' + extra,
                        f'upstreams:\n  app: {{url: "http://127.0.0.1:{app_port}"}}\n' + extra)
    route = '  - {name: pay, match: "* /pay/{p:.*}", upstream: provider, strip_prefix: /pay}\n'
    return text.replace("routes:\n", "routes:\n" + route)


async def get(url: str) -> tuple[int, float]:
    """One request on a fresh connection (so C's two workers both get some): (status, seconds)."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        async with session.post(url) as resp:
            await resp.read()
            return resp.status, time.monotonic() - started


async def states(gw: Gw, times: int = 6) -> set[str]:
    """The breaker's state as each of a few fresh connections sees it (C: both workers)."""
    seen = set()
    for _ in range(times):
        async with aiohttp.ClientSession() as session:
            seen.add((await gw.health(session))["breakers"]["pp"])
    return seen


async def audited_transitions(redis_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        entries = await client.xrange("br:audit")
    finally:
        await client.aclose()
    records = [orjson.loads(fields[b"e"]) for _, fields in entries]
    return [r for r in records if r.get("type") == "circuit_state_change" and r.get("breaker") == "pp"]


async def test_one_decision_for_the_fleet_then_local_without_redis_then_shared_again(
    tmp_path: Path,
    slow_upstream: TestServer,
    provider: tuple[Provider, TestServer],
    private_redis: RedisProcess,
    start: Callable[..., Any],
) -> None:
    state, provider_server = provider
    policy = tmp_path / "p.yaml"
    policy.write_text(policy_text(slow_upstream.port, provider_server.port, private_redis.url))  # type: ignore[arg-type]
    a: Gw = await start(policy, instance="a")
    b: Gw = await start(policy, instance="b")
    c: Gw = await start(policy, workers=2, instance="c")
    pay = "/pay/intent"

    # 1. The provider fails at A: A opens, and B and C fail fast within 100 ms without calling it.
    state.failing = True
    for _ in range(3):
        assert (await get(a.url + pay))[0] == 500
    await asyncio.sleep(0.1)
    seen = len(state.arrivals)
    for gw in (b, c, c, c, c):
        assert (await get(gw.url + pay))[0] == 503
    assert len(state.arrivals) == seen == 3

    # 2. After the reset timeout, exactly half_open_requests (1) probe reaches the provider across the fleet
    #    while traffic keeps coming to all three; its success closes the breaker everywhere.
    state.failing = False
    state.delay = 0.5
    stop = asyncio.Event()

    async def traffic(gw: Gw) -> None:
        while not stop.is_set():
            await get(gw.url + pay)
            await asyncio.sleep(0.02)

    clients = [asyncio.ensure_future(traffic(gw)) for gw in (a, b, c, a, b, c)]
    try:
        await wait_until(lambda: len(state.arrivals) > seen, within=10)
        first = state.arrivals[seen]
        await asyncio.sleep(0.4)  # the probe is still in flight (the provider takes 0.5 s)
        assert [t for t in state.arrivals[seen:] if t - first < 0.4] == [first]

        async def closed_everywhere() -> bool:
            return [await states(gw) for gw in (a, b, c)] == [{"closed"}] * 3

        await wait_until(closed_everywhere, within=10)
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)

    # One audit event per fleet transition (open, half_open, closed), each naming the process that decided.
    async def three_audited() -> list[dict[str, Any]] | None:
        found = await audited_transitions(private_redis.url)
        return found if len(found) >= 3 else None

    audited = await wait_until(three_audited)
    await asyncio.sleep(0.5)  # time for any duplicate to arrive
    audited = await audited_transitions(private_redis.url)
    assert [(r["from"], r["to"]) for r in audited] == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "closed")
    ]
    assert all(r.get("instance") == "a" for r in audited)

    # 3. Redis killed: every process judges alone at once, and no request waits on Redis.
    private_redis.stop()
    state.delay = 0.0
    state.failing = True
    for _ in range(3):
        status, took = await get(a.url + pay)
        assert status == 500 and took < 0.2
    await asyncio.sleep(0.1)
    status, took = await get(b.url + pay)
    assert status == 500 and took < 0.2  # B's own breaker is still closed: it calls the provider
    assert await states(a) == {"open"} and await states(b) == {"closed"}

    # 4. Redis back: A announces what it decided alone, and B and C follow without a restart.
    private_redis.start()

    async def open_everywhere() -> bool:
        return [await states(gw) for gw in (b, c)] == [{"open"}] * 2

    await wait_until(open_everywhere, within=15)
