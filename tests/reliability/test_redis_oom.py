"""Redis out of memory (`maxmemory` tiny, `noeviction`): each limit mode does what the policy says, no 500,
and the gateway recovers by itself once memory is free."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory
from tests.support.clock import ManualClock
from tests.support.redis import start_redis
from tests.support.upstream import base_url

POLICY = """
version: 1
storage: {{redis_url: "{redis}", timeout: 200ms, retry_interval: 100ms}}
upstreams: {{app: {{url: "{url}"}}}}
rate_limits:
  fail_local: {{rate: 2, per: 1m, key: user, on_redis_error: local}}
  fail_allow: {{rate: 2, per: 1m, key: user, on_redis_error: allow}}
  fail_deny:  {{rate: 2, per: 1m, key: user, on_redis_error: deny}}
routes:
  - {{name: local, match: "GET /local", upstream: app, rate_limits: [fail_local]}}
  - {{name: allow, match: "GET /allow", upstream: app, rate_limits: [fail_allow]}}
  - {{name: deny, match: "GET /deny", upstream: app, rate_limits: [fail_deny]}}
"""


async def test_out_of_memory_redis_follows_on_redis_error_and_recovers(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    server = start_redis("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    client = aioredis.from_url(server.url)
    try:
        clock = ManualClock()  # the Redis back-off (retry_interval) runs on it: no sleeping
        gw = await make_gateway(
            POLICY, clock=clock, redis=server.url, url=base_url(upstream)
        )
        assert (await gw.get("/local", headers={"X-User-Id": "before"})).status == 200
        # Fill memory until Redis refuses writes.
        filled = 0
        while True:
            try:
                await client.set(f"ballast:{filled}", b"x" * 65536)
                filled += 1
            except aioredis.ResponseError as exc:
                assert "maxmemory" in str(exc)
                break
        users = [f"oom-user-{i}" for i in range(3)]
        local = [(await gw.get("/local", headers={"X-User-Id": users[0]})).status for _ in range(3)]
        assert local == [200, 200, 429]  # in-process buckets enforce the same limit
        allow = [(await gw.get("/allow", headers={"X-User-Id": users[1]})).status for _ in range(3)]
        assert allow == [200, 200, 200]
        deny = await gw.get("/deny", headers={"X-User-Id": users[2]})
        assert deny.status == 503
        assert (await deny.json())["error"] == "rate_limit_unavailable"
        assert int(deny.headers["Retry-After"]) >= 1
        # Memory freed: after the back-off one probe finds Redis healthy again, with no restart of anything.
        await client.flushall()
        clock.advance(0.2)
        statuses = [(await gw.get("/deny", headers={"X-User-Id": "after"})).status for _ in range(3)]
        assert statuses == [200, 200, 429]  # Redis decides again: fail_deny's 2 tokens, then the limit
    finally:
        await client.aclose()
        server.stop()
