"""Redis buckets: one EVALSHA per check (one per hash tag on a Cluster), a deadline, a breaker around Redis.

On one plain `redis://` node the checks go through the small pipelined client of resp.py (the request
path's Python cost was redis-py's); TLS (`rediss://`), unix sockets, URL options and Cluster use redis-py,
and so do override reads and writes, which are off the request path.

Backends only do I/O: the math is in token_bucket.lua (mirroring bucket.py). While Redis is failing,
requests do not wait on it: after a failure every check skips Redis for `retry_interval`, then one check
probes it; the first success brings Redis back. Each transition is logged once and emitted as
`redis_state_change`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from gateway.events import Events
from gateway.logs import get_logger
from gateway.ratelimit.resp import Endpoint, ScriptPipe

log = get_logger("gateway.ratelimit")
SCRIPT = resources.files("gateway.ratelimit").joinpath("token_bucket.lua").read_text(encoding="utf-8")
STORE_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
ADMIN_TIMEOUT = 1.0  # override reads/writes are off the request path: they may wait longer than a check


class RedisUnavailable(Exception):
    """Redis was skipped (breaker open) or failed within the deadline: apply `on_redis_error`."""


class RedisHealth:
    """A two-state breaker around Redis with one probe at a time; `clock` is monotonic seconds."""

    def __init__(
        self, retry_interval: float, events: Events, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.up = True
        self.retry_interval = retry_interval
        self.errors = 0  # failed checks (timeouts, connection errors, server errors)
        self.skipped = 0  # checks that did not wait on Redis because it was down
        self.transitions = 0
        self.last_error: str | None = None
        self._events = events
        self._clock = clock
        self._retry_at = 0.0
        self._probing = False

    def admit(self) -> bool:
        """May this check use Redis? While down, only one probe per `retry_interval`."""
        if self.up:
            return True
        if not self._probing and self._clock() >= self._retry_at:
            self._probing = True
            return True
        self.skipped += 1
        return False

    def success(self) -> None:
        """A check got its answer from Redis."""
        self._probing = False
        if not self.up:
            self.up = True
            self.transitions += 1
            log.warning("redis_up")
            self._events.emit("redis_state_change", to="up", error=None)

    def failure(self, exc: BaseException) -> None:
        """A check failed: skip Redis for the next `retry_interval`."""
        self.errors += 1
        self._probing = False
        self._retry_at = self._clock() + self.retry_interval
        error = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        self.last_error = error
        if self.up:
            self.up = False
            self.transitions += 1
            log.error("redis_down", error=error, retry_in_s=self.retry_interval)
            self._events.emit("redis_state_change", to="down", error=error)

    def abandon(self) -> None:
        """The check was cancelled (the client went away): neither a success nor a failure."""
        self._probing = False

    def retry_after(self) -> float:
        """Seconds until Redis will be tried again (0 when it is up)."""
        return 0.0 if self.up else max(0.0, self._retry_at - self._clock())


def make_client(url: str, *, cluster: bool, timeout: float) -> Redis | RedisCluster:
    """A redis-py asyncio client that never retries on its own: the deadline and the breaker decide.

    (A Cluster client still follows MOVED/ASK redirections, within the same deadline.)
    """
    options: dict[str, Any] = {
        "socket_timeout": max(ADMIN_TIMEOUT, timeout),
        "socket_connect_timeout": max(ADMIN_TIMEOUT, timeout),
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "driver_info": None,  # no CLIENT SETINFO: less work for each new connection inside a 50 ms deadline
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, **options)


Command = tuple[Sequence[str], Sequence[str | int]]  # one EVALSHA: its keys and its ARGV


class RedisBuckets:
    """Buckets in Redis. `check` answers the flat script reply or raises RedisUnavailable.

    The checks of all requests that arrive in one event-loop tick go to Redis as one pipeline over one
    connection: under load that is one round trip for many requests instead of a connection each, and a
    burst of new requests never turns into a burst of new connections.
    """

    def __init__(
        self,
        url: str,
        *,
        cluster: bool,
        timeout: float,
        retry_interval: float,
        prefix: str,
        events: Events,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = make_client(url, cluster=cluster, timeout=timeout)
        endpoint = None if cluster else Endpoint.from_url(url)
        # The request path's client; None: checks go through redis-py (Cluster, TLS, unix socket, options).
        self.pipe: ScriptPipe | None = None
        if endpoint is not None:
            self.pipe = ScriptPipe(
                endpoint, SCRIPT, timeout=timeout, connect_timeout=max(ADMIN_TIMEOUT, timeout)
            )
        self.cluster = cluster
        self.timeout = timeout
        self.health = RedisHealth(retry_interval, events, clock)
        self.overrides_key = f"{prefix}:rl:overrides"
        self._round_trips = 0  # redis-py pipelines sent
        self.sha = hashlib.sha1(SCRIPT.encode()).hexdigest()
        self._pending: list[tuple[Command, asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def round_trips(self) -> int:
        """Buffers (pipelines) written to Redis: with the number of checks, how well batching works."""
        return self._round_trips + (self.pipe.round_trips if self.pipe is not None else 0)

    async def check(self, keys: Sequence[str], args: Sequence[str | int], tags: Sequence[str]) -> list[int]:
        """Run the bucket script over `keys` (ARGV: three per key) within the deadline."""
        health = self.health
        if not health.admit():
            raise RedisUnavailable("redis is down; skipped until the next probe")
        pipe = self.pipe
        try:
            if pipe is not None:
                # The pipe keeps the deadline itself: one timer per batch rather than one per check.
                flat: list[int] = await pipe.submit(keys, args)  # hiredis gives the integers as int
            else:
                async with asyncio.timeout(self.timeout):
                    if self.cluster and len(set(tags)) > 1:
                        reply = await self._check_by_slot(keys, args, tags)
                    else:
                        reply = await self._submit((keys, args))
                flat = [int(v) for v in reply]
        except STORE_ERRORS as exc:
            health.failure(exc)
            raise RedisUnavailable(str(exc) or exc.__class__.__name__) from None
        except BaseException:
            health.abandon()
            raise
        health.success()
        return flat

    async def _check_by_slot(
        self, keys: Sequence[str], args: Sequence[str | int], tags: Sequence[str]
    ) -> list[Any]:
        # A script may only touch keys of one Cluster slot: one call per hash tag, all at once. Atomicity
        # holds within a tag; across tags a request refused by one group may have taken a token in another.
        groups: dict[str, list[int]] = {}
        for i, tag in enumerate(tags):
            groups.setdefault(tag, []).append(i)
        calls = [
            self._submit(([keys[i] for i in idx], [a for i in idx for a in args[3 * i : 3 * i + 3]]))
            for idx in groups.values()
        ]
        replies = await asyncio.gather(*calls)
        flat: list[Any] = [0] * (3 * len(keys))
        for idx, reply in zip(groups.values(), replies, strict=True):
            for j, i in enumerate(idx):
                flat[3 * i : 3 * i + 3] = reply[3 * j : 3 * j + 3]
        return flat

    def _submit(self, command: Command) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((command, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        try:
            # Callers give up at their own deadline; this one frees the connection of a Redis that hangs.
            async with asyncio.timeout(self.timeout):
                self._round_trips += 1
                replies = await self._pipeline([command for command, _ in batch])
                if any(isinstance(r, NoScriptError) for r in replies):
                    # Redis restarted, failed over or had SCRIPT FLUSH: load the script again, send again.
                    await self.client.script_load(SCRIPT)
                    self._round_trips += 1
                    replies = await self._pipeline([command for command, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(TimeoutError() if isinstance(exc, asyncio.CancelledError) else exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def _pipeline(self, commands: list[Command]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for keys, args in commands:
            # execute_command: a Cluster pipeline refuses its evalsha() helper but routes this by slot.
            pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def start(self) -> None:
        """Load the script (and, on a Cluster, learn the topology) before the first request has to."""
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT):
                await self.client.script_load(SCRIPT)
                if self.pipe is not None:
                    await self.pipe.connect()
        except STORE_ERRORS as exc:
            log.warning("redis_warmup_failed", error=str(exc) or exc.__class__.__name__)

    async def read_overrides(self) -> dict[str, int]:
        """The shared overrides hash: limit name -> rate."""
        async with asyncio.timeout(ADMIN_TIMEOUT):
            raw = await self.client.hgetall(self.overrides_key)
        out: dict[str, int] = {}
        for name, value in raw.items():
            try:
                out[name.decode() if isinstance(name, bytes) else name] = int(value)
            except (ValueError, UnicodeDecodeError):
                continue  # written by something else: ignore rather than apply garbage
        return out

    async def write_overrides(self, set_rates: dict[str, int], remove: Sequence[str], clear: bool) -> None:
        """Change the shared overrides in one transaction: all of it or nothing."""
        async with asyncio.timeout(ADMIN_TIMEOUT):
            pipe = self.client.pipeline(transaction=True)
            if clear:
                pipe.delete(self.overrides_key)
            if remove:
                pipe.hdel(self.overrides_key, *remove)
            if set_rates:
                pipe.hset(self.overrides_key, mapping=set_rates)  # type: ignore[arg-type]
            await pipe.execute()

    async def close(self) -> None:
        """Close the connection pool and the request path's connection."""
        if self.pipe is not None:
            self.pipe.close()
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT):  # a frozen Redis must not hold a shutdown up
                await self.client.aclose()
        except TimeoutError:
            log.warning("redis_close_timed_out", detail="connections dropped without a goodbye")
