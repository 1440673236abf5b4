"""Fixtures for the reload tests: a second recording upstream, policy-event capture, file-writing helpers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import GATEWAY, Gateway
from gateway.events import Event
from tests.support.upstream import RECORDER, recording_app, serving

ADMIN = "reload-test-admin"
ADMIN_HEADERS = {"X-User-Id": ADMIN}  # believed from loopback only (admin.trusted_networks default)

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def upstream_b() -> AsyncIterator[TestServer]:
    """A second recording upstream, so a test can tell which one a request reached."""
    async with serving(recording_app()) as server:
        yield server


def seen(server: TestServer) -> list[str]:
    """Raw paths the recording upstream received, in order."""
    return [r.raw_path for r in server.app[RECORDER].requests]


def gateway_of(client: Client) -> Gateway:
    return client.app[GATEWAY]


def reload_events(client: Client) -> asyncio.Queue[Event]:
    """Every policy_reload event the gateway emits from now on."""
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def on_event(event: Event) -> None:
        if event.type == "policy_reload":
            queue.put_nowait(event)

    gateway_of(client).events.subscribe(on_event)
    return queue


def replace_atomically(path: Path, text: str) -> None:
    """What careful editors and config tools do: write a new file beside it, then rename it over."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
