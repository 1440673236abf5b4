"""Requests at the edges of HTTP: odd targets, proxy loops and `Expect: 100-continue`, on raw sockets."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory
from tests.support.faults import FaultProxy
from tests.support.raw import raw_request

POLICY = """
version: 1
upstreams: {{app: {{url: "{url}", timeout: 3s}}}}
admin: {{user_ids: [], trusted_networks: []}}
rate_limits:
  one: {{rate: 1, per: 1h, key: ip}}
routes:
  - {{name: small, match: "POST /small", upstream: app, max_body: 10}}
  - {{name: once, match: "POST /once", upstream: app, rate_limits: [one]}}
  - {{name: d, match: "* /{{p:.*}}", upstream: app}}
"""


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def count(metrics: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix))


TARGETS = [b"GET /a%0Ab", b"GET /a%0Db", b"OPTIONS *", b"CONNECT example.com:443", b"GET /api/ops/%0A"]


@pytest.mark.parametrize("head", TARGETS)
async def test_every_target_is_answered_by_the_pipeline(
    make_gateway: GatewayFactory, upstream: TestServer, head: bytes
) -> None:
    # No catch-all route here: nothing matches, and the answer must still be the gateway's own.
    policy = POLICY.replace('  - {{name: d, match: "* /{{p:.*}}", upstream: app}}\n', "")
    gw = await make_gateway(policy, url=url_of(upstream))
    assert gw.port is not None
    status, headers, body = await raw_request(gw.port, head + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert 400 <= status < 500
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["error"]
    if not head.startswith(b"GET /api/ops/"):  # (the ops namespace answers for itself, in JSON too)
        assert answer["request_id"] == headers["x-request-id"]
        metrics = await (await gw.get("/metrics")).text()
        assert count(metrics, 'gateway_requests_total{method="') == 1  # the SLO recorder counted it


async def test_a_proxy_loop_stops_at_the_first_pass(make_gateway: GatewayFactory) -> None:
    # An upstream that is the gateway itself (through a TCP relay, so the port is known in advance).
    relay = FaultProxy(target_port=0)
    await relay.start()
    try:
        gw = await make_gateway(POLICY, url=f"http://127.0.0.1:{relay.port}")
        assert gw.port is not None
        relay.target_port = gw.port
        response = await gw.get("/loop")
        body = await response.json()
        assert response.status == 508 and body["error"] == "loop_detected", body
        assert relay.connections == 1  # one pass back through the gateway, and no more
        metrics = await (await gw.get("/metrics")).text()
        assert count(metrics, 'gateway_requests_total{method="GET",route="d"') == 1
    finally:
        await relay.stop()


async def test_the_upstream_sees_the_gateway_in_via(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(POLICY, url=url_of(upstream))
    echoed = await (await gw.get("/echo", headers={"Via": "1.0 client-proxy"})).json()
    via = dict(echoed["headers"])["Via"]
    assert via.startswith("1.0 client-proxy, 1.1 gw-"), via


async def first_answer(port: int, request: bytes) -> bytes:
    """Send a head with `Expect: 100-continue` and no body; return the first response line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_100_continue_only_after_the_request_is_admitted(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(POLICY, url=url_of(upstream))
    assert gw.port is not None
    expect = b"Expect: 100-continue\r\n\r\n"
    # Too large for the route: 413 straight away, no invitation to send the body.
    line = await first_answer(gw.port, b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n" + expect)
    assert line.startswith(b"HTTP/1.1 413"), line
    # Over the rate limit: the first passes the limit (and is invited), the second is refused at once.
    line = await first_answer(gw.port, b"POST /once HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + expect)
    assert line.startswith(b"HTTP/1.1 100"), line
    line = await first_answer(gw.port, b"POST /once HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + expect)
    assert line.startswith(b"HTTP/1.1 429"), line
    # The ops API decides on credentials (and on whether the endpoint exists) before it asks for the body.
    line = await first_answer(gw.port, b"POST /api/ops/nothing HTTP/1.1\r\nHost: localhost\r\n"
                              b"Content-Length: 2\r\n" + expect)
    assert line.startswith(b"HTTP/1.1 404"), line
    ops = b"POST /api/ops/reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n"  # one of admin.hosts
    line = await first_answer(gw.port, ops + expect)
    assert line.startswith(b"HTTP/1.1 401") or line.startswith(b"HTTP/1.1 403"), line
    # Admitted: 100 Continue, then the body goes through and the upstream answers.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n" + expect)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def test_a_body_never_sent_on_a_retried_route_times_out_and_frees_its_slot(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    """A replayable request's body is read whole before the first attempt: within the route's timeout. (It
    had no deadline: a PUT that never sent its last byte held an upstream request slot for good, and a few
    of them got every request to that upstream refused with 503 upstream_overloaded.)"""
    policy = (
        'version: 1\nupstreams: {{app: {{url: "{url}", timeout: 500ms, max_requests: 1}}}}\n'
        'routes: [{{name: r, match: "* /{{p:.*}}", upstream: app, retries: {{attempts: 2}}}}]\n'
    )
    gw = await make_gateway(policy, url=url_of(upstream))
    assert gw.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-some")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 408"), head
        assert b"Connection: close" in head
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert json.loads(await reader.readexactly(length))["error"] == "client_timeout"
    finally:
        writer.close()
    response = await gw.get("/echo")  # the upstream's only request slot is free again
    assert response.status == 200
