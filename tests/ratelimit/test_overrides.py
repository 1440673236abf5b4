"""Runtime overrides: `GET|POST /api/ops/rate_limits` on two replicas; validation, audit, reload."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from gateway.events import Events
from gateway.identity import Identity
from gateway.policy.loader import parse_policy
from gateway.ratelimit.limiter import Limiter, route_limits
from gateway.ratelimit.overrides import Overrides
from tests.conftest import GatewayFactory
from tests.ratelimit.conftest import ADMIN, POLICY, Client, policy_fields, record_events
from tests.support.wait import until


async def limits_of(gw: Client) -> dict[str, Any]:
    response = await gw.get("/api/ops/rate_limits", headers=ADMIN)
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body["limits"]


async def until_rate(gw: Client, name: str, rate: int, source: str) -> None:
    """Wait (bounded) for a replica's background refresh to show a rate set through another replica (it polls
    every override_refresh, 100 ms, on its own)."""

    async def shown() -> bool:
        limit = (await limits_of(gw))[name]
        return bool((limit["rate"], limit["source"]) == (rate, source))

    await until(shown, every=0.05, what=f"{name} shows rate {rate} ({source})")


async def admitted(gw: Client, user: str, n: int) -> int:
    responses = [await gw.get("/ten", headers={"X-User-Id": user}) for _ in range(n)]
    return Counter(r.status for r in responses)[200]


async def test_overrides_apply_to_every_replica_and_reset(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> None:
    fields = policy_fields(upstream, redis_url)
    first, second = await make_gateway(POLICY, **fields), await make_gateway(POLICY, **fields)
    assert (await limits_of(first))["ten_per_minute"] == {
        "rate": 10, "per": "1m", "burst": 10, "key": "user", "shadow": False, "on_redis_error": "local",
        "source": "policy", "policy_rate": 10,
    }
    response = await first.post("/api/ops/rate_limits", json={"ten_per_minute": 3}, headers=ADMIN)
    assert response.status == 200
    body = await response.json()
    assert body["changed"] == ["ten_per_minute"] and body["limits"]["ten_per_minute"]["source"] == "override"
    await until_rate(second, "ten_per_minute", 3, "override")
    assert await admitted(second, "olga", 6) == 3
    assert await admitted(first, "olga", 2) == 0  # one bucket, whichever replica is asked

    response = await second.post("/api/ops/rate_limits", json={"reset": True}, headers=ADMIN)
    assert response.status == 200 and (await response.json())["changed"] == ["ten_per_minute"]
    await until_rate(first, "ten_per_minute", 10, "policy")
    assert await admitted(first, "peggy", 12) == 10


async def test_posting_the_policys_own_value_returns_to_the_file(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(POLICY, **policy_fields(upstream))  # in-process overrides
    await gw.post("/api/ops/rate_limits", json={"ten_per_minute": 3, "by_ip": 5}, headers=ADMIN)
    assert await admitted(gw, "quinn", 5) == 3
    await gw.post("/api/ops/rate_limits", json={"ten_per_minute": 10, "by_ip": None}, headers=ADMIN)
    limits = await limits_of(gw)
    assert (limits["ten_per_minute"]["source"], limits["by_ip"]["source"]) == ("policy", "policy")
    assert await admitted(gw, "rita", 12) == 10


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"ten_per_minute": 3, "no_such_limit": 5}, "unknown limit 'no_such_limit'"),
        ({"ten_per_minute": 0}, "ten_per_minute: rate must be a whole number"),
        ({"ten_per_minute": -4}, "ten_per_minute: rate must be a whole number"),
        ({"ten_per_minute": "5"}, "ten_per_minute: rate must be a whole number"),
        ({"ten_per_minute": True}, "ten_per_minute: rate must be a whole number"),
        ({"ten_per_minute": 2.5}, "ten_per_minute: rate must be a whole number"),
        ({"by_ip": 4, "ten_per_minute": 10**12}, "ten_per_minute: rate must be a whole number"),
        ({}, "expected a JSON object"),
        ([1, 2], "expected a JSON object"),
        ({"reset": False}, '"reset" must be true and alone'),
        ({"reset": True, "by_ip": 4}, '"reset" must be true and alone'),
    ],
)
async def test_bad_overrides_answer_400_and_change_nothing(
    make_gateway: GatewayFactory, upstream: TestServer, body: Any, reason: str
) -> None:
    gw = await make_gateway(POLICY, **policy_fields(upstream))
    before = await limits_of(gw)
    response = await gw.post("/api/ops/rate_limits", json=body, headers=ADMIN)
    assert response.status == 400
    answer = await response.json()
    assert answer["error"] == "invalid_overrides"
    assert any(reason in problem for problem in answer["problems"]), answer
    assert await limits_of(gw) == before


async def test_a_body_that_is_not_json_is_a_400(make_gateway: GatewayFactory, upstream: TestServer) -> None:
    gw = await make_gateway(POLICY, **policy_fields(upstream))
    response = await gw.post("/api/ops/rate_limits", data=b"{rate: 3", headers=ADMIN)
    assert response.status == 400 and (await response.json())["error"] == "invalid_json"


async def test_only_admins_see_or_change_rate_limits(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(POLICY, **policy_fields(upstream))
    assert (await gw.get("/api/ops/rate_limits")).status == 401
    assert (await gw.post("/api/ops/rate_limits", json={"reset": True})).status == 401
    stranger = {"X-User-Id": "not-an-admin"}
    refused = await gw.post("/api/ops/rate_limits", json={"ten_per_minute": 1000}, headers=stranger)
    assert refused.status == 403
    assert (await limits_of(gw))["ten_per_minute"]["source"] == "policy"


async def test_changes_are_audited(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> None:
    gw = await make_gateway(POLICY, **policy_fields(upstream, redis_url))
    events = record_events(gw)
    # by_ip is posted at its policy rate: not a change, not audited.
    await gw.post("/api/ops/rate_limits", json={"ten_per_minute": 3, "by_ip": 2}, headers=ADMIN)
    await gw.post("/api/ops/rate_limits", json={"reset": True}, headers=ADMIN)
    audited = [(e.type, e.fields) for e in events if e.type in ("rate_limit_override", "admin_action")]
    assert audited == [
        ("rate_limit_override",
         {"limit": "ten_per_minute", "before": None, "after": 3, "principal": "user:admin-1"}),
        ("admin_action", {"principal": "user:admin-1", "action": "rate_limits.set",
                          "before": {"ten_per_minute": None}, "after": {"ten_per_minute": 3}}),
        ("rate_limit_override",
         {"limit": "ten_per_minute", "before": 3, "after": None, "principal": "user:admin-1"}),
        ("admin_action", {"principal": "user:admin-1", "action": "rate_limits.reset",
                          "before": {"ten_per_minute": 3}, "after": {"ten_per_minute": None}}),
    ]


def policy_text(*, with_limit: bool, burst: int = 10) -> str:
    limit = f"  spare: {{rate: 10, per: 1m, burst: {burst}, key: user}}\n" if with_limit else ""
    route_limits_list = "[keep, spare]" if with_limit else "[keep]"
    return (
        "version: 1\nupstreams: {app: {url: 'http://127.0.0.1:9'}}\n"
        f"rate_limits:\n  keep: {{rate: 100, per: 1m, key: user}}\n{limit}"
        f"routes:\n  - {{name: r, match: 'GET /r', upstream: app, rate_limits: {route_limits_list}}}\n"
    )


async def test_a_reload_keeps_overrides_and_buckets_unless_the_limit_is_gone() -> None:
    events = Events()
    first_policy = parse_policy(policy_text(with_limit=True))
    first = Limiter(first_policy, events=events)
    route = route_limits(first_policy.routes[0])
    assert route is not None
    await first.set_overrides({"keep": 50, "spare": 4})
    caller = Identity(ip="192.0.2.1", user="sam")
    decisions = [await first.check(route, caller, {}) for _ in range(5)]
    assert [d.status for d in decisions] == [0, 0, 0, 0, 429]  # spare overridden to 4

    same = Limiter(parse_policy(policy_text(with_limit=True)), first, events=events)
    assert (same.override_of("keep"), same.override_of("spare")) == (50, 4)
    assert (await same.check(route, caller, {})).status == 429  # the bucket came along
    await first.close()

    without = Limiter(parse_policy(policy_text(with_limit=False)), same, events=events)
    assert without.describe()["keep"]["rate"] == 50
    assert "spare" not in without.describe()
    await same.close()
    back = Limiter(parse_policy(policy_text(with_limit=True)), without, events=events)
    assert back.describe()["spare"]["source"] == "policy"  # its override went with it
    await without.close()
    await back.close()


async def test_a_removed_limits_override_is_removed_from_redis_too(redis_url: str) -> None:
    prefix = f"t{os.urandom(4).hex()}"
    storage = f"storage: {{redis_url: '{redis_url}', key_prefix: '{prefix}'}}\n"
    events = Events()
    first = Limiter(parse_policy(storage + policy_text(with_limit=True)), events=events)
    await first.start()
    await first.set_overrides({"spare": 4, "keep": 60})
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await client.hgetall(f"{prefix}:rl:overrides") == {"spare": "4", "keep": "60"}
        second = Limiter(parse_policy(storage + policy_text(with_limit=False)), first, events=events)
        await first.close()
        async def pruned() -> bool:  # by a background task of the new limiter
            return bool(await client.hgetall(f"{prefix}:rl:overrides") == {"keep": "60"})

        await until(pruned, what="the removed limit's override is pruned")
        assert await client.hgetall(f"{prefix}:rl:overrides") == {"keep": "60"}
        await second.close()
    finally:
        await client.aclose()


async def test_close_stops_the_refresh_even_when_the_read_swallows_the_cancel() -> None:
    """The poll loop's own logic: a read that turns close()'s cancel into a store error (as a Redis call under
    asyncio.timeout or redis-py can) must not leave the loop sleeping on with close() waiting on it for ever.
    (Seen for real: `make test` hung in a gateway fixture's teardown on this task.)"""
    reading = asyncio.Event()
    swallow = [True]

    class SwallowingStore:
        async def read_overrides(self) -> dict[str, int]:
            reading.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallow[0]:
                    raise TimeoutError from None  # one of STORE_ERRORS: refresh() keeps the last values
                raise
            return {}

    overrides = Overrides(SwallowingStore(), refresh=0.01)  # type: ignore[arg-type]
    overrides.start()
    await reading.wait()
    closing = asyncio.create_task(overrides.close())
    done, _ = await asyncio.wait({closing}, timeout=5)  # not wait_for: it would wait on the stuck close too
    swallow[0] = False
    if not done:  # the bug: stop the loop so the test ends (and fails) instead of hanging
        while not closing.done():
            if overrides._task is not None:
                overrides._task.cancel()
            await asyncio.sleep(0.01)
    assert done, "close() did not return: the poll loop swallowed the cancel"
