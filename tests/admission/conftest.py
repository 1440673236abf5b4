"""Fixtures for admission control: the capacity upstream on a loopback port, a gateway built from policy
text (optionally on a hand-moved clock), and a load loop."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.admission import Admission
from gateway.app import GATEWAY, Gateway, build_app
from gateway.events import Event
from gateway.policy.loader import load_policy
from gateway.server import ConnectionLimits
from tests.conftest import GatewayTestServer
from tests.support.capacity import Capacity, capacity_app

Client = TestClient[web.Request, web.Application]


@dataclass
class Upstream:
    state: Capacity
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def capacity_upstream() -> AsyncIterator[Upstream]:
    state = Capacity()
    server = TestServer(capacity_app(state))
    await server.start_server()
    yield Upstream(state, server)
    state.release.set()
    await server.close()


@dataclass
class Running:
    client: Client
    path: Path
    events: list[Event] = field(default_factory=list)

    @property
    def gateway(self) -> Gateway:
        return self.client.app[GATEWAY]

    def admission(self, upstream: str = "app") -> Admission:
        return self.gateway.current().admissions[upstream]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e.as_dict() for e in self.events if e.type == kind]


Starter = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[Starter]:
    clients: list[Client] = []

    async def factory(policy_text: str, clock: Callable[[], float] = time.monotonic) -> Running:
        path = tmp_path / f"policy{len(clients)}.yaml"
        path.write_text(policy_text)
        loaded = load_policy(path)
        app = build_app(loaded, watch=False, clock=clock)
        client = TestClient(GatewayTestServer(app, ConnectionLimits.from_policy(loaded.policy.server)))
        await client.start_server()
        clients.append(client)
        running = Running(client, path)
        running.gateway.events.subscribe(running.events.append)
        return running

    yield factory
    for client in clients:
        await client.close()


@dataclass
class Tally:
    """What a load loop got back, by status and shed reason, with the latency of each answer."""

    status: Counter[int] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def share(self, status: int) -> float:
        total = sum(self.status.values())
        return self.status[status] / total if total else 0.0

    def p95(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(0.95 * (len(ordered) - 1))]


async def load(client: Client, method: str, path: str, workers: int, until: float, tally: Tally) -> None:
    """`workers` closed loops sending `method path` until the monotonic time `until`."""

    async def one() -> None:
        while time.monotonic() < until:
            started = time.monotonic()
            async with client.request(method, path) as response:
                body = await response.read()
                tally.status[response.status] += 1
                tally.latencies.append(time.monotonic() - started)
                if response.status == 503 and b'"shed"' in body:
                    tally.reasons[(await response.json())["reason"]] += 1

    await asyncio.gather(*(one() for _ in range(workers)))
