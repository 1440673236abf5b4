"""Redis killed, frozen (SIGSTOP) and restarted under a running gateway: on_redis_error, deadlines, recovery.

The gateway runs on a clock the test moves, so the Redis back-off (retry_interval: 300ms) needs no sleeping;
the 50 ms deadline is real time and so is every elapsed time measured here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from tests.ratelimit.conftest import POLICY, Client, ClockedFactory, limiter_of, policy_fields, record_events
from tests.support.clock import ManualClock
from tests.support.redis import RedisProcess

# Fixture order matters: private_redis first, so it is stopped after the gateway has closed.
LIMIT = 0.5  # seconds: the 50 ms deadline plus a loopback upstream, with room for a loaded test machine


async def timed(gw: Client, path: str, user: str) -> tuple[int, float, dict[str, Any], Any]:
    started = time.perf_counter()
    response = await gw.get(path, headers={"X-User-Id": user})
    body = await response.json()
    return response.status, time.perf_counter() - started, dict(response.headers), body


@contextmanager
def redis_fault(server: RedisProcess, fault: str) -> Iterator[None]:
    """Kill or freeze Redis for the block, then bring it back (also before teardown, so that nothing closing
    after the test waits on a dead server)."""
    if fault == "killed":
        server.stop()
    else:
        server.freeze()
    try:
        yield
    finally:
        if fault == "killed":
            server.start()  # same port, empty: no keys and no script (NOSCRIPT is handled)
        else:
            server.thaw()


async def statuses(gw: Client, path: str, user: str, n: int) -> list[int]:
    out = []
    for _ in range(n):
        status, elapsed, _, _ = await timed(gw, path, user)
        assert elapsed < LIMIT, (path, elapsed)
        out.append(status)
    return out


@pytest.fixture(params=["killed", "frozen"])
def fault(request: pytest.FixtureRequest) -> str:
    """How Redis goes away: the process killed, or stopped (SIGSTOP) so that calls hang."""
    return str(request.param)


@pytest.fixture
async def on_redis(
    private_redis: RedisProcess, clocked_gateway: ClockedFactory, upstream: TestServer
) -> tuple[Client, ManualClock]:
    """A gateway on the private Redis, with the production deadline (50 ms) and a clock the test moves."""
    return await clocked_gateway(POLICY, **policy_fields(upstream, private_redis.url, timeout="50ms"))


async def test_each_on_redis_error_mode_does_what_it_says(
    private_redis: RedisProcess, on_redis: tuple[Client, ManualClock], fault: str
) -> None:
    gw, _ = on_redis
    events = record_events(gw)
    assert await statuses(gw, "/local", "u1", 3) == [200, 200, 429]  # Redis decides while it is up
    with redis_fault(private_redis, fault):
        # A refusal learnt from Redis still holds: u1's shared bucket is empty whatever happens to Redis.
        assert await statuses(gw, "/local", "u1", 1) == [429]
        # local: in-process buckets take over for everyone else.
        assert await statuses(gw, "/local", "u5", 3) == [200, 200, 429]
        # allow: every request passes, unlimited and unadvertised.
        assert await statuses(gw, "/allow", "u1", 3) == [200, 200, 200]
        # deny: 503 with a reason and when to come back.
        status, elapsed, headers, body = await timed(gw, "/deny", "u1")
        assert (status, body["error"], body["limit"]) == (503, "rate_limit_unavailable", "fail_deny")
        assert int(headers["Retry-After"]) >= 1 and body["retry_after"] == int(headers["Retry-After"])
        assert headers["Cache-Control"] == "no-store"
        assert elapsed < LIMIT
        stats = limiter_of(gw).stats()
        assert stats["redis"]["up"] is False
        assert stats["redis"]["errors"] == 1  # one request found out; the rest did not wait on Redis
        assert stats["redis"]["skipped"] == 6
        assert stats["fallbacks"] == {"local": 3, "allow": 3, "deny": 1}
        assert stats["breaches"] == {"fail_local": 3}
        changes = [e.fields for e in events if e.type == "redis_state_change"]
        assert len(changes) == 1 and changes[0]["to"] == "down" and changes[0]["error"]


async def test_redis_comes_back_by_itself_after_one_probe_per_interval(
    private_redis: RedisProcess, on_redis: tuple[Client, ManualClock], fault: str
) -> None:
    gw, clock = on_redis
    events = record_events(gw)
    health = limiter_of(gw).stats
    with redis_fault(private_redis, fault):
        await statuses(gw, "/allow", "u2", 3)
        assert (health()["redis"]["errors"], health()["redis"]["skipped"]) == (1, 2)
        clock.advance(0.3)  # one probe per retry_interval: it finds Redis still gone
        await statuses(gw, "/allow", "u2", 2)
        assert (health()["redis"]["errors"], health()["redis"]["skipped"]) == (2, 3)
    assert await statuses(gw, "/ten", "u3", 1) == [200]  # still within the back-off: skipped
    assert health()["redis"]["up"] is False
    clock.advance(0.3)
    assert await statuses(gw, "/ten", "u3", 11) == [200] * 10 + [429]
    stats = health()
    assert stats["redis"]["up"] is True and stats["redis"]["errors"] == 2
    assert [e.fields["to"] for e in events if e.type == "redis_state_change"] == ["down", "up"]
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        assert len([k async for k in client.scan_iter(match="*:rl:{*")]) >= 1  # counted in Redis again
    finally:
        await client.aclose()


async def test_a_slow_upstream_does_not_count_against_the_deadline(
    private_redis: RedisProcess, on_redis: tuple[Client, ManualClock]
) -> None:
    # The deadline covers the Redis check only: a 300 ms upstream answer is relayed normally.
    gw, _ = on_redis
    private_redis.freeze()
    try:
        started = time.perf_counter()
        response = await gw.get("/slow?s=0.3", headers={"X-User-Id": "u4"})
        elapsed = time.perf_counter() - started
        assert response.status == 200 and await response.text() == "slow"
        assert 0.3 <= elapsed < 0.3 + LIMIT
    finally:
        private_redis.thaw()
