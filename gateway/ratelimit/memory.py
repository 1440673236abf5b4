"""In-process buckets: the embedded default (one gateway instance) and the `local` fallback when Redis fails.

Memory is bounded: a bucket whose TAT has passed is full, which is exactly what an absent key means, so idle
buckets can be dropped at no cost; beyond `max_keys` the least recently used bucket goes first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from gateway.ratelimit.bucket import US, BucketSpec, Verdict, evaluate_all

_SWEEP = 2  # expired buckets looked at per write: enough to keep pace with one insert per request


class MemoryBuckets:
    """Token buckets in a dict, keyed like the Redis keys; `clock` is monotonic seconds."""

    def __init__(self, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self._clock = clock
        self._tats: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    def check(
        self, keys: Sequence[str], specs: Sequence[BucketSpec], enforced: Sequence[bool]
    ) -> list[Verdict]:
        """Decide one request against its buckets and take a token from each when it is admitted."""
        now = int(self._clock() * US)
        tats = self._tats
        verdicts, stores = evaluate_all([tats.get(k, 0) for k in keys], now, specs, enforced)
        for key, tat in zip(keys, stores, strict=True):
            if tat is not None:
                tats[key] = tat
                tats.move_to_end(key)
            elif key in tats:
                tats.move_to_end(key)  # an actor still being refused is the last one to forget
        if len(tats) > self.max_keys:
            while len(tats) > self.max_keys:
                tats.popitem(last=False)
        for _ in range(_SWEEP):
            if not tats:
                break
            oldest = next(iter(tats))
            if tats[oldest] > now:
                break
            del tats[oldest]
        return verdicts

    def clear(self) -> None:
        """Forget every bucket (all full again)."""
        self._tats.clear()
