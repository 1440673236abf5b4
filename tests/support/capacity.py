"""An upstream of fixed (but movable) capacity for overload tests: `capacity` requests served at once, each
for `service_time` seconds, the rest waiting their turn, so latency grows with the queue. It counts what
reached it by path, and `/hold` requests wait until the test releases them."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Capacity:
    capacity: int = 4
    service_time: float = 0.02
    active: int = 0
    seen: Counter[str] = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    holding: asyncio.Event = field(default_factory=asyncio.Event)  # set when a /hold request arrived
    _turn: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def resize(self, capacity: int) -> None:
        async with self._turn:
            self.capacity = capacity
            self._turn.notify_all()

    async def serve(self) -> None:
        async with self._turn:
            await self._turn.wait_for(lambda: self.active < self.capacity)
            self.active += 1
        try:
            await asyncio.sleep(self.service_time)  # the work itself
        finally:
            async with self._turn:
                self.active -= 1
                self._turn.notify(1)


CAPACITY = web.AppKey("capacity", Capacity)


async def handle(request: web.Request) -> web.Response:
    state = request.app[CAPACITY]
    state.seen[request.path] += 1
    if request.path == "/hold":
        state.held += 1
        state.holding.set()
        await state.release.wait()
        return web.json_response({"held": True})
    await state.serve()
    return web.json_response({"path": request.path})


def capacity_app(state: Capacity) -> web.Application:
    app = web.Application()
    app[CAPACITY] = state
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
