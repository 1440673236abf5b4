"""The audit trail: append-only, durable across restarts, bounded, never in the way of a proxied request."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from gateway.app import GATEWAY
from gateway.audit import AuditTrail, Batch, FileStore, RedisStore, iso
from gateway.events import Event
from gateway.policy.model import Audit
from tests.conftest import GatewayFactory
from tests.ops.conftest import ADMIN, audit_of, policy
from tests.support.clock import ManualClock
from tests.support.redis import RedisProcess
from tests.support.upstream import base_url


def event(i: int, at: float, type: str = "rate_limit_hit") -> Event:
    return Event(
        type=type,
        time=at,
        fields={
            "actor": f"u{i % 7}",
            "limit": "per_ip",
            "route": "orders",
            "key": "ip",
            "shadow": False,
            "n": i,
        },
    )


async def everything(store: FileStore | RedisStore) -> list[dict[str, object]]:
    return [r async for page in store.scan(0, time.time() + 3600) for r in page]


@pytest.fixture(params=["file", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> AsyncIterator[FileStore | RedisStore]:
    """Each storage backend, on real disk / the real session Redis (a fresh stream key per test)."""
    settings = Audit(max_file_size=4096)
    made: FileStore | RedisStore
    if request.param == "file":
        made = FileStore(tmp_path / "audit", settings)
    else:
        made = RedisStore(redis_url, f"test-{uuid.uuid4().hex}:audit", settings, timeout=1.0)
    yield made
    await made.close()


async def test_trail_writes_every_event_in_order_and_close_drains_the_queue(
    store: FileStore | RedisStore,
) -> None:
    trail = AuditTrail(store, queue_size=10_000)
    trail.start()
    now = time.time()
    for i in range(2500):  # several batches, and (file backend) several 4 KiB segments
        trail(event(i, now + i / 1000))
    await trail.close()  # without a flush first: close itself must drain
    records = await everything(store)
    assert [r["n"] for r in records] == list(range(2500))
    assert records[0]["time"] == iso(now) and records[0]["type"] == "rate_limit_hit"
    assert trail.written == 2500 and trail.dropped == 0
    if isinstance(store, FileStore):
        assert len(store.segments()) > 1  # rotated by size


async def test_a_full_queue_drops_and_counts_instead_of_blocking(store: FileStore | RedisStore) -> None:
    trail = AuditTrail(store, queue_size=10)
    trail.start()
    for i in range(100):  # in one go: the writer task cannot run in between
        trail(event(i, time.time(), "circuit_state_change"))
    assert trail.dropped == 90 and trail.queued == 10
    assert await trail.flush()
    assert trail.written == 10 and trail.stats()["dropped"] == 90
    await trail.close()
    trail(event(0, time.time(), "circuit_state_change"))  # after close: counted, not written
    assert trail.dropped == 91


async def test_scan_filters_by_time_range_exactly(store: FileStore | RedisStore) -> None:
    base = time.time() - 1000
    await store.append(
        Batch.of([(b'{"time":"%s","type":"t","n":%d}' % (iso(base + i).encode(), i)) for i in range(10)])
    )
    found = [r["n"] async for page in store.scan(base + 3, base + 6) for r in page]
    assert found == [3, 4, 5, 6]


async def test_file_segments_older_than_max_age_are_deleted(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    store = FileStore(tmp_path, Audit(max_file_size=4096, max_age="1d"), clock)
    lines = [b'{"time":"%s","type":"t","pad":"%s"}' % (iso(clock.now).encode(), b"x" * 100)] * 40
    await store.append(Batch.of(lines))
    await store.append(Batch.of(lines))  # over 4 KiB: a second segment
    first, *_ = store.segments()
    os.utime(first, (clock.now - 2 * 86400, clock.now - 2 * 86400))  # last written two days ago
    clock.now += 3601  # pruning runs at most hourly, on a write
    await store.append(Batch.of(lines[:1]))
    assert first not in store.segments() and len(store.segments()) >= 1
    await store.close()


async def test_a_torn_last_line_from_a_crash_is_skipped_and_writing_resumes(tmp_path: Path) -> None:
    store = FileStore(tmp_path, Audit())
    await store.append(Batch.of([b'{"time":"%s","type":"a"}' % iso(time.time()).encode()]))
    await store.close()
    segment = store.segments()[-1]
    with segment.open("ab") as f:
        f.write(b'{"time":"2025-09-13T00:00:0')  # the process died mid-line
    again = FileStore(tmp_path, Audit())
    await again.append(Batch.of([b'{"time":"%s","type":"b"}' % iso(time.time()).encode()]))
    assert [r["type"] for r in await everything(again)] == ["a", "b"]
    await again.close()


async def test_a_flood_of_refusals_cannot_push_admin_actions_out_of_the_redis_trail(redis_url: str) -> None:
    """One record per 429 is as many records as an anonymous client cares to cause: they are capped in a
    stream of their own, and what admins did stays readable, in time order with the rest."""
    key = f"test-{uuid.uuid4().hex}:audit"
    store = RedisStore(redis_url, key, Audit(max_events=100), timeout=1.0)
    now = time.time()
    admin = b'{"time":"%s","type":"admin_action","action":"breaker.open"}' % iso(now).encode()
    hits = [b'{"time":"%s","type":"rate_limit_hit","n":%d}' % (iso(now + 1 + i / 1000).encode(), i)
            for i in range(1000)]
    await store.append(Batch.of([admin]))
    for i in range(0, 1000, 100):
        await store.append(Batch.of(hits[i : i + 100], stream="rate_limit_hit"))
    records = await everything(store)
    assert records[0]["type"] == "admin_action" and records[0]["action"] == "breaker.open"
    kept = [r["n"] for r in records[1:]]
    assert 100 <= len(kept) < 1000 and kept == sorted(kept) and kept[-1] == 999  # capped, newest kept
    await store.redis.delete(key, store.hits_key)
    await store.close()


async def test_redis_stream_is_trimmed_by_age(redis_url: str) -> None:
    clock = ManualClock(time.time())
    key = f"test-{uuid.uuid4().hex}:audit"
    store = RedisStore(redis_url, key, Audit(max_age="1h", max_events=100_000), timeout=1.0, clock=clock)
    line = b'{"time":"%s","type":"t"}' % iso(clock.now).encode()
    for _ in range(10):
        await store.append(Batch.of([line] * 100))
    assert await store.redis.xlen(key) == 1000
    clock.now += 2 * 3600 + 61  # every entry is now over max_age old, and a minute since the last trim
    await store.append(Batch.of([line]))
    # MINID ~ trims whole stream nodes (100 entries each by default): at most the newest node survives.
    assert await store.redis.xlen(key) <= 101
    await store.redis.delete(key)
    await store.close()


# -- in the running gateway --


async def test_audit_events_survive_a_gateway_restart(  # type: ignore[no-untyped-def]
    make_gateway: GatewayFactory,
    upstream: TestServer,
    redis_url: str,
) -> None:
    for backend in ("file", "redis"):
        text = policy(
            base_url(upstream),
            redis_url=redis_url if backend == "redis" else "",
            prefix=f"t{uuid.uuid4().hex[:12]}",
        )
        first = await make_gateway(text)
        trail = audit_of(first)
        bus = first.app[GATEWAY].events
        for i in range(500):  # still queued when the server closes: close must write them
            bus.emit(
                "rate_limit_hit",
                actor=f"10.0.0.{i % 5}",
                limit="per_ip",
                route="default",
                key="ip",
                shadow=False,
            )
        assert trail.queued > 0
        await first.close()
        second = await make_gateway(text)  # same audit dir (next to the policy file) / same Redis key
        resp = await second.post(
            "/api/ops/export",
            headers=ADMIN,
            json={
                "entities": ["audit"],
                "range": {"from": iso(time.time() - 60)},
                "filter": {"type": "rate_limit_hit"},
            },
        )
        assert resp.status == 200, backend
        assert (await resp.json())["audit_count"] == 500, backend


async def test_queue_full_drops_are_counted_and_requests_are_unaffected(  # type: ignore[no-untyped-def]
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(policy(base_url(upstream), queue_size=10))
    trail = audit_of(gw)
    bus = gw.app[GATEWAY].events
    for i in range(200):
        bus.emit("rate_limit_hit", actor=f"u{i}", limit="x", route="default", key="user", shadow=False)
    assert trail.dropped == 191 and trail.queued == 9  # a flood kind may fill nine tenths of the queue...
    bus.emit("circuit_state_change", breaker="b", to="open", cause="test")
    assert trail.dropped == 191 and trail.queued == 10  # ...so a rare event still finds room
    resp = await gw.get("/anything")
    assert resp.status == 200 and (await resp.json())["raw_path"] == "/anything"
    health = await (await gw.get("/api/ops/health")).json()
    assert health["audit"]["dropped"] == 191
    assert health["audit"]["dropped_by_reason"]["queue_full"] == 191


async def test_a_frozen_redis_does_not_slow_requests_and_loses_nothing_once_back(  # type: ignore[no-untyped-def]
    make_gateway: GatewayFactory, upstream: TestServer, private_redis: RedisProcess
) -> None:
    gw = await make_gateway(policy(base_url(upstream), redis_url=private_redis.url))
    trail = audit_of(gw)
    bus = gw.app[GATEWAY].events
    private_redis.freeze()
    try:
        for i in range(50):
            bus.emit("rate_limit_hit", actor=f"u{i}", limit="x", route="default", key="user", shadow=False)
        await asyncio.sleep(0)  # let the writer start its XADD into the frozen server
        started = time.perf_counter()
        resp = await gw.get("/still-fast")
        assert resp.status == 200
        assert time.perf_counter() - started < 0.5  # the audit write hangs on its own socket timeout (1 s)
    finally:
        private_redis.thaw()
    assert await trail.flush(within=10.0)
    client = aioredis.Redis.from_url(private_redis.url)
    assert await client.xlen("gw:audit:rate_limit_hit") >= 50  # refusals have their own stream
    await client.aclose()
