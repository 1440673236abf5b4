"""The soak (`make soak`, not in `make test`): a steady load for SOAK_SECONDS (default 600) with policy
reloads and a Redis restart in the middle. RSS growth under 10%, no unexpected status, every 429 audited."""

from __future__ import annotations

import asyncio
import collections
import os
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.process import start_gateway
from tests.support.redis import start_redis
from tests.support.wait import until

ADMIN = {"X-User-Id": "soak-admin"}
POLICY = """
version: 1
storage: {{redis_url: "{redis}", on_redis_error: local}}
admin: {{user_ids: [soak-admin]}}
upstreams: {{app: {{url: "http://127.0.0.1:{upstream}"}}}}
rate_limits:
  per_user: {{rate: {rate}, per: 1s, key: user}}
routes:
  - {{name: limited, match: "GET /limited", upstream: app, rate_limits: [per_user], slo: {{p95: 300ms}}}}
  - {{name: default, match: "* /{{p:.*}}", upstream: app}}
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.soak
async def test_soak(tmp_path: Path) -> None:
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    rate = float(os.environ.get("SOAK_RATE", "200"))  # requests/s: about half of what 2 cores sustain
    redis = start_redis(
        "--appendonly", "yes", "--appendfsync", "always"
    )  # the audit stream survives a restart

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{p:.*}", ok)
    upstream = TestServer(app)
    await upstream.start_server()
    policy = tmp_path / "policy.yaml"

    def write_policy(limit_rate: int) -> None:
        text = POLICY.format(redis=redis.url, upstream=upstream.port, rate=limit_rate)
        tmp = tmp_path / "policy.tmp"
        tmp.write_text(text)
        os.replace(tmp, policy)  # an atomic swap, as editors and ConfigMaps do

    write_policy(5)
    proc, port = await start_gateway(policy, "--log-level", "warning")
    base = f"http://127.0.0.1:{port}"
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    try:
        async with aiohttp.ClientSession() as session:
            start = time.monotonic()
            pending: set[asyncio.Task[None]] = set()

            async def one(i: int) -> None:
                try:
                    path = "/limited" if i % 2 else "/other"
                    async with session.get(base + path, headers={"X-User-Id": f"user{i % 20}"}) as resp:
                        await resp.read()
                        statuses[resp.status] += 1
                        if resp.status == 429 and "Retry-After" not in resp.headers:
                            failures.append("429 without Retry-After")
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))

            rss_warm = 0
            reloads = 0
            restarted = False
            i = 0
            while (elapsed := time.monotonic() - start) < seconds:
                due = start + i / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                task = asyncio.ensure_future(one(i))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i += 1
                if not rss_warm and elapsed > seconds * 0.2:
                    rss_warm = rss_kib(proc.pid)
                if elapsed > (reloads + 1) * seconds / 12:
                    reloads += 1
                    write_policy(5 + reloads % 3)
                if not restarted and elapsed > seconds / 2:
                    restarted = True
                    redis.restart()
            await asyncio.gather(*pending)
            rss_end = rss_kib(proc.pid)

            async def audit_drained() -> bool:
                async with session.get(f"{base}/api/ops/health") as health:
                    return bool((await health.json())["audit"]["queued"] == 0)

            await until(audit_drained, within=30, every=0.1, what="the audit writer drains its queue")
            async with session.post(
                f"{base}/api/ops/export",
                headers=ADMIN,
                json={
                    "entities": ["audit"],
                    "range": {"from": "2000-01-01T00:00:00Z"},
                    "filter": {"type": "rate_limit_hit"},
                    "format": "ndjson",
                },
            ) as resp:
                assert resp.status == 200
                hits = sum(1 for line in (await resp.text()).splitlines() if line.strip())
    finally:
        proc.terminate()
        await proc.wait()
        await upstream.close()
        redis.stop()
    print(
        f"\nsoak: {i} requests in {seconds:.0f}s, statuses {dict(statuses)}, reloads {reloads}, "
        f"rss {rss_warm} -> {rss_end} KiB, audit rate_limit_hit {hits}"
    )
    assert failures == []
    assert set(statuses) <= {200, 429}
    assert statuses[429] > 0
    assert rss_end < rss_warm * 1.10
    assert hits == statuses[429]
