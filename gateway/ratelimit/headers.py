"""The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10) and Retry-After, built at load time.

`RateLimit-Policy: "name";q=15;w=3600` states a limit's quota `q` per window `w` seconds; `RateLimit:
"name";r=0;t=240` the quota remaining and the seconds until more is available. A token bucket of
`capacity` tokens refilling one per `interval` is "capacity per the time an empty bucket takes to fill",
which states both the burst and the sustained rate exactly. Limit names are `[A-Za-z0-9_.-]`, so they
need no escaping.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ratelimit.bucket import US, BucketSpec


def seconds(us: int) -> int:
    """Whole seconds, rounded up: a client told to come back then is never early."""
    return -(-us // US)


@dataclass(frozen=True, slots=True)
class LimitHeaders:
    """Pre-built header values for one limit at its current rate."""

    policy: str  # the RateLimit-Policy item
    item: str  # the RateLimit item up to the remaining count: '"name";r='

    @classmethod
    def build(cls, name: str, spec: BucketSpec) -> LimitHeaders:
        """The header parts of limit `name` with bucket `spec`."""
        window = max(1, seconds(spec.span))
        return cls(policy=f'"{name}";q={spec.capacity};w={window}', item=f'"{name}";r=')

    def remaining(self, remaining: int, wait_us: int) -> str:
        """The RateLimit value: `t` is omitted when the bucket is full (no more quota to wait for)."""
        if wait_us <= 0:
            return f"{self.item}{remaining}"
        return f"{self.item}{remaining};t={seconds(wait_us)}"

    def allowed(self, remaining: int, wait_us: int) -> list[tuple[str, str]]:
        """Headers for an admitted request."""
        return [("RateLimit-Policy", self.policy), ("RateLimit", self.remaining(remaining, wait_us))]

    def rejected(self, wait_us: int) -> list[tuple[str, str]]:
        """Headers for a 429: Retry-After equals `t`, the moment the bucket holds one token again."""
        after = str(max(1, seconds(wait_us)))
        return [
            ("RateLimit-Policy", self.policy),
            ("RateLimit", f"{self.item}0;t={after}"),
            ("Retry-After", after),
        ]
