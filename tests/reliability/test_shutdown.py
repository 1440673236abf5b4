"""SIGTERM drains: in-flight requests finish, new connections are refused, exit 0; a 2nd signal exits now."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.process import start_gateway
from tests.support.wait import refuses_connections, until


@dataclass
class HeldUpstream:
    """An upstream that holds every request until the test releases it, and says when one has arrived."""

    server: TestServer
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def held_upstream() -> AsyncIterator[HeldUpstream]:
    app = web.Application()
    held = HeldUpstream(TestServer(app))

    async def slow(request: web.Request) -> web.Response:
        held.arrived.set()
        await held.release.wait()
        return web.Response(text="finished")

    app.router.add_get("/slow", slow)
    await held.server.start_server()
    yield held
    held.release.set()
    await held.server.close()


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


async def start_draining(proc: asyncio.subprocess.Process, port: int, upstream: HeldUpstream) -> None:
    """Once a request is in flight at the upstream, SIGTERM; return when the listener is closed (draining)."""
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    proc.send_signal(signal.SIGTERM)
    await until(lambda: refuses_connections(port), what="the draining gateway closes its listener")


def running(proc: asyncio.subprocess.Process) -> bool:
    """Alive, not merely not reaped yet: a process that exited is a zombie ('Z') until it is waited for."""
    if proc.returncode is not None:
        return False
    stat = Path(f"/proc/{proc.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_sigterm_lets_in_flight_requests_finish_then_exits_0(
    tmp_path: Path, held_upstream: HeldUpstream
) -> None:
    proc, port = await gateway_process(tmp_path, held_upstream.server.port, "5s")  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/slow"))
        await start_draining(proc, port, held_upstream)
        held_upstream.release.set()  # the upstream answers only now, while the gateway drains
        resp = await in_flight
        assert resp.status == 200
        assert await resp.text() == "finished"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{port}/slow")


async def test_second_signal_exits_at_once(tmp_path: Path, held_upstream: HeldUpstream) -> None:
    proc, port = await gateway_process(tmp_path, held_upstream.server.port, "30s")  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/slow"))
        await start_draining(proc, port, held_upstream)
        assert running(proc)  # draining: waits for the request the upstream holds
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) != 0
        in_flight.cancel()
        with pytest.raises((asyncio.CancelledError, aiohttp.ClientError)):
            await in_flight


async def test_sigterm_keeps_tunnels_relaying_then_closes_them_at_the_drain_timeout_and_exits_0(
    tmp_path: Path,
) -> None:
    """A WebSocket tunnel open at SIGTERM: its client's bytes still reach the upstream while the server
    drains, and it is closed at drain_timeout, not twice that (aiohttp waits the timeout once for the
    handler, then again before cancelling it: past a supervisor's kill deadline set to the drain timeout)."""

    async def echo_after_101(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    upstream = await asyncio.start_server(echo_after_101, "127.0.0.1", 0)
    drain = 3.0
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f'version: 1\nupstreams: {{app: {{url: "http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"}}}}\n'
        f"server: {{drain_timeout: {drain}s}}\n"
        f'audit: {{dir: "{tmp_path}/audit"}}\n'
        'routes: [{name: ws, match: "GET /ws", upstream: app, upgrade: [websocket]}]\n'
    )
    proc, port = await start_gateway(policy)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101 ")
        writer.write(b"before")
        assert await asyncio.wait_for(reader.readexactly(6), 5) == b"before"
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)  # draining now
        writer.write(b"during")
        assert await asyncio.wait_for(reader.readexactly(6), 2) == b"during"
        assert await asyncio.wait_for(reader.read(), 2 * drain + 5) == b""  # closed by the gateway
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        elapsed = loop.time() - signalled
        assert drain - 0.5 <= elapsed < drain + 1.5, elapsed
        writer.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        upstream.close()
