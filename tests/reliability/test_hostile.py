"""Hostile requests on raw sockets: every one refused with a JSON reason before the upstream sees a byte."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import GatewayFactory, open_connections
from tests.support.raw import raw_request
from tests.support.upstream import RECORDER, base_url
from tests.support.wait import until

POLICY = """
version: 1
upstreams: {{app: {{url: "{url}"}}}}
identity: {{user_header: X-User-Id, trusted_proxies: [10.0.0.0/8]}}
server: {{max_body: 64KiB, header_timeout: {header_timeout}, max_connections: {max_connections}}}
routes: [{{name: d, match: "* /{{p:.*}}", upstream: app}}]
"""

HOSTILE = {
    "cl_and_te": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "duplicate_content_length": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        400,
    ),
    "xchunked": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    "chunked_not_last": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    "obs_fold": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    "bare_lf": (b"GET /echo HTTP/1.1\nHost: x\n\n", 400),
    "bad_chunk_size": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "duplicate_host": (b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "space_before_colon": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", 400),
    "nul_in_header": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "oversized_header": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    "too_many_headers": (
        b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(300)) + b"\r\n",
        431,
    ),
    "oversized_streamed_body": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"8000\r\n" + b"b" * 0x8000 + b"\r\n") * 3
        + b"0\r\n\r\n",
        413,
    ),
    "oversized_declared_body": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n" + b"c" * 70000,
        413,
    ),
    "dot_segments_above_root": (b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400),
}


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: TestServer) -> TestClient:  # type: ignore[type-arg]
    return await make_gateway(
        POLICY, url=base_url(upstream), header_timeout="500ms", max_connections=50
    )


@pytest.mark.parametrize("name", HOSTILE)
async def test_hostile_request_refused_and_upstream_sees_nothing(
    name: str,
    gw: TestClient,
    upstream: TestServer,  # type: ignore[type-arg]
) -> None:
    data, expected = HOSTILE[name]
    recorder = upstream.app[RECORDER]
    status, headers, body = await raw_request(gw.port, data)
    assert status == expected
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]
    if name != "oversized_streamed_body":  # a streamed body is refused mid-stream: the upstream saw its start
        assert recorder.requests == []


async def test_connection_header_cannot_remove_identity(gw: TestClient) -> None:  # type: ignore[type-arg]
    status, _, body = await raw_request(
        gw.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close, X-User-Id\r\nX-User-Id: alice\r\n\r\n"
    )
    assert status == 200
    sent = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert sent["x-user-id"] == "alice"


async def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(gw: TestClient) -> None:  # type: ignore[type-arg]
    status, _, body = await raw_request(
        gw.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.2.3, 6.6.6.6\r\n\r\n"
    )
    sent = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert sent["x-forwarded-for"] == "127.0.0.1"


async def test_slow_clients_are_cut_at_the_header_deadline_and_others_still_served(gw: TestClient) -> None:  # type: ignore[type-arg]
    slow = []
    for _ in range(40):  # slowloris: open, send a partial head, never finish
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        slow.append((reader, writer))
    await until(lambda: open_connections(gw) == 40, what="the gateway holds the 40 slow connections")
    resp = await gw.get("/echo")  # a normal client is served while they hang
    assert resp.status == 200
    started = time.monotonic()
    closed = await asyncio.wait_for(asyncio.gather(*(r.read() for r, _ in slow)), 5)
    assert all(data == b"" for data in closed)  # the gateway closed every slow connection
    assert time.monotonic() - started < 2.0  # at the 500 ms deadline, not the keep-alive timeout
    for _, w in slow:
        w.close()


async def test_connections_over_the_cap_get_503_and_close(gw: TestClient) -> None:  # type: ignore[type-arg]
    held = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(50)]
    await until(lambda: open_connections(gw) == 50, what="the gateway accepted the 50 held connections")
    status, headers, body = await raw_request(gw.port, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 503
    assert headers["retry-after"] == "1"
    assert json.loads(body)["error"] == "too_many_connections"
    for _, w in held:
        w.close()
    await until(lambda: open_connections(gw) == 0, what="the gateway saw the held connections close")
    status, _, _ = await raw_request(gw.port, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200


async def test_other_spellings_of_the_ops_namespace_are_never_proxied(
    gw: TestClient,
    upstream: TestServer,  # type: ignore[type-arg]
) -> None:
    recorder = upstream.app[RECORDER]
    for target in (b"//api/ops/reload", b"/api/./ops/reload", b"/api/ops", b"/x/../api/ops/policy"):
        status, headers, body = await raw_request(
            gw.port, b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert status in (401, 404), target
        assert headers["content-type"].startswith("application/json")
    assert recorder.requests == []


async def test_stalled_uploads_are_the_clients_fault_and_never_open_the_breaker(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    """Counted against the upstream, a few uploads that stop halfway would open its breaker for everyone."""
    gw = await make_gateway(
        'version: 1\nupstreams: {{app: {{url: "{url}", timeout: 300ms, breaker: app}}}}\n'
        "breakers: {{app: {{consecutive_failures: 2, reset_timeout: 60s}}}}\n"
        'routes: [{{name: d, match: "* /{{p:.*}}", upstream: app}}]\n',
        url=base_url(upstream),
    )
    stalled = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab"  # 8 bytes short, forever
    answers = await asyncio.gather(*(raw_request(gw.port, stalled) for _ in range(3)))
    for status, _, body in answers:
        assert status == 408 and json.loads(body)["error"] == "client_timeout"
    resp = await gw.get("/echo")
    assert resp.status == 200  # the breaker stayed closed
