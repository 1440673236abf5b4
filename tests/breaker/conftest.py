"""Fixtures for breaker and retry tests: the real fake provider, a movable clock, a gateway reading it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import GATEWAY, build_app
from gateway.events import Event
from gateway.policy.loader import load_policy
from gateway.server import ConnectionLimits
from tests.conftest import GatewayTestServer
from tests.support.clock import ManualClock
from tests.support.upstream import base_url
from upstream_app.provider import FAULTS_KEY, build_provider_app

ADMIN = "6f1c2b9e-0a4d-4c1e-9b7a-2d3e4f5a6b7c"
INTENT = {"amount_cents": 1200, "currency": "EUR"}


@dataclass
class Provider:
    """The fake payment provider on a loopback port, with its knobs."""

    server: TestServer

    @property
    def url(self) -> str:
        return base_url(self.server)

    def knobs(self, **changes: Any) -> None:
        # Same validation as POST /_faults, applied in-process so a knob change never races a request.
        self.server.app[FAULTS_KEY].update(changes)

    @property
    def calls(self) -> int:
        return self.server.app[FAULTS_KEY].calls


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    server = TestServer(build_provider_app())
    await server.start_server()
    yield Provider(server)
    await server.close()


@dataclass
class Running:
    """A started gateway: its client, the clock it reads, and the domain events it emitted."""

    client: TestClient[web.Request, web.Application]
    clock: ManualClock
    events: list[Event]

    def breaker(self, name: str) -> Any:
        return self.client.app[GATEWAY].current().breakers[name]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e.as_dict() for e in self.events if e.type == kind]


GatewayStarter = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[GatewayStarter]:
    """Build the gateway from policy text (PLACEHOLDER -> value via **subs) with a clock the test moves."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def factory(policy_text: str, clock: ManualClock | None = None, **subs: str) -> Running:
        for key, value in subs.items():
            policy_text = policy_text.replace(key, value)
        path = tmp_path / f"policy{len(clients)}.yaml"
        path.write_text(policy_text)
        loaded = load_policy(path)
        clock = clock or ManualClock()
        app = build_app(loaded, watch=False, clock=clock)
        events: list[Event] = []
        app[GATEWAY].events.subscribe(events.append)
        client = TestClient(GatewayTestServer(app, ConnectionLimits.from_policy(loaded.policy.server)))
        await client.start_server()
        clients.append(client)
        return Running(client, clock, events)

    yield factory
    for client in clients:
        await client.close()
