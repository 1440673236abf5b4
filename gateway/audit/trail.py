"""The audit trail: every domain event stored append-only and durably, readable back by time range.

Where: Redis Streams when `storage.redis_url` is set (gateway.audit.redis), else JSON-lines files under
`audit.dir` (gateway.audit.files). A relative `audit.dir` is relative to `$GATEWAY_DATA_DIR` when that is set
(the image sets /var/lib/gateway, writable by its non-root user), else to the policy file's directory.

The request path never waits for storage: the subscriber appends to a bounded in-memory queue (a full queue
drops the event and counts it; the flood kinds may fill only nine tenths of it, so a rare event still finds
room during a flood) and one background task writes batches. A failed batch is retried as it was; stores
keep each record once however many attempts land. `close()` drains the queue, so a clean restart loses
nothing; what it cannot write in time is counted as lost, or as unconfirmed when storage cannot say.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

from gateway.audit.files import FileStore
from gateway.audit.record import MAIN, Batch, Entry, Record, encode, stream_of
from gateway.audit.redis import RedisStore
from gateway.events import Event
from gateway.logs import get_logger
from gateway.policy.model import Audit

log = get_logger("gateway.audit")

BATCH = 1000  # events per write: one round trip to Redis or one file append per stream
DATA_DIR_ENV = "GATEWAY_DATA_DIR"
FINAL_ATTEMPT = 1.0  # at shutdown, after `within`: one last (idempotent) try at the batch cut short
PROBE_TTL = 2.0  # a storage probe's answer is reused this long (health is public and may be polled hard)
DROP_REASONS = ("queue_full", "closed", "shutdown", "cap")


class Store(Protocol):
    """Where audit records go. Both implementations are append-only and store a retried batch once."""

    kind: str
    evicted: int  # records the size/count cap removed before max_age
    # Whether a failed append surely stored nothing of what failed (files: yes; Redis: a call that timed
    # out may still run).
    failure_is_final: bool

    async def append(self, batch: Batch) -> None: ...

    def scan(self, start: float, end: float) -> AsyncIterator[list[Record]]: ...

    async def probe(self) -> str | None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class AuditTrail:
    """Subscribe it to `Events`; call `start()` once the loop runs and `close()` on shutdown.

    Counters for the metrics module (read at scrape time): see `stats()`.
    """

    def __init__(self, store: Store, queue_size: int) -> None:
        self.store = store
        self.queue_size = queue_size
        self._flood_room = queue_size - max(1, queue_size // 10)
        self.writer = secrets.token_hex(6)  # this process's id in event ids and in the stores' marks
        self._seq = 0
        self.written = 0
        self.drops = dict.fromkeys(DROP_REASONS[:-1], 0)
        self.unconfirmed = 0  # sent when shutdown cut the write short, and storage could not say if stored
        self.write_errors = 0
        self.failing: str | None = None  # the last write's error, until a write succeeds
        self._queue: deque[Event] = deque()
        self._pending: Batch | None = None  # taken from the queue, not accepted by storage yet
        self._attempted = False  # whether the pending batch was sent at least once (it may have landed)
        self._enqueued = 0
        self._settled = 0  # events written or given up on: flush() waits on this
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._probed: tuple[float, str | None] = (-PROBE_TTL, None)
        self._probe_lock = asyncio.Lock()

    @property
    def dropped(self) -> int:
        """Events never stored: the queue was full, the trail was closed, or shutdown came first."""
        return sum(self.drops.values())

    @property
    def queued(self) -> int:
        return len(self._queue) + (len(self._pending) if self._pending is not None else 0)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and health."""
        return {"backend": self.store.kind, "queued": self.queued, "written": self.written,
                "dropped": self.dropped, "dropped_by_reason": {**self.drops, "cap": self.store.evicted},
                "unconfirmed": self.unconfirmed, "write_errors": self.write_errors, "failing": self.failing}

    def __call__(self, event: Event) -> None:
        """The Events subscriber: O(1), never blocks, never raises."""
        if self._closing:
            self.drops["closed"] += 1
            return
        room = self.queue_size if stream_of(event) == MAIN else self._flood_room
        if len(self._queue) >= room:
            self.drops["queue_full"] += 1
            return
        self._queue.append(event)
        self._enqueued += 1
        self._wake.set()

    def start(self) -> None:
        """Start the writer task (needs the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    def _take(self) -> Batch:
        entries = []
        for _ in range(min(BATCH, len(self._queue))):
            event = self._queue.popleft()
            self._seq += 1
            entries.append(Entry(self._seq, stream_of(event), encode(event, f"{self.writer}-{self._seq}")))
        return Batch(self.writer, tuple(entries))

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self._queue and self._pending is None:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            if self._pending is None:
                self._pending, self._attempted = self._take(), False
            batch = self._pending
            try:
                self._attempted = True
                await self.store.append(batch)
            except Exception as exc:
                self.write_errors += 1
                self.failing = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.warning("audit_write_failed", backend=self.store.kind, error=repr(exc),
                            pending=len(batch))
                try:  # back off, but wake at once when close() asks
                    await asyncio.wait_for(self._wake.wait(), backoff)
                except TimeoutError:
                    pass
                self._wake.clear()
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            self.failing = None
            self._settle(written=len(batch))
            self._pending = None
            self._progress.set()

    def _settle(self, *, written: int = 0, **drops: int) -> None:
        self.written += written
        self._settled += written
        for reason, count in drops.items():
            self.drops[reason] += count
            self._settled += count

    async def problem(self) -> str | None:
        """Why the trail is not recording now (its last write failed, or storage refuses a probe), or None."""
        if self.failing is not None:
            return f"audit writes are failing ({self.queued} waiting): {self.failing}"
        now = time.monotonic()
        if now - self._probed[0] < PROBE_TTL:
            return self._probed[1]
        async with self._probe_lock:  # concurrent callers share one probe
            if time.monotonic() - self._probed[0] >= PROBE_TTL:
                self._probed = (time.monotonic(), await self.store.probe())
        return self._probed[1]

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
        """Stop accepting events, write everything queued (for up to `within` s), close the storage.

        What is left then: events never sent are counted as dropped ("shutdown"). The batch whose write was
        cut short may have landed (a stalled Redis runs it when it wakes): it gets one last try of at most
        FINAL_ATTEMPT s, which cannot store it twice. Stored then, it counts as written; if that fails too,
        as unconfirmed when an earlier attempt may have landed all the same (Redis), else as dropped."""
        self._closing = True
        self._wake.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), within)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                await self._give_up()
        await self.store.close()

    async def _give_up(self) -> None:
        never_sent = len(self._queue)
        self._queue.clear()
        self._settle(shutdown=never_sent)
        batch, self._pending = self._pending, None
        if batch is not None:
            try:
                async with asyncio.timeout(FINAL_ATTEMPT):
                    await self.store.append(batch)
            except Exception as exc:
                # A try that ran out of time may still finish (a Redis call in a stalled server's buffer, a
                # file write in its thread); with Redis, an earlier attempt that failed may have run as well.
                maybe = isinstance(exc, TimeoutError) or (self._attempted and not self.store.failure_is_final)
                if maybe:
                    self.unconfirmed += len(batch)
                    self._settled += len(batch)
                else:
                    self._settle(shutdown=len(batch))
                log.warning("audit_final_write_failed", backend=self.store.kind, error=repr(exc))
            else:
                self._settle(written=len(batch))
        log.error("audit_events_lost_on_close", lost=self.drops["shutdown"], unconfirmed=self.unconfirmed,
                  backend=self.store.kind)


def build_audit(settings: Audit, redis_url: str | None, key_prefix: str, timeout: float, base_dir: Path,
                clock: Callable[[], float] = time.time, *, cluster: bool = False) -> AuditTrail:
    """The trail the policy asks for: Redis Streams when Redis is configured, else files under audit.dir
    (a relative dir is relative to $GATEWAY_DATA_DIR when set, else to `base_dir`, the policy's directory)."""
    store: Store
    if redis_url:
        store = RedisStore(redis_url, f"{key_prefix}:audit", settings, timeout, clock, cluster=cluster)
    else:
        directory = Path(settings.dir)
        if not directory.is_absolute():
            directory = Path(os.environ.get(DATA_DIR_ENV) or base_dir) / directory
        store = FileStore(directory, settings, clock)
    return AuditTrail(store, settings.queue_size)
