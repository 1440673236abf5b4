"""Health tells the truth about the audit trail: when it cannot record (an unwritable directory, a Redis that
refuses writes or is gone) /api/ops/health says "degraded" with the reason and /api/ops/export answers 503
with a JSON reason instead of a short 200."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from gateway.app import GATEWAY
from gateway.audit import iso
from gateway.audit.trail import PROBE_TTL
from tests.conftest import GatewayFactory
from tests.ops.conftest import ADMIN, Client, audit_of, policy
from tests.support.redis import RedisProcess

EXPORT = {"entities": ["audit"], "range": {"from": "2020-01-01T00:00:00Z"}}


async def health(gw: Client) -> dict[str, Any]:
    resp = await gw.get("/api/ops/health")
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def degraded(gw: Client) -> dict[str, Any]:
    """Health once it has noticed (its storage probe's answer is reused for up to PROBE_TTL)."""
    deadline = time.monotonic() + PROBE_TTL + 5
    while (body := await health(gw))["status"] != "degraded":
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)
    return body


async def export_refused(gw: Client) -> str:
    resp = await gw.post("/api/ops/export", headers=ADMIN, json=EXPORT)
    assert resp.status == 503 and resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == "audit_unavailable"
    detail: str = body["detail"]
    return detail


async def test_an_unwritable_audit_directory_is_degraded_and_export_is_503(
    make_gateway: GatewayFactory, upstream: TestServer, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the audit directory's parent should be\n")  # refused even to root
    gw = await make_gateway(policy(str(upstream.make_url("")).rstrip("/"), audit_dir=str(blocker / "audit")))
    body = await health(gw)
    assert body["status"] == "degraded"
    assert body["audit"]["ok"] is False and "not writable" in body["audit"]["error"]
    assert any("not writable" in reason for reason in body["reasons"])
    gw.app[GATEWAY].events.emit("admin_action", principal="t", action="probe", before=None, after=None)
    assert not await audit_of(gw).flush(within=1.0)  # the write fails, and keeps failing
    detail = await export_refused(gw)
    assert "audit" in detail and str(blocker) in detail
    assert (await health(gw))["audit"]["failing"]  # the writer's own error is reported too
    trail = audit_of(gw)
    waiting = trail.queued  # the probe, and the refused export's own admin_action
    await trail.close(within=0.2)  # a file write that failed stored nothing: lost, and counted so
    assert waiting == 2 and trail.drops["shutdown"] == waiting and trail.unconfirmed == 0


async def test_a_redis_refusing_writes_is_degraded_and_export_is_503_until_it_accepts_again(
    make_gateway: GatewayFactory, upstream: TestServer, private_redis: RedisProcess
) -> None:
    gw = await make_gateway(policy(str(upstream.make_url("")).rstrip("/"), redis_url=private_redis.url))
    assert (await health(gw))["status"] == "ok"
    admin = aioredis.Redis.from_url(private_redis.url)
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", "1")  # every write is now refused with OOM; PING still answers
    try:
        gw.app[GATEWAY].events.emit("circuit_state_change", breaker="b", to="open", cause="test")
        body = await degraded(gw)
        assert body["redis"]["reachable"] is True  # PING alone would say all is well
        assert body["status"] == "degraded" and body["audit"]["ok"] is False
        assert "OOM" in body["audit"]["error"] or "maxmemory" in body["audit"]["error"]
        assert "maxmemory" in await export_refused(gw)
    finally:
        await admin.config_set("maxmemory", "0")
    assert await audit_of(gw).flush(within=10.0)  # the queued event is written once Redis accepts again
    deadline = time.monotonic() + 10
    while (await health(gw))["status"] != "ok":  # the probe's cached answer expires (PROBE_TTL)
        assert time.monotonic() < deadline
        await audit_of(gw).flush(within=0.5)
    resp = await gw.post("/api/ops/export", headers=ADMIN,
                         json={**EXPORT, "range": {"from": iso(time.time() - 60)}})
    assert resp.status == 200
    assert any(r["type"] == "circuit_state_change" for r in (await resp.json())["audit"])
    await admin.aclose()


async def test_a_stopped_redis_is_degraded_with_the_audit_reason_and_export_is_503(
    make_gateway: GatewayFactory, upstream: TestServer, private_redis: RedisProcess
) -> None:
    gw = await make_gateway(policy(str(upstream.make_url("")).rstrip("/"), redis_url=private_redis.url))
    assert (await health(gw))["status"] == "ok"
    private_redis.stop()
    body = await degraded(gw)
    assert body["status"] == "degraded" and body["audit"]["ok"] is False
    assert "Redis refuses audit writes" in body["audit"]["error"]
    await export_refused(gw)
    await audit_of(gw).close(within=0.2)  # not the default 10 s of retries at shutdown
