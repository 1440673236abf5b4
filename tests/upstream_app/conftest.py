"""Fixtures for the demo upstream service: a real SQLite file and a real fake-provider server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application, Request
from pytest_aiohttp import AiohttpClient, AiohttpServer

from upstream_app.app import build_app
from upstream_app.provider import Faults, build_provider_app

AppClient = TestClient[Request, Application]
AppFactory = Callable[..., Awaitable[AppClient]]


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """A database path whose parent directory does not exist yet (the app must create it)."""
    return str(tmp_path / "data" / "upstream.sqlite3")


@pytest_asyncio.fixture
async def provider(aiohttp_server: AiohttpServer) -> TestServer:
    """The fake payment provider listening on a loopback port, seeded for determinism."""
    return await aiohttp_server(build_provider_app(Faults(seed=1234)))


@pytest_asyncio.fixture
async def provider_client(aiohttp_client: AiohttpClient, provider: TestServer) -> TestClient[Request, None]:
    """A client talking to the provider server (for /_faults and direct /v1 calls)."""
    return await aiohttp_client(provider)


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, db_path: str, provider: TestServer) -> AppFactory:
    """Build the upstream app on ``db_path`` wired to the real provider."""

    async def factory(provider_timeout: float = 10.0) -> AppClient:
        url = str(provider.make_url("/"))
        return await aiohttp_client(build_app(db_path, url, provider_timeout=provider_timeout))

    return factory


@pytest_asyncio.fixture
async def client(make_client: AppFactory) -> AppClient:
    """The upstream app under test with default settings."""
    return await make_client()
