"""The lean upstream client against a scripted upstream on a real socket: framing, reuse and failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from multidict import CIMultiDict

from gateway.upstream.errors import UpstreamError
from gateway.upstream.pool import UpstreamPool, UpstreamResponse
from tests.support.clock import ManualClock


class Scripted:
    """A loopback server answering each request head with the next canned reply (raw bytes)."""

    def __init__(self, replies: list[bytes], close_after: bool = False) -> None:
        self.replies = list(replies)
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self.got_request = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if not self.replies:
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                self.got_request.set()
                await reader.read()  # a silent upstream: reads everything, answers nothing
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                if b"chunked" in head.lower():
                    head += await reader.readuntil(b"0\r\n\r\n")
                elif b"content-length: " in head.lower():
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    head += await reader.readexactly(length)
                self.requests.append(head)
                writer.write(self.replies.pop(0))
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., object]]:
    servers: list[Scripted] = []

    async def make(replies: list[bytes], close_after: bool = False) -> Scripted:
        server = Scripted(replies, close_after)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


async def fetch(pool: UpstreamPool, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    response = await pool.request(
        method, "/p", CIMultiDict({"Host": "h"}), body, connect_timeout=1.0, total_timeout=2.0
    )
    data = b"".join([chunk async for chunk in response.iter_any()])
    response.release()
    return response.status, data


async def test_content_length_responses_reuse_one_connection(scripted: Callable[..., object]) -> None:
    server: Scripted = await scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"] * 3)  # type: ignore[misc]
    pool = UpstreamPool("127.0.0.1", server.port, 4)
    assert [await fetch(pool) for _ in range(3)] == [(200, b"hi")] * 3
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /p HTTP/1.1\r\nHost: h\r\n")
    await pool.close()


async def test_a_connection_idle_too_long_is_not_reused(scripted: Callable[..., object]) -> None:
    server: Scripted = await scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"] * 3)  # type: ignore[misc]
    clock = ManualClock()
    pool = UpstreamPool("127.0.0.1", server.port, 4, clock=clock)
    await fetch(pool)
    clock.advance(10)
    await fetch(pool)
    assert server.connections == 1  # 10 s idle: still trusted
    clock.advance(16)
    await fetch(pool)
    assert server.connections == 2  # 16 s idle: the upstream may be closing it, a fresh one is used
    await pool.close()


async def test_chunked_and_interim_responses_are_decoded(scripted: Callable[..., object]) -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    server: Scripted = await scripted([reply])  # type: ignore[misc]
    pool = UpstreamPool("127.0.0.1", server.port, 4)
    response: UpstreamResponse = await pool.request(
        "POST", "/p", CIMultiDict({"Host": "h"}), b"xyz", connect_timeout=1.0, total_timeout=2.0
    )
    assert response.status == 201 and response.reason == "Created" and response.headers["X-A"] == "1"
    assert b"".join([c async for c in response.iter_any()]) == b"abcde"
    response.release()
    assert b"Content-Length: 3\r\n\r\nxyz" in server.requests[0]
    await pool.close()


async def test_close_delimited_body_ends_at_eof_and_retires_the_connection(
    scripted: Callable[..., object],
) -> None:
    reply = b"HTTP/1.0 200 OK\r\n\r\nuntil the end"
    server: Scripted = await scripted([reply, reply], close_after=True)  # type: ignore[misc]
    pool = UpstreamPool("127.0.0.1", server.port, 4)
    assert await fetch(pool) == (200, b"until the end")
    assert await fetch(pool) == (200, b"until the end")
    assert server.connections == 2
    await pool.close()


async def test_head_and_204_have_no_body(scripted: Callable[..., object]) -> None:
    server: Scripted = await scripted(  # type: ignore[misc]
        [b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"]
    )
    pool = UpstreamPool("127.0.0.1", server.port, 4)
    assert await asyncio.wait_for(fetch(pool, "HEAD"), 1.0) == (200, b"")
    assert await asyncio.wait_for(fetch(pool), 1.0) == (204, b"")
    await pool.close()


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (b"HTTP/1.1 2OO NOT OK\r\nContent-Length: zz\r\n\r\nbroken", "protocol"),
        (b"", "reset"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n", "protocol"),
    ],
)
async def test_bad_replies_are_classified(scripted: Callable[..., object], reply: bytes, kind: str) -> None:
    server: Scripted = await scripted([reply], close_after=True)  # type: ignore[misc]
    pool = UpstreamPool("127.0.0.1", server.port, 4)
    with pytest.raises(UpstreamError) as caught:
        await fetch(pool)
    assert caught.value.kind == kind
    assert pool.in_use == 0
    await pool.close()


async def test_a_body_cut_short_raises_while_streaming(scripted: Callable[..., object]) -> None:
    server: Scripted = await scripted(  # type: ignore[misc]
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], close_after=True
    )
    pool = UpstreamPool("127.0.0.1", server.port, 4)
    with pytest.raises(UpstreamError) as caught:
        await fetch(pool)
    assert caught.value.kind == "protocol"
    await pool.close()


async def test_refused_connection_is_connect_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    pool = UpstreamPool("127.0.0.1", port, 4)
    with pytest.raises(UpstreamError) as caught:
        await fetch(pool)
    assert caught.value.kind == "connect_error"


async def test_a_silent_upstream_hits_the_total_deadline(scripted: Callable[..., object]) -> None:
    server: Scripted = await scripted([])  # type: ignore[misc]  # accepts, never answers
    pool = UpstreamPool("127.0.0.1", server.port, 4)
    with pytest.raises(TimeoutError):
        await pool.request(
            "GET", "/", CIMultiDict({"Host": "h"}), None, connect_timeout=1.0, total_timeout=0.2
        )
    assert pool.in_use == 0
    await pool.close()
    assert pool.closed


async def test_a_line_break_in_a_header_value_is_refused(scripted: Callable[..., object]) -> None:
    server: Scripted = await scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])  # type: ignore[misc]
    pool = UpstreamPool("127.0.0.1", server.port, 4)
    with pytest.raises(UpstreamError):
        await pool.request(
            "GET", "/", CIMultiDict({"Host": "h", "X": "a\r\nEvil: 1"}), None, connect_timeout=1,
            total_timeout=1,
        )
    assert server.connections == 0
    await pool.close()


async def test_cancelling_a_request_closes_its_connection(scripted: Callable[..., object]) -> None:
    server: Scripted = await scripted([])  # type: ignore[misc]  # never answers
    pool = UpstreamPool("127.0.0.1", server.port, 4)
    task = asyncio.ensure_future(
        pool.request("GET", "/", CIMultiDict({"Host": "h"}), None, connect_timeout=1.0, total_timeout=5.0)
    )
    await asyncio.wait_for(server.got_request.wait(), 1.0)
    conn = next(iter(pool._acquired))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.in_use == 0 and not pool._idle
    assert conn.transport is not None and conn.transport.is_closing()
    await pool.close()


async def test_a_body_already_in_is_handed_over_whole_and_the_connection_reused(
    scripted: Callable[..., object],
) -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    server: Scripted = await scripted([reply, reply])  # type: ignore[misc]
    pool = UpstreamPool("127.0.0.1", server.port, 4)
    for _ in range(2):
        response = await pool.request(
            "GET", "/p", CIMultiDict({"Host": "h"}), None, connect_timeout=1.0, total_timeout=2.0
        )
        assert response.whole_body() == b"hello"  # head and body came in one segment: nothing to wait for
        response.release()
    assert server.connections == 1  # taking the body whole finishes the exchange like reading it does
    await pool.close()


async def test_a_body_still_coming_is_not_handed_over_whole(scripted: Callable[..., object]) -> None:
    server: Scripted = await scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"])  # type: ignore[misc]
    pool = UpstreamPool("127.0.0.1", server.port, 4)
    response = await pool.request(
        "GET", "/p", CIMultiDict({"Host": "h"}), None, connect_timeout=1.0, total_timeout=2.0
    )
    assert response.whole_body() is None  # two bytes short: the relay must stream it
    response.release()
    await pool.close()


async def test_a_waiter_cancelled_as_it_is_woken_leaves_and_passes_the_slot_on(
    scripted: Callable[..., object],
) -> None:
    """On Python 3.11 asyncio.wait_for swallows a cancel that lands in the same loop turn as the wake-up: the
    request of a client that had left went out anyway (and its failure counted against the breaker)."""
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    server: Scripted = await scripted([reply, reply, reply])  # type: ignore[misc]
    pool = UpstreamPool("127.0.0.1", server.port, 1)
    held = await pool.request(
        "GET", "/a", CIMultiDict({"Host": "h"}), None, connect_timeout=1.0, total_timeout=2.0
    )
    leaving = asyncio.create_task(fetch(pool))
    waiting = asyncio.create_task(fetch(pool))
    for _ in range(3):
        await asyncio.sleep(0)  # both queue for the one connection
    assert held.whole_body() == b"hi"
    held.release()  # wakes `leaving`...
    leaving.cancel()  # ...whose client goes away in the same turn
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await asyncio.wait_for(waiting, 2) == (200, b"hi")  # the slot went on to the next waiter
    assert len(server.requests) == 2  # /a and the waiter's: nothing for the client that left
    await pool.close()


async def test_a_pooled_connection_closed_as_it_is_reused_is_retried_only_when_safe() -> None:
    """The keep-alive race: the upstream closes an idle connection just as a request goes out on it. Nothing
    was taken up (not a byte of answer): an idempotent request goes again on a fresh connection; a POST,
    which cannot be known unprocessed by the RFC's rule, fails as a reset."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")  # each connection: its first
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next one on it is never taken up
        writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1], 4)
    try:
        assert await fetch(pool) == (200, b"hi")
        assert await fetch(pool) == (200, b"hi")  # went out on the pooled connection, then on a new one
        assert connections == 2
        with pytest.raises(UpstreamError) as info:
            await fetch(pool, "POST", b"order")
        assert info.value.kind == "reset" and connections == 2
    finally:
        await pool.close()
        server.close()


async def test_bytes_after_a_complete_response_retire_the_connection(scripted: Callable[..., object]) -> None:
    """A split response (an upstream bug, or injected bytes) must not answer the next request."""
    injected = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
    )
    real = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"
    server: Scripted = await scripted([injected, real])  # type: ignore[misc]
    pool = UpstreamPool("127.0.0.1", server.port, 4)
    assert await fetch(pool) == (200, b"hi")
    assert await fetch(pool) == (200, b"real")  # not "forged": the first connection was not reused
    assert server.connections == 2
    await pool.close()
