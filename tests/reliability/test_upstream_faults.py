"""Upstream faults made real by a TCP fault proxy: each maps to the documented status, and nothing leaks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import GATEWAY
from perf.local import free_port
from tests.conftest import GatewayFactory
from tests.support.faults import FaultProxy
from tests.support.wait import until

POLICY = """
version: 1
breakers: {{midbody: {{consecutive_failures: 2, failure_rate: null, reset_timeout: 60s}}}}
upstreams:
  app: {{url: "http://127.0.0.1:{port}", connect_timeout: 300ms, timeout: 600ms}}
  down: {{url: "http://127.0.0.1:{down}", connect_timeout: 300ms, timeout: 600ms}}
routes:
  - {{name: down, match: "* /down", upstream: down}}
  - {{name: guarded, match: "GET /guarded/{{p:.*}}", upstream: app, breaker: midbody, strip_prefix: /guarded}}
  - {{name: d, match: "* /{{p:.*}}", upstream: app}}
"""


@pytest.fixture
async def proxy(upstream: TestServer) -> AsyncIterator[FaultProxy]:
    fault = FaultProxy(target_port=upstream.port)  # type: ignore[arg-type]
    await fault.start()
    yield fault
    await fault.stop()


@pytest.fixture
async def gw(make_gateway: GatewayFactory, proxy: FaultProxy) -> TestClient:  # type: ignore[type-arg]
    return await make_gateway(POLICY, port=proxy.port, down=free_port())


@pytest.mark.parametrize(
    ("mode", "status", "error"),
    [
        ("close_on_accept", 502, "reset"),
        ("hang", 504, "timeout"),
        ("malformed", 502, "protocol"),
    ],
)
async def test_fault_maps_to_documented_status(
    mode: str,
    status: int,
    error: str,
    gw: TestClient,
    proxy: FaultProxy,  # type: ignore[type-arg]
) -> None:
    proxy.mode = mode
    resp = await gw.get("/echo")
    assert resp.status == status
    body = await resp.json()
    assert body["error"] == error and body["route"] == "d"


async def test_upstream_down_is_502_connect_error(gw: TestClient) -> None:  # type: ignore[type-arg]
    resp = await gw.get("/down")
    assert resp.status == 502
    assert (await resp.json())["error"] == "connect_error"


async def test_trickling_upstream_hits_the_total_deadline(gw: TestClient, proxy: FaultProxy) -> None:  # type: ignore[type-arg]
    proxy.mode = "trickle"  # one byte per 50 ms: the head alone takes longer than the 600 ms timeout
    resp = await gw.get("/echo")
    assert resp.status == 504


async def test_reset_mid_body_truncates_the_response(gw: TestClient, proxy: FaultProxy) -> None:  # type: ignore[type-arg]
    proxy.mode = "reset_midbody"
    resp = await gw.get("/big?n=1000000")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_nothing_leaks_after_many_faults(gw: TestClient, proxy: FaultProxy) -> None:  # type: ignore[type-arg]
    runtime = gw.app[GATEWAY].current()  # type: ignore[index]
    client = runtime.clients["app"]

    async def round_of_faults() -> None:
        for mode in ("close_on_accept", "malformed", "reset_midbody", "pass"):
            proxy.mode = mode
            for _ in range(10):
                async with gw.get("/big?n=200000") as resp:
                    await resp.read() if resp.status != 200 or mode == "pass" else None

    async def settle() -> tuple[int, int]:
        """(fds, tasks) once every upstream connection is released and three samples 50 ms apart agree."""
        samples: list[tuple[int, int]] = []

        def quiet() -> bool:
            samples.append((open_fds(), len(asyncio.all_tasks())))
            return client.connections_in_use == 0 and len(samples) >= 3 and len(set(samples[-3:])) == 1

        await until(quiet, every=0.05, what="sockets and tasks stop changing after the faults")
        return samples[-1]

    await round_of_faults()
    fds_before, tasks_before = await settle()
    for _ in range(3):
        await round_of_faults()
    fds_after, tasks_after = await settle()
    assert tasks_after <= tasks_before
    assert fds_after <= fds_before + 2  # a pooled keep-alive connection or two may differ
    assert client.connections_in_use == 0  # every upstream connection was released


async def test_a_failure_after_the_response_head_counts_against_the_breaker(
    gw: TestClient,
    proxy: FaultProxy,  # type: ignore[type-arg]
) -> None:
    proxy.mode = "reset_midbody"
    for _ in range(2):
        resp = await gw.get("/guarded/big?n=1000000")
        assert resp.status == 200  # the head was already relayed...
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # ...then the body was cut
    before = proxy.connections
    resp = await gw.get("/guarded/big?n=10")
    assert resp.status == 503  # two mid-body failures in a row opened the breaker
    assert (await resp.json())["breaker"] == "midbody"
    assert proxy.connections == before  # and the upstream was not contacted
