"""Shared fixtures: real servers on loopback, a real redis-server, the gateway built from policy text."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import RUNNER_KWARGS, build_app
from gateway.logs import configure
from gateway.policy.loader import load_policy
from gateway.server import ConnectionLimits, GatewayRunner
from tests.support.redis import RedisProcess, shared_redis_url, start_redis
from tests.support.upstream import recording_app

configure("warning")


class GatewayTestServer(TestServer):
    """A TestServer that runs the app exactly as `gateway serve` does: same runner, same settings."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **RUNNER_KWARGS, **kwargs)
        self._limits = limits

    async def _make_runner(self, **kwargs: Any) -> GatewayRunner:
        return GatewayRunner(self.app, limits=self._limits, **kwargs)


Client = TestClient[web.Request, web.Application]
GatewayFactory = Callable[..., Awaitable[Client]]


def open_connections(client: Client) -> int:
    """How many client connections the running gateway holds (what `server.max_connections` counts)."""
    runner = client.server.runner
    assert runner is not None and runner.server is not None
    return len(runner.server.connections)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis for the session: REDIS_URL, or a redis-server started on a free port."""
    url, server = shared_redis_url()
    yield url
    if server is not None:
        server.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    """A redis-server this test may kill, freeze and restart."""
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[TestServer]:
    """The recording upstream on a loopback port."""
    server = TestServer(recording_app())
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Build and start the gateway from policy text (str.format fields filled from **fields)."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def factory(
        policy_text: str, *, clock: Callable[[], float] | None = None, **fields: Any
    ) -> TestClient[web.Request, web.Application]:
        path = tmp_path / f"policy{len(clients)}.yaml"
        path.write_text(policy_text.format(**fields) if fields else policy_text)
        loaded = load_policy(path)
        app = build_app(loaded, clock=clock) if clock is not None else build_app(loaded)
        client = TestClient(GatewayTestServer(app, ConnectionLimits.from_policy(loaded.policy.server)))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


FileGatewayFactory = Callable[..., Awaitable[tuple[TestClient[web.Request, web.Application], Path]]]


@pytest.fixture
async def make_gateway_file(tmp_path: Path) -> AsyncIterator[FileGatewayFactory]:
    """Like make_gateway, but returns (client, policy path) so a test can rewrite the running policy file.

    `policy_text=None` with `path=` runs a file the test laid out itself (a symlink, a ConfigMap directory);
    `watch=False` turns the file watcher off.
    """
    clients: list[TestClient[web.Request, web.Application]] = []

    async def factory(
        policy_text: str | None = None, *, path: Path | None = None, watch: bool = True, **fields: Any
    ) -> tuple[TestClient[web.Request, web.Application], Path]:
        path = path or tmp_path / f"watched{len(clients)}.yaml"
        if policy_text is not None:
            path.write_text(policy_text.format(**fields) if fields else policy_text)
        loaded = load_policy(path)
        app = build_app(loaded, watch=watch)
        client = TestClient(GatewayTestServer(app, ConnectionLimits.from_policy(loaded.policy.server)))
        await client.start_server()
        clients.append(client)
        return client, path

    yield factory
    for client in clients:
        await client.close()
