"""The Redis backend of the audit trail: one Stream per kind of record, each entry's JSON in field `e`.

Keys: `<key_prefix>:audit` for the rare events, `<key_prefix>:audit:rate_limit_hit` and
`<key_prefix>:audit:auth_failed` for the two kinds a client can cause at will (gateway.audit.record). Each
stream is capped at `audit.max_events` (MAXLEN ~) and trimmed by age (MINID ~): a flood trims only its own
stream. Reads merge the streams by time.

Each write is `append.lua`: the records of one writer's batch for one stream, added only if that writer's
mark (`{<stream>}:w:<writer>`, in the stream's Cluster slot) is below them, so a retry of a call that timed
out but landed adds no second copy. The entries the cap trims are counted (`evicted`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from gateway.audit.record import MAIN, PAGE, SLACK, STREAMS, Batch, Record, in_range, iso, merge
from gateway.policy.model import Audit

SCRIPT = resources.files("gateway.audit").joinpath("append.lua").read_text(encoding="utf-8")
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
MARK_TTL = 86400  # seconds a writer's mark outlives its last write: far longer than any attempt is in flight


def same_slot(key: str, suffix: str) -> str:
    """A key next to `key` in the same Cluster slot: `key`'s hash tag if it has one, else `{key}`."""
    start = key.find("{")
    if start != -1 and key.find("}", start + 2) != -1:
        return f"{key}{suffix}"
    return f"{{{key}}}{suffix}"


class RedisStore:
    """Redis Streams; every write is idempotent per (writer, stream, seq)."""

    kind = "redis"
    failure_is_final = False  # a call that timed out may still run when a stalled Redis wakes

    def __init__(
        self, url: str, key: str, settings: Audit, timeout: float, clock: Callable[[], float] = time.time,
        *, cluster: bool = False,
    ) -> None:
        self.key = key
        self.keys = {stream: key if stream == MAIN else f"{key}:{stream}" for stream in STREAMS}
        self.hits_key = self.keys["rate_limit_hit"]
        self._max_events = settings.max_events
        self._max_age = settings.max_age
        self._clock = clock
        # Audit writes are off the request path: a more patient timeout than the rate limiter's is fine.
        self.timeout = max(timeout, 1.0)
        # No retries inside redis-py (its default is 10, with backoff): the trail retries a failed batch
        # itself, so one attempt lasts one timeout and health and shutdown can say what happened.
        options: dict[str, Any] = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                                   "retry": Retry(NoBackoff(), 0)}
        self.redis: Any
        if cluster:  # the cluster client sends each stream's commands to the node holding it
            self.redis = RedisCluster.from_url(url, **options)
        else:
            self.redis = aioredis.Redis.from_url(url, **options)
        self._trimmed_at = 0.0
        self.evicted = 0  # entries trimmed by the max_events cap

    def mark(self, stream: str, writer: str) -> str:
        return same_slot(self.keys[stream], f":w:{writer}")

    def _commands(self, batch: Batch) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        for stream, entries in batch.by_stream().items():
            commands.append(("EVALSHA", SHA, 2, self.keys[stream], self.mark(stream, batch.writer),
                             entries[-1].seq, self._max_events, MARK_TTL, *(e.line for e in entries)))
        now = self._clock()
        if now - self._trimmed_at > 60:
            for key in self.keys.values():
                commands.append(("XTRIM", key, "MINID", "~", int((now - self._max_age) * 1000)))
            self._trimmed_at = now
        return commands

    async def _run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)  # a Cluster pipeline routes this by slot
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def append(self, batch: Batch) -> None:
        """Store the batch, one script call per stream in one round trip; raises if any call failed."""
        commands = self._commands(batch)
        replies = await self._run(commands)
        if any(isinstance(r, NoScriptError) for r in replies):
            # Redis restarted or flushed its scripts: nothing ran where NOSCRIPT came back; load, send again.
            await self.redis.script_load(SCRIPT)
            replies = await self._run(commands)
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            if command[0] == "EVALSHA":
                self.evicted += int(reply[1])

    def scan(self, start: float, end: float) -> AsyncIterator[list[Record]]:
        """Pages of records with start <= time <= end from every stream, merged by time, oldest first."""
        return merge([self._scan(key, start, end) for key in self.keys.values()])

    async def _scan(self, key: str, start: float, end: float) -> AsyncIterator[list[Record]]:
        """Pages of one stream's records with start <= time <= end read with XRANGE, oldest first.

        A stream id is Redis's clock when the entry was written, never before the event (give or take clock
        skew): ids start the range. A write delayed by an outage has ids later than its events, so the end
        is found on the records' own times (they are in emission order), not on ids.
        """
        low, high, beyond = iso(start), iso(end), iso(end + SLACK)
        cursor = str(max(0, int((start - SLACK) * 1000)))
        while True:
            entries = await self.redis.xrange(key, min=cursor, max="+", count=PAGE)
            if not entries:
                return
            page: list[Record] = []
            past = False
            for entry_id, fields in entries:
                line = fields.get(b"e")
                if line is None:
                    continue
                record, past = in_range(line, low, high, beyond)
                if record is not None:
                    page.append({"id": entry_id.decode(), **record})
                if past:
                    break
            if page:
                yield page
            if past or len(entries) < PAGE:
                return
            cursor = "(" + entries[-1][0].decode()  # exclusive: continue after the last entry read

    async def probe(self) -> str | None:
        """Why records cannot be written now (Redis unreachable, or refusing writes: out of memory under
        noeviction, too few replicas, read-only), or None. One small write with a short life."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.redis.set(same_slot(self.key, ":probe"), orjson.dumps(self._clock()), px=60_000)
        except Exception as exc:
            return f"Redis refuses audit writes: {str(exc) or type(exc).__name__}"
        return None

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                return bool(await self.redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.redis.aclose()
