"""WebSocket through the gateway: a real aiohttp WebSocket echo upstream, a real client, real sockets."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from gateway.app import GATEWAY
from tests.conftest import Client, GatewayFactory
from tests.support.process import start_gateway
from tests.support.upstream import base_url, serving
from tests.support.wait import until

POLICY = """
version: 1
server: {{tunnel_idle_timeout: {idle}, tunnel_max_duration: {longest}, write_timeout: 2s}}
upstreams: {{app: {{url: "{url}", breaker: app}}}}
breakers: {{app: {{consecutive_failures: 2, reset_timeout: 60s}}}}
rate_limits: {{three: {{rate: 3, per: 1h, key: ip}}}}
routes:
  - {{name: ws, match: "GET /ws", upstream: app, upgrade: [websocket]}}
  - {{name: limited, match: "GET /limited", upstream: app, upgrade: [websocket], rate_limits: [three]}}
  - {{name: refused, match: "GET /refused", upstream: app, upgrade: [websocket]}}
  - {{name: flood, match: "GET /flood", upstream: app, upgrade: [websocket]}}
  - {{name: plain, match: "GET /{{p:.*}}", upstream: app}}
"""


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("chat",))
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            if msg.data.startswith("close:"):
                await ws.close(code=int(msg.data[6:]), message=b"bye")
            else:
                await ws.send_str("echo:" + msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data[::-1])
    return ws


async def flood(request: web.Request) -> web.WebSocketResponse:
    """Sends 64 MiB as fast as the connection takes it."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    block = b"x" * 65536
    for _ in range(1024):
        await ws.send_bytes(block)
    await ws.close()
    return ws


async def refused(request: web.Request) -> web.Response:
    return web.json_response({"why": "not today"}, status=403)


@pytest.fixture
async def ws_upstream() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/limited", echo)
    app.router.add_get("/flood", flood)
    app.router.add_get("/refused", refused)
    async with serving(app) as server:
        yield server


async def gateway(make_gateway: GatewayFactory, upstream: TestServer, idle: str = "5s",
                  longest: str = "1h") -> aiohttp.test_utils.TestClient:  # type: ignore[type-arg]
    return await make_gateway(POLICY, url=str(upstream.make_url("")).rstrip("/"), idle=idle, longest=longest)


@pytest.fixture
async def gw(make_gateway: GatewayFactory, ws_upstream: TestServer) -> Client:
    """The gateway with the default tunnel timeouts."""
    return await gateway(make_gateway, ws_upstream)


async def test_messages_both_ways_ping_pong_and_close_codes(gw: Client) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(gw.make_url("/ws"), protocols=("chat",), autoping=False) as ws:
            assert ws.protocol == "chat"  # the subprotocol the upstream chose
            await ws.send_str("hello")
            assert (await ws.receive(5)).data == "echo:hello"
            await ws.send_bytes(b"\x00\x01\x02")
            assert (await ws.receive(5)).data == b"\x02\x01\x00"
            await ws.ping(b"are you there")
            pong = await ws.receive(5)
            assert pong.type == WSMsgType.PONG and pong.data == b"are you there"
            await ws.send_str("close:4001")
            closing = await ws.receive(5)
            assert closing.type == WSMsgType.CLOSE and closing.data == 4001 and closing.extra == "bye"
    metrics = await (await gw.get("/metrics")).text()
    assert "gateway_tunnels_open 0.0" in metrics
    ended = [x for x in metrics.splitlines() if x.startswith("gateway_tunnels_closed_total{")]
    assert len(ended) == 1 and ended[0].endswith(" 1.0") and "closed" in ended[0], ended
    # The SLO recorder counted the handshake (a 1xx), once.
    assert 'gateway_requests_total{method="GET",route="ws",status_class="1xx"} 1.0' in metrics, "\n".join(
        x for x in metrics.splitlines() if 'route="ws"' in x and "bucket" not in x)


async def test_a_route_without_upgrade_refuses_the_handshake(gw: Client) -> None:
    response = await gw.get("/ws-elsewhere", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                      "Sec-WebSocket-Version": "13"})
    body = await response.json()
    assert response.status == 400 and body["error"] == "upgrade_not_allowed"


async def test_an_upstream_that_refuses_the_handshake_is_relayed(gw: Client) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(gw.make_url("/refused"))
    assert refused.value.status == 403


async def test_the_handshake_is_rate_limited_and_refused_by_an_open_breaker(gw: Client) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.ws_connect(gw.make_url("/limited")) as ws:
                await ws.send_str("x")
                assert (await ws.receive(5)).data == "echo:x"
        with pytest.raises(aiohttp.WSServerHandshakeError) as limited:
            await session.ws_connect(gw.make_url("/limited"))
        assert limited.value.status == 429
        gw.app[GATEWAY].current().breakers["app"].force_open()
        with pytest.raises(aiohttp.WSServerHandshakeError) as opened:
            await session.ws_connect(gw.make_url("/ws"))
        assert opened.value.status == 503


async def test_idle_timeout_and_max_duration_close_the_tunnel(
    make_gateway: GatewayFactory, ws_upstream: TestServer
) -> None:
    gw = await gateway(make_gateway, ws_upstream, idle="300ms", longest="1h")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(gw.make_url("/ws"), autoping=False, heartbeat=None) as ws:
            msg = await ws.receive(5)  # nothing sent either way: the gateway closes the tunnel
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
    gw2 = await gateway(make_gateway, ws_upstream, idle="10s", longest="500ms")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(gw2.make_url("/ws"), autoping=False) as ws:
            for _ in range(100):  # busy all along, closed anyway at the maximum duration
                try:
                    await ws.send_str("x")
                except aiohttp.ClientConnectionResetError:
                    msg = await ws.receive(5)
                    break
                msg = await ws.receive(5)
                if msg.type != WSMsgType.TEXT:
                    break
                await asyncio.sleep(0.02)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
    for client, reason in ((gw, "idle_timeout"), (gw2, "max_duration")):
        metrics = await (await client.get("/metrics")).text()
        assert f'gateway_tunnels_closed_total{{reason="{reason}"}} 1.0' in metrics


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


async def test_a_client_that_stops_reading_does_not_grow_the_gateways_memory(gw: Client) -> None:
    assert resource.getpagesize() > 0
    before = rss_kib()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(gw.make_url("/flood"), max_msg_size=0) as ws:
            # The upstream offers 64 MiB; this client reads none of it. Wait until the relay stops moving:
            # the bytes relayed to the client stay the same over three samples 100 ms apart.
            samples: list[list[float]] = []

            async def stalled() -> bool:
                metrics = await (await gw.get("/metrics")).text()
                samples.append([float(x.split()[-1]) for x in metrics.splitlines()
                                if x.startswith('gateway_tunnel_bytes_total{direction="to_client"}')])
                moving = len(samples) < 3 or not samples[-1] or samples[-1][0] == 0
                return not moving and samples[-1] == samples[-2] == samples[-3]

            await until(stalled, within=10, every=0.1, what="the relay to a client that does not read stops")
            grown = rss_kib() - before
            relayed = samples[-1]
            await ws.close()
    # Everything runs in this process (gateway, upstream, client), so the bound is loose: far below 64 MiB.
    assert grown < 24 * 1024, grown
    assert relayed and relayed[0] < 32 * 2**20, relayed


async def test_sigterm_closes_tunnels_after_the_drain_timeout(
    tmp_path: Path, ws_upstream: TestServer
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        POLICY.format(url=base_url(ws_upstream), idle="1h", longest="1h").replace(
            "server: {", "server: {drain_timeout: 1s, "
        )
    )
    proc, port = await start_gateway(policy)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                await ws.send_str("before")
                assert (await ws.receive(5)).data == "echo:before"
                proc.terminate()
                started = asyncio.get_running_loop().time()
                await ws.send_str("during the drain")  # the tunnel still works while the gateway drains
                assert (await ws.receive(5)).data == "echo:during the drain"
                closed = await ws.receive(10)
                waited = asyncio.get_running_loop().time() - started
                assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
                assert 0.5 <= waited <= 8, waited
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_an_interim_answer_before_the_101_is_not_taken_for_the_final_one(
    make_gateway: GatewayFactory,
) -> None:
    """An upstream may send 100 Continue or 103 Early Hints before its 101 (RFC 9110 15.2): the gateway waits
    for the final answer instead of relaying the interim one as if it were the response."""

    async def interim_then_101(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        await writer.drain()  # a read of its own: the interim answer alone is a complete message
        await asyncio.sleep(0.2)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"\r\nfrom-upstream")
        await writer.drain()
        await reader.read()  # until the gateway closes
        writer.close()

    server = await asyncio.start_server(interim_then_101, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await make_gateway(POLICY, url=f"http://127.0.0.1:{port}", idle="5s", longest="1h")
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert await asyncio.wait_for(reader.readexactly(13), 5) == b"from-upstream"
        writer.close()
    finally:
        server.close()


async def test_open_tunnels_do_not_take_the_upstreams_request_slots(
    make_gateway: GatewayFactory, ws_upstream: TestServer
) -> None:
    """upstreams.max_requests caps requests in flight; a tunnel is one only until its handshake is answered.
    Counted for its whole life, a few idle WebSockets (held open for hours) got every HTTP request to that
    upstream refused with 503 upstream_overloaded."""
    policy = POLICY.replace('breaker: app}}}}', 'breaker: app, max_requests: 2}}}}')
    assert policy != POLICY
    gw = await make_gateway(policy, url=str(ws_upstream.make_url("")).rstrip("/"), idle="5s", longest="1h")
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(gw.make_url("/ws")) for _ in range(2)]
        try:
            for ws in sockets:  # both tunnels are open and relaying
                await ws.send_str("x")
                assert (await ws.receive(5)).data == "echo:x"
            plain = await gw.get("/refused")  # an ordinary request to the same upstream (403 is its answer)
            assert plain.status == 403, await plain.text()
            async with session.ws_connect(gw.make_url("/ws")) as third:  # and another tunnel
                await third.send_str("y")
                assert (await third.receive(5)).data == "echo:y"
        finally:
            for ws in sockets:
                await ws.close()
    client = gw.app[GATEWAY].current().clients["app"]
    assert client.in_flight == 0  # every slot given back, once each


async def raw_upgrade_upstream(answer_upgrade: str | None, seen: list[bytes]) -> asyncio.Server:
    """Answers 101 with `Upgrade: answer_upgrade` (None: the first protocol the request offered, e.g. h2c
    when offered), remembering each request head."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        offered = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"upgrade:"))
        chosen = answer_upgrade.encode() if answer_upgrade else offered.split(b",")[-1].strip()
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + chosen +
                     b"\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_only_the_protocol_the_route_allows_is_offered_upstream(make_gateway: GatewayFactory) -> None:
    """`Upgrade: websocket, h2c` on a websocket route: the upstream is offered websocket alone. (Forwarded
    whole, an upstream that speaks h2c could pick it, and every request inside that HTTP/2 connection would
    bypass the gateway's routes and limits: h2c smuggling.)"""
    seen: list[bytes] = []
    server = await raw_upgrade_upstream(None, seen)  # picks the last protocol it is offered
    try:
        gw = await make_gateway(POLICY, url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                                idle="5s", longest="1h")
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     b"Upgrade: websocket, h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        upgrade = [line for line in seen[0].split(b"\r\n") if line.lower().startswith(b"upgrade:")]
        assert upgrade == [b"Upgrade: websocket"], seen[0]
        assert head.startswith(b"HTTP/1.1 101 ") and b"Upgrade: websocket" in head, head
    finally:
        server.close()


async def test_a_101_to_a_protocol_not_asked_for_is_refused(make_gateway: GatewayFactory) -> None:
    seen: list[bytes] = []
    server = await raw_upgrade_upstream("h2c", seen)
    try:
        gw = await make_gateway(POLICY, url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                                idle="5s", longest="1h")
        response = await gw.get("/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
        body = await response.json()
        assert response.status == 502 and body["error"] == "protocol", body
        assert len(seen) == 1
    finally:
        server.close()


async def test_a_tunnel_client_cut_off_by_the_write_deadline_is_counted_as_stalled(
    make_gateway: GatewayFactory, ws_upstream: TestServer
) -> None:
    """The upstream floods, the client reads nothing: server.write_timeout (2s here) cuts it, and the tunnel's
    end says so (it said client_closed, as if the client had left)."""
    gw = await make_gateway(POLICY, url=str(ws_upstream.make_url("")).rstrip("/"), idle="1h", longest="1h")
    assert gw.port is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", gw.port))
        await loop.sock_sendall(sock, b"GET /flood HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                      b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                      b"Sec-WebSocket-Version: 13\r\n\r\n")
        ended: list[str] = []

        async def tunnel_ended() -> bool:
            nonlocal ended, metrics
            metrics = await (await gw.get("/metrics")).text()
            ended = [x for x in metrics.splitlines() if x.startswith("gateway_tunnels_closed_total{")]
            return bool(ended)

        metrics = ""
        # the write deadline, plus the time the flood takes to fill the buffers on the way
        await until(tunnel_ended, within=15, every=0.1, what="the stalled tunnel to end")
        assert ended == ['gateway_tunnels_closed_total{reason="client_stalled"} 1.0'], ended
        assert 'gateway_connections_dropped_total{reason="write_stall"} 1.0' in metrics
    finally:
        sock.close()
