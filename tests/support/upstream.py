"""A recording upstream for proxy tests: it answers with what it received, and remembers it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body_length: int


@dataclass
class Recorder:
    requests: list[Seen] = field(default_factory=list)


RECORDER = web.AppKey("recorder", Recorder)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    request.app[RECORDER].requests.append(
        Seen(request.method, request.raw_path, list(request.headers.items()), len(body))
    )
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
    )


async def upload(request: web.Request) -> web.Response:
    """Read a body in a stream, never all at once, and report its length and digest."""
    digest, total = hashlib.sha256(), 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        total += len(chunk)
    request.app[RECORDER].requests.append(
        Seen(request.method, request.raw_path, list(request.headers.items()), total)
    )
    return web.json_response(
        {"length": total, "sha256": digest.hexdigest(), "chunked": request.headers.get("Transfer-Encoding")}
    )


def pattern_bytes(n: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


async def big(request: web.Request) -> web.StreamResponse:
    """A streamed (chunked) download of n pattern bytes."""
    n = int(request.query["n"])
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    data = pattern_bytes(n)
    for i in range(0, n, 65536):
        await response.write(data[i : i + 65536])
    await response.write_eof()
    return response


async def cookies(request: web.Request) -> web.Response:
    response = web.Response(text="ok")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
    response.headers.add("X-Multi", "one")
    response.headers.add("X-Multi", "two")
    return response


async def hop(request: web.Request) -> web.Response:
    response = web.Response(text="hop")
    response.headers["Connection"] = "X-Secret-Hop"
    response.headers["X-Secret-Hop"] = "must not reach the client"
    response.headers["Keep-Alive"] = "timeout=5"
    response.headers["X-Kept"] = "yes"
    return response


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text="slow")


async def status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="status")


def recording_app() -> web.Application:
    app = web.Application(client_max_size=64 * 2**20)
    app[RECORDER] = Recorder()
    app.router.add_route("POST", "/upload", upload)
    app.router.add_route("PUT", "/upload", upload)
    app.router.add_get("/big", big)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/hop", hop)
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def base_url(server: TestServer) -> str:
    """The server's URL without a trailing slash: what a policy's `upstreams.NAME.url` takes."""
    return str(server.make_url("")).rstrip("/")


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[TestServer]:
    """`app` on a loopback port for the block."""
    server = TestServer(app)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()
