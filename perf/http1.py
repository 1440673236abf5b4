"""A lean HTTP/1.1 client for the attacker: pre-encoded requests over pooled keep-alive connections.

A load generator that spends 250 us of CPU on every request (a general-purpose client) falls behind long
before the server under test does when both share a small machine. This one does only what an attack needs:
write prepared bytes, read the status, headers and a Content-Length or chunked body, keep the connection.
Plain http:// only (the attacker uses aiohttp for https).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 this client understands."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request encoded once, sent many times."""

    host: str
    port: int
    data: bytes
    head_only: bool  # HEAD: the answer has no body whatever its headers say


def prepare(method: str, url: str, headers: tuple[tuple[str, str], ...], body: bytes) -> Prepared:
    """Encode a request; Host, Content-Length and User-Agent are added unless the target sets them."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http:// URLs, got {url!r}")
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    names = {name.lower() for name, _ in headers}
    lines = [f"{method} {target} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {parts.netloc}")
    if "user-agent" not in names:
        lines.append("User-Agent: gateway-perf-attacker")
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    return Prepared(parts.hostname, port, data, method == "HEAD")


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes  # at most the first `keep` bytes
    size: int  # body bytes received


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.wakeup: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    async def _more(self) -> None:
        if self.closed:
            raise ConnectionResetError("the server closed the connection")
        self.wakeup = asyncio.get_running_loop().create_future()
        await self.wakeup
        self.wakeup = None

    async def _until(self, marker: bytes, start: int = 0) -> int:
        while (at := self.buffer.find(marker, start)) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise ProtocolError("response head too large")
            await self._more()
        return at

    async def _exactly(self, n: int) -> None:
        while len(self.buffer) < n:
            await self._more()

    async def exchange(self, request: Prepared, keep: int) -> tuple[Response, bool]:
        """Send one request and read its response; returns it and whether the connection can be reused."""
        assert self.transport is not None
        self.transport.write(request.data)
        end = await self._until(b"\r\n\r\n")
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        status_line = head[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
            raise ProtocolError(f"bad status line {head[0][:80]!r}")
        status = int(status_line[1])
        headers = []
        length, chunked, close = -1, False, status_line[0] == "HTTP/1.0"
        for line in head[1:]:
            name, _, value = line.partition(":")
            value = value.strip()
            headers.append((name, value))
            lower = name.lower()
            if lower == "content-length":
                length = int(value)
            elif lower == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif lower == "connection":
                close = "close" in value.lower() or (close and "keep-alive" not in value.lower())
        body = bytearray()
        size = 0
        if request.head_only or status in (204, 304) or 100 <= status < 200:
            pass
        elif chunked:
            while True:
                line_end = await self._until(b"\r\n")
                chunk = int(bytes(self.buffer[:line_end]).split(b";")[0], 16)
                await self._exactly(line_end + 2 + chunk + 2)
                if len(body) < keep:
                    body += self.buffer[line_end + 2 : line_end + 2 + min(chunk, keep - len(body))]
                size += chunk
                del self.buffer[: line_end + 2 + chunk + 2]
                if chunk == 0:
                    break
        elif length >= 0:
            await self._exactly(length)
            body += self.buffer[: min(length, keep)]
            size = length
            del self.buffer[:length]
        else:  # delimited by the end of the connection
            while not self.closed:
                await self._more()
            size = len(self.buffer)
            body += self.buffer[:keep]
            self.buffer.clear()
            close = True
        reason = status_line[2] if len(status_line) > 2 else ""
        return Response(status, reason, headers, bytes(body), size), not (close or self.closed)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Idle keep-alive connections per (host, port); a request takes one or opens one."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def request(self, request: Prepared, *, keep: int = 0) -> Response:
        """Send a prepared request and read the whole response (keeping its first `keep` body bytes)."""
        key = (request.host, request.port)
        idle = self._idle.setdefault(key, [])
        connection = None
        while idle:
            candidate = idle.pop()
            if not candidate.closed:
                connection = candidate
                break
        if connection is None:
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(_Connection, request.host, request.port)
        try:
            response, reusable = await connection.exchange(request, keep)
        except BaseException:
            connection.close()
            raise
        if reusable:
            idle.append(connection)
        else:
            connection.close()
        return response

    def close(self) -> None:
        """Close every idle connection."""
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
