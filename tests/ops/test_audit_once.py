"""Audit events are written once: a stalled Redis (stopped with SIGSTOP, for real) makes the writer time out
and retry while the first attempts still land when Redis wakes; each event is stored once all the same, and a
shutdown in the middle of the stall counts as lost only what is in fact missing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.audit import AuditTrail, Batch, Entry, RedisStore, encode, stream_of
from gateway.events import Event
from gateway.policy.model import Audit
from tests.ratelimit.conftest import start_cluster, stop_cluster
from tests.support.redis import RedisProcess
from tests.support.wait import until


def stopped(server: RedisProcess) -> bool:
    assert server.proc is not None
    state = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state == "T"


async def freeze(server: RedisProcess) -> None:
    server.freeze()
    await until(lambda: stopped(server), what="redis-server stopped")


def hit(i: int) -> Event:
    return Event("rate_limit_hit", time.time(), {"actor": f"10.0.0.{i}", "limit": "per_ip", "route": "r",
                                                 "key": "ip", "shadow": False, "n": i})


async def stored(url: str, key: str) -> list[dict[str, object]]:
    """The stream's records once Redis has run whatever the writer's connections held: the trail is closed,
    so when our connection is the only one left, every attempt sent in the stall has run (or never will)."""
    client = aioredis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while len(await client.client_list()) > 1:
            assert time.monotonic() < deadline, "the writer's connections did not go away"
            await asyncio.sleep(0.01)
        return [orjson.loads(fields[b"e"]) for _, fields in await client.xrange(key)]
    finally:
        await client.aclose()


@pytest.fixture
async def trail(private_redis: RedisProcess) -> AsyncIterator[AuditTrail]:
    # timeout=0.1: the store's floor (1 s) applies; attempts time out while Redis sleeps, for real.
    store = RedisStore(private_redis.url, f"t{uuid.uuid4().hex[:8]}:audit", Audit(), timeout=0.1)
    made = AuditTrail(store, queue_size=1000)
    made.start()
    made(Event("policy_reload", time.time(), {"result": "success"}))
    assert await made.flush()  # connected: the first attempt in the stall reaches Redis's socket buffer
    made.written = 0
    yield made
    if private_redis.proc is not None and stopped(private_redis):
        private_redis.thaw()
    await made.close(within=5)


async def test_retries_during_a_stall_store_each_event_once(
    trail: AuditTrail, private_redis: RedisProcess
) -> None:
    await freeze(private_redis)
    for i in range(20):
        trail(hit(i))
    await until(lambda: trail.write_errors >= 2, within=10)  # two attempts sent and timed out
    private_redis.thaw()  # every attempt in the sockets' buffers now runs
    assert await trail.flush(within=10)
    await trail.close()
    records = await stored(private_redis.url, f"{trail.store.key}:rate_limit_hit")  # type: ignore[attr-defined]
    assert sorted(r["n"] for r in records) == list(range(20))  # once each, not once per attempt
    assert len({r["event_id"] for r in records}) == 20
    assert trail.written == 20 and trail.dropped == 0 and trail.unconfirmed == 0
    assert trail.failing is None


async def test_shutdown_in_a_stall_counts_as_lost_only_what_is_missing(
    trail: AuditTrail, private_redis: RedisProcess
) -> None:
    await freeze(private_redis)
    for i in range(20):
        trail(hit(i))
    await until(lambda: trail.write_errors >= 1, within=10)  # the batch of 20 was sent at least once
    for i in range(20, 25):
        trail(hit(i))  # queued behind it: never sent
    await trail.close(within=0.2)  # Redis still stopped: the last try fails too
    assert trail.drops["shutdown"] == 5 and trail.unconfirmed == 20 and trail.written == 0
    private_redis.thaw()
    records = await stored(private_redis.url, f"{trail.store.key}:rate_limit_hit")  # type: ignore[attr-defined]
    assert sorted(r["n"] for r in records) == list(range(20))  # unconfirmed: landed, once; lost: absent


async def test_shutdown_as_a_stall_ends_counts_what_landed_as_written(
    trail: AuditTrail, private_redis: RedisProcess
) -> None:
    await freeze(private_redis)
    for i in range(20):
        trail(hit(i))
    await until(lambda: trail.write_errors >= 1, within=10)
    closing = asyncio.create_task(trail.close(within=0.2))
    task = trail._task
    assert task is not None
    await until(task.done, within=10)  # the writer was given up on: close() is making its last try
    private_redis.thaw()
    await closing
    assert trail.written == 20 and trail.dropped == 0 and trail.unconfirmed == 0
    records = await stored(private_redis.url, f"{trail.store.key}:rate_limit_hit")  # type: ignore[attr-defined]
    assert sorted(r["n"] for r in records) == list(range(20))


async def test_on_a_real_cluster_a_repeated_batch_is_stored_once_and_the_streams_merge() -> None:
    """Each stream and its writer marks share a slot (the script may only touch one); streams may sit on
    different nodes; the same batch sent twice is stored once; export order is time order across them."""
    servers = start_cluster()
    try:
        url = f"redis://127.0.0.1:{servers[0].port}/0"
        store = RedisStore(url, "c:audit", Audit(), timeout=1.0, cluster=True)
        trail = AuditTrail(store, queue_size=100)
        now = time.time()
        events = [Event("policy_reload", now, {"result": "success"}), hit(1),
                  Event("admin_action", now + 2, {"action": "auth_failed", "client": "10.9.9.9"})]
        batch = Batch(trail.writer, tuple(Entry(i + 1, stream_of(e), encode(e, f"{trail.writer}-{i + 1}"))
                                          for i, e in enumerate(events)))
        await store.append(batch)
        await store.append(batch)  # a retry of a batch that did land
        records = [r async for page in store.scan(now - 10, now + 10) for r in page]
        assert [r["type"] for r in records] == ["policy_reload", "rate_limit_hit", "admin_action"]
        assert [r["time"] for r in records] == sorted(r["time"] for r in records)
        await store.close()
    finally:
        stop_cluster(servers)
