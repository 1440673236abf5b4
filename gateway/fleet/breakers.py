"""Shared breakers (`breakers.NAME.shared: true`): failures are judged where they are seen, decisions are the
fleet's.

Each shared breaker has one state key in Redis, `{prefix}:fleet:{<name>}:breaker:<breaker>` (JSON: state,
generation, held, who decided, when), moved only by `breaker_state.lua`, a compare-and-set on the generation
that also PUBLISHes the new state on `{prefix}:fleet:{<name>}:breakers`. So:

- a process whose breaker opens (its own verdict, or a manual action) moves at once locally, then announces it
  from a background task; if it wins the compare-and-set it audits the transition (one `circuit_state_change`
  per fleet transition), if another process got there first it adopts that state instead;
- every other process gets the message on its subscription (milliseconds) and adopts the state: it fails fast
  from then on without ever calling the upstream;
- the process that opened the breaker owns the episode: only it moves to HALF_OPEN at the reset timeout and
  sends the probes, so the probes in flight across the fleet are exactly `half_open_requests`; the others wait
  (`follower`), and take over only if the owner stays silent `probe_deadline + 1 s` past the reset timeout;
- a probe's verdict (close, or open again) is announced like any transition.

Nothing here is on the request path: `Breaker.acquire` reads only local state; announcing and listening run in
background tasks. Redis down (a failed announcement, a lost subscription): every shared breaker becomes local
at once (no follower waits for a fleet that cannot speak) and its transitions are audited locally; when the
subscription is back the processes resynchronise from the state keys (a process that opened during the
outage announces it; otherwise it adopts the fleet's state).

Redis Cluster: pub/sub is not wired through the Cluster client here; shared breakers stay local (logged once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis

from gateway.breaker import Breaker, State, Transition
from gateway.events import Events
from gateway.logs import get_logger
from gateway.ratelimit.redis import ADMIN_TIMEOUT, STORE_ERRORS, make_client

log = get_logger("gateway.fleet")
SCRIPT = resources.files("gateway.fleet").joinpath("breaker_state.lua").read_text(encoding="utf-8")
STATE_TTL_MS = 24 * 3600 * 1000  # a fleet that has not touched a breaker for a day starts it closed


class SharedBreakers:
    """The fleet link of every shared breaker of this process (one Redis connection, one subscription)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        fleet: str,
        instance: str,
        events: Events,
        breakers: Callable[[], Mapping[str, Breaker]],
        retry_interval: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client: Redis = make_client(url, cluster=False, timeout=ADMIN_TIMEOUT)  # type: ignore[assignment]
        head = f"{prefix}:fleet:{{{fleet}}}"
        self.channel = f"{head}:breakers"
        self.key_head = f"{head}:breaker:"
        self.instance = instance
        self.events = events
        self.breakers = breakers
        self.retry_interval = retry_interval
        self._wall = wall
        self.up = False  # subscribed and resynchronised: decisions are shared
        self.gens: dict[str, int] = {}
        self._script = self.client.register_script(SCRIPT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None

    # -- wiring --

    def shared(self) -> dict[str, Breaker]:
        return {name: b for name, b in self.breakers().items() if b.settings.shared}

    def attach(self) -> None:
        """Link every shared breaker of the current runtime (called at start and after each reload)."""
        for breaker in self.shared().values():
            breaker.fleet = self

    def active(self) -> bool:
        return self.up

    def start(self) -> None:
        self.attach()
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen(), name="fleet-breakers")

    async def close(self) -> None:
        tasks = [t for t in (self._listener, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._listener = None
        self.up = False
        await self.client.aclose()

    def key(self, breaker: str) -> str:
        return self.key_head + breaker

    # -- announcing what was decided here --

    def local_transition(self, breaker: Breaker, transition: Transition) -> None:
        task = asyncio.get_running_loop().create_task(self._announce(breaker.name, transition))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, name: str, t: Transition) -> None:
        try:
            for _ in range(3):
                expected = self.gens.get(name, 0)
                async with asyncio.timeout(ADMIN_TIMEOUT):
                    won, raw = await self._script(
                        keys=[self.key(name)],
                        args=[expected, t.to_state.value, int(t.held), self.instance, STATE_TTL_MS,
                              self.channel, name, t.cause, t.from_state.value],
                    )
                state = _decode(raw)
                if state is not None:
                    self.gens[name] = max(self.gens.get(name, 0), int(state.get("gen", 0)))
                if won:
                    if t.from_state is not t.to_state:
                        self._audit(t)
                    return
                if state is not None and state.get("state") != t.from_state.value:
                    self._adopt(name, state)  # the fleet moved elsewhere first: follow it
                    return
                # The fleet is where this process was (it missed a message, or a key expired): try again.
        except STORE_ERRORS as exc:
            self._down(exc)
            if t.from_state is not t.to_state:
                self._audit(t)  # the fleet cannot hear it: audited here, as a local breaker would be

    def _audit(self, t: Transition) -> None:
        self.events.emit("circuit_state_change", breaker=t.breaker, to=t.to_state.value, cause=t.cause,
                         retry_in=t.retry_in, shared=True, **{"from": t.from_state.value})

    # -- following the fleet --

    def _adopt(self, name: str, state: dict[str, Any]) -> None:
        breaker = self.shared().get(name)
        to = state.get("state")
        if breaker is None or to not in {s.value for s in State}:
            return
        at = state.get("at")
        ago = max(0.0, self._wall() - at) if isinstance(at, (int, float)) else 0.0
        mine = state.get("by") == self.instance
        breaker.adopt(State(to), held=bool(state.get("held")), follower=not mine, opened_ago=min(ago, 1.0))

    def _on_message(self, data: bytes | str) -> None:
        state = _decode(data)
        if state is None or not isinstance(state.get("breaker"), str):
            return
        name = state["breaker"]
        gen = int(state.get("gen", 0))
        if gen <= self.gens.get(name, 0):
            return  # stale, or this process's own announcement (already applied)
        self.gens[name] = gen
        if state.get("by") != self.instance:
            self._adopt(name, state)

    async def _resync(self) -> None:
        """After (re)subscribing: adopt the fleet's state, or announce what this process decided alone."""
        breakers = self.shared()
        if not breakers:
            return
        async with asyncio.timeout(ADMIN_TIMEOUT):
            raws = await self.client.mget([self.key(n) for n in breakers])
        for (name, breaker), raw in zip(breakers.items(), raws, strict=True):
            state = _decode(raw) if raw is not None else None
            local = breaker.state
            self.gens[name] = int(state.get("gen", 0)) if state is not None else 0
            fleet_state = state.get("state") if state is not None else State.CLOSED.value
            if fleet_state == local.value:
                if state is not None:
                    self._adopt(name, state)
                continue
            if local is not State.CLOSED and fleet_state == State.CLOSED.value:
                # Opened here while Redis was away: the fleet should know.
                self.local_transition(breaker, Transition(name, State.CLOSED, local, "resync", self._wall(),
                                                          None, shared=True, held=breaker.snapshot()["held"]))
            elif state is not None:
                self._adopt(name, state)

    async def _listen(self) -> None:
        while True:
            pubsub = self.client.pubsub()
            try:
                async with asyncio.timeout(ADMIN_TIMEOUT):
                    await pubsub.subscribe(self.channel)
                self.attach()
                await self._resync()
                if not self.up:
                    log.info("fleet_breakers_shared", breakers=sorted(self.shared()))
                self.up = True
                while self.up:  # a failed announcement sets it down: subscribe and resynchronise again
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
            except STORE_ERRORS as exc:
                self._down(exc)
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except STORE_ERRORS:
                    pass
            await asyncio.sleep(self.retry_interval)

    def _down(self, exc: BaseException) -> None:
        if self.up:
            log.warning("fleet_breakers_local", error=str(exc) or exc.__class__.__name__)
        self.up = False
        for breaker in self.shared().values():
            breaker.follower = False  # no owner can speak now: each process judges and probes for itself


def _decode(raw: Any) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
