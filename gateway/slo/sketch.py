"""Quantiles with a bounded relative error from log-spaced counts (the idea of DDSketch, written anew).

A duration `x` is counted under the integer key `ceil(log(x) / log(GAMMA))`; every duration under one key lies
within `ALPHA` (0.5 %) of the key's representative value, so any quantile read back is within 0.5 % of the
exact sample at that rank. Memory depends on the spread of the durations (about 200 keys per decade at most),
never on the request rate, so a flood cannot grow it. Counts from several sub-windows merge by addition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

ALPHA = 0.005  # relative accuracy of a value read back
GAMMA = (1 + ALPHA) / (1 - ALPHA)
INV_LN_GAMMA = 1.0 / math.log(GAMMA)
MIN_VALUE = 1e-6  # one microsecond: anything faster is counted as 1 us (the clock cannot tell them apart)
MIN_KEY = math.ceil(math.log(MIN_VALUE) * INV_LN_GAMMA)

Counts = dict[int, int]


def key_of(value: float) -> int:
    """The key a duration (seconds) is counted under."""
    if value <= MIN_VALUE:
        return MIN_KEY
    return math.ceil(math.log(value) * INV_LN_GAMMA)


def value_of(key: int) -> float:
    """The representative duration of a key: within ALPHA of every duration counted under it."""
    return 2.0 * GAMMA**key / (GAMMA + 1.0)


def merge(parts: Iterable[Counts]) -> tuple[Counts, int]:
    """Add several count maps into a new one; returns it with the total number of samples."""
    merged: Counts = {}
    get = merged.get
    for part in parts:
        for key, n in part.items():
            merged[key] = get(key, 0) + n
    return merged, sum(merged.values())


def quantiles(counts: Counts, total: int, qs: Sequence[float]) -> list[float | None]:
    """The samples at ranks floor(q * (total - 1)) (0-based, no interpolation) for each q; None when empty.

    This is the "lower nearest rank" definition: the value returned is one that was actually observed
    (to within ALPHA), never a blend of two neighbours.
    """
    if total <= 0:
        return [None] * len(qs)
    ranks = [math.floor(q * (total - 1)) for q in qs]
    order = sorted(range(len(qs)), key=ranks.__getitem__)
    out: list[float | None] = [None] * len(qs)
    pending = 0
    seen = 0
    for key in sorted(counts):
        seen += counts[key]
        while pending < len(order) and seen > ranks[order[pending]]:
            out[order[pending]] = value_of(key)
            pending += 1
        if pending == len(order):
            break
    return out
