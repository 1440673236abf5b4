"""The audit trail: every domain event stored append-only and durably, readable back by time range.

Where: Redis Streams (`<key_prefix>:audit`, and `<key_prefix>:audit:rate_limit_hit` for the record of each
429; XADD with MAXLEN ~ `audit.max_events` each, trimmed by age with MINID)
when `storage.redis_url` is set, else JSON-lines files under `audit.dir` (rotated by size, deleted by age).

The request path never waits for storage: the subscriber appends to a bounded in-memory queue (a full queue
drops the event and counts it) and one background task writes batches. `close()` drains the queue, so a clean
restart loses nothing.

A stored record is one JSON object: {"time": "2025-09-13T10:00:00.123456Z", "type": ..., **fields}. `time`
has a fixed width in UTC so comparing the strings compares the instants: range filtering needs no parsing.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from gateway.events import Event
from gateway.logs import get_logger
from gateway.policy.model import Audit

log = get_logger("gateway.audit")

Record = dict[str, Any]
BATCH = 1000  # events per write: one XADD pipeline or one file append
PAGE = 250  # records per read page when exporting
# Events are stamped before they are queued and written a little later, and Redis stamps stream ids with
# its own clock; reads widen the coarse (file / stream id) bounds by this much, then filter on the exact time.
SLACK = 300.0
_LAST_INSTANT = 253402300799.0  # 9999-12-31T23:59:59Z
_SEGMENT = re.compile(r"^audit-(\d{13})-(\d{3})\.jsonl$")


def iso(ts: float) -> str:
    """A Unix time as fixed-width UTC ISO 8601 with microseconds: sorts as text the way it sorts as time.

    Clamped to years 1970..9999, where the text stays fixed-width."""
    ts = min(max(ts, 0.0), _LAST_INSTANT)
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode(event: Event) -> bytes:
    """One event as the JSON stored for it (values JSON cannot hold are written as text)."""
    record = {"time": iso(event.time), "type": event.type, **event.fields}
    return orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS)


class Store(Protocol):
    """Where audit records go. Both implementations are append-only."""

    kind: str

    async def append(self, lines: list[bytes]) -> None: ...

    def scan(self, start: float, end: float) -> AsyncIterator[list[Record]]: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class FileStore:
    """JSON-lines segments `audit-<unix ms>-<n>.jsonl`, named by creation time so their order is time order.

    Blocking file work runs in a worker thread; the event loop never waits for the disk.
    """

    kind = "file"

    def __init__(self, directory: Path, settings: Audit, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self._max_size = settings.max_file_size
        self._max_age = settings.max_age
        self._clock = clock
        self._current: Path | None = None
        self._handle: Any = None
        self._size = 0
        self._pruned_at = 0.0

    def segments(self) -> list[Path]:
        """Every segment, oldest first."""
        try:
            names = sorted(p for p in os.listdir(self.directory) if _SEGMENT.match(p))
        except FileNotFoundError:
            return []
        return [self.directory / name for name in names]

    @staticmethod
    def _start(path: Path) -> float:
        m = _SEGMENT.match(path.name)
        assert m is not None
        return int(m.group(1)) / 1000

    def _new_segment(self, first: bytes) -> None:
        """Start a segment named after its first record's time, so every record in it is at or after that."""
        self._close_handle()
        try:
            ms = int(datetime.fromisoformat(orjson.loads(first)["time"]).timestamp() * 1000)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            ms = int(self._clock() * 1000)
        n = 0
        while (path := self.directory / f"audit-{ms:013d}-{n:03d}.jsonl").exists():
            n += 1
        self._open(path)

    def _open(self, path: Path) -> None:
        self._handle = open(path, "ab")  # noqa: SIM115 - held open across batches, closed in close()
        self._current = path
        self._size = self._handle.tell()

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _resume(self) -> None:
        """Continue the newest segment if it has room; a torn last line (a crash mid-write) is ended first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = self.segments()
        if segments and segments[-1].stat().st_size < self._max_size:
            self._open(segments[-1])
            if self._size:
                with open(segments[-1], "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        self._handle.write(b"\n")
                        self._size += 1

    def _append(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._handle is None:
            self._resume()
        data = b"".join(line + b"\n" for line in lines)
        if self._handle is None or (self._size and self._size + len(data) > self._max_size):
            self._new_segment(lines[0])
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._size += len(data)
        if self._clock() - self._pruned_at > 3600:
            self._prune()

    def _prune(self) -> None:
        """Delete segments whose last write is older than max_age (never the one being written)."""
        self._pruned_at = now = self._clock()
        for path in self.segments():
            if path == self._current:
                continue
            try:
                if now - path.stat().st_mtime > self._max_age:
                    path.unlink()
            except FileNotFoundError:
                pass

    async def append(self, lines: list[bytes]) -> None:
        """Append records durably (written and fsynced) before returning."""
        await asyncio.to_thread(self._append, lines)

    @staticmethod
    def _read_page(path: Path, offset: int, max_lines: int) -> tuple[list[bytes], int]:
        """Up to `max_lines` complete lines from `offset`; a line still being written is left for later."""
        lines: list[bytes] = []
        with open(path, "rb") as f:
            f.seek(offset)
            while len(lines) < max_lines:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break
                offset += len(line)
                if line.strip():
                    lines.append(line)
        return lines, offset

    async def scan(self, start: float, end: float) -> AsyncIterator[list[Record]]:
        """Pages of records with start <= time <= end, oldest first, never more than a page in memory."""
        low, high, beyond = iso(start), iso(end), iso(end + SLACK)
        segments = self.segments()
        for i, path in enumerate(segments):
            if i + 1 < len(segments) and self._start(segments[i + 1]) < start - SLACK:
                continue  # the next segment's first record precedes the range: this one holds older ones
            if self._start(path) > end + SLACK:
                return
            offset = 0
            while True:
                try:
                    lines, offset = await asyncio.to_thread(self._read_page, path, offset, PAGE)
                except FileNotFoundError:
                    break  # deleted by age while we read
                if not lines:
                    break
                page, past = [], False
                for line in lines:
                    try:
                        record = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue  # a torn line from a crash: skip it, keep the rest
                    if not isinstance(record, dict):
                        continue
                    at = str(record.get("time", ""))
                    if low <= at <= high:
                        page.append(record)
                    elif at > beyond:
                        past = True  # records are in emission order: the rest are later still
                        break
                if page:
                    yield page
                if past:
                    return

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        await asyncio.to_thread(self._close_handle)


_HIT = b'"type":"rate_limit_hit"'


class RedisStore:
    """Redis Streams; each entry holds the record's JSON in field `e`.

    rate_limit_hit records, one per refusal and so as many as an anonymous client cares to cause, go to a
    stream of their own (`<key>:rate_limit_hit`) under the same caps: a flood of 429s trims that stream, never
    the one holding admin actions, reloads and breaker changes. Reads merge the two by time.
    """

    kind = "redis"

    def __init__(
        self, url: str, key: str, settings: Audit, timeout: float, clock: Callable[[], float] = time.time,
        *, cluster: bool = False,
    ) -> None:
        self.key = key
        self.hits_key = f"{key}:rate_limit_hit"
        self._max_events = settings.max_events
        self._max_age = settings.max_age
        self._clock = clock
        # Audit writes are off the request path: a more patient timeout than the rate limiter's is fine.
        wait = max(timeout, 1.0)
        self.redis: Any
        if cluster:  # one key: the stream lives on one node, the cluster client finds it
            self.redis = RedisCluster.from_url(url, socket_timeout=wait, socket_connect_timeout=wait)
        else:
            self.redis = aioredis.Redis.from_url(url, socket_timeout=wait, socket_connect_timeout=wait)
        self._trimmed_at = 0.0

    async def append(self, lines: list[bytes]) -> None:
        """XADD every record in one round trip (capped by MAXLEN ~); trim by age at most once a minute."""
        pipe = self.redis.pipeline(transaction=False)
        for line in lines:
            key = self.hits_key if _HIT in line[:80] else self.key  # "type" follows the fixed-width "time"
            pipe.xadd(key, {"e": line}, maxlen=self._max_events, approximate=True)
        now = self._clock()
        if now - self._trimmed_at > 60:
            for key in (self.key, self.hits_key):
                pipe.xtrim(key, minid=int((now - self._max_age) * 1000), approximate=True)
            self._trimmed_at = now
        await pipe.execute()

    async def scan(self, start: float, end: float) -> AsyncIterator[list[Record]]:
        """Pages of records with start <= time <= end from both streams, merged by time, oldest first."""
        streams = [self._scan(key, start, end).__aiter__() for key in (self.key, self.hits_key)]
        heads: list[deque[Record]] = [deque(), deque()]
        ended = [False, False]
        page: list[Record] = []
        while True:
            for i, stream in enumerate(streams):
                while not heads[i] and not ended[i]:
                    try:
                        heads[i].extend(await stream.__anext__())
                    except StopAsyncIteration:
                        ended[i] = True
            live = [head for head in heads if head]
            if not live:
                break
            page.append(min(live, key=lambda head: str(head[0].get("time", ""))).popleft())
            if len(page) >= PAGE:
                yield page
                page = []
        if page:
            yield page

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
            page, past = [], False
            for entry_id, fields in entries:
                try:
                    record = orjson.loads(fields[b"e"])
                except (KeyError, orjson.JSONDecodeError):
                    continue
                if not isinstance(record, dict):
                    continue
                at = str(record.get("time", ""))
                if low <= at <= high:
                    page.append({"id": entry_id.decode(), **record})
                elif at > beyond:
                    past = True
                    break
            if page:
                yield page
            if past or len(entries) < PAGE:
                return
            cursor = "(" + entries[-1][0].decode()  # exclusive: continue after the last entry read

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.redis.aclose()


class AuditTrail:
    """Subscribe it to `Events`; call `start()` once the loop runs and `close()` on shutdown.

    Counters for the metrics module (read at scrape time): `written`, `dropped`, `write_errors`, `queued`.
    """

    def __init__(self, store: Store, queue_size: int) -> None:
        self.store = store
        self.queue_size = queue_size
        self.written = 0
        self.dropped = 0  # queue full, or the trail was closed, or storage failed until shutdown
        self.write_errors = 0
        self._queue: deque[Event] = deque()
        self._pending: list[bytes] = []  # a batch taken from the queue that storage has not accepted yet
        self._enqueued = 0
        self._settled = 0  # events written or given up on: flush() waits on this
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._pending)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and health."""
        return {"backend": self.store.kind, "queued": self.queued, "written": self.written,
                "dropped": self.dropped, "write_errors": self.write_errors}

    def __call__(self, event: Event) -> None:
        """The Events subscriber: O(1), never blocks, never raises."""
        if self._closing or len(self._queue) >= self.queue_size:
            self.dropped += 1
            return
        self._queue.append(event)
        self._enqueued += 1
        self._wake.set()

    def start(self) -> None:
        """Start the writer task (needs the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self._queue and not self._pending:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            if not self._pending:
                take = min(BATCH, len(self._queue))
                batch = [self._queue.popleft() for _ in range(take)]
                self._pending = [encode(event) for event in batch]
            try:
                await self.store.append(self._pending)
            except Exception as exc:
                self.write_errors += 1
                log.warning("audit_write_failed", backend=self.store.kind, error=repr(exc),
                            pending=len(self._pending))
                try:  # back off, but wake at once when close() asks
                    await asyncio.wait_for(self._wake.wait(), backoff)
                except TimeoutError:
                    pass
                self._wake.clear()
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            self.written += len(self._pending)
            self._settled += len(self._pending)
            self._pending = []
            self._progress.set()

    async def flush(self, within: float = 5.0) -> bool:
        """Wait until every event queued before this call is stored; False if that took over `within` s."""
        target = self._enqueued
        deadline = asyncio.get_running_loop().time() + within
        while self._settled < target:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._task is None or self._task.done():
                return False
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def close(self, within: float = 10.0) -> None:
        """Stop accepting events, write everything queued (for up to `within` s), close the storage."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), within)
            except TimeoutError:
                self._task.cancel()
                lost = self.queued
                self.dropped += lost
                log.error("audit_events_lost_on_close", lost=lost, backend=self.store.kind)
        await self.store.close()


def build_audit(settings: Audit, redis_url: str | None, key_prefix: str, timeout: float, base_dir: Path,
                clock: Callable[[], float] = time.time, *, cluster: bool = False) -> AuditTrail:
    """The trail the policy asks for: Redis Stream when Redis is configured, else files under audit.dir
    (a relative dir is relative to `base_dir`, the policy file's directory)."""
    store: Store
    if redis_url:
        store = RedisStore(redis_url, f"{key_prefix}:audit", settings, timeout, clock, cluster=cluster)
    else:
        directory = Path(settings.dir)
        store = FileStore(directory if directory.is_absolute() else base_dir / directory, settings, clock)
    return AuditTrail(store, settings.queue_size)
