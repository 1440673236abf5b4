"""Gateway processes for fleet tests: `serve` (with `--workers N` when asked) on a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from perf.local import free_port
from tests.support.process import ROOT

ADMIN = "fleet-admin"
AS_ADMIN = {"X-User-Id": ADMIN}


def fleet_policy(upstream_port: int, redis_url: str | None, *, extra: str = "", fleet: str = "t") -> str:
    storage = f'storage: {{redis_url: "{redis_url}", key_prefix: "{fleet}"}}\n' if redis_url else ""
    return (
        "version: 1\n"
        + storage
        + f"fleet: {{name: {fleet}, publish_interval: 200ms}}\n"
        + f'admin: {{user_ids: ["{ADMIN}"], trusted_networks: [127.0.0.1/32]}}\n'
        + "server: {drain_timeout: 10s}\n"
        + f'upstreams: {{app: {{url: "http://127.0.0.1:{upstream_port}"}}}}\n'
        + extra
        + "routes:\n"
        + '  - {name: slow, match: "GET /slow", upstream: app, slo: {p95: 200ms}}\n'
        + '  - {name: rest, match: "* /{p:.*}", upstream: app}\n'
    )


@dataclass
class Gw:
    """One `gateway serve` process (a supervisor when workers > 1)."""

    proc: asyncio.subprocess.Process
    port: int
    workers: int
    log: Path
    instance: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def health(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.url}/api/ops/health") as resp:
            body: dict[str, Any] = await resp.json()
            return body

    async def ops_metrics(self, session: aiohttp.ClientSession, scope: str | None = None) -> dict[str, Any]:
        query = f"?scope={scope}" if scope else ""
        async with session.get(f"{self.url}/api/ops/metrics{query}", headers=AS_ADMIN) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body

    async def scrape(self, session: aiohttp.ClientSession) -> str:
        async with session.get(f"{self.url}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)


async def wait_until(check: Callable[[], Any], within: float = 15.0, every: float = 0.05) -> Any:
    """Poll `check` (sync or async) until it returns a truthy value; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
        except (aiohttp.ClientError, OSError, AssertionError, KeyError):
            last = None
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"not reached within {within}s (last: {last!r})")


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start gateway processes; each is waited for (every worker up) and stopped at the end."""
    started: list[Gw] = []

    async def start_one(policy: Path, *, workers: int = 1, instance: str | None = None) -> Gw:
        port = free_port()
        log = tmp_path / f"gw-{port}.log"
        args = ["--policy", str(policy), "--port", str(port), "--no-watch", "--workers", str(workers)]
        if instance is not None:
            args += ["--instance-id", instance]
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", *args, stdout=out, stderr=out, cwd=policy.parent,
                env={**os.environ, "PYTHONPATH": ROOT},
            )
        finally:
            os.close(out)
        gw = Gw(proc, port, workers, log, instance)
        started.append(gw)
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                health = await gw.health(session)
                if workers == 1:
                    return health.get("status") == "ok"
                return len(health.get("workers", [])) == workers

            await wait_until(ready, within=30)
        return gw

    yield start_one
    for gw in started:
        if gw.proc.returncode is None:
            gw.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(gw.proc.wait(), 15)
            except TimeoutError:
                gw.proc.kill()
                await gw.proc.wait()


@pytest.fixture
async def slow_upstream() -> AsyncIterator[TestServer]:
    """GET /slow?s=SECONDS answers after that long; anything else at once."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0")))
        return web.Response(text="done")

    async def fast(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/{p:.*}", fast)
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()
