"""Shared fixtures: real servers on loopback, a real redis-server, the gateway built from policy text."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
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
from tests.support.upstream import recording_app, serving

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
    async with serving(recording_app()) as server:
        yield server


GatewayOnFile = Callable[..., Awaitable[Client]]


@pytest.fixture
async def gateway_on_file() -> AsyncIterator[GatewayOnFile]:
    """Start the gateway on a policy file, as `gateway serve` runs it (`**build` goes to build_app); every
    gateway started is closed at teardown."""
    async with AsyncExitStack() as started:

        async def start(path: Path, **build: Any) -> Client:
            loaded = load_policy(path)
            app = build_app(loaded, **build)
            client = TestClient(GatewayTestServer(app, ConnectionLimits.from_policy(loaded.policy.server)))
            await client.start_server()
            started.push_async_callback(client.close)
            return client

        yield start


def write_policy(path: Path, policy_text: str, fields: dict[str, Any]) -> Path:
    """Write policy text, its str.format fields filled when there are any."""
    path.write_text(policy_text.format(**fields) if fields else policy_text)
    return path


@pytest.fixture
def make_gateway(tmp_path: Path, gateway_on_file: GatewayOnFile) -> GatewayFactory:
    """Build and start the gateway from policy text (str.format fields filled from **fields)."""
    names = itertools.count()

    async def factory(policy_text: str, *, clock: Callable[[], float] | None = None, **fields: Any) -> Client:
        path = write_policy(tmp_path / f"policy{next(names)}.yaml", policy_text, fields)
        return await gateway_on_file(path, **({"clock": clock} if clock is not None else {}))

    return factory


FileGatewayFactory = Callable[..., Awaitable[tuple[Client, Path]]]


@pytest.fixture
def make_gateway_file(tmp_path: Path, gateway_on_file: GatewayOnFile) -> FileGatewayFactory:
    """Like make_gateway, but returns (client, policy path) so a test can rewrite the running policy file.

    `policy_text=None` with `path=` runs a file the test laid out itself (a symlink, a ConfigMap directory);
    `watch=False` turns the file watcher off.
    """
    names = itertools.count()

    async def factory(
        policy_text: str | None = None, *, path: Path | None = None, watch: bool = True, **fields: Any
    ) -> tuple[Client, Path]:
        path = path or tmp_path / f"watched{next(names)}.yaml"
        if policy_text is not None:
            write_policy(path, policy_text, fields)
        return await gateway_on_file(path, watch=watch), path

    return factory
