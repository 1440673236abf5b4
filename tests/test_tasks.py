"""gateway.tasks.stop: a task that swallows its cancellation is cancelled again, so a shutdown ends."""

from __future__ import annotations

import asyncio

from gateway.tasks import stop


async def test_a_task_that_swallows_a_cancel_is_cancelled_again() -> None:
    cancels = 0

    async def stubborn() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 1:
                    continue  # what a retry loop does when the cancel comes out as a TimeoutError
                raise

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop([task], grace=0.05), 5)
    assert task.cancelled() and cancels == 2


async def test_stop_takes_finished_and_missing_tasks() -> None:
    async def fails() -> None:
        raise RuntimeError("ended on its own")

    done = asyncio.get_running_loop().create_task(fails())
    await asyncio.sleep(0)
    await stop([done, None])
    assert isinstance(done.exception(), RuntimeError)
