"""SIGTERM drains: in-flight requests finish, new connections are refused, exit 0; a 2nd signal exits now."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.process import start_gateway


@pytest.fixture
async def slow_upstream() -> AsyncIterator[TestServer]:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", slow)
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()


async def gateway_process(
    tmp_path: Path, upstream_port: int, drain: str
) -> tuple[asyncio.subprocess.Process, int]:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f'version: 1\nupstreams: {{app: {{url: "http://127.0.0.1:{upstream_port}"}}}}\n'
        f"server: {{drain_timeout: {drain}}}\n"
        f'audit: {{dir: "{tmp_path}/audit"}}\n'
        'routes: [{name: d, match: "* /{p:.*}", upstream: app}]\n'
    )
    return await start_gateway(policy)


async def test_sigterm_lets_in_flight_requests_finish_then_exits_0(
    tmp_path: Path, slow_upstream: TestServer
) -> None:
    proc, port = await gateway_process(tmp_path, slow_upstream.port, "5s")  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/slow?s=1"))
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        resp = await in_flight
        assert resp.status == 200
        assert await resp.text() == "finished"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{port}/slow?s=0")


async def test_second_signal_exits_at_once(tmp_path: Path, slow_upstream: TestServer) -> None:
    proc, port = await gateway_process(tmp_path, slow_upstream.port, "30s")  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/slow?s=20"))
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert proc.returncode is None  # draining: waits for the 20 s request
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) != 0
        in_flight.cancel()
        with pytest.raises((asyncio.CancelledError, aiohttp.ClientError)):
            await in_flight
