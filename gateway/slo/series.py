"""One (route, method) series: a sliding window of latency sketches and counts, and cumulative counters.

Time is cut into 10 s sub-windows ("slots"). The slot being filled and those of the last `window` seconds
keep their latency sketches (for p50/p95/p99); older slots shrink to plain counts and are kept for 6 h, which
is what the multi-window burn rates (5m / 30m / 1h / 6h) need.
Slots only exist for periods with traffic, so an idle series costs nothing. The cumulative counters (a
histogram over fixed bounds, status classes, errors) feed the Prometheus exposition and never go backwards
while the series lives.

`record()` runs once per request: a few dictionary and list updates, no allocation beyond a new slot every
10 s, no string work. Everything else is done when read.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from math import ceil, log

from gateway.slo.sketch import INV_LN_GAMMA, MIN_KEY, MIN_VALUE, Counts

SUB_WINDOW = 10.0  # seconds per slot: the resolution of every window
RETENTION = 6 * 3600.0  # counts are kept this long (the longest burn-rate window)
_FAR_PAST = -(1 << 62)


class Slot:
    """What happened in one 10 s sub-window."""

    __slots__ = ("slot", "total", "errors", "throttled", "exceed", "latency", "upstream")

    def __init__(self, slot: int, thresholds: int) -> None:
        self.slot = slot
        self.total = 0
        self.errors = 0  # 5xx, the gateway's own 502/503/504 included
        self.throttled = 0  # 429
        # exceed[i]: requests slower than exactly i of the route's latency targets (sorted), so the share
        # under any target is an exact count, not an estimate.
        self.exceed = [0] * (thresholds + 1)
        self.latency: Counts = {}
        self.upstream: Counts = {}


# A slot older than the percentile window, reduced to what burn rates need:
# (slot, total, errors, throttled, exceed)
OldSlot = tuple[int, int, int, int, tuple[int, ...]]


def _slot_of(old: OldSlot) -> int:
    return old[0]


@dataclass(frozen=True, slots=True)
class Totals:
    """Counts over some period."""

    total: int
    errors: int
    throttled: int
    exceed: tuple[int, ...]

    def slower_than(self, index: int) -> int:
        """Requests slower than the route's index-th latency target (targets sorted ascending)."""
        return sum(self.exceed[index + 1 :])


class Window:
    """The time-sliced history of one series for one set of route latency targets."""

    def __init__(self, thresholds: tuple[float, ...], window: float) -> None:
        self.thresholds = thresholds
        self.recent: deque[Slot] = deque()  # slots inside the percentile window, oldest first
        self.old: deque[OldSlot] = deque()  # older slots, counts only, oldest first
        self.current = Slot(_FAR_PAST, len(thresholds))
        # Running sums of the old slots' counts since this window began, one entry per old slot (the sums up
        # to and including it): the counts of any span of old slots are one subtraction, so a 6 h burn
        # window costs the same as a 5 min one (the fleet publishes every burn window every second).
        self._old_sums: deque[tuple[int, int, int, tuple[int, ...]]] = deque()
        self.window_slots = 1
        self.retention_slots = 1
        self.resize(window)

    def resize(self, window: float) -> None:
        """Apply a (possibly new) percentile window length in seconds."""
        self.window_slots = max(1, ceil(window / SUB_WINDOW - 1e-9))
        self.retention_slots = max(self.window_slots, ceil(RETENTION / SUB_WINDOW))

    def open(self, slot: int) -> Slot:
        """Start the slot `slot` (the clock moved past the current one)."""
        if slot < self.current.slot:  # a clock that went backwards: keep filling the newest slot
            return self.current
        fresh = Slot(slot, len(self.thresholds))
        self.recent.append(fresh)
        self.current = fresh
        self.trim(slot)
        return fresh

    def trim(self, slot: int) -> None:
        """Shrink slots that left the percentile window; forget those past the retention."""
        edge = slot - self.window_slots
        recent, old = self.recent, self.old
        sums = self._old_sums
        while recent and recent[0].slot <= edge:
            s = recent.popleft()
            exceed = tuple(s.exceed)
            old.append((s.slot, s.total, s.errors, s.throttled, exceed))
            if sums:
                t, e, th, ex = sums[-1]
                sums.append((t + s.total, e + s.errors, th + s.throttled,
                             tuple(a + b for a, b in zip(ex, exceed, strict=True))))
            else:
                sums.append((s.total, s.errors, s.throttled, exceed))
        old_edge = slot - self.retention_slots
        while old and old[0][0] <= old_edge:
            old.popleft()
            sums.popleft()

    def totals(self, slot: int, seconds: float) -> Totals:
        """Counts over the last `seconds` (in whole slots, the current one included)."""
        self.trim(slot)
        edge = slot - max(1, ceil(seconds / SUB_WINDOW - 1e-9))
        total = errors = throttled = 0
        exceed = [0] * (len(self.thresholds) + 1)
        for s in reversed(self.recent):
            if s.slot <= edge:
                break
            total += s.total
            errors += s.errors
            throttled += s.throttled
            for i, n in enumerate(s.exceed):
                exceed[i] += n
        else:
            old, sums = self.old, self._old_sums
            first = bisect_right(old, edge, key=_slot_of)  # the first old slot inside the span
            if first < len(old):
                t, e, th, ex = sums[-1]
                bt, be, bth, bex = sums[first]  # the sums up to `first`, minus `first` itself
                o = old[first]
                total += t - bt + o[1]
                errors += e - be + o[2]
                throttled += th - bth + o[3]
                for i, (a, b, c) in enumerate(zip(ex, bex, o[4], strict=True)):
                    exceed[i] += a - b + c
        return Totals(total, errors, throttled, tuple(exceed))

    def sketches(self, slot: int) -> tuple[list[Counts], list[Counts]]:
        """The latency and upstream-latency sketches of every slot inside the percentile window."""
        self.trim(slot)
        return [s.latency for s in self.recent], [s.upstream for s in self.recent]


class Series:
    """Everything recorded for one (route, method) label pair."""

    __slots__ = (
        "route", "method", "window", "bounds", "buckets", "duration_sum", "upstream_buckets", "upstream_sum",
        "status_classes", "errors_total", "throttled_total", "count_429",
    )

    def __init__(
        self, route: str, method: str, window: Window, bounds: tuple[float, ...], count_429: bool
    ) -> None:
        self.route = route
        self.method = method
        self.window = window
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # non-cumulative; the last one is +Inf
        self.duration_sum = 0.0
        self.upstream_buckets = [0] * (len(bounds) + 1)
        self.upstream_sum = 0.0
        self.status_classes = [0] * 6  # index 1..5: 1xx..5xx; 0: anything else
        self.errors_total = 0  # what counted as an error when it happened (5xx, and 429 if configured)
        self.throttled_total = 0
        self.count_429 = count_429

    def reconfigure(self, window: Window, bounds: tuple[float, ...], count_429: bool) -> None:
        """Carry this series into a new policy: new histogram bounds restart the histograms (a counter reset
        Prometheus understands); everything else continues."""
        self.window = window
        self.count_429 = count_429
        if bounds != self.bounds:
            self.bounds = bounds
            self.buckets = [0] * (len(bounds) + 1)
            self.duration_sum = 0.0
            self.upstream_buckets = [0] * (len(bounds) + 1)
            self.upstream_sum = 0.0

    def record(self, now: float, duration: float, upstream: float | None, status: int) -> None:
        """Count one finished request. `now` in seconds of the recorder's clock."""
        window = self.window
        slot = int(now // SUB_WINDOW)
        s = window.current
        if s.slot != slot:
            s = window.open(slot)
        s.total += 1
        latency = s.latency
        key = MIN_KEY if duration <= MIN_VALUE else ceil(log(duration) * INV_LN_GAMMA)
        latency[key] = latency.get(key, 0) + 1
        thresholds = window.thresholds
        if thresholds:
            s.exceed[bisect_left(thresholds, duration)] += 1
        bounds = self.bounds
        self.buckets[bisect_left(bounds, duration)] += 1
        self.duration_sum += duration
        if upstream is not None:
            ups = s.upstream
            key = MIN_KEY if upstream <= MIN_VALUE else ceil(log(upstream) * INV_LN_GAMMA)
            ups[key] = ups.get(key, 0) + 1
            self.upstream_buckets[bisect_left(bounds, upstream)] += 1
            self.upstream_sum += upstream
        cls = status // 100
        self.status_classes[cls if 0 < cls < 6 else 0] += 1
        if cls == 5:
            s.errors += 1
            self.errors_total += 1
        elif status == 429:
            s.throttled += 1
            self.throttled_total += 1
            if self.count_429:
                self.errors_total += 1

    @property
    def requests_total(self) -> int:
        """Every request this series counted."""
        return sum(self.status_classes)

    def upstream_count(self) -> int:
        """Requests that reached an upstream (have an upstream duration)."""
        return sum(self.upstream_buckets)
