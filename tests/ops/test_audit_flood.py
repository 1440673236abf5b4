"""Floods cannot erase the audit trail: thousands of failed admin logins from thousands of addresses,
against a real gateway, leave the admin actions, reloads and breaker changes before them in the export; the
file backend stays under audit.max_total_bytes and counts what it deleted."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from gateway.audit import Batch, FileStore, RedisStore, iso
from gateway.policy.model import Audit
from tests.conftest import GatewayFactory
from tests.ops.conftest import BEARER, Client, audit_of, policy

FLOOD = 2000
CAP_BYTES = 65536
EXTRA = """
identity: {trusted_proxies: [127.0.0.1/32]}
breakers:
  b1: {consecutive_failures: 5, failure_rate: null, reset_timeout: 60s}
"""


def flood_policy(upstream: TestServer, backend: str, redis_url: str, audit_dir: Path) -> str:
    text = policy(str(upstream.make_url("")).rstrip("/"), redis_url=redis_url if backend == "redis" else "",
                  prefix=f"f{uuid.uuid4().hex[:12]}", audit_dir=str(audit_dir), extra=EXTRA)
    return (text.replace("audit: {", f"audit: {{max_events: 100, max_total_bytes: {CAP_BYTES}, ")
                .replace("timeout: 2s}", "timeout: 2s, breaker: b1}"))


async def bad_logins(gw: Client, n: int) -> None:
    """n ops calls with a wrong bearer token, each forwarded (by the trusted proxy on 127.0.0.1) for a
    different address: the per-address limit on failed attempts never kicks in."""
    async def one(i: int) -> None:
        headers = {"Authorization": f"Bearer wrong-token-{i:08d}-padding",
                   "X-Forwarded-For": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"}
        async with gw.get("/api/ops/breakers", headers=headers) as resp:
            assert resp.status == 403

    for start in range(0, n, 200):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 200))))


async def kept_in_storage(store: FileStore | RedisStore) -> list[dict[str, Any]]:
    """Every record storage holds, read past the trail's own reader: straight from the files / streams."""
    lines: list[bytes] = []
    if isinstance(store, FileStore):
        for path in store.segments():
            lines += path.read_bytes().splitlines()
    else:
        for key in store.keys.values():
            lines += [fields[b"e"] for _, fields in await store.redis.xrange(key)]
    return [orjson.loads(line) for line in lines]


@pytest.mark.parametrize("backend", ["redis", "file"])
async def test_a_flood_of_failed_admin_logins_leaves_the_rare_events_in_the_export(
    backend: str, make_gateway: GatewayFactory, upstream: TestServer, redis_url: str, tmp_path: Path
) -> None:
    since = iso(time.time() - 1)
    gw = await make_gateway(flood_policy(upstream, backend, redis_url, tmp_path / "audit"))
    trail = audit_of(gw)
    opened = await gw.post("/api/ops/breakers/b1", json={"action": "open"}, headers=BEARER)
    assert opened.status == 200  # an admin_action, and a circuit_state_change
    source = tmp_path / "policy0.yaml"  # where make_gateway wrote it
    source.write_text(source.read_text().replace("connect_timeout: 1s", "connect_timeout: 900ms"))
    reloaded = await gw.post("/api/ops/reload", headers=BEARER)
    assert reloaded.status == 200 and (await reloaded.json())["result"] == "success"  # a policy_reload
    await bad_logins(gw, FLOOD)
    assert await trail.flush(10)

    export = {"entities": ["audit"], "range": {"from": since}}
    resp = await gw.post("/api/ops/export", headers=BEARER, json=export)
    assert resp.status == 200
    records = (await resp.json())["audit"]
    actions = [r.get("action") for r in records if r["type"] == "admin_action"]
    assert "breaker.open" in actions and "reload" in " ".join(str(a) for a in actions)
    assert any(r["type"] == "policy_reload" and r["result"] == "success" for r in records)
    assert any(r["type"] == "circuit_state_change" and r["breaker"] == "b1" and r["to"] == "open"
               for r in records)
    failed = [r for r in records if r.get("action") == "auth_failed"]
    assert 0 < len(failed) < FLOOD  # the flood was capped: in its own stream / its own files

    # The export is everything storage kept, merged by time; what the cap removed is counted, one by one.
    kept = [r for r in await kept_in_storage(trail.store)
            if r.get("path") != "/api/ops/export"]  # the export's own record comes after it
    assert sorted(r["event_id"] for r in records) == sorted(r["event_id"] for r in kept)
    assert [r["time"] for r in records] == sorted(r["time"] for r in records)
    kept_failures = sum(1 for r in kept if r.get("action") == "auth_failed")
    evicted = trail.stats()["dropped_by_reason"]["cap"]
    assert trail.dropped == 0 and kept_failures + evicted == FLOOD
    metrics = await (await gw.get("/metrics")).text()
    assert re.search(rf'^gateway_audit_dropped_total{{reason="cap"}} {evicted}(\.0)?$', metrics, re.M)
    if backend == "file":
        size = sum(p.stat().st_size for p in (tmp_path / "audit").iterdir())
        assert size <= CAP_BYTES


async def test_the_directory_cap_deletes_the_oldest_flood_files_first(tmp_path: Path) -> None:
    """A 429 flood over many writes: the directory never passes the cap; the rare record written first stays.
    """
    store = FileStore(tmp_path, Audit.model_validate({"max_total_bytes": CAP_BYTES}))
    now = time.time()
    rare = b'{"time":"%s","type":"policy_reload","result":"success"}' % iso(now).encode()
    await store.append(Batch.of([rare]))
    n = 0
    for round_ in range(100):
        lines = [b'{"time":"%s","type":"rate_limit_hit","actor":"10.0.0.%d","pad":"%s"}'
                 % (iso(now + n + i).encode(), i, b"x" * 100) for i in range(50)]
        n += len(lines)
        await store.append(Batch.of(lines, stream="rate_limit_hit"))
        total = sum(p.stat().st_size for p in store.segments())
        assert total <= CAP_BYTES, round_
    records = [r async for page in store.scan(0, now + 2 * n) for r in page]
    assert records[0]["type"] == "policy_reload"
    hits = [r for r in records if r["type"] == "rate_limit_hit"]
    assert len(hits) + store.evicted == n and store.evicted > 0
    assert hits[-1]["actor"] == "10.0.0.49"  # the newest are kept, the oldest went
    await store.close()


async def test_redis_flood_streams_are_separate_and_counted(redis_url: str) -> None:
    """auth_failed records do not share a stream with rare ones; the cap's trims are counted."""
    key = f"test-{uuid.uuid4().hex}:audit"
    store = RedisStore(redis_url, key, Audit(max_events=100), timeout=1.0)
    now = time.time()
    await store.append(Batch.of([b'{"time":"%s","type":"admin_action","action":"breaker.open"}'
                                 % iso(now).encode()]))
    for _ in range(10):
        await store.append(Batch.of(
            [b'{"time":"%s","type":"admin_action","action":"auth_failed","n":%d}' % (iso(now + 1).encode(), j)
             for j in range(100)], stream="auth_failed"))
    client = aioredis.Redis.from_url(redis_url)
    assert await client.xlen(key) == 1
    assert await client.xlen(f"{key}:auth_failed") + store.evicted == 1000
    await client.delete(key, f"{key}:auth_failed")
    await client.aclose()
    await store.close()
