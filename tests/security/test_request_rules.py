"""Item 12: small request and response rules, each with the bytes that exploited it sent on a real socket
through a real gateway to a real upstream on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.routing import normalize_path
from tests.conftest import GatewayFactory
from tests.ops.conftest import policy as ops_policy
from tests.support.raw import raw_request

POLICY = """
version: 1
server: {{escaped_slashes: {slashes}, upstream_server_header: {server_header}}}
identity: {{user_header: X-User-Id, user_networks: [127.0.0.1/32]}}
upstreams:
  app: {{url: "{url}"}}
  many: {{url: "http://127.0.0.1:{many_port}"}}
rate_limits:
  per_user: {{rate: 2, per: 1m, key: user}}
routes:
  - {{name: orders, match: "GET /api/orders", upstream: app, rate_limits: [per_user]}}
  - {{name: legacy, match: "POST /legacy/{{p:.*}}", upstream: app, allow_method_override: true}}
  - {{name: many, match: "GET /many/{{n}}", upstream: many, strip_prefix: /many}}
  - {{name: echo, match: "* /{{p:.*}}", upstream: app}}
"""


async def serve_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream answering `GET /<n>` with n header lines, Content-Length included (a raw socket: no
    library caps them)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            count = int(head.split(b" ")[1].strip(b"/"))
            lines = b"".join(b"X-H%d: v\r\n" % i for i in range(count - 1))
            writer.write(b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def many_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(serve_headers, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def text(url: str, many_port: int, slashes: str = "reject", server_header: str = "overwrite") -> str:
    return POLICY.format(url=url, many_port=many_port, slashes=slashes, server_header=server_header)


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: TestServer, many_port: int):  # type: ignore[no-untyped-def]
    return await make_gateway(text(str(upstream.make_url("")).rstrip("/"), many_port))


def request(target: str, *lines: str, method: str = "GET") -> bytes:
    extra = "".join(f"{line}\r\n" for line in lines)
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode()


def seen_headers(body: bytes) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in json.loads(body)["headers"]]


# -- duplicate user headers --


async def test_two_user_header_lines_from_a_trusted_network_are_refused(gw) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = await raw_request(gw.port, request("/echo", "X-User-Id: alice", "X-User-Id: bob"))
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"] == "duplicate_user_header"
    # One line is believed and forwarded once, as before.
    status, _, body = await raw_request(gw.port, request("/echo", "X-User-Id: alice"))
    assert status == 200 and [v for k, v in seen_headers(body) if k == "x-user-id"] == ["alice"]


async def test_two_user_header_lines_from_elsewhere_are_dropped_as_one_would_be(  # type: ignore[no-untyped-def]
    gw,
) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as session:
        headers = [("X-User-Id", "alice"), ("X-User-Id", "bob")]
        async with session.get(f"http://127.0.0.1:{gw.port}/echo", headers=headers) as resp:
            assert resp.status == 200
            assert "x-user-id" not in dict(seen_headers(await resp.read()))


# -- method override headers --


OVERRIDES = ("X-HTTP-Method-Override: DELETE", "X-HTTP-Method: DELETE", "X-Method-Override: DELETE",
             "X_HTTP_Method_Override: DELETE")


async def test_method_override_headers_are_dropped_unless_the_route_allows_them(gw) -> None:  # type: ignore[no-untyped-def]
    status, _, body = await raw_request(gw.port, request("/echo", *OVERRIDES, method="POST"))
    assert status == 200
    sent = dict(seen_headers(body))
    names = {"x-http-method-override", "x-http-method", "x-method-override", "x_http_method_override"}
    assert not names & set(sent)
    status, _, body = await raw_request(gw.port, request("/legacy/x", *OVERRIDES, method="POST"))
    sent = dict(seen_headers(body))
    assert status == 200
    assert sent["x-http-method-override"] == "DELETE" and sent["x-method-override"] == "DELETE"


# -- the Server header --


async def test_the_gateways_own_answers_name_no_versions(gw) -> None:  # type: ignore[no-untyped-def]
    answers = {
        "no route": request("/api/ops/nothing-here"),
        "bad path": request("/../etc"),
        "ops 401": request("/api/ops/breakers"),
        "health": request("/api/ops/health"),
        "metrics": request("/metrics"),
        "parser error": b"GET /echo HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        "expectation failed": request("/echo", "Expect: something-else", "Content-Length: 2"),
        "relayed": request("/echo"),  # the recording upstream is aiohttp: it names its versions
    }
    for what, data in answers.items():
        _, headers, _ = await raw_request(gw.port, data)
        assert headers.get("server") == "gateway", what


async def test_the_upstreams_server_header_is_kept_when_the_policy_says_so(
    make_gateway: GatewayFactory, upstream: TestServer, many_port: int
) -> None:
    gw = await make_gateway(text(str(upstream.make_url("")).rstrip("/"), many_port, server_header="keep"))
    _, headers, _ = await raw_request(gw.port, request("/echo"))
    assert headers["server"].startswith("Python/")  # the upstream's own, relayed
    _, headers, _ = await raw_request(gw.port, request("/many/1"))  # an upstream that sends none
    assert headers["server"] == "gateway"


# -- backslashes in the path --


def test_a_backslash_is_normalised_to_its_escape() -> None:
    assert normalize_path("/api\\orders") == "/api%5Corders"
    assert normalize_path("/api\\..\\x") == "/api%5C..%5Cx"  # not a dot segment: no climbing through it


async def test_a_raw_backslash_cannot_dodge_a_route(gw) -> None:  # type: ignore[no-untyped-def]
    # An upstream that reads `\` as `/` (IIS, some frameworks) would serve /api/orders without its limit.
    status, _, body = await raw_request(gw.port, request("/api\\orders"))
    assert status == 400 and json.loads(body)["error"] == "bad_path"


async def test_a_raw_backslash_is_forwarded_escaped_when_escaped_slashes_are_kept(
    make_gateway: GatewayFactory, upstream: TestServer, many_port: int
) -> None:
    gw = await make_gateway(text(str(upstream.make_url("")).rstrip("/"), many_port, slashes="keep"))
    status, _, body = await raw_request(gw.port, request("/api\\orders"))
    assert status == 200 and json.loads(body)["raw_path"] == "/api%5Corders"


# -- upstream response header count --


async def test_an_upstream_answer_with_too_many_header_lines_is_a_502(gw) -> None:  # type: ignore[no-untyped-def]
    status, _, _ = await raw_request(gw.port, request("/many/100"))
    assert status == 200
    status, _, body = await raw_request(gw.port, request("/many/101"))
    assert status == 502 and json.loads(body)["error"] == "protocol"


async def test_ops_answers_carry_the_neutral_server_name_too(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(ops_policy(str(upstream.make_url("")).rstrip("/")))
    resp = await gw.get("/api/ops/breakers", headers={"X-User-Id": "nobody"})
    assert resp.status == 403 and resp.headers["Server"] == "gateway"


async def test_a_cors_preflight_answered_by_the_gateway_names_no_versions(
    make_gateway: GatewayFactory, upstream: TestServer, many_port: int
) -> None:
    gw = await make_gateway(
        text(str(upstream.make_url("")).rstrip("/"), many_port) + "cors: {origins: ['https://app.example']}\n"
    )
    preflight = request("/echo", "Origin: https://app.example", "Access-Control-Request-Method: POST",
                        method="OPTIONS")
    status, headers, _ = await raw_request(gw.port, preflight)
    assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
    assert headers["server"] == "gateway"


async def test_websocket_handshake_answers_name_no_versions(make_gateway: GatewayFactory) -> None:
    async def ws(request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.close()
        return socket

    async def no(request: web.Request) -> web.Response:
        return web.json_response({}, status=403)

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/no", no)
    server = TestServer(app)
    await server.start_server()
    try:
        gw = await make_gateway(
            'version: 1\nupstreams: {{app: {{url: "{url}"}}}}\nroutes:\n'
            '  - {{name: ws, match: "GET /{{p:.*}}", upstream: app, upgrade: [websocket]}}\n',
            url=str(server.make_url("")).rstrip("/"),
        )
        for path, expected in (("/ws", b"101"), ("/no", b"403")):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                         "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.close()
            assert head.split(b" ")[1] == expected, head
            assert b"\r\nServer: gateway\r\n" in head, head
    finally:
        await server.close()
