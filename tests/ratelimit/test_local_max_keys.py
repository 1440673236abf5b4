"""`storage.local_max_keys` bounds the in-process buckets: past it the least recently used bucket is dropped,
which forgets that actor's spent tokens (an absent bucket is a full one)."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestServer

from tests.ratelimit.conftest import Client, ClockedFactory
from tests.support.upstream import base_url

POLICY = """
version: 1
storage: {{local_max_keys: {cap}}}
upstreams: {{app: {{url: "{url}"}}}}
rate_limits: {{two_per_hour: {{rate: 2, per: 1h, key: user}}}}
routes: [{{name: d, match: "GET /{{p:.*}}", upstream: app, rate_limits: [two_per_hour]}}]
"""
OTHERS = 100  # distinct users after the first one: 101 buckets in all, one over a cap of 100


async def remaining(gw: Client, user: str) -> int:
    """Tokens left in `user`'s bucket after one more request (the RateLimit header's r=)."""
    resp = await gw.get("/x", headers={"X-User-Id": user})
    assert resp.status == 200
    return int(resp.headers["RateLimit"].split("r=")[1].split(";")[0])


async def local_buckets(gw: Client) -> int:
    text = await (await gw.get("/metrics")).text()
    found = re.search(r"^gateway_rate_limit_local_buckets (\S+)$", text, re.M)
    assert found is not None
    return int(float(found.group(1)))


@pytest.mark.parametrize(("cap", "forgotten"), [(100, True), (101, False)])
async def test_past_local_max_keys_the_least_recently_used_bucket_is_forgotten(
    clocked_gateway: ClockedFactory, upstream: TestServer, cap: int, forgotten: bool
) -> None:
    # The clock the buckets read never moves: no token comes back with time, only by forgetting.
    gw, _ = await clocked_gateway(POLICY, cap=cap, url=base_url(upstream))
    assert await remaining(gw, "first") == 1
    for i in range(OTHERS):
        assert await remaining(gw, f"user{i}") == 1
    assert await local_buckets(gw) == min(cap, 1 + OTHERS)  # never more than the cap
    assert await remaining(gw, f"user{OTHERS - 1}") == 0  # the most recent bucket is kept
    # The oldest: dropped at the 101st bucket under a cap of 100, so its bucket is full again.
    assert await remaining(gw, "first") == (1 if forgotten else 0)
