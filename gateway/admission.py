"""Adaptive concurrency per upstream: a gradient limiter, a short priority queue, and shedding by priority.

One `Admission` per upstream with `concurrency.adaptive: true`. It learns how many requests the upstream
serves at once without queueing and keeps the requests in flight under that limit:

- No-load latency, per route (a payment and a horoscope do not cost the same, and which of them get through
  changes under shedding): during a *probe* the limit drops to `min` until `probe_samples` requests have
  come back with no more than `min` in flight; each route's median is its no-load latency. A probe runs at
  start and every `probe_interval`, so a slower or faster deploy is re-learned; a route first seen between
  probes learns from its first answer at low concurrency.
- Gradient: every `window` seconds the median of the finished requests' latency *ratios* (latency over their
  route's no-load latency) is compared with `1 + tolerance`: `gradient = (1 + tolerance) / ratio`, bounded
  to [0.5, 2]. Above 1 (no queueing) the
  limit grows by the gradient plus sqrt(limit) of headroom, but only when the window actually used half of it
  (an idle upstream teaches nothing); below 1 it shrinks by the gradient. Each window moves the limit half
  way to that target (one noisy window is not a trend). Always within [min, max].
- Queue: a request over the limit waits at most `queue_timeout` in a queue of at most `queue` requests;
  a freed slot goes to the highest priority first (then the oldest). When the queue is full, an arriving
  request evicts the newest waiter of a lower priority, else it is refused: critical requests are refused
  last.
- Tightening (burn-rate coupling, see `BurnWatch`): level 1 caps sheddable requests at `tighten_share` of
  the limit; level 2 refuses sheddable requests outright and caps normal ones at that share.
- Shadow: every request goes through; the ones that would have been shed are counted, nothing waits.

Pure logic and asyncio futures: the clock is injected, nothing sleeps. The request path costs a comparison
and two counter updates when under the limit (`enter`/`leave`); the limit is recomputed once per window.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from math import sqrt
from statistics import median
from typing import Any

from gateway.policy.model import Concurrency

SHEDDABLE, NORMAL, CRITICAL = 0, 1, 2
PRIORITIES = {"sheddable": SHEDDABLE, "normal": NORMAL, "critical": CRITICAL}
PRIORITY_NAMES = ("sheddable", "normal", "critical")
MODES = ("normal", "tight_sheddable", "tight_normal")  # by tightening level
_GRADIENT_MIN, _GRADIENT_MAX = 0.5, 2.0
_SMOOTHING = 0.5  # a window moves the limit half way to where its gradient points: one noisy window is not
_MAX_SAMPLES = 1024  # latencies kept per window (the median of the first ones is as good as of all)


class Admission:
    """The adaptive limit, in-flight count and queue of one upstream."""

    def __init__(
        self,
        upstream: str,
        spec: Concurrency,
        *,
        clock: Callable[[], float] = time.monotonic,
        learned: Admission | None = None,
    ) -> None:
        self.upstream = upstream
        self.spec = spec
        self.shadow = spec.shadow
        self._clock = clock
        self._min, self._max = spec.min, spec.max
        self._queue_size = spec.queue
        self._queue_timeout = spec.queue_timeout
        self._window = spec.window
        self.inflight = 0
        self.queued = 0
        self.level = 0  # tightening: 0 none, 1 sheddable capped, 2 sheddable refused and normal capped
        self.level_since = clock()
        # (route, priority name, reason) -> count; `would_shed` in shadow mode. Route names come from the
        # policy, the rest from fixed tuples: bounded labels.
        self.shed: dict[tuple[str, str, str], int] = {}
        self.would_shed: dict[tuple[str, str], int] = {}
        self._waiters: tuple[deque[asyncio.Future[str | None]], ...] = (deque(), deque(), deque())
        now = clock()
        self._window_end = now + self._window
        self._samples: list[float] = []  # this window's latency ratios
        self._peak = 0
        self.no_load: dict[str, float] = {}  # route -> seconds
        self.limit = float(self._min)
        self.last_ratio: float | None = None  # the last window's median latency ratio, for the ops view
        if learned is not None and learned.no_load:
            # Reload: the learned state of the same upstream carries over, clamped to the new bounds.
            self.no_load = dict(learned.no_load)
            self.limit = float(min(self._max, max(self._min, learned.limit)))
            self.level, self.level_since = learned.level, learned.level_since
        self._saved_limit = self.limit
        self._probing = not self.no_load
        self._probe_samples: dict[str, list[float]] = {}
        self._probe_count = 0
        self._next_probe = now + spec.probe_interval
        self.caps = [0, 0, 0]  # the in-flight ceiling per priority, recomputed when the limit or level moves
        self._recompute()

    # -- read side --

    @property
    def current_limit(self) -> int:
        """The limit in force (the probe's `min` while probing)."""
        return self._min if self._probing else max(self._min, int(self.limit))

    @property
    def probing(self) -> bool:
        return self._probing

    @property
    def mode(self) -> str:
        return MODES[self.level]

    def snapshot(self) -> dict[str, Any]:
        return {
            "limit": self.current_limit,
            "inflight": self.inflight,
            "queued": self.queued,
            "mode": self.mode,
            "shadow": self.shadow,
            "probing": self._probing,
            "no_load_ms": {route: round(s * 1000, 3) for route, s in sorted(self.no_load.items())},
            "last_ratio": None if self.last_ratio is None else round(self.last_ratio, 3),
        }

    # -- request path --

    def enter(self, route: str, priority: int) -> bool:
        """Admit at once when under the priority's ceiling (True); False: the caller must `wait`.
        In shadow mode always True: an over-the-limit request is counted as one that would be shed."""
        inflight = self.inflight
        if inflight < self.caps[priority]:
            self.inflight = inflight = inflight + 1
            if inflight > self._peak:
                self._peak = inflight
            return True
        if self.shadow:
            if self.caps[priority] == 0 or inflight >= self.caps[priority] + self._queue_size:
                key = (route, PRIORITY_NAMES[priority])
                self.would_shed[key] = self.would_shed.get(key, 0) + 1
            self.inflight = inflight + 1
            if inflight + 1 > self._peak:
                self._peak = inflight + 1
            return True
        return False

    async def wait(self, priority: int) -> str | None:
        """Queue for a slot: None once admitted (the slot is held: call `leave`), else why it was refused."""
        if self.caps[priority] == 0:
            return "tightened"
        if self.queued >= self._queue_size and not self._evict_below(priority):
            return "queue_full"
        waiters = self._waiters[priority]
        if len(waiters) > 2 * self._queue_size + 8:  # drop the futures of waiters that gave up
            live = [f for f in waiters if not f.done()]
            waiters.clear()
            waiters.extend(live)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        waiters.append(future)
        self.queued += 1
        try:
            async with asyncio.timeout(self._queue_timeout):
                return await future  # None: a slot was handed over; else why it was refused
        except TimeoutError:
            if future.done() and not future.cancelled():  # woken or refused as the deadline fell
                return future.result()
            future.cancel()
            self.queued -= 1
            return "queue_timeout"
        except asyncio.CancelledError:  # the client went away while queued
            if future.done() and not future.cancelled():
                if future.result() is None:
                    self.leave("", None)  # the slot it was handed, unused
            else:
                future.cancel()
                self.queued -= 1
            raise

    def leave(self, route: str, latency: float | None) -> None:
        """A request of `route` admitted by `enter`/`wait` is done; `latency` is the upstream's answer time
        (seconds), None when it says nothing about the upstream (connection failed, client gone)."""
        self.inflight -= 1
        if latency is not None:
            # Only requests that ran at low concurrency teach a no-load latency: not those admitted under the
            # previous limit and still finishing as a probe starts (shadow mode limits nothing: all count).
            quiet = self.inflight < self._min or self.shadow
            if self._probing:
                if quiet:
                    self._probe_samples.setdefault(route, []).append(latency)
                    self._probe_count += 1
            else:
                no_load = self.no_load.get(route)
                if no_load is not None:
                    samples = self._samples
                    if len(samples) < _MAX_SAMPLES:
                        samples.append(latency / no_load)
                elif quiet:  # a route first seen since the last probe
                    self.no_load[route] = latency
        now = self._clock()
        if now >= self._window_end or (self._probing and self._probe_count >= self.spec.probe_samples):
            self._update(now)  # a probe ends as soon as it has its samples: the limit is low meanwhile
        if self.queued:
            self._wake()

    def count_shed(self, route: str, priority: int, reason: str) -> None:
        key = (route, PRIORITY_NAMES[priority], reason)
        self.shed[key] = self.shed.get(key, 0) + 1

    # -- tightening --

    def set_level(self, level: int) -> None:
        """Apply a tightening level (0..2); the caller logs and audits the change."""
        if level != self.level:
            self.level = level
            self.level_since = self._clock()
            self._recompute()
            if self.queued:
                self._wake()
            self._refuse_tightened()

    # -- internals --

    def _recompute(self) -> None:
        limit = self.current_limit
        share = max(1, int(limit * self.spec.tighten_share))
        level = self.level
        self.caps[CRITICAL] = limit
        self.caps[NORMAL] = limit if level < 2 else share
        self.caps[SHEDDABLE] = limit if level == 0 else (share if level == 1 else 0)

    def _wake(self) -> None:
        """Hand free slots to waiters: highest priority first, oldest first."""
        caps = self.caps
        for priority in (CRITICAL, NORMAL, SHEDDABLE):
            waiters = self._waiters[priority]
            cap = caps[priority]
            while waiters and self.inflight < cap:
                future = waiters.popleft()
                if future.done():
                    continue  # it gave up (deadline, client gone)
                self.queued -= 1
                self.inflight += 1
                if self.inflight > self._peak:
                    self._peak = self.inflight
                future.set_result(None)

    def _evict_below(self, priority: int) -> bool:
        """Refuse the newest live waiter of a priority below `priority` (the lowest first)."""
        for lower in range(priority):
            waiters = self._waiters[lower]
            while waiters:
                future = waiters.pop()
                if future.done():
                    continue
                self.queued -= 1
                future.set_result("evicted")
                return True
        return False

    def _refuse_tightened(self) -> None:
        """Waiters of a priority the new level refuses outright are refused now, not at their deadline."""
        for priority in (SHEDDABLE, NORMAL):
            if self.caps[priority] != 0:
                continue
            waiters = self._waiters[priority]
            while waiters:
                future = waiters.popleft()
                if not future.done():
                    self.queued -= 1
                    future.set_result("tightened")

    def _update(self, now: float) -> None:
        """The end of a sample window: finish a probe, start one, or move the limit by the gradient."""
        window = self._samples
        if self._probing:
            if self._probe_count >= self.spec.probe_samples:
                for route, samples in self._probe_samples.items():
                    self.no_load[route] = median(samples)
                self._probe_samples.clear()
                self._probe_count = 0
                self._probing = False
                self.limit = self._saved_limit
                self._next_probe = now + self.spec.probe_interval
        elif window:
            ratio = median(window)  # not the mean: a pause of the process hits a few requests, not half
            self.last_ratio = ratio
            if now >= self._next_probe:
                self._saved_limit = self.limit
                self._probing = True
                self._probe_samples.clear()
                self._probe_count = 0
            else:
                gradient = (1.0 + self.spec.tolerance) / ratio if ratio > 0 else _GRADIENT_MAX
                gradient = min(_GRADIENT_MAX, max(_GRADIENT_MIN, gradient))
                old = limit = self.limit
                if gradient >= 1.0:
                    if 2 * self._peak >= limit:  # the window used the limit: room to grow is evidence
                        limit = limit * gradient + sqrt(limit)
                else:
                    limit = limit * gradient
                limit = old + (limit - old) * _SMOOTHING
                self.limit = min(float(self._max), max(float(self._min), limit))
        window.clear()
        self._peak = self.inflight
        self._window_end = now + self._window
        self._recompute()
