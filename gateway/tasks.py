"""Stopping background tasks so that a shutdown always ends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

RECANCEL_AFTER = 1.0  # seconds a cancelled task gets to end before it is cancelled again


async def stop(tasks: Iterable[asyncio.Task[Any] | None], *, grace: float = RECANCEL_AFTER) -> None:
    """Cancel `tasks` and wait until every one has ended.

    A task can miss a cancellation: on Python 3.11 a cancel that lands as an `asyncio.timeout` expires can
    come out as the TimeoutError a retry loop catches and carries on from. `await task` after one `cancel()`
    would then wait forever (a shutdown that never ends); here a task still running after `grace` is
    cancelled again. What a task raised is retrieved (it ended: that is all a shutdown needs to know).
    """
    pending = {t for t in tasks if t is not None and not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=grace)
        for task in done:
            if not task.cancelled():
                task.exception()
