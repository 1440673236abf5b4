"""GET /api/ops/health: public, 200 while serving with what the gateway knows, 503 once draining."""

from __future__ import annotations

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.app import GATEWAY
from perf.local import free_port
from tests.conftest import GatewayFactory
from tests.ops.conftest import policy
from tests.support.redis import RedisProcess
from tests.support.upstream import base_url

BREAKERS = """
breakers:
  payments: {consecutive_failures: 1, failure_rate: null, reset_timeout: 60s}
"""


async def test_health_is_public_and_reports_policy_breakers_and_upstreams(  # type: ignore[no-untyped-def]
    make_gateway: GatewayFactory, upstream: TestServer, remote_session: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    text = policy(base_url(upstream), extra=BREAKERS).replace(
        "routes:\n",
        f'  dead: {{url: "{dead}", connect_timeout: 200ms, breaker: payments}}\nroutes:\n'
        '  - {name: pay, match: "* /pay/{rest:.*}", upstream: dead}\n',
    )
    gw = await make_gateway(text)
    before = await (await gw.get("/api/ops/health")).json()
    assert before["status"] == "ok"
    assert before["upstreams"] == {"app": None, "dead": None}  # not called yet
    assert before["redis"] == {"configured": False, "reachable": None, "error": None}
    assert before["policy"]["version"] == gw.app[GATEWAY].current().loaded.version

    assert (await gw.get("/hello")).status == 200
    assert (await gw.get("/pay/x")).status == 502  # refused: the payments breaker opens after 1 failure
    assert (await gw.get("/pay/x")).status == 503  # answered by the open breaker: not an upstream outcome

    async with remote_session.get(gw.make_url("/api/ops/health")) as resp:  # no credentials, any network
        assert resp.status == 200
        after = await resp.json()
    assert after["status"] == "degraded"  # serving, but a breaker is open
    assert after["breakers"] == {"payments": "open"}
    assert after["upstreams"]["app"]["status"] == 200 and after["upstreams"]["app"]["error"] is None
    assert (
        after["upstreams"]["dead"]["status"] is None
        and after["upstreams"]["dead"]["error"] == "connect_error"
    )
    assert after["upstreams"]["dead"]["at"].endswith("Z")
    assert (await gw.head("/api/ops/health")).status == 200


async def test_health_says_whether_configured_redis_is_reachable(  # type: ignore[no-untyped-def]
    make_gateway: GatewayFactory, upstream: TestServer, private_redis: RedisProcess
) -> None:
    url = base_url(upstream)
    gw = await make_gateway(policy(url, redis_url=private_redis.url))
    up = await (await gw.get("/api/ops/health")).json()
    assert up["redis"] == {"configured": True, "reachable": True, "error": None}
    assert up["status"] == "ok"
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    gw_down = await make_gateway(policy(url, redis_url=nothing_there))
    resp = await gw_down.get("/api/ops/health")
    assert resp.status == 200  # still serving (limits fall back as the policy says): degraded, not down
    down = await resp.json()
    assert down["status"] == "degraded"
    assert (
        down["redis"]["configured"] is True and down["redis"]["reachable"] is False and down["redis"]["error"]
    )


async def test_health_is_503_draining_once_shutdown_begins(  # type: ignore[no-untyped-def]
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(policy(base_url(upstream)))
    assert (await gw.get("/api/ops/health")).status == 200
    await gw.app.shutdown()  # what the runner does first on SIGTERM: the on_shutdown hooks
    resp = await gw.get("/api/ops/health")
    assert resp.status == 503
    assert (await resp.json())["status"] == "draining"
