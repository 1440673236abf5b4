"""A lean HTTP/1.1 client for plain-http upstreams: pooled keep-alive connections on raw asyncio.

aiohttp's ClientSession spent most of the gateway's CPU on machinery a reverse proxy does not need (cookie
jars, redirects, tracing, per-request timer contexts, URL rebuilding). This client sends the request head as
one write, parses the response with httptools (llhttp) and hands body chunks to the relay as they come.

Failures surface as `UpstreamError` with the same kinds `errors.classify` gives aiohttp's exceptions:
connect refused -> connect_error, deadline -> timeout (asyncio.TimeoutError), EOF or reset before the head
-> reset, bytes that are not HTTP -> protocol. A connection is reused only after its response was read to
the end on an HTTP/1.1 keep-alive exchange; any error, cancellation or early release retires it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.upstream.errors import UpstreamError
from gateway.upstream.methods import BODYLESS_METHODS, IDEMPOTENT_METHODS
from gateway.upstream.reply import StreamedBody

_HIGH_WATER = 256 * 1024  # buffered upstream body bytes before the upstream socket stops being read
_MAX_HEAD = 64 * 1024  # response head bytes (status line + headers) before the upstream is deemed broken
_MAX_HEADER_FIELDS = 100  # response header lines: past it, a 502 protocol (each costs a dict entry, a copy)
_IDLE_TIMEOUT = 15.0  # seconds an idle keep-alive connection is trusted (aiohttp's keepalive_timeout)


def request_head(method: str, target: str, headers: CIMultiDict[str]) -> bytes:
    """An HTTP/1.1 request head, as one buffer. Raises UpstreamError (protocol) for a line break in a header:
    it would split the head, and refusing beats smuggling a header past the gateway."""
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    lines.append("\r\n")
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise UpstreamError("protocol", "header value with a line break")
    return text.encode("utf-8", "surrogateescape")


class UpstreamResponse:
    """The response head and a streamed body (an `UpstreamReply`)."""

    __slots__ = (
        "status", "reason", "headers", "content_length", "_conn", "_chunks", "_size", "_eof", "_error",
        "_waiter", "_released",
    )

    def __init__(self, conn: _Connection, status: int, reason: str, headers: CIMultiDictProxy[str]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER:
            self._conn.pause_reading()  # a slow client must not make the gateway buffer the whole body
        self._wake()

    def _feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._eof and self._error is None:
            self._error = exc
            self._wake()

    def _take(self) -> bytes:
        """Everything buffered, as one bytes object; reading resumes if the high-water mark paused it."""
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        self._conn.resume_reading()
        return data

    def whole_body(self) -> bytes | None:
        """The entire body when it has already arrived (the usual small response), else None."""
        if not self._eof or self._error is not None:
            return None
        return self._take()

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Yield body bytes as they arrive (everything buffered at once); raise on a cut or deadline."""
        while True:
            if self._chunks:
                yield self._take()
                continue
            if self._error is not None:
                raise self._error
            if self._eof:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def release(self) -> None:
        """Give the connection back to the pool if the exchange finished cleanly, else close it."""
        if not self._released:
            self._released = True
            self._conn.finish(reusable=self._eof and not self._chunks)


class _Connection(asyncio.Protocol):
    """One upstream TCP connection and the response being parsed on it."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.keep_alive = False
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._reason = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self.idle_since = 0.0
        self._interim = False
        self._head_only = False
        self._complete = False
        self._reading_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sender: asyncio.Task[None] | None = None
        self.exchanges = 0  # completed on this connection: above 0, it came from the pool
        self.answered = False  # any byte of a response to the current request

    # -- transport callbacks --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        if self._head is None:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted with another request
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("protocol", "upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("protocol", f"malformed upstream response: {exc.__class__.__name__}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool._lost(self)
        response = self._response
        if response is not None and not self._complete:
            close_delimited = (
                response.content_length is None and "Transfer-Encoding" not in response.headers
            )
            if exc is None and close_delimited and not self._head_only:
                self._complete = True  # a body without a length ends when the upstream closes
                response._feed_eof()
            else:
                response._fail(UpstreamError("protocol", "upstream response body cut short"))
        elif self._head is not None and not self._head.done():
            self._head.set_exception(UpstreamError("reset", "upstream closed the connection"))
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- parser callbacks (httptools) --
    def on_message_begin(self) -> None:
        if self._complete:
            # More bytes after a complete response, unasked for: parsed on, they would answer the next
            # request on this connection (a split response). The connection is dropped; the complete
            # response stands (raising here makes feed_data fail, and _fail leaves a finished body alone).
            raise ValueError("upstream sent more than one response")

    def on_status(self, status: bytes) -> None:
        self._reason += status
        self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._raw_headers) >= _MAX_HEADER_FIELDS:
            raise ValueError("upstream response has too many header fields")  # -> protocol, as _count_head
        self._raw_headers.append((name, value))
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        # llhttp sets no limit of its own: a runaway head must not grow without bound (raising here makes
        # httptools raise HttpParserCallbackError, an HttpParserError: a protocol failure).
        self._head_bytes += size
        if self._head_bytes > _MAX_HEAD:
            raise ValueError("upstream response head too large")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # interim (100 Continue, 103 Early Hints): the final head follows
            self._interim = True
            self._raw_headers = []
            self._head_bytes = 0
            self._reason = b""
            return
        headers: CIMultiDict[str] = CIMultiDict(
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for n, v in self._raw_headers
        )
        response = UpstreamResponse(
            self, status, self._reason.decode("utf-8", "surrogateescape"), CIMultiDictProxy(headers)
        )
        self._response = response
        if self._head_only:
            # llhttp cannot be told the request was HEAD: the head is all there is, and the connection
            # retires rather than risk parsing a next response against a stale Content-Length.
            self._complete = True
            response._feed_eof()
        assert self._head is not None
        if not self._head.done():
            self._head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None and not self._head_only:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._response is None or self._head_only:
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._complete = True
        self._cancel_timer()
        self._response._feed_eof()

    # -- the exchange --
    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _fail(self, exc: BaseException) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        elif self._response is not None:
            self._response._fail(exc)
        self.abort()

    def _on_deadline(self) -> None:
        self._timer = None
        self._fail(TimeoutError())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport takes more bytes; raise once the connection is gone."""
        while self._write_paused and not self.lost:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain
        if self.lost:
            raise ConnectionResetError("upstream closed the connection")

    def abort(self) -> None:
        """Close the connection now (any error, cancellation or unfinished response)."""
        self._cancel_timer()
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def start(
        self,
        head: bytes,
        body: bytes | StreamedBody | None,
        chunked: bool,
        head_only: bool,
        expires: float | None,
    ) -> asyncio.Future[UpstreamResponse]:
        """Send the request; the returned future resolves with the response head."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._head = loop.create_future()
        self._head_only = head_only
        if expires is not None:
            self._timer = loop.call_at(expires, self._on_deadline)
        if body is None:
            self.transport.write(head)
        elif isinstance(body, bytes):
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self._sender = loop.create_task(self._send_body(body, chunked))
        return self._head

    async def _send_body(self, body: StreamedBody, chunked: bool) -> None:
        assert self.transport is not None
        try:
            async for chunk in body:
                if not chunk:
                    continue
                if chunked:
                    self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                else:
                    self.transport.write(chunk)
                if self._write_paused:
                    await self.drain()
            if chunked and not self.lost:
                self.transport.write(b"0\r\n\r\n")
        except asyncio.CancelledError:
            raise
        except Exception:  # too large, or the client or upstream went away: the exchange is over
            self._fail(UpstreamError("reset", "request body could not be sent"))

    def finish(self, *, reusable: bool) -> None:
        """End the exchange: back to the pool when clean and keep-alive, else closed."""
        self._cancel_timer()
        clean = (
            reusable
            and self._complete
            and self.keep_alive
            and not self._head_only
            and not self.lost
            and (self._sender is None or self._sender.done())
            and not self._reading_paused
        )
        if clean:
            self.exchanges += 1
            self.answered = False
            self._head = None
            self._response = None
            self._reason = b""
            self._raw_headers = []
            self._head_bytes = 0
            self._complete = False
            self.keep_alive = False
            self._sender = None
        else:
            self.abort()
        self.pool._release(self, clean)


class UpstreamPool:
    """Keep-alive connections to one host:port, at most `limit` in use (waiting for a slot otherwise)."""

    def __init__(
        self, host: str, port: int, limit: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self._clock = clock  # ages idle connections (deadlines run on the event loop's clock)
        self._idle: list[_Connection] = []
        self._acquired: set[_Connection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether close() ran."""
        return self._closed

    @property
    def in_use(self) -> int:
        """Connections handed out and not yet released (idle ones and ones being opened not counted)."""
        return len(self._acquired)

    async def _acquire(self, connect_timeout: float | None, expires: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise UpstreamError("connect_error", "upstream client closed")
            if self._idle:
                stale_before = self._clock() - _IDLE_TIMEOUT
                while self._idle:
                    conn = self._idle.pop()  # the most recently used: the least likely to be closed upstream
                    if conn.lost:
                        continue
                    if conn.idle_since < stale_before:
                        conn.abort()  # the upstream may close it any moment: not worth the race
                        continue
                    self._acquired.add(conn)
                    return conn
            if len(self._acquired) + self._connecting < self.limit:
                break
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that lands
                # in the same loop turn as the wake-up, and the request would go on for a client that left.
                async with asyncio.timeout_at(expires):
                    await waiter
            except TimeoutError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()
                raise UpstreamError(
                    "pool_timeout", f"no upstream connection came free in time ({self.limit} in use)"
                ) from None
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken for a free slot but leaving: the next waiter gets it
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        timeout = connect_timeout
        if expires is not None:
            remaining = max(expires - loop.time(), 0.0)
            timeout = remaining if timeout is None else min(timeout, remaining)
        self._connecting += 1
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except TimeoutError:
            raise  # a TimeoutError is an OSError too: it stays a timeout
        except OSError:
            raise UpstreamError("connect_error", "cannot connect to upstream") from None
        finally:
            self._connecting -= 1
            self._wake_one()
        self._acquired.add(conn)
        return conn

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, conn: _Connection, reusable: bool) -> None:
        self._acquired.discard(conn)
        if reusable and not self._closed:
            conn.idle_since = self._clock()
            self._idle.append(conn)
        self._wake_one()

    def _lost(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | StreamedBody | None,
        *,
        connect_timeout: float | None,
        total_timeout: float | None,
    ) -> UpstreamResponse:
        """Send one request and return once its response head is in (the body streams after)."""
        chunked = False
        if body is None:
            if method not in BODYLESS_METHODS and "Content-Length" not in headers:
                headers["Content-Length"] = "0"
        elif isinstance(body, bytes):
            headers["Content-Length"] = str(len(body))
        elif "Content-Length" not in headers:
            headers["Transfer-Encoding"] = "chunked"
            chunked = True
        head = request_head(method, target, headers)
        loop = asyncio.get_running_loop()
        expires = None if total_timeout is None else loop.time() + total_timeout
        while True:
            conn = await self._acquire(connect_timeout, expires)
            try:
                return await conn.start(head, body, chunked, method == "HEAD", expires)
            except BaseException as exc:
                conn.finish(reusable=False)  # cancelled (client gone), timed out or failed: never reused
                # A kept-alive connection the upstream closed as it was reused, before a byte of answer:
                # the request was never taken up. Sent again on a fresh one when that is safe (idempotent,
                # body in hand), as browsers and aiohttp do; not blamed on the upstream.
                stale = (
                    isinstance(exc, UpstreamError)
                    and exc.kind == "reset"
                    and conn.exchanges > 0
                    and not conn.answered
                )
                if stale and method in IDEMPOTENT_METHODS and (body is None or isinstance(body, bytes)):
                    continue  # bounded: each pass takes another pooled connection, then a fresh one
                raise

    async def close(self) -> None:
        """Close every connection, idle or in use."""
        self._closed = True
        for conn in [*self._idle, *self._acquired]:
            conn.abort()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
