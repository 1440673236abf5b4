"""One test per private name of aiohttp that gateway/compat.py relies on: a release that renames or changes
one fails here, loudly, instead of making the gateway quietly slower or unprotected. Real sockets only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.compat import (
    HandlerRunner,
    OneWriteResponse,
    c_parser_in_use,
    handler_task,
    requests_parsed,
)


class Recording(RequestHandler):
    """A connection handler that remembers each instance and what it was built with."""

    made: list[tuple[Recording, dict[str, Any]]] = []
    connected = asyncio.Event()

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        Recording.made.append((self, kwargs))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        Recording.connected.set()


@pytest.fixture
async def served() -> AsyncIterator[tuple[int, dict[str, int]]]:
    """An app behind HandlerRunner with the Recording handler; yields its port and what the handlers saw."""
    seen: dict[str, int] = {}

    async def one_write(request: web.Request) -> web.StreamResponse:
        response = OneWriteResponse(status=200)
        await response.prepare(request)
        seen["one_write_after_prepare"] = request.writer.output_size
        await response.write_eof(b"done")
        return response

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        seen["streamed_after_prepare"] = request.writer.output_size
        await response.write_eof(b"done")
        return response

    async def task(request: web.Request) -> web.Response:
        assert isinstance(request.protocol, RequestHandler)
        serving = handler_task(request.protocol)
        assert serving is not None
        asyncio.get_running_loop().call_soon(serving.cancel)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen["cancelled_with_the_task"] = 1
            raise
        return web.Response(text="not cancelled")

    app = web.Application()
    app.router.add_get("/one", one_write)
    app.router.add_get("/task", task)
    app.router.add_get("/stream", streamed)
    Recording.made = []
    Recording.connected = asyncio.Event()
    runner = HandlerRunner(app, make_handler=Recording, keepalive_timeout=7.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1], seen
    finally:
        await runner.cleanup()


def test_stream_response_still_has_the_head_first_switch() -> None:
    """StreamResponse._send_headers_immediately: relay's OneWriteResponse turns it off for a body already
    complete (web.Response does the same). Dropped or renamed, every response would quietly go back to two
    writes: this says so instead."""
    assert vars(web.StreamResponse).get("_send_headers_immediately") is True
    assert OneWriteResponse._send_headers_immediately is False


async def test_the_one_write_response_holds_its_head_until_the_body(
    served: tuple[int, dict[str, int]],
) -> None:
    port, seen = served
    async with aiohttp.ClientSession() as session:
        for path in ("/one", "/stream"):
            async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                assert resp.status == 200 and await resp.read() == b"done"
    assert seen["one_write_after_prepare"] == 0  # the head waits for write_eof: one write
    assert seen["streamed_after_prepare"] > 0  # the control: a plain StreamResponse sends its head at once


async def test_handler_runner_builds_the_given_handler_with_aiohttps_settings(
    served: tuple[int, dict[str, int]],
) -> None:
    """AppRunner._make_server, web.Server._loop and web.Server._kwargs: the runner's server must make our
    handler class, on the running loop, with the settings given to the runner (else the gateway's connection
    cap and header deadline silently vanish, or its keep-alive settings do)."""
    port, _ = served
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/one") as resp:
            assert resp.status == 200
    assert len(Recording.made) == 1
    handler, kwargs = Recording.made[0]
    assert kwargs["loop"] is asyncio.get_running_loop()
    assert kwargs["keepalive_timeout"] == 7.5
    assert isinstance(handler, Recording)


async def test_requests_parsed_counts_complete_request_heads(served: tuple[int, dict[str, int]]) -> None:
    """RequestHandler._request_count: the header deadline closes connections that never completed a head."""
    port, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /one HTTP/1.1\r\nHost: x\r\n")  # the head, not yet complete
        await writer.drain()
        await asyncio.wait_for(Recording.connected.wait(), 5)
        handler, _ = Recording.made[0]
        assert requests_parsed(handler) == 0
        writer.write(b"\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        assert requests_parsed(handler) == 1
    finally:
        writer.close()


async def test_cancelling_the_handler_task_cancels_the_running_handler(
    served: tuple[int, dict[str, int]],
) -> None:
    """RequestHandler._task_handler: at shutdown the server cancels a handler still running at the drain
    timeout through it (aiohttp alone waits twice as long)."""
    port, seen = served
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.get(f"http://127.0.0.1:{port}/task")
    assert seen["cancelled_with_the_task"] == 1


def test_the_c_http_parser_is_found_by_its_module_name() -> None:
    """aiohttp._http_parser: `gateway serve` refuses to run without the C parser. Renamed, serve would refuse
    every start (tests/test_packaging.py checks the refusal itself)."""
    assert c_parser_in_use()
