"""A TCP fault proxy between the gateway and a real upstream: faults happen on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field


@dataclass
class FaultProxy:
    """Listens on a loopback port and, by `mode`, forwards to `target_port` or misbehaves.

    Modes: pass, close_on_accept, hang, reset_midbody, malformed, trickle.
    """

    target_port: int
    mode: str = "pass"
    port: int = 0
    connections: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            with contextlib.suppress(Exception):
                writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "close_on_accept":
            writer.transport.abort()
            return
        if mode == "hang":
            await reader.read()  # until the gateway gives up and closes
            return
        if mode == "malformed":
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 2OO NOT OK\r\nContent-Length: zz\r\n\r\nbroken")
            await writer.drain()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            pump = asyncio.ensure_future(self._pump(reader, up_writer))
            if mode == "pass":
                await self._pump(up_reader, writer)
            elif mode == "reset_midbody":
                head = await up_reader.readuntil(b"\r\n\r\n")
                writer.write(head + await up_reader.read(100))
                await writer.drain()
                writer.transport.abort()
            elif mode == "trickle":
                while data := await up_reader.read(1):
                    writer.write(data)
                    await writer.drain()
                    await asyncio.sleep(0.05)
            pump.cancel()
        finally:
            up_writer.transport.abort()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
