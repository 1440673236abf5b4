"""A tunnel's client that sends far more than its upstream reads, against a real `gateway serve`: the gateway
stops reading the client (back-pressure) instead of buffering, measured by the process's own RSS."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from tests.support.process import start_gateway

BURST = 96 * 2**20


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


async def test_a_client_flooding_an_upstream_that_reads_nothing_is_not_buffered(tmp_path: Path) -> None:
    release, released = asyncio.Event(), asyncio.Event()

    async def upgrade_then_read_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        await writer.drain()
        await release.wait()  # reads nothing until the end of the test
        writer.transport.abort()
        released.set()

    upstream = await asyncio.start_server(upgrade_then_read_nothing, "127.0.0.1", 0)
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f'version: 1\nupstreams: {{app: {{url: "http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"}}}}\n'
        f'audit: {{dir: "{tmp_path}/audit"}}\n'
        'routes: [{name: ws, match: "GET /ws", upstream: app, upgrade: [websocket]}]\n'
    )
    proc, port = await start_gateway(policy)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101 ")
        before = rss_kib(proc.pid)
        block = b"x" * 2**20
        sent = 0
        try:
            while sent < BURST:
                writer.write(block)
                await asyncio.wait_for(writer.drain(), 3)  # the gateway stopped reading: the write stalls
                sent += len(block)
        except TimeoutError:
            pass
        grown = rss_kib(proc.pid) - before
        # The kernel's socket buffers on the way hold some; the gateway itself buffers HIGH_WATER at most.
        assert sent < BURST, "every byte went through to an upstream that reads nothing"
        assert grown < 16 * 1024, f"the gateway grew by {grown} KiB while the client pushed {sent >> 20} MiB"
    finally:
        proc.kill()
        await proc.wait()
        release.set()
        await asyncio.wait_for(released.wait(), 5)
        upstream.close()
        await upstream.wait_closed()
    writer.transport.abort()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
