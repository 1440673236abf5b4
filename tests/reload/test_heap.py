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


def collected(obj: object) -> bool:
    """Whether the cyclic collector looks at `obj` (frozen objects are not in gc.get_objects())."""
    return any(o is obj for o in gc.get_objects())


@pytest.mark.parametrize("change", ["routes only", "upstream dropped"])
async def test_the_live_runtime_is_frozen_and_a_retired_one_is_still_freed(
    frozen_heap: None,
    make_gateway_file: FileGatewayFactory,
    upstream: TestServer,
    upstream_b: TestServer,
    change: str,
) -> None:
    client, path = await make_gateway_file(policy(upstream, upstream_b, timeout="1s"), watch=False)
    gateway = gateway_of(client)
    old = gateway.current()
    assert not collected(old)  # frozen once the gateway started: full collections skip it
    assert (await client.get("/warm")).status == 200
    # A reference cycle: refcounting alone can never free it, only a collection that sees it can.
    object.__setattr__(old, "probe", old)  # the runtime is frozen: set the cycle past its guard
    gone = weakref.ref(old)
    del old

    if change == "routes only":  # same upstreams: their clients carry over, only the rest retires
        extra = '  - {name: x, match: "GET /x", upstream: b}\n'
        path.write_text(policy(upstream, upstream_b, timeout="1s", extra=extra))
    else:
        path.write_text(policy(upstream_b, upstream_b, target="b", timeout="1s"))
    status, body = await reload_api(client)
    assert status == 200, body
    await asyncio.wait_for(asyncio.gather(*gateway.reloader.retirements), 5)
    await asyncio.sleep(0)  # one loop turn: the retirement's done callback settles the heap
    assert gone() is None  # not pinned in the frozen generation
    assert not collected(gateway.current())  # and the new runtime is frozen in its turn
