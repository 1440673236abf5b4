"""Upgraded connections (WebSocket, and other `Upgrade` tokens a route allows): after the handshake has been
through the whole pipeline, bytes both ways until either side closes.

The handshake goes to the upstream on a connection of its own (never a pooled one: it will not come back).
An answer other than 101 is relayed as an ordinary response. After a 101 the client's connection is taken
over: aiohttp hands every byte the client sends to `_ClientSide` (the hook its own WebSocket support uses),
which writes it upstream; a task writes the upstream's bytes to the client. Back-pressure both ways: the
client is not read while the upstream has more than HIGH_WATER bytes of ours unread, and the upstream is not
read while the client is behind (its writes wait for the drain; a client that reads nothing at all is cut off
by the server's write deadline). Nothing is buffered without bound.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field

import httptools
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.server import GatewayRequestHandler
from gateway.upstream.errors import UpstreamError
from gateway.upstream.pool import request_head

HIGH_WATER = 256 * 1024  # bytes of the client's written upstream and not yet taken: stop reading the client
MAX_HEAD = 64 * 1024  # the upstream's handshake answer head
MAX_REFUSAL_BODY = 1 << 20  # the body of a non-101 answer, relayed as is
READ_SIZE = 64 * 1024
DURATION_BUCKETS = (1.0, 10.0, 60.0, 600.0, 3600.0, 86400.0)


@dataclass
class TunnelStats:
    """Tunnels of this process, for the metrics collector (kept across reloads)."""

    open: int = 0
    bytes_to_upstream: int = 0
    bytes_to_client: int = 0
    closed: dict[str, int] = field(default_factory=dict)  # by reason
    durations: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0

    def ended(self, reason: str, seconds: float) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1
        self.duration_sum += seconds
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.durations[i] += 1
                return
        self.durations[-1] += 1


class HandshakeError(Exception):
    """The upstream could not be reached or did not answer the handshake with HTTP."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # connect_error | timeout | protocol | reset
        self.detail = detail


class _Answer:
    """httptools callbacks for the upstream's answer to the handshake."""

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.reason = ""
        self.body = bytearray()
        self.head_done = False
        self.complete = False
        self._interim = False

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints: interim, the final answer follows (taken for the answer, a 103
            # was relayed as the response and the client left hanging)
            self._interim = True
            self.headers = CIMultiDict()
            self.reason = ""
            return
        self.head_done = True

    def on_status(self, status: bytes) -> None:
        self.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > MAX_REFUSAL_BODY:
            raise HandshakeError("protocol", "the upstream's answer to the handshake is too large")
        self.body += body

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True


@dataclass
class Handshake:
    """The upstream's answer: 101 with the connection to keep (and bytes it sent past its head), or another
    status with its whole body."""

    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tail: bytes = b""


async def handshake(
    base: str, method: str, target: str, headers: CIMultiDict[str], deadline: float
) -> Handshake:
    """Send the upgrade request to the upstream at `base` and read its answer. Raises HandshakeError."""
    url = URL(base)
    context = ssl.create_default_context() if url.scheme == "https" else None
    try:
        head = request_head(method, target, headers)
    except UpstreamError as exc:
        raise HandshakeError(exc.kind, exc.detail) from None
    expires = asyncio.get_running_loop().time() + deadline  # one deadline: connect and answer together
    try:
        async with asyncio.timeout_at(expires):
            reader, writer = await asyncio.open_connection(
                url.host, url.port, ssl=context, server_hostname=url.host if context else None,
                limit=READ_SIZE,
            )
    except TimeoutError:
        raise HandshakeError("timeout", "the upstream did not accept the connection in time") from None
    except OSError:
        raise HandshakeError("connect_error", "cannot connect to upstream") from None
    try:
        writer.write(head)
        answer = _Answer()
        parser = answer.parser = httptools.HttpResponseParser(answer)
        seen = 0
        async with asyncio.timeout_at(expires):
            while not answer.complete:
                data = await reader.read(READ_SIZE)
                if not data:
                    if answer.head_done:
                        break  # a close-delimited body ends with the close
                    raise HandshakeError("reset", "upstream closed the connection")
                seen += len(data)
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade as upgrade:
                    offset = upgrade.args[0] if upgrade.args else len(data)
                    return Handshake(parser.get_status_code(), answer.reason, answer.headers, b"", reader,
                                     writer, data[offset:])
                except httptools.HttpParserError:
                    raise HandshakeError("protocol", "malformed upstream answer to the handshake") from None
                if not answer.head_done and seen > MAX_HEAD:
                    raise HandshakeError("protocol", "the upstream's answer head is too large")
    except TimeoutError:
        writer.close()
        raise HandshakeError("timeout", "upstream timed out") from None
    except BaseException:
        writer.close()
        raise
    writer.close()  # not upgraded: this connection is done
    return Handshake(parser.get_status_code(), answer.reason, answer.headers, bytes(answer.body), reader,
                     writer)


class _ClientSide(asyncio.Protocol):
    """The client's connection once upgraded: its bytes go to the tunnel.

    aiohttp first hands over what it had read past the request head (`feed_data`, through the `set_parser`
    hook its WebSocket support uses); then the transport is given this protocol (`set_protocol`), so the
    bytes keep flowing while aiohttp's own protocol drains at shutdown (it drops a client's data from then
    on). Flow control and the close still reach aiohttp's protocol: its writes wait on the drain, it forgets
    the connection when it is lost.
    """

    def __init__(self, tunnel: Tunnel, server_side: asyncio.BaseProtocol) -> None:
        self._tunnel = tunnel
        self._server_side = server_side

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._tunnel.from_client(data)
        return False, b""

    def feed_eof(self) -> None:
        self._tunnel.client_done.set()

    def data_received(self, data: bytes) -> None:
        self._tunnel.from_client(data)

    def eof_received(self) -> bool:
        self._tunnel.client_done.set()
        return False  # close: a half-closed tunnel is closed whole

    def pause_writing(self) -> None:
        self._server_side.pause_writing()

    def resume_writing(self) -> None:
        self._server_side.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._tunnel.client_done.set()
        self._server_side.connection_lost(exc)


class Tunnel:
    """One upgraded connection: the client's transport on one side, the upstream's stream on the other."""

    def __init__(
        self, request: web.BaseRequest, shake: Handshake, stats: TunnelStats, *, idle: float, longest: float
    ) -> None:
        self._request = request
        self._client = request.transport
        self._reader = shake.reader
        self._writer = shake.writer
        self._tail = shake.tail
        self._stats = stats
        self._idle = idle
        self._longest = longest
        self.started = self.active = time.monotonic()
        self.to_upstream = 0
        self.to_client = 0
        self.client_done = asyncio.Event()
        self.ended = "open"
        self._paused_client = False

    def from_client(self, data: bytes) -> None:
        self.active = time.monotonic()
        self.to_upstream += len(data)
        self._stats.bytes_to_upstream += len(data)
        self._writer.write(data)
        if not self._paused_client and self._writer.transport.get_write_buffer_size() > HIGH_WATER:
            self._paused_client = True
            if self._client is not None:
                self._client.pause_reading()
            asyncio.get_running_loop().create_task(self._resume_client())

    async def _resume_client(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError:
            return
        self._paused_client = False
        if self._client is not None and not self._client.is_closing():
            self._client.resume_reading()

    async def _upstream_to_client(self) -> None:
        writer = self._request.writer
        data = self._tail
        while True:
            if data:
                if self._client is None or self._client.is_closing():
                    return
                self.active = time.monotonic()
                self.to_client += len(data)
                self._stats.bytes_to_client += len(data)
                self._client.write(data)
                await writer.drain()  # the client is behind: read nothing more upstream until it catches up
            data = await self._reader.read(READ_SIZE)
            if not data:
                return

    async def run(self) -> str:
        """Relay until a side closes, the tunnel idles or lasts too long; returns why it ended."""
        protocol = self._request.protocol
        client_side = _ClientSide(self, protocol)
        protocol.set_parser(client_side)  # type: ignore[arg-type]  # (aiohttp's WebSocket hook: takes the tail)
        if self._client is not None:
            self._client.set_protocol(client_side)
        self._stats.open += 1
        pump = asyncio.get_running_loop().create_task(self._upstream_to_client())
        client_gone = asyncio.get_running_loop().create_task(self.client_done.wait())
        reason = "cancelled"
        try:
            while True:
                now = time.monotonic()
                idle_at = self.active + self._idle
                end_at = self.started + self._longest
                if now >= end_at:
                    reason = "max_duration"
                    return reason
                if now >= idle_at:
                    reason = "idle_timeout"
                    return reason
                done, _ = await asyncio.wait({pump, client_gone}, timeout=min(idle_at, end_at) - now,
                                             return_when=asyncio.FIRST_COMPLETED)
                if pump in done:
                    reason = "upstream_closed" if pump.exception() is None else "upstream_error"
                    return reason
                if client_gone in done:
                    reason = "client_closed"
                    return reason
        finally:
            if reason == "cancelled" and self.client_done.is_set():
                reason = "client_closed"  # (aiohttp cancels the handler as the client's connection goes)
            if reason == "client_closed" and isinstance(protocol, GatewayRequestHandler) and protocol.stalled:
                reason = "client_stalled"  # cut off by the write deadline: it read nothing for write_timeout
            self.ended = reason
            for task in (pump, client_gone):
                task.cancel()
            self._writer.close()
            if self._client is not None:
                self._client.close()
            self._stats.open -= 1
            self._stats.ended(reason, time.monotonic() - self.started)
