"""Clients that ask for a large answer and never read it: cut off at server.write_timeout, their fault only.

Before the write deadline, two such clients held both pooled upstream connections for as long as they liked:
the next client waited for a slot past the route timeout (504), those 504s opened the breaker, and a
slow-reading half-open probe kept it open.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp.test_utils import TestServer

from gateway.app import GATEWAY
from tests.conftest import GatewayFactory
from tests.support.raw import raw_request
from tests.support.upstream import base_url
from tests.support.wait import until

POLICY = """
version: 1
server: {{write_timeout: 300ms}}
upstreams: {{app: {{url: "{url}", max_connections: 2, timeout: 3s, breaker: app}}}}
breakers:
  app: {{consecutive_failures: 2, reset_timeout: 60s}}
routes: [{{name: d, match: "GET /{{p:.*}}", upstream: app}}]
"""
BIG = 64 * 2**20  # far past every socket buffer on the way


async def stalled_reader(port: int) -> socket.socket:
    """A client that asks for BIG bytes and reads none of them (a tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    await asyncio.get_running_loop().sock_sendall(sock, b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % BIG)
    return sock


async def test_stalled_readers_are_cut_off_and_never_starve_the_pool_or_open_the_breaker(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(POLICY, url=base_url(upstream))
    assert gw.port is not None
    stalled = [await stalled_reader(gw.port) for _ in range(2)]
    try:
        pool = gw.app[GATEWAY].current().clients["app"]
        # Both hold a pooled connection (the load the attack needs).
        await until(lambda: pool.connections_in_use == 2, what="the stalled readers hold both connections")
        # A normal client gets its answer: the stalled ones are cut at the write deadline (slots freed).
        for _ in range(3):
            status, _, body = await raw_request(gw.port, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n", wait=5)
            assert status == 200, body
        breaker = gw.app[GATEWAY].current().breakers["app"]
        assert breaker.snapshot()["state"] == "closed" and breaker.snapshot()["failures"] == 0
        metrics = await (await gw.get("/metrics")).text()
        assert 'gateway_connections_dropped_total{reason="write_stall"} 2.0' in metrics
        # The stalls are the clients' doing: not in the route's SLO (3 answers of 200, nothing else).
        assert 'gateway_requests_total{method="GET",route="d",status_class="2xx"} 3.0' in metrics
        assert 'gateway_requests_total{method="GET",route="d",status_class="4xx"} 0.0' in metrics
    finally:
        for sock in stalled:
            sock.close()


POOL_POLICY = """
version: 1
upstreams: {{app: {{url: "{url}", max_connections: 1, breaker: app}}}}
breakers:
  app: {{consecutive_failures: 1, reset_timeout: 60s}}
routes:
  - {{name: slow, match: "GET /slow", upstream: app, timeout: 5s}}
  - {{name: d, match: "GET /{{p:.*}}", upstream: app, timeout: 500ms}}
"""


async def test_waiting_for_a_full_pool_is_not_the_upstreams_failure(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(POOL_POLICY, url=base_url(upstream))
    # A slow (but healthy) call holds the only connection; another waits for the pool past its own deadline
    # and gets 503 pool_timeout, which says nothing of the upstream: the breaker stays closed.
    holder = asyncio.ensure_future(gw.get("/slow?s=2"))
    pool = gw.app[GATEWAY].current().clients["app"]
    await until(lambda: pool.connections_in_use == 1, what="the slow call holds the only connection")
    queued = await gw.get("/echo")
    assert queued.status == 503 and (await queued.json())["error"] == "pool_timeout"
    assert (await holder).status == 200
    snapshot = gw.app[GATEWAY].current().breakers["app"].snapshot()
    assert snapshot["state"] == "closed" and snapshot["failures"] == 0, snapshot
