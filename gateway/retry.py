"""Retries: which requests may be sent again, when, and how many retries an upstream can take.

A retry is only safe when repeating the request cannot do a second thing: idempotent methods, or a request
carrying an `Idempotency-Key` (the upstream deduplicates). The body must be replayable: a small body with a
known length is buffered; a streamed or large body is sent once. A per-upstream retry budget caps retries to a
share of recent requests so that, when everything fails, retries cannot multiply the load on a sick upstream.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from gateway.breaker import Breaker
from gateway.policy.model import Policy, Retries
from gateway.upstream.errors import UpstreamError
from gateway.upstream.methods import IDEMPOTENT_METHODS

MAX_REPLAY_BODY = 64 * 1024  # bytes buffered to make a body replayable; larger bodies stream once
BUDGET_WINDOW = 10.0  # seconds of history the retry budget looks at
MIN_RETRIES_PER_SECOND = 3.0  # low traffic can still retry a little


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's `retries:` compiled at load time. `attempts` counts every try, the first one included."""

    attempts: int
    backoff: float
    statuses: frozenset[int]
    errors: frozenset[str]

    @classmethod
    def compile(cls, retries: Retries) -> RetryPolicy:
        statuses = frozenset(int(v) for v in retries.on if v.isdigit())
        errors = frozenset(v for v in retries.on if not v.isdigit())
        return cls(attempts=retries.attempts, backoff=retries.backoff, statuses=statuses, errors=errors)

    def replayable(self, method: str, headers: Mapping[str, str], has_body: bool, length: int | None) -> bool:
        """Whether this request may be sent twice: idempotent (by method or key) with a small known body."""
        if method not in IDEMPOTENT_METHODS and "Idempotency-Key" not in headers:
            return False
        return not has_body or (length is not None and length <= MAX_REPLAY_BODY)

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `retry` (1-based): exponential, with jitter to spread herds."""
        return float(self.backoff * 2.0 ** (retry - 1) * (0.5 + rand() / 2))

    def longest(self, timeout: float) -> float:
        """The most time a request can take under this policy: every attempt to `timeout`, plus each
        backoff at its ceiling (`delay` only jitters down from it)."""
        return timeout * self.attempts + sum(self.backoff * 2.0 ** (r - 1) for r in range(1, self.attempts))


class RetryBudget:
    """Retries allowed to one upstream: at most `ratio` of its requests over the last BUDGET_WINDOW seconds,
    and never fewer than MIN_RETRIES_PER_SECOND over that window.

    Counts live in one-second buckets, so memory is fixed whatever the traffic.
    """

    def __init__(
        self,
        ratio: float,
        *,
        window: float = BUDGET_WINDOW,
        min_per_second: float = MIN_RETRIES_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self._slots = max(1, int(window))
        self._floor = min_per_second * self._slots
        self._clock = clock
        self._requests = [0] * self._slots
        self._retries = [0] * self._slots
        self._head = -1
        self._window_requests = 0
        self._window_retries = 0
        # Monotonic counters for metrics.
        self.requests = 0
        self.retries = 0
        self.denied = 0

    def _advance(self) -> int:
        second = int(self._clock())
        if second > self._head:
            for stale in range(max(self._head + 1, second - self._slots + 1), second + 1):
                slot = stale % self._slots
                self._window_requests -= self._requests[slot]
                self._window_retries -= self._retries[slot]
                self._requests[slot] = self._retries[slot] = 0
            self._head = second
        return second % self._slots

    def request(self) -> None:
        """Count one request sent to the upstream (first attempts only)."""
        slot = self._advance()
        self._requests[slot] += 1
        self._window_requests += 1
        self.requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when the budget is spent."""
        slot = self._advance()
        if self._window_retries + 1 > max(self._floor, self.ratio * self._window_requests):
            self.denied += 1
            return False
        self._retries[slot] += 1
        self._window_retries += 1
        self.retries += 1
        return True

    def stats(self) -> dict[str, Any]:
        """Counters for the metrics collector."""
        self._advance()
        return {
            "ratio": self.ratio,
            "requests": self.requests,
            "retries": self.retries,
            "denied": self.denied,
            "window_requests": self._window_requests,
            "window_retries": self._window_retries,
        }


def build_retry_budgets(
    policy: Policy, previous: Mapping[str, RetryBudget], clock: Callable[[], float]
) -> dict[str, RetryBudget]:
    """A budget for each upstream that has a retrying route; an unchanged budget keeps its history."""
    budgets: dict[str, RetryBudget] = {}
    for route in policy.routes:
        if route.retries is None or route.upstream in budgets:
            continue
        ratio = policy.upstreams[route.upstream].retry_budget
        old = previous.get(route.upstream)
        budgets[route.upstream] = (
            old if old is not None and old.ratio == ratio else RetryBudget(ratio, clock=clock)
        )
    return budgets


class BreakerOpened(Exception):
    """The breaker opened during a backoff: the request is refused, never retried into an open breaker."""


class _Reply(Protocol):
    @property
    def status(self) -> int: ...

    def release(self) -> None: ...


R = TypeVar("R", bound=_Reply)


def _may_retry(breaker: Breaker | None, budget: RetryBudget | None) -> bool:
    """One more attempt is allowed: the breaker is not open and the upstream's budget has a retry."""
    if breaker is not None and breaker.is_open():
        return False
    return budget is None or budget.try_spend()


async def send_with_retries(
    send: Callable[[], Awaitable[R]],
    policy: RetryPolicy | None,
    attempts: int,
    *,
    breaker: Breaker | None,
    budget: RetryBudget | None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> R:
    """Send, and send again (after a jittered backoff) while `policy`, `attempts` (1: never again), the
    breaker and the upstream's retry budget allow it.

    Returns the last reply: one the policy does not retry, or the last try's. Raises the last UpstreamError,
    or BreakerOpened when the breaker opened during a backoff.
    """
    if budget is not None:
        budget.request()  # first attempts count toward the budget, so retries are a share of the traffic
    attempt = 1
    while True:
        if attempt > 1 and breaker is not None and breaker.is_open():
            raise BreakerOpened
        try:
            reply = await send()
        except UpstreamError as exc:
            if (
                policy is None
                or attempt >= attempts
                or exc.kind not in policy.errors
                or not _may_retry(breaker, budget)
            ):
                raise
        else:
            if (
                policy is None
                or attempt >= attempts
                or reply.status not in policy.statuses
                or not _may_retry(breaker, budget)
            ):
                return reply
            reply.release()
        attempt += 1
        await sleep(policy.delay(attempt - 1))
