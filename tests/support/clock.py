"""A clock the test moves by hand: breakers, buckets, back-offs and windows read it instead of real time."""

from __future__ import annotations


class ManualClock:
    """Monotonic (or Unix) seconds that change only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
