"""Runtime rate overrides by limit name: a Redis hash every replica re-reads, or a dict without Redis.

The request path never reads Redis for overrides: a background task refreshes the local copy every
`storage.override_refresh` and bumps `version`, which the limiter compares once per check to rebuild its
table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from gateway.logs import get_logger
from gateway.ratelimit.redis import STORE_ERRORS, RedisBuckets
from gateway.tasks import stop

log = get_logger("gateway.ratelimit")


class Overrides:
    """Current overrides (`values`: limit name -> rate) and a `version` that changes whenever they do."""

    def __init__(
        self, store: RedisBuckets | None, refresh: float, values: dict[str, int] | None = None
    ) -> None:
        self.values: dict[str, int] = dict(values or {})
        self.version = 0
        self._store = store
        self._refresh = refresh
        self._writes = 0  # a refresh that raced a write would bring back the old values: it is dropped
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    def _apply(self, values: dict[str, int]) -> None:
        if values != self.values:
            self.values = values
            self.version += 1

    async def refresh(self) -> None:
        """Re-read the shared overrides; a failure keeps the last known values."""
        if self._store is None:
            return
        seen = self._writes
        try:
            values = await self._store.read_overrides()
        except STORE_ERRORS as exc:
            log.debug("overrides_refresh_failed", error=str(exc) or exc.__class__.__name__)
            return
        if seen == self._writes:
            self._apply(values)

    async def _poll(self) -> None:
        task = asyncio.current_task()
        while True:
            await self.refresh()
            if task is not None and task.cancelling():
                # close() cancelled us mid-read and the read turned that into a store error (redis-py and
                # asyncio.timeout can): without this the loop slept on and close() waited for ever.
                raise asyncio.CancelledError
            await asyncio.sleep(self._refresh)

    def start(self) -> None:
        """Start refreshing from Redis (idempotent; nothing to do without Redis)."""
        if self._store is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="rate-limit-overrides")

    async def update(self, set_rates: dict[str, int], remove: Iterable[str], clear: bool = False) -> None:
        """Change overrides everywhere; raises one of STORE_ERRORS (nothing changed) if Redis cannot."""
        remove = list(remove)
        if self._store is not None:
            await self._store.write_overrides(set_rates, remove, clear)
        self._writes += 1
        values = {} if clear else dict(self.values)
        for name in remove:
            values.pop(name, None)
        values.update(set_rates)
        self._apply(values)

    def forget(self, names: Iterable[str]) -> None:
        """Drop overrides of limits the policy no longer has (locally now, in Redis in the background)."""
        names = [n for n in names if n in self.values]
        if not names:
            return
        self._writes += 1
        self._apply({k: v for k, v in self.values.items() if k not in names})
        if self._store is not None:
            store = self._store

            async def prune() -> None:
                try:
                    await store.write_overrides({}, names, False)
                except STORE_ERRORS as exc:
                    log.warning("overrides_prune_failed", limits=names, error=str(exc))

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # built outside the event loop (a check, a test): the local copy is enough
                return
            task = loop.create_task(prune())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Stop refreshing."""
        await stop((self._task, *self._background))
        self._task = None
