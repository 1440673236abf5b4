"""Token-bucket math (GCRA form) for the in-process backend; token_bucket.lua mirrors it line by line.

A bucket is one number, the theoretical arrival time (TAT): the instant at which it would be full again.
Its "debt" `TAT - now` is how far it is from full, in time; each request adds one `interval` of debt and is
admitted while the debt stays within `span = interval * capacity`. Everything is in whole microseconds so
that the Lua version (doubles) and this one (ints) compute identical results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

US = 1_000_000


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """One limit's bucket: `capacity` tokens, one more every `interval` microseconds."""

    interval: int
    capacity: int

    @classmethod
    def of(cls, rate: int, per: float, capacity: int) -> BucketSpec:
        """`rate` requests per `per` seconds, bursts of `capacity`; the interval rounds up (never faster)."""
        per_us = round(per * US)
        return cls(interval=max(1, -(-per_us // rate)), capacity=capacity)

    @property
    def span(self) -> int:
        """Microseconds an empty bucket takes to fill."""
        return self.interval * self.capacity


@dataclass(frozen=True, slots=True)
class Verdict:
    """One limit's answer: admitted or not, whole tokens left, microseconds until one more token (0: full)."""

    allowed: bool
    remaining: int
    wait: int


def evaluate(tat: int, now: int, spec: BucketSpec) -> tuple[Verdict, int]:
    """Decide one request against one bucket. Returns the verdict and the TAT to store if it is taken."""
    span = spec.span
    debt = tat - now
    if debt < 0:
        debt = 0
    elif debt > span:
        debt = span  # the burst shrank (policy change or override): no emptier than empty
    after = debt + spec.interval
    allowed = after <= span
    state = after if allowed else debt
    remaining = (span - state) // spec.interval
    wait = state - (span - (remaining + 1) * spec.interval) if state > 0 else 0
    return Verdict(allowed, remaining, wait), now + after


def evaluate_all(
    tats: Sequence[int], now: int, specs: Sequence[BucketSpec], enforced: Sequence[bool]
) -> tuple[list[Verdict], list[int | None]]:
    """Decide one request against all its buckets at once.

    Nothing is taken unless every enforced bucket admits (a rejected request costs no limit anything); a
    shadow bucket that would reject is reported but blocks nothing and is not taken. Returns the verdicts
    and, per bucket, the TAT to store or None.
    """
    verdicts: list[Verdict] = []
    stores: list[int | None] = []
    blocked = False
    for tat, spec, enforce in zip(tats, specs, enforced, strict=True):
        verdict, new_tat = evaluate(tat, now, spec)
        verdicts.append(verdict)
        stores.append(new_tat if verdict.allowed else None)
        if enforce and not verdict.allowed:
            blocked = True
    if blocked:
        return verdicts, [None] * len(stores)
    return verdicts, stores
