"""Admission through the real gateway: exact counts on every backend, keys, shadow mode, headers over time."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory
from tests.ratelimit.conftest import POLICY, ClockedFactory, limiter_of, policy_fields, record_events


@pytest.fixture(params=["memory", "redis", "cluster"])
def storage(request: pytest.FixtureRequest, redis_url: str) -> tuple[str, bool]:
    """(redis_url, cluster) for each backend: in-process, one Redis, a three-node Redis Cluster."""
    if request.param == "memory":
        return "", False
    if request.param == "redis":
        return redis_url, False
    url: str = request.getfixturevalue("redis_cluster")
    return url, True


@pytest.mark.parametrize("path", ["/ten", "/ten-global"])
async def test_exactly_the_burst_of_30_quick_requests_passes(
    make_gateway: GatewayFactory, upstream: TestServer, storage: tuple[str, bool], path: str
) -> None:
    # /ten-global adds a global limit: on a Cluster its key lives in another slot than the user's.
    url, cluster = storage
    gw = await make_gateway(POLICY, **policy_fields(upstream, url, cluster=cluster))
    responses = await asyncio.gather(*(gw.get(path, headers={"X-User-Id": "alice"}) for _ in range(30)))
    assert Counter(r.status for r in responses) == {200: 10, 429: 20}
    refused = next(r for r in responses if r.status == 429)
    assert refused.headers["Cache-Control"] == "no-store"
    assert refused.headers["RateLimit-Policy"] == '"ten_per_minute";q=10;w=60'
    assert refused.headers["RateLimit"] == f'"ten_per_minute";r=0;t={refused.headers["Retry-After"]}'
    assert 1 <= int(refused.headers["Retry-After"]) <= 6  # one token every 6 s
    body = await refused.json()
    assert body["error"] == "rate_limited" and body["limit"] == "ten_per_minute"
    assert body["retry_after"] == int(refused.headers["Retry-After"])
    remaining = sorted(int(r.headers["RateLimit"].split("r=")[1].split(";")[0]) for r in responses
                       if r.status == 200)
    assert remaining == list(range(10))  # each admitted request saw its own token go
    assert limiter_of(gw).stats()["fallbacks"] == {"local": 0, "allow": 0, "deny": 0}


async def test_two_gateways_sharing_one_redis_admit_the_limit_in_total(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> None:
    fields = policy_fields(upstream, redis_url)
    first, second = await make_gateway(POLICY, **fields), await make_gateway(POLICY, **fields)
    responses = await asyncio.gather(
        *((first if i % 2 else second).get("/ten", headers={"X-User-Id": "bob"}) for i in range(30))
    )
    assert Counter(r.status for r in responses) == {200: 10, 429: 20}


async def test_users_have_their_own_buckets_and_no_user_means_the_ip(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> None:
    gw = await make_gateway(POLICY, **policy_fields(upstream, redis_url))
    statuses = [(await gw.get("/ten", headers={"X-User-Id": "carol"})).status for _ in range(11)]
    assert statuses == [200] * 10 + [429]
    assert (await gw.get("/ten", headers={"X-User-Id": "dave"})).status == 200
    anonymous = [(await gw.get("/ten")).status for _ in range(11)]
    assert anonymous == [200] * 10 + [429]
    assert (await gw.get("/ten", headers={"X-User-Id": "erin"})).status == 200


async def test_keys_by_header_and_by_route(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> None:
    gw = await make_gateway(POLICY, **policy_fields(upstream, redis_url))
    by_key = [(await gw.get("/api-key", headers={"X-Api-Key": "k1"})).status for _ in range(3)]
    assert by_key == [200, 200, 429]
    assert (await gw.get("/api-key", headers={"X-Api-Key": "k2"})).status == 200
    by_route = [(await gw.get("/route", headers={"X-User-Id": f"user{i}"})).status for i in range(4)]
    assert by_route == [200, 200, 200, 429]  # one bucket for the route, whoever calls


async def test_forwarded_for_from_an_untrusted_peer_does_not_change_the_ip_key(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> None:
    untrusted = await make_gateway(POLICY, **policy_fields(upstream, redis_url))
    spoofed = [(await untrusted.get("/ip", headers={"X-Forwarded-For": f"203.0.113.{i}"})).status
               for i in range(3)]
    assert spoofed == [200, 200, 429]
    # The control: when the peer is a trusted proxy the header is believed, so each client has a bucket.
    behind_proxy = await make_gateway(POLICY, **policy_fields(upstream, redis_url, trusted="127.0.0.1/32"))
    believed = [(await behind_proxy.get("/ip", headers={"X-Forwarded-For": f"203.0.113.{i}"})).status
                for i in range(3)]
    assert believed == [200, 200, 200]


async def test_shadow_mode_counts_and_reports_but_never_refuses(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> None:
    gw = await make_gateway(POLICY, **policy_fields(upstream, redis_url))
    events = record_events(gw)
    responses = [await gw.get("/shadow", headers={"X-User-Id": "frank"}) for _ in range(5)]
    assert [r.status for r in responses] == [200] * 5
    assert all("RateLimit" not in r.headers for r in responses)  # a dry run advertises nothing
    assert limiter_of(gw).stats()["shadow_breaches"] == {"dry_run": 3}
    hits = [e.fields for e in events if e.type == "rate_limit_hit"]
    hit = {"actor": "frank", "limit": "dry_run", "route": "shadow", "key": "user", "shadow": True}
    assert hits == [hit] * 3
    # Beside an enforced limit, the enforced one decides and is the one advertised.
    both = [await gw.get("/both", headers={"X-User-Id": "grace"}) for _ in range(3)]
    assert [r.status for r in both] == [200, 200, 429]
    assert both[0].headers["RateLimit"].startswith('"by_ip";r=1')


async def test_a_rejection_is_audited_with_actor_limit_route_and_key(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> None:
    gw = await make_gateway(POLICY, **policy_fields(upstream, redis_url))
    events = record_events(gw)
    for _ in range(3):
        await gw.get("/api-key", headers={"X-Api-Key": "k9", "X-User-Id": "heidi"})
    hits = [e.fields for e in events if e.type == "rate_limit_hit"]
    assert hits == [{"actor": "heidi", "limit": "by_api_key", "route": "api_key", "key": "header:X-Api-Key",
                     "shadow": False}]
    assert limiter_of(gw).stats()["breaches"] == {"by_api_key": 1}


async def test_every_key_is_hashed_namespaced_and_expires(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> None:
    fields = policy_fields(upstream, redis_url)
    gw = await make_gateway(POLICY, **fields)
    secret_user = "user-with-a-secret-looking-id"
    for path in ("/ten", "/ip", "/api-key", "/route", "/ten-global", "/shadow"):
        await gw.get(path, headers={"X-User-Id": secret_user, "X-Api-Key": "api-key-value"})
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() async for k in client.scan_iter(match=f"{fields['prefix']}:rl:*")]
        # ten_per_minute, by_ip, by_api_key, by_route, everyone, dry_run: a limit on two routes is one bucket.
        assert len(keys) == 6
        for key in keys:
            assert secret_user not in key and "api-key-value" not in key
            ttl = await client.pttl(key)
            assert 0 < ttl <= 60_000, (key, ttl)
    finally:
        await client.aclose()


async def test_script_flush_mid_run_is_reloaded_without_a_failure(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> None:
    gw = await make_gateway(POLICY, **policy_fields(upstream, redis_url))
    statuses = [(await gw.get("/ten", headers={"X-User-Id": "ivan"})).status for _ in range(5)]
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.script_flush()
    finally:
        await client.aclose()
    statuses += [(await gw.get("/ten", headers={"X-User-Id": "ivan"})).status for _ in range(25)]
    assert Counter(statuses) == {200: 10, 429: 20}
    stats = limiter_of(gw).stats()
    assert stats["redis"]["errors"] == 0 and stats["fallbacks"]["local"] == 0  # Redis answered every time


async def test_retry_after_and_ratelimit_follow_the_clock(
    clocked_gateway: ClockedFactory, upstream: TestServer
) -> None:
    gw, clock = await clocked_gateway(POLICY, **policy_fields(upstream))  # in-process buckets, our clock
    for i in range(10):
        admitted = await gw.get("/ten", headers={"X-User-Id": "judy"})
        assert admitted.headers["RateLimit"] == f'"ten_per_minute";r={9 - i};t=6'
    refused = await gw.get("/ten", headers={"X-User-Id": "judy"})
    assert (refused.status, refused.headers["Retry-After"]) == (429, "6")
    clock.advance(2.5)
    refused = await gw.get("/ten", headers={"X-User-Id": "judy"})
    assert (refused.headers["Retry-After"], refused.headers["RateLimit"]) == ("4", '"ten_per_minute";r=0;t=4')
    clock.advance(3.4)
    assert (await gw.get("/ten", headers={"X-User-Id": "judy"})).headers["Retry-After"] == "1"
    clock.advance(0.1)  # exactly 6 s after the bucket emptied: one token
    admitted = await gw.get("/ten", headers={"X-User-Id": "judy"})
    assert (admitted.status, admitted.headers["RateLimit"]) == (200, '"ten_per_minute";r=0;t=6')
    clock.advance(60)
    full = await gw.get("/ten", headers={"X-User-Id": "judy"})
    assert full.headers["RateLimit"] == '"ten_per_minute";r=9;t=6'


async def test_retry_after_from_redis_is_never_early(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> None:
    # Redis' clock cannot be moved: a short period (2 per 2 s) and one real wait of exactly Retry-After.
    gw = await make_gateway(POLICY, **policy_fields(upstream, redis_url))
    first = await gw.get("/short", headers={"X-User-Id": "ken"})
    assert first.headers["RateLimit"] == '"two_per_2s";r=1;t=1'
    assert first.headers["RateLimit-Policy"] == '"two_per_2s";q=2;w=2'
    await gw.get("/short", headers={"X-User-Id": "ken"})
    refused = await gw.get("/short", headers={"X-User-Id": "ken"})
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    await asyncio.sleep(int(refused.headers["Retry-After"]))
    again = await gw.get("/short", headers={"X-User-Id": "ken"})
    assert again.status == 200


async def test_checks_and_redis_round_trips_reach_metrics(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> None:
    gw = await make_gateway(POLICY, **policy_fields(upstream, redis_url))
    responses = await asyncio.gather(*(gw.get("/ten", headers={"X-User-Id": f"m{i}"}) for i in range(9)))
    assert [r.status for r in responses] == [200] * 9
    text = await (await gw.get("/metrics")).text()
    scraped = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("gateway_rate_limit_checks_total ", "gateway_redis_round_trips_total "))
    }
    trips = scraped["gateway_redis_round_trips_total"]
    assert scraped["gateway_rate_limit_checks_total"] == 9
    assert 1 <= trips <= 9 and trips == limiter_of(gw).stats()["redis"]["round_trips"]
