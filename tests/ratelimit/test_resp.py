"""The pipelined RESP client of the request path, against real redis-servers: batching, replies matched to
their own checks, AUTH and database from the URL, deadlines that drop the connection, NOSCRIPT, restarts."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import redis.asyncio as aioredis
import uvloop

from gateway.events import Event, Events
from gateway.ratelimit.redis import RedisBuckets, RedisUnavailable
from gateway.ratelimit.resp import Endpoint, ScriptPipe, encode
from tests.support.clock import ManualClock
from tests.support.redis import RedisProcess

SECOND_US = "1000000"  # one token per second: nothing refills within a test


def buckets(url: str, clock: ManualClock | None = None, timeout: float = 0.5,
            events: Events | None = None) -> RedisBuckets:
    return RedisBuckets(url, cluster=False, timeout=timeout, retry_interval=0.3, prefix="unused",
                        events=events or Events(), clock=clock or ManualClock())


def key(name: str) -> str:
    return f"t{os.urandom(4).hex()}:rl:{{{name}}}:limit"


def test_endpoint_of_a_plain_url_carries_auth_and_database() -> None:
    assert Endpoint.from_url("redis://:p%40ss@cache.internal:6380/3") == Endpoint(
        "cache.internal", 6380, 3, None, "p@ss")
    assert Endpoint.from_url("redis://alice:pw@10.0.0.1") == Endpoint("10.0.0.1", 6379, 0, "alice", "pw")
    assert Endpoint.from_url("redis://localhost:6379/0") == Endpoint("localhost", 6379)


@pytest.mark.parametrize("url", [
    "rediss://cache.internal:6380/0",  # TLS
    "unix:///run/redis.sock",
    "redis://localhost:6379/0?socket_keepalive=true",  # options only redis-py understands
])
def test_urls_the_small_client_does_not_handle_go_to_redis_py(url: str) -> None:
    assert Endpoint.from_url(url) is None
    assert buckets(url).pipe is None


@pytest.mark.parametrize("url", ["redis://localhost:notaport/0", "redis://localhost:6379/zero"])
def test_a_malformed_url_is_left_to_redis_py_to_report(url: str) -> None:
    assert Endpoint.from_url(url) is None


def test_a_cluster_stays_on_redis_py() -> None:
    cluster = RedisBuckets("redis://127.0.0.1:7000/0", cluster=True, timeout=0.05, retry_interval=0.3,
                           prefix="p", events=Events())
    assert cluster.pipe is None


def test_handshake_authenticates_then_selects() -> None:
    assert Endpoint("h", 1, 2, "bob", "pw").handshake() == [
        b"*3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n$2\r\npw\r\n",
        b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n",
    ]
    assert Endpoint("h", 1).handshake() == []


def test_encode_writes_a_resp_array_of_bulk_strings() -> None:
    assert encode([b"GET", b"k\r\n"]) == b"*2\r\n$3\r\nGET\r\n$3\r\nk\r\n\r\n"


async def test_checks_of_one_tick_share_one_write_and_each_gets_its_own_reply(redis_url: str) -> None:
    store = buckets(redis_url)
    await store.start()
    assert store.pipe is not None
    try:
        before = store.round_trips
        # Capacities 1..20 on 20 keys: a reply handed to the wrong check shows as a wrong remaining count.
        keys = [key(f"k{i}") for i in range(20)]
        replies = await asyncio.gather(
            *(store.check([k], [SECOND_US, str(i + 1), "1"], ["t"]) for i, k in enumerate(keys))
        )
        assert [r[:2] for r in replies] == [[1, i] for i in range(20)]
        assert store.round_trips - before == 1
        assert store.health.errors == 0
    finally:
        await store.close()


async def test_several_limits_in_one_check_are_decided_together(redis_url: str) -> None:
    store = buckets(redis_url)
    try:
        first, second = key("a"), key("a")
        assert (await store.check([first, second], [SECOND_US, "3", "1", SECOND_US, "1", "1"], ["a", "a"]))[
            0::3] == [1, 1]
        # The second bucket is empty: nothing is taken from the first either.
        refused = await store.check([first, second], [SECOND_US, "3", "1", SECOND_US, "1", "1"], ["a", "a"])
        assert refused[0::3] == [1, 0]
        assert (await store.check([first], [SECOND_US, "3", "1"], ["a"]))[:2] == [1, 1]
    finally:
        await store.close()


async def test_password_and_database_come_from_the_url(private_redis: RedisProcess) -> None:
    port = private_redis.port
    setup = aioredis.Redis(port=port)
    await setup.config_set("requirepass", "s3cr@t")  # (the fixture's readiness check needs no password)
    await setup.aclose()
    admin = aioredis.Redis(port=port, password="s3cr@t", db=3)
    admin0 = aioredis.Redis(port=port, password="s3cr@t", db=0)
    events = Events()
    seen: list[Event] = []
    events.subscribe(seen.append)
    good = buckets(f"redis://:s3cr%40t@127.0.0.1:{port}/3")
    bad = buckets(f"redis://:wrong-guess@127.0.0.1:{port}/3", events=events)
    try:
        name = key("db")
        assert (await good.check([name], [SECOND_US, "5", "1"], ["db"]))[:2] == [1, 4]
        assert await admin.exists(name) == 1
        assert await admin0.exists(name) == 0
        with pytest.raises(RedisUnavailable):
            await bad.check([key("x")], [SECOND_US, "5", "1"], ["x"])
        assert bad.health.last_error is not None and "WRONGPASS" in bad.health.last_error
        assert "wrong-guess" not in bad.health.last_error
        assert [e.fields["to"] for e in seen if e.type == "redis_state_change"] == ["down"]
    finally:
        await good.close()
        await bad.close()
        await admin.aclose()
        await admin0.aclose()


async def test_a_missed_deadline_drops_the_connection_so_a_late_reply_answers_nobody(
    private_redis: RedisProcess,
) -> None:
    clock = ManualClock()
    store = buckets(private_redis.url, clock, timeout=0.05)
    await store.start()
    assert store.pipe is not None and store.pipe.connects == 1
    private_redis.freeze()
    try:
        started = time.perf_counter()
        with pytest.raises(RedisUnavailable):
            await store.check([key("late")], [SECOND_US, "7", "1"], ["late"])
        assert time.perf_counter() - started < 0.5
        assert store.health.last_error == "TimeoutError"
    finally:
        private_redis.thaw()
    clock.advance(0.3)  # the breaker lets one probe through
    # Capacity 3, not 7: the late reply of the frozen check (remaining 6) must not be taken for this one.
    assert (await store.check([key("next")], [SECOND_US, "3", "1"], ["next"]))[:2] == [1, 2]
    assert store.pipe.connects == 2 and store.health.up
    await store.close()


async def test_script_flush_is_answered_with_one_script_load_and_the_checks_resent(
    private_redis: RedisProcess,
) -> None:
    store = buckets(private_redis.url)
    admin = aioredis.Redis(port=private_redis.port)
    try:
        await store.start()
        await admin.script_flush()
        keys = [key(f"f{i}") for i in range(10)]
        replies = await asyncio.gather(
            *(store.check([k], [SECOND_US, str(i + 2), "1"], ["t"]) for i, k in enumerate(keys))
        )
        assert [r[:2] for r in replies] == [[1, i + 1] for i in range(10)]
        assert store.health.errors == 0
        stats = await admin.info("commandstats")
        assert stats["cmdstat_script|load"]["calls"] == 2  # start() and after the flush: once, not per check
        assert stats["cmdstat_evalsha"]["calls"] == 20  # each check refused once, then resent once
    finally:
        await store.close()
        await admin.aclose()


async def test_a_restarted_redis_is_reconnected_to(private_redis: RedisProcess) -> None:
    clock = ManualClock()
    store = buckets(private_redis.url, clock)
    try:
        assert (await store.check([key("r")], [SECOND_US, "2", "1"], ["r"]))[0] == 1
        private_redis.restart()  # same port, empty: no keys, no script
        outcomes = []
        for _ in range(2):  # the first check may still meet the old connection's end
            clock.advance(0.3)
            try:
                outcomes.append((await store.check([key("r")], [SECOND_US, "2", "1"], ["r"]))[:2])
            except RedisUnavailable:
                outcomes.append(None)
        assert outcomes[-1] == [1, 1] and outcomes.count(None) <= 1
        assert store.health.up
    finally:
        await store.close()


async def test_a_closed_store_fails_checks_at_once(redis_url: str) -> None:
    store = buckets(redis_url)
    await store.check([key("c")], [SECOND_US, "2", "1"], ["c"])
    await store.close()
    with pytest.raises(RedisUnavailable):
        await store.check([key("c")], [SECOND_US, "2", "1"], ["c"])


def test_the_pipe_runs_on_uvloop_as_in_production(redis_url: str) -> None:
    endpoint = Endpoint.from_url(redis_url)
    assert endpoint is not None

    async def main() -> list[int]:
        store = buckets(redis_url)
        try:
            await store.start()
            assert isinstance(store.pipe, ScriptPipe)
            result: list[int] = await store.check([key("uv")], [SECOND_US, "4", "1"], ["uv"])
            return result
        finally:
            await store.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main())[:2] == [1, 3]
