"""A three-state circuit breaker: CLOSED -> OPEN -> HALF_OPEN -> CLOSED, as a small synchronous state machine.

Every decision reads an injected monotonic clock, so tests move time instead of sleeping. Calls are admitted
with `acquire()`, which hands out a `Permit`; the caller reports the result on the permit (`record`) or, when
the call ends without a verdict (cancelled, client gone), simply releases it. A HALF_OPEN probe that never
reports is reclaimed after `probe_deadline` and counted as a failure, so a stuck probe cannot freeze the
breaker. Transitions are pushed to listeners (log line, audit event, webhook); counters for metrics are plain
attributes read at scrape time.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from gateway.logs import get_logger
from gateway.policy.model import Breaker as BreakerSettings
from gateway.policy.model import Policy


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, as listeners receive it."""

    breaker: str
    from_state: State
    to_state: State
    cause: str  # consecutive_failures | failure_rate | slow_call_rate | probe_failed | probes_succeeded | ...
    at: float  # Unix seconds (for humans and alerts; decisions use the monotonic clock)
    retry_in: float | None  # seconds until HALF_OPEN when the new state is OPEN
    shared: bool = False  # the fleet announces it (gateway/fleet/breakers.py): listeners log, emit no event
    held: bool = False  # manually opened (held open until an operator closes or resets it)


class FleetLink(Protocol):
    """What a shared breaker tells the fleet (gateway/fleet/breakers.py). Never awaited: it only queues."""

    def active(self) -> bool:
        """Whether decisions are shared right now (Redis reachable and the breaker in sync)."""
        ...

    def local_transition(self, breaker: Breaker, transition: Transition) -> None:
        """A transition judged here (or a manual action): announce it to the fleet, off the request path."""
        ...


Listener = Callable[[Transition], None]
UNUSED_PROBE_DEADLINE = 15.0  # a declared breaker no route uses still gets a sane probe deadline

# Outcome.error kinds that say something about the upstream's health, mapped to a failure_on class.
_ERROR_CLASS = {
    "timeout": "timeout",
    "connect_error": "connect_error",
    "reset": "5xx",  # the upstream dropped the connection: as bad as a 5xx
    "protocol": "5xx",  # malformed HTTP from the upstream
}


@dataclass(frozen=True, slots=True)
class FailureRule:
    """`failure_on` compiled at load time: two set lookups per verdict."""

    statuses: frozenset[int]
    errors: frozenset[str]

    @classmethod
    def compile(cls, failure_on: tuple[str | int, ...]) -> FailureRule:
        statuses: set[int] = set()
        classes: set[str] = set()
        for item in failure_on:
            if isinstance(item, int):
                statuses.add(item)
            elif item == "5xx":
                statuses.update(range(500, 600))
                classes.add("5xx")
            elif item == "429":
                statuses.add(429)
            else:
                classes.add(item)
        errors = frozenset(kind for kind, cls_ in _ERROR_CLASS.items() if cls_ in classes)
        return cls(statuses=frozenset(statuses), errors=errors)

    def is_failure(self, status: int | None, error: str | None) -> bool:
        """Whether an upstream answer (status) or failure (error kind) counts against the breaker."""
        if error is not None:
            return error in self.errors
        return status is not None and status in self.statuses


class _CountWindow:
    """The last `size` calls: running totals of calls, failures and slow calls."""

    def __init__(self, size: int) -> None:
        self._calls: deque[tuple[bool, bool]] = deque()
        self._size = size
        self.calls = self.failures = self.slow = 0

    def add(self, _now: float, failed: bool, slow: bool) -> None:
        if len(self._calls) == self._size:
            old_failed, old_slow = self._calls.popleft()
            self.calls -= 1
            self.failures -= old_failed
            self.slow -= old_slow
        self._calls.append((failed, slow))
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def totals(self, _now: float) -> tuple[int, int, int]:
        return self.calls, self.failures, self.slow


class _TimeWindow:
    """Calls of the last `seconds`, kept in a ring of buckets so memory stays bounded under any traffic."""

    SLOTS = 20

    def __init__(self, seconds: float) -> None:
        self._width = seconds / self.SLOTS
        self._buckets = [[0, 0, 0] for _ in range(self.SLOTS)]
        self._head = -1  # absolute index of the newest bucket in use
        self._totals = [0, 0, 0]

    def _advance(self, now: float) -> int:
        index = int(now // self._width)
        if index > self._head:
            for stale in range(max(self._head + 1, index - self.SLOTS + 1), index + 1):
                bucket = self._buckets[stale % self.SLOTS]
                for i in range(3):
                    self._totals[i] -= bucket[i]
                    bucket[i] = 0
            self._head = index
        return index

    def add(self, now: float, failed: bool, slow: bool) -> None:
        bucket = self._buckets[self._advance(now) % self.SLOTS]
        for i, value in enumerate((1, int(failed), int(slow))):
            bucket[i] += value
            self._totals[i] += value

    def totals(self, now: float) -> tuple[int, int, int]:
        self._advance(now)
        calls, failures, slow = self._totals
        return calls, failures, slow


class Permit:
    """The right to make one call through the breaker. Report once with `record`, or `release` unreported."""

    __slots__ = ("_breaker", "_generation", "probe", "deadline", "done")

    def __init__(self, breaker: Breaker, generation: int, probe: bool, deadline: float) -> None:
        self._breaker = breaker
        self._generation = generation
        self.probe = probe  # admitted in HALF_OPEN: a probe is never retried
        self.deadline = deadline
        self.done = False

    def record(self, failed: bool, duration: float) -> None:
        """Report the call's final result (after any retries)."""
        if not self.done:
            self.done = True
            self._breaker._report(self, self._generation, failed, duration)

    def record_outcome(self, status: int | None, error: str | None, duration: float) -> None:
        """Report an upstream status or error kind; an error saying nothing of the upstream only releases."""
        if error is not None and error not in _ERROR_CLASS:
            self.release()
        else:
            self.record(self._breaker.failure_rule.is_failure(status, error), duration)

    def release(self) -> None:
        """End the call without a verdict (cancelled, client gone). Safe to call after `record`."""
        if not self.done:
            self.done = True
            self._breaker._forget(self)


class Breaker:
    """One circuit breaker. Not thread-safe: used from the event loop only (no awaits inside)."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        *,
        probe_deadline: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        listeners: list[Listener] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.probe_deadline = probe_deadline
        self.failure_rule = FailureRule.compile(settings.failure_on)
        self.listeners: list[Listener] = listeners if listeners is not None else []
        self._clock = clock
        self._wall = wall
        self._state = State.CLOSED
        self._generation = 0  # bumped on every transition: late reports from an older state are ignored
        self._window = self._new_window()
        self._consecutive = 0
        self._opened_mono: float | None = None
        self._opened_wall: float | None = None
        self._held = False  # manually opened: stays OPEN until an operator closes or resets it
        self._probes: dict[int, Permit] = {}
        self._probe_successes = 0
        # Shared breakers (settings.shared, with Redis): `fleet` is the link; `follower` is set while another
        # process owns the OPEN/HALF_OPEN episode: this one probes nothing, and waits `fleet_grace` past the
        # reset timeout (the owner went quiet or died) before it takes the half-open probes over itself.
        self.fleet: FleetLink | None = None
        self.follower = False
        self.fleet_grace = probe_deadline + 1.0
        self._half_open_mono = 0.0
        # Counters for metrics (monotonic over the breaker's life).
        self.calls = 0
        self.failures = 0
        self.slow_calls = 0
        self.rejected = 0
        self.transitions: dict[tuple[str, str], int] = {}

    def _new_window(self) -> _CountWindow | _TimeWindow:
        window = self.settings.window
        return _CountWindow(window) if isinstance(window, int) else _TimeWindow(window)

    @property
    def state(self) -> State:
        """The current state, after any due OPEN -> HALF_OPEN move."""
        self._tick(self._clock())
        return self._state

    def _tick(self, now: float) -> None:
        if self._state is State.OPEN and not self._held:
            assert self._opened_mono is not None
            wait = self.settings.reset_timeout + (self.fleet_grace if self.follower else 0.0)
            if now - self._opened_mono >= wait:
                self._move(State.HALF_OPEN, "reset_timeout", now)
        elif self._state is State.HALF_OPEN and self.follower:
            if now - self._half_open_mono >= self.fleet_grace:
                self.follower = False  # the fleet's prober went quiet: probe here
        elif self._state is State.HALF_OPEN and self._probes:
            stuck = [p for p in self._probes.values() if now >= p.deadline]
            if stuck:
                for permit in stuck:
                    permit.done = True
                self._move(State.OPEN, "probe_failed", now)  # a probe past its deadline is a timeout

    def retry_in(self) -> float:
        """Seconds until the breaker will admit calls again (0 when it admits now)."""
        now = self._clock()
        self._tick(now)
        if self._state is State.OPEN:
            assert self._opened_mono is not None
            return max(0.0, self.settings.reset_timeout - (now - self._opened_mono))
        return 0.0

    def retry_after(self) -> int:
        """The Retry-After value for a rejected call: whole seconds, at least 1."""
        return max(1, math.ceil(self.retry_in()))

    def acquire(self) -> Permit | None:
        """A permit for one call, or None when rejected (OPEN, or HALF_OPEN with every probe slot taken)."""
        now = self._clock()
        self._tick(now)
        state = self._state
        if state is State.CLOSED:
            return Permit(self, self._generation, False, math.inf)
        if (
            state is State.HALF_OPEN
            and len(self._probes) < self.settings.half_open_requests
            and not self.follower  # another process holds the fleet's probes
        ):
            permit = Permit(self, self._generation, True, now + self.probe_deadline)
            self._probes[id(permit)] = permit
            return permit
        self.rejected += 1
        return None

    def is_open(self) -> bool:
        """True while calls are refused outright: checked before a retry (never retry into an open one)."""
        return self.state is State.OPEN

    def _forget(self, permit: Permit) -> None:
        self._probes.pop(id(permit), None)

    def _report(self, permit: Permit, generation: int, failed: bool, duration: float) -> None:
        slow_call = self.settings.slow_call
        slow = slow_call is not None and duration >= slow_call
        self.calls += 1
        self.failures += failed
        self.slow_calls += slow
        self._probes.pop(id(permit), None)
        now = self._clock()
        self._tick(now)
        if generation != self._generation:
            return  # admitted before the last transition: says nothing about the current state
        if self._state is State.HALF_OPEN:
            # A slow probe means the upstream is still degraded when slowness is what opened us.
            if failed or (slow and self.settings.slow_call_rate is not None):
                self._move(State.OPEN, "probe_failed", now)
            else:
                self._probe_successes += 1
                if self._probe_successes >= self.settings.half_open_requests:
                    self._move(State.CLOSED, "probes_succeeded", now)
            return
        if self._state is not State.CLOSED:
            return
        self._consecutive = self._consecutive + 1 if failed else 0
        self._window.add(now, failed, slow)
        settings = self.settings
        if settings.consecutive_failures is not None and self._consecutive >= settings.consecutive_failures:
            self._move(State.OPEN, "consecutive_failures", now)
            return
        calls, failures, slows = self._window.totals(now)
        if calls < settings.min_calls:
            return
        if settings.failure_rate is not None and failures >= settings.failure_rate * calls:
            self._move(State.OPEN, "failure_rate", now)
        elif settings.slow_call_rate is not None and slows >= settings.slow_call_rate * calls:
            self._move(State.OPEN, "slow_call_rate", now)

    def _move(self, to: State, cause: str, now: float) -> None:
        before = self._state
        if cause != "fleet":
            self.follower = False  # judged here: this process owns the episode
        if to is State.HALF_OPEN:
            self._half_open_mono = now
        self._state = to
        self._generation += 1
        self._probes.clear()
        self._probe_successes = 0
        if to is State.OPEN:
            self._opened_mono, self._opened_wall = now, self._wall()
        else:
            self._held = False
            if to is State.CLOSED:
                self._opened_mono = self._opened_wall = None
                self._consecutive = 0
                self._window = self._new_window()
        key = (before.value, to.value)
        self.transitions[key] = self.transitions.get(key, 0) + 1
        retry_in = None
        if to is State.OPEN and not self._held:
            retry_in = self.settings.reset_timeout
        fleet = self.fleet if self.fleet is not None and self.fleet.active() else None
        transition = Transition(
            self.name, before, to, cause, self._wall(), retry_in,
            shared=cause == "fleet" or fleet is not None, held=self._held,
        )
        for listener in self.listeners:
            listener(transition)
        if fleet is not None and cause != "fleet":
            fleet.local_transition(self, transition)

    def adopt(self, to: State, *, held: bool, follower: bool, opened_ago: float = 0.0) -> None:
        """Take the state the fleet decided (cause "fleet": logged, not audited here; the deciding process
        audits it). `follower`: another process owns this OPEN/HALF_OPEN episode and its probes."""
        now = self._clock()
        if to is not self._state or (to is State.OPEN and held != self._held):
            self._held = held and to is State.OPEN
            self._move(to, "fleet", now)
        if to is State.OPEN:
            self._opened_mono, self._opened_wall = now - opened_ago, self._wall() - opened_ago
        self.follower = follower and to is not State.CLOSED

    def _announce_manual(self) -> None:
        # A manual action that changed no state (open while open, now held) still goes to the fleet.
        fleet = self.fleet
        if fleet is not None and fleet.active():
            fleet.local_transition(
                self, Transition(self.name, self._state, self._state, "manual", self._wall(), None,
                                 shared=True, held=self._held),
            )

    # -- manual controls (the runbook's "Circuit Breaker Stuck OPEN") --

    def force_close(self) -> None:
        """Close now and forget the window; in-flight calls admitted before are ignored when they report."""
        now = self._clock()
        if self._state is State.CLOSED:
            self._generation += 1
            self._consecutive = 0
            self._window = self._new_window()
            self._announce_manual()
        else:
            self._move(State.CLOSED, "manual", now)

    def force_open(self) -> None:
        """Open and hold open until an operator closes or resets (no automatic HALF_OPEN)."""
        now = self._clock()
        self._held = True  # set first so listeners see no retry_in
        if self._state is State.OPEN:
            self._opened_mono, self._opened_wall = now, self._wall()
            self.follower = False
            self._announce_manual()
        else:
            self._move(State.OPEN, "manual", now)

    def reset(self) -> None:
        """Back to a fresh CLOSED breaker: state, window and probes cleared (metric counters are kept)."""
        self.force_close()

    def snapshot(self) -> dict[str, Any]:
        """State and counters for the ops API and the metrics collector."""
        now = self._clock()
        self._tick(now)
        calls, failures, slow = self._window.totals(now)
        retry_in = None
        if self._state is State.OPEN and not self._held:
            assert self._opened_mono is not None
            retry_in = round(max(0.0, self.settings.reset_timeout - (now - self._opened_mono)), 3)
        return {
            "name": self.name,
            "state": self._state.value,
            "held": self._held,
            "failures": self.failures,
            "consecutive_failures": self._consecutive,
            "window": {"calls": calls, "failures": failures, "slow": slow},
            "opened_at": self._opened_wall,
            "retry_in": retry_in,
            "half_open_in_flight": len(self._probes),
            "calls": self.calls,
            "slow_calls": self.slow_calls,
            "rejected": self.rejected,
            "transitions": [
                {"from": f, "to": t, "count": n} for (f, t), n in sorted(self.transitions.items())
            ],
        }



log = get_logger("gateway.breaker")


def transition_listener(emit: Callable[..., Any]) -> Listener:
    """A listener that logs each transition and publishes it as a `circuit_state_change` domain event."""

    def on_transition(t: Transition) -> None:
        if t.from_state is t.to_state:
            return  # a manual action that changed nothing here (announced to the fleet only)
        # An opening is what an operator must notice; half-open and closed are recovery, informational.
        write = log.warning if t.to_state is State.OPEN else log.info
        write(
            "circuit_state_change",
            breaker=t.breaker,
            from_state=t.from_state.value,
            to_state=t.to_state.value,
            cause=t.cause,
            retry_in=t.retry_in,
        )
        if not t.shared:  # a shared breaker's transition is audited once, by the process that decided it
            emit("circuit_state_change", breaker=t.breaker, to=t.to_state.value, cause=t.cause,
                 retry_in=t.retry_in, **{"from": t.from_state.value})

    return on_transition


def breaker_deadlines(policy: Policy) -> dict[str, float]:
    """Each declared breaker's probe deadline: the longest timeout of the routes it guards."""
    deadlines: dict[str, float] = {}
    for route in policy.routes:
        upstream = policy.upstreams[route.upstream]
        name = route.breaker or upstream.breaker
        if name is not None:
            deadlines[name] = max(deadlines.get(name, 0.0), route.timeout or upstream.timeout)
    longest = max((u.timeout for u in policy.upstreams.values()), default=UNUSED_PROBE_DEADLINE)
    return {name: deadlines.get(name, longest) for name in policy.breakers}


def build_breakers(
    policy: Policy, previous: Mapping[str, Breaker], listener: Listener, clock: Callable[[], float]
) -> dict[str, Breaker]:
    """One Breaker per declared breaker. One whose settings (and deadline) did not change is carried over
    with its state, so a reload does not close an open breaker or forget its window."""
    breakers: dict[str, Breaker] = {}
    for name, deadline in breaker_deadlines(policy).items():
        settings = policy.breakers[name]
        old = previous.get(name)
        if old is not None and old.settings == settings and old.probe_deadline == deadline:
            old.listeners[:] = [listener]
            breakers[name] = old
        else:
            breakers[name] = Breaker(
                name, settings, probe_deadline=deadline, clock=clock, listeners=[listener]
            )
    return breakers
