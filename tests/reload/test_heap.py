"""gc.freeze after start and reloads (gateway/heap.py): the live heap frozen, retired runtimes still freed."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from aiohttp.test_utils import TestServer

from gateway import heap
from tests.conftest import FileGatewayFactory
from tests.reload.conftest import gateway_of
from tests.reload.test_reload import policy, reload_api


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    heap.enable()
    yield
    heap.enable(False)


async def test_the_started_gateway_is_frozen_and_a_retired_runtime_is_still_collected(
    frozen_heap: None, make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    client, path = await make_gateway_file(policy(upstream, upstream_b, timeout="1s"), watch=False)
    gateway = gateway_of(client)
    assert gc.get_freeze_count() > 10_000  # libraries, policy, runtime: out of the collector's full passes
    old = gateway.current()
    assert (await client.get("/warm")).status == 200  # a pooled connection refers to its pool and back
    gone = [weakref.ref(old), weakref.ref(old.clients["a"].session)]
    del old

    path.write_text(policy(upstream_b, upstream_b, target="b", timeout="1s"))
    status, body = await reload_api(client)
    assert status == 200, body
    await asyncio.wait_for(asyncio.gather(*gateway.reloader.retirements), 5)
    await asyncio.sleep(0)  # one loop turn: the retirement's done callback settles the heap
    assert [ref() for ref in gone] == [None, None]  # not pinned in the frozen generation
    assert gc.get_freeze_count() > 10_000  # and the heap is frozen again without them
