"""The proxy forwards faithfully: methods, paths, bodies both ways, headers, errors. Real sockets only."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from perf.local import free_port
from tests.conftest import GatewayFactory
from tests.support.raw import raw_request
from tests.support.upstream import RECORDER, pattern_bytes

POLICY = """
version: 1
upstreams:
  app: {{url: "{url}", connect_timeout: 1s, timeout: 2s}}
  dead: {{url: "http://127.0.0.1:{dead_port}", connect_timeout: 500ms, timeout: 1s}}
identity: {{user_header: X-User-Id, trusted_proxies: [{trusted}]}}
server: {{max_body: 1MiB}}
routes:
  - {{name: slow, match: "GET /slow", upstream: app, timeout: 200ms}}
  - {{name: upload, match: "POST|PUT /upload", upstream: app, max_body: 64MiB}}
  - {{name: dead, match: "* /dead/{{rest:.*}}", upstream: dead}}
  - {{name: egress, match: "* /egress/payments/{{path:.*}}", upstream: app, strip_prefix: /egress/payments}}
  - {{name: default, match: "* /{{path:.*}}", upstream: app}}
"""


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: TestServer):  # type: ignore[no-untyped-def]
    return await make_gateway(
        POLICY, url=str(upstream.make_url("")).rstrip("/"), dead_port=free_port(), trusted="10.9.9.9/32"
    )


async def test_method_path_and_query_are_forwarded_byte_exact(gw, upstream: TestServer) -> None:  # type: ignore[no-untyped-def]
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        resp = await gw.request(method, "/api/things/1?b=2&a=%20x&a=y&empty=")
        assert resp.status == 200, method
        seen = await resp.json()
        assert seen["method"] == method
        assert seen["raw_path"] == "/api/things/1?b=2&a=%20x&a=y&empty="


async def test_strip_prefix(gw) -> None:  # type: ignore[no-untyped-def]
    resp = await gw.post("/egress/payments/v1/intents?x=1", json={"a": 1})
    assert (await resp.json())["raw_path"] == "/v1/intents?x=1"


async def test_path_is_normalised_before_routing_so_escapes_cannot_dodge_a_route(gw) -> None:  # type: ignore[no-untyped-def]
    resp = await gw.get("/egress/%70ayments/./v1//x/../intents")
    assert (await resp.json())["raw_path"] == "/v1/intents"
    status, _, body = await raw_request(gw.port, b"GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400
    assert json.loads(body)["error"] == "bad_path"
    # A fragment would miss the `egress` route here yet reach the same handler upstream (which drops it).
    # So would an escaped slash, for an upstream that decodes it (WSGI, PHP): server.escaped_slashes reject.
    for target in (b"/egress/payments/v1#x", b"/a?q=1#x", b"/egress%2Fpayments/v1", b"/egress%5cpayments/v1"):
        status, _, body = await raw_request(gw.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 400 and json.loads(body)["error"] == "bad_path", target


async def test_escaped_slashes_kept_when_the_policy_says_so(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(
        'version: 1\nserver: {{escaped_slashes: keep}}\nupstreams: {{app: {{url: "{url}"}}}}\n'
        'routes: [{{name: a, match: "GET /{{p:.*}}", upstream: app}}]\n',
        url=str(upstream.make_url("")).rstrip("/"),
    )
    resp = await gw.get(URL("/projects/group%2Fname", encoded=True))
    assert resp.status == 200 and (await resp.json())["raw_path"] == "/projects/group%2Fname"


async def test_underscore_spellings_of_managed_headers_never_reach_the_upstream(gw) -> None:  # type: ignore[no-untyped-def]
    # CGI/WSGI/PHP/Rack upstreams read X_User_Id as X-User-Id: forwarded, it would forge the gateway's own.
    resp = await gw.get(
        "/echo",
        headers={
            "X-User_Id": "admin",
            "X_Forwarded_For": "6.6.6.6",
            "x_real_ip": "6.6.6.6",
            "X_Request_Id": "forged",
            "Transfer_Encoding": "chunked",
            "X_Custom_Thing": "kept",  # underscores in a header the gateway does not manage pass
        },
    )
    sent = {k.lower(): v for k, v in (await resp.json())["headers"]}
    assert not {"x-user_id", "x_forwarded_for", "x_real_ip", "x_request_id", "transfer_encoding"} & set(sent)
    assert sent["x_custom_thing"] == "kept"
    assert sent["x-forwarded-for"] == "127.0.0.1"


async def test_an_http10_client_gets_a_streamed_body_ended_by_the_close(make_gateway: GatewayFactory) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        writer.write(b"3\r\ndef\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with raw_upstream_gateway(make_gateway, serve) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /s HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        # No chunked encoding in HTTP/1.0 and no length known: the body can only end with the connection.
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.0 200 ") and answer.endswith(b"\r\n\r\nabcdef")


async def test_large_upload_streams_through_with_exact_bytes(gw) -> None:  # type: ignore[no-untyped-def]
    data = pattern_bytes(20 * 2**20 + 7)

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(data), 1 << 16):
            yield data[i : i + (1 << 16)]

    resp = await gw.post("/upload", data=chunks())  # chunked from the client
    body = await resp.json()
    assert resp.status == 200
    assert body["length"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["chunked"] == "chunked"

    resp = await gw.put("/upload", data=io.BytesIO(data))  # with a Content-Length
    body = await resp.json()
    assert body["length"] == len(data) and body["chunked"] is None


async def test_large_download_streams_through_with_exact_bytes(gw) -> None:  # type: ignore[no-untyped-def]
    n = 30 * 2**20 + 3
    resp = await gw.get(f"/big?n={n}")
    digest, total = hashlib.sha256(), 0
    async for chunk in resp.content.iter_any():
        digest.update(chunk)
        total += len(chunk)
    assert total == n
    assert digest.hexdigest() == hashlib.sha256(pattern_bytes(n)).hexdigest()


async def test_repeated_response_headers_and_cookies_preserved(gw) -> None:  # type: ignore[no-untyped-def]
    resp = await gw.get("/cookies")
    assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    assert resp.headers.getall("X-Multi") == ["one", "two"]


async def test_hop_by_hop_stripped_both_ways(gw) -> None:  # type: ignore[no-untyped-def]
    resp = await gw.get(
        "/echo",
        headers={
            "Connection": "keep-alive, X-Drop-Me, X-User-Id, X-Request-Id",
            "X-Drop-Me": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Connection": "keep-alive",
            "Upgrade": "websocket",
            "X-User-Id": "user-42",
            "X-Request-Id": "req-1",
        },
    )
    sent = {k.lower(): v for k, v in (await resp.json())["headers"]}
    for name in ("x-drop-me", "keep-alive", "te", "proxy-connection", "upgrade"):
        assert name not in sent, name
    # Naming the identity header in Connection must not erase it (a known proxy trick).
    assert sent["x-user-id"] == "user-42"
    assert sent["x-request-id"] == "req-1"
    assert resp.headers["X-Request-Id"] == "req-1"

    resp = await gw.get("/hop")
    assert "X-Secret-Hop" not in resp.headers
    assert "Keep-Alive" not in resp.headers
    assert resp.headers["X-Kept"] == "yes"


async def test_forwarded_headers_from_untrusted_peer_are_replaced(gw, upstream: TestServer) -> None:  # type: ignore[no-untyped-def]
    resp = await gw.get(
        "/echo",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
        },
    )
    sent = {k.lower(): v for k, v in (await resp.json())["headers"]}
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-forwarded-host"] == f"127.0.0.1:{gw.port}"
    assert sent["host"] == f"127.0.0.1:{upstream.port}"


async def test_request_id_generated_when_missing_or_unsafe(gw) -> None:  # type: ignore[no-untyped-def]
    resp = await gw.get("/echo", headers={"X-Request-Id": "bad id\twith spaces"})
    rid = resp.headers["X-Request-Id"]
    assert len(rid) == 32 and rid != "bad id\twith spaces"
    sent = {k.lower(): v for k, v in (await resp.json())["headers"]}
    assert sent["x-request-id"] == rid
    fresh = {(await gw.get("/echo")).headers["X-Request-Id"] for _ in range(20)}
    assert len(fresh) == 20 and rid not in fresh  # every generated id is new


async def test_timeout_is_504_with_json_reason(gw) -> None:  # type: ignore[no-untyped-def]
    resp = await gw.get("/slow?s=2")
    assert resp.status == 504
    body = await resp.json()
    assert body["error"] == "timeout" and body["route"] == "slow"


async def test_dead_upstream_is_502_with_json_reason(gw) -> None:  # type: ignore[no-untyped-def]
    resp = await gw.get("/dead/x")
    assert resp.status == 502
    body = await resp.json()
    assert body["error"] == "connect_error" and body["route"] == "dead" and body["upstream"] == "dead"


async def test_body_over_cap_is_413_without_contacting_upstream(gw, upstream: TestServer) -> None:  # type: ignore[no-untyped-def]
    recorder = upstream.app[RECORDER]
    before = len(recorder.requests)
    resp = await gw.post(
        "/echo", data=io.BytesIO(b"x" * (2 * 2**20))
    )  # Content-Length over the 1 MiB default
    assert resp.status == 413
    assert (await resp.json())["error"] == "body_too_large"
    assert len(recorder.requests) == before


async def test_streamed_body_over_cap_is_413(gw) -> None:  # type: ignore[no-untyped-def]
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"y" * 65536  # 2.5 MiB, no Content-Length

    resp = await gw.post("/echo", data=chunks())
    assert resp.status == 413


async def test_unmatched_path_without_default_route_is_404(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(
        'version: 1\nupstreams: {{app: {{url: "{url}"}}}}\n'
        'routes:\n  - {{name: a, match: "GET /a", upstream: app}}\n',
        url=str(upstream.make_url("")).rstrip("/"),
    )
    resp = await gw.get("/nothing")
    assert resp.status == 404
    assert (await resp.json())["error"] == "no_route"
    assert (await gw.get("/a")).status == 200
    assert (await gw.post("/a")).status == 404


async def test_client_disconnect_cancels_the_upstream_call(make_gateway: GatewayFactory) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hang(request):  # type: ignore[no-untyped-def]
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return aiohttp.web.Response()

    app = aiohttp.web.Application()
    app.router.add_get("/hang", hang)
    server = TestServer(app, handler_cancellation=True)
    await server.start_server()
    try:
        gw = await make_gateway(
            'version: 1\nupstreams: {{app: {{url: "{url}", timeout: 60s}}}}\n'
            'routes: [{{name: a, match: "GET /hang", upstream: app}}]\n',
            url=str(server.make_url("")).rstrip("/"),
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(started.wait(), 5)
        writer.transport.abort()
        await asyncio.wait_for(cancelled.wait(), 5)  # the upstream saw its request go away
    finally:
        await server.close()


RawServe = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_upstream_gateway(
    make_gateway: GatewayFactory, serve: RawServe
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """A gateway whose every GET goes to `serve`, an upstream that writes raw bytes on a real socket."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(serve, sock=sock)
    try:
        yield await make_gateway(
            'version: 1\nupstreams: {{app: {{url: "http://127.0.0.1:{port}"}}}}\n'
            'routes: [{{name: a, match: "GET /{{p:.*}}", upstream: app}}]\n',
            port=sock.getsockname()[1],
        )
    finally:
        server.close()


async def test_upstream_reset_mid_body_truncates_the_client_response(make_gateway: GatewayFactory) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"z" * 1000)
        await writer.drain()
        writer.transport.abort()

    async with raw_upstream_gateway(make_gateway, serve) as gw:
        resp = await gw.get("/x")
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_streamed_head_reaches_the_client_before_the_body(make_gateway: GatewayFactory) -> None:
    """An unfinished body must not hold the head back (server-sent events, long polls): the client sees the
    status line while the body is still coming. (A body already complete goes out with its head.)"""
    release = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"HEAD "):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nX-Kind: head\r\n\r\n")
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: stream\r\n\r\n")
            await release.wait()
            writer.write(b"5\r\nhello\r\n0\r\n\r\n")
            await writer.drain()

    async with raw_upstream_gateway(make_gateway, serve) as gw:
        resp = await asyncio.wait_for(gw.get("/events"), 5)  # returns once the head is in
        assert resp.status == 200 and resp.headers["X-Kind"] == "stream"
        release.set()
        assert await asyncio.wait_for(resp.read(), 5) == b"hello"
        # HEAD: the upstream's Content-Length is relayed, no body follows (the next response starts at once).
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        for _ in range(2):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 5000\r\n" in head
        writer.close()
