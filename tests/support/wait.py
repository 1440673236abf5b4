"""Wait for something that happens elsewhere (another task, process or server) by asking whether it has
happened, up to a deadline: never a fixed sleep that hopes it was long enough."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    within: float = 5.0,
    every: float = 0.01,
    what: str = "",
) -> None:
    """Return as soon as `condition()` (sync or async) is true; AssertionError after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"not within {within:g}s: {what or condition}")
        await asyncio.sleep(every)


async def refuses_connections(port: int) -> bool:
    """True once nothing accepts TCP connections on 127.0.0.1:`port` (the listener was closed)."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False
