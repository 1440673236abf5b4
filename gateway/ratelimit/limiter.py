"""The limiter: every limit of a request decided in one step, with load-time work done at load time.

Keys: `{prefix}:rl:{<tag>}:<limit>` where `tag` is the first 16 hex digits of the SHA-1 of the key value
(`u:<user>`, `i:<ip>`, `r:<route>`, `g`, `h:<header>:<value>`): user input never reaches Redis unhashed,
key length and count are bounded, and limits keyed by the same value share a Cluster slot. `user` and
`header:NAME` fall back to the client IP when the header is absent.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from gateway.events import Events
from gateway.identity import Identity
from gateway.policy.model import Policy, RateLimit, Route, Storage
from gateway.policy.units import format_duration
from gateway.ratelimit.bucket import US, BucketSpec, Verdict
from gateway.ratelimit.headers import LimitHeaders, seconds
from gateway.ratelimit.memory import MemoryBuckets
from gateway.ratelimit.overrides import Overrides
from gateway.ratelimit.redis import RedisBuckets, RedisUnavailable

USER, IP, ROUTE, GLOBAL, HEADER = range(5)
_MAX_BLOCKED = 10_000
Change = tuple[int | None, int | None]  # an override before and after; None: the policy's rate


def tag_of(value: str) -> str:
    """The hash tag of one key value.

    Not cached: hashing costs ~0.3 us. A digest cache (removed) held 15 MiB at 60,000 users, and with it the
    bench's 100,000-key run was 4-6% slower than its one-key run; without it they are within 1%.
    """
    return hashlib.sha1(value.encode(), usedforsecurity=False).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    """One limit at its current rate, with its key parts, script arguments and headers pre-built."""

    name: str
    limit: RateLimit
    rate: int  # the override when there is one, else the policy's
    source: str  # "policy" | "override"
    spec: BucketSpec
    kind: int
    key_label: str  # the `key` of rate_limit_hit events: user, ip, route, global, header:NAME
    header: str  # the header name for header:NAME keys, else ""
    header_tag: str  # the key value prefix for header:NAME keys: "h:<name in lower case>:"
    enforced: bool
    on_error: str
    headers: LimitHeaders
    args: tuple[str, str, str]
    key_head: str
    key_tail: str


def compile_limit(name: str, limit: RateLimit, storage: Storage, override: int | None) -> CompiledLimit:
    """Resolve one limit. An override replaces `rate`; an explicit `burst` keeps its ratio to the rate."""
    rate = override if override is not None else limit.rate
    if limit.burst is None:
        capacity = rate
    else:
        capacity = max(1, round(limit.burst * rate / limit.rate))
    spec = BucketSpec.of(rate, limit.per, capacity)
    if limit.key.startswith("header:"):
        kind, header = HEADER, limit.key[7:]
    else:
        kind, header = {"user": USER, "ip": IP, "route": ROUTE, "global": GLOBAL}[limit.key], ""
    return CompiledLimit(
        name=name,
        limit=limit,
        rate=rate,
        source="override" if override is not None else "policy",
        spec=spec,
        kind=kind,
        key_label=limit.key,
        header=header,
        header_tag=f"h:{header.lower()}:",
        enforced=not limit.shadow,
        on_error=limit.on_redis_error or storage.on_redis_error,
        headers=LimitHeaders.build(name, spec),
        args=(str(spec.interval), str(spec.capacity), "0" if limit.shadow else "1"),
        key_head=f"{storage.key_prefix}:rl:{{",
        key_tail=f"}}:{name}",
    )


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """The limits one route checks, resolved when the policy loads."""

    route: str
    names: tuple[str, ...]
    route_tag: str


def route_limits(route: Route) -> RouteLimits | None:
    """What a compiled route carries: None when the route has no limits."""
    if not route.rate_limits:
        return None
    return RouteLimits(route=route.name, names=tuple(route.rate_limits), route_tag=tag_of(f"r:{route.name}"))


@dataclass(frozen=True, slots=True)
class Decision:
    """status 0: admitted (add `headers` to the response); else answer `status` with `error` and `fields`."""

    status: int
    headers: Sequence[tuple[str, str]] = ()
    error: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


ADMIT = Decision(0)


@dataclass
class LimiterStats:
    """Counters the metrics module reads at scrape time; they survive reloads."""

    checks: int = 0
    breaches: dict[str, int] = field(default_factory=dict)  # enforced rejections by limit
    shadow_breaches: dict[str, int] = field(default_factory=dict)  # would-be rejections of shadow limits
    fallbacks: dict[str, int] = field(default_factory=lambda: {"local": 0, "allow": 0, "deny": 0})


class RedisReport(TypedDict):
    up: bool
    errors: int  # failed checks (timeouts, connection errors, server errors)
    skipped: int  # checks that did not wait on Redis because it was down
    transitions: int
    last_error: str | None
    round_trips: int  # batched writes of limit checks


class LimiterReport(TypedDict):
    """`Limiter.stats()`: what metrics and the ops API read of the limiter."""

    checks: int
    breaches: dict[str, int]
    shadow_breaches: dict[str, int]
    fallbacks: dict[str, int]
    local_buckets: int
    redis: RedisReport | None  # None when no Redis is configured


class _State:
    """What outlives a policy snapshot: buckets, the Redis connection and its health, overrides, counters."""

    def __init__(
        self, storage: Storage, events: Events, clock: Callable[[], float], previous: _State | None
    ) -> None:
        self.storage = storage
        self.redis: RedisBuckets | None = None
        if storage.redis_url is not None:
            self.redis = RedisBuckets(
                storage.redis_url, cluster=storage.cluster, timeout=storage.timeout,
                retry_interval=storage.retry_interval, prefix=storage.key_prefix, events=events, clock=clock,
            )
        self.local: MemoryBuckets
        self.stats: LimiterStats
        if previous is not None:
            self.local = previous.local
            self.local.max_keys = storage.local_max_keys
            self.stats = previous.stats
        else:
            self.local = MemoryBuckets(storage.local_max_keys, clock)
            self.stats = LimiterStats()
        kept = previous.overrides.values if previous is not None and self.redis is None else None
        self.overrides: Overrides = Overrides(self.redis, storage.override_refresh, kept)
        self.blocked: dict[str, float] = {}  # enforced bucket key -> monotonic time it admits again
        self.users = 0
        self.started = False

    async def close(self) -> None:
        await self.overrides.close()
        if self.redis is not None:
            await self.redis.close()


class Limiter:
    """Decides requests against the policy's limits; built per policy snapshot, state carried over."""

    def __init__(
        self,
        policy: Policy,
        previous: Limiter | None = None,
        *,
        events: Events,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._events = events
        self._clock = clock
        self._limits = dict(policy.rate_limits)
        self._storage = policy.storage
        self._closed = False
        self._state: _State
        if previous is not None and previous._storage == policy.storage and previous._state.users > 0:
            self._state = previous._state
        else:
            earlier = previous._state if previous is not None else None
            self._state = _State(policy.storage, events, clock, earlier)
        # Shared by every limiter built on it (the running one, a retiring one, one of an aborted reload):
        # the connection closes with the last of them.
        self._state.users += 1
        if previous is not None:
            self._state.overrides.forget(set(previous._limits) - set(self._limits))
        self._table: dict[str, CompiledLimit] = {}
        self._seen = -1
        self._recompile()

    def _recompile(self) -> None:
        overrides = self._state.overrides
        self._table = {
            name: compile_limit(name, limit, self._storage, overrides.values.get(name))
            for name, limit in self._limits.items()
        }
        self._seen = overrides.version
        self._state.blocked.clear()  # a rate may have gone up: earlier refusals prove nothing now

    async def start(self) -> None:
        """Warm the Redis connection up and start refreshing shared overrides (idempotent)."""
        state = self._state
        if state.redis is not None and not state.started:
            state.started = True
            await state.redis.start()
            await state.overrides.refresh()
        state.overrides.start()

    async def close(self) -> None:
        """Release the shared state; the last limiter on it closes the Redis client and background tasks."""
        if not self._closed:
            self._closed = True
            self._state.users -= 1
            if self._state.users == 0:
                await self._state.close()

    @property
    def limits(self) -> Mapping[str, CompiledLimit]:
        """The limits at their current rates, by name."""
        if self._seen != self._state.overrides.version:
            self._recompile()
        return self._table

    async def check(self, limits: RouteLimits, identity: Identity, headers: Mapping[str, str]) -> Decision:
        """Decide one request against every limit of its route, taking a token from each when admitted."""
        state = self._state
        state.stats.checks += 1
        if self._seen != state.overrides.version:
            self._recompile()
        table = self._table
        compiled = [table[name] for name in limits.names]
        keys: list[str] = []
        tags: list[str] = []
        for lim in compiled:
            kind = lim.kind
            if kind == USER:
                tag = tag_of("u:" + identity.user if identity.user is not None else "i:" + identity.ip)
            elif kind == IP:
                tag = tag_of("i:" + identity.ip)
            elif kind == ROUTE:
                tag = limits.route_tag
            elif kind == GLOBAL:
                tag = tag_of("g")
            else:
                value = headers.get(lim.header)
                tag = tag_of(lim.header_tag + value if value else "i:" + identity.ip)
            tags.append(tag)
            keys.append(lim.key_head + tag + lim.key_tail)

        now = self._clock()
        blocked = state.blocked
        if blocked:
            for i, lim in enumerate(compiled):
                until = blocked.get(keys[i]) if lim.enforced else None
                if until is not None:
                    if until > now:
                        wait = int((until - now) * US) + 1
                        self._hit(lim, limits, identity)
                        return self._refuse(lim, limits, wait)
                    del blocked[keys[i]]

        verdicts = await self._decide(compiled, keys, tags)
        if isinstance(verdicts, Decision):
            return verdicts
        worst: int | None = None
        best: int | None = None
        for i, verdict in enumerate(verdicts):
            lim = compiled[i]
            if not verdict.allowed:
                self._hit(lim, limits, identity)
                if lim.enforced:
                    if len(blocked) >= _MAX_BLOCKED:
                        blocked.clear()
                    blocked[keys[i]] = now + verdict.wait / US
                    if worst is None or verdict.wait > verdicts[worst].wait:
                        worst = i
            elif lim.enforced and verdict.remaining >= 0:
                if best is None or verdict.remaining < verdicts[best].remaining or (
                    verdict.remaining == verdicts[best].remaining and verdict.wait > verdicts[best].wait
                ):
                    best = i
        if worst is not None:
            return self._refuse(compiled[worst], limits, verdicts[worst].wait)
        if best is None:
            return ADMIT
        return Decision(0, compiled[best].headers.allowed(verdicts[best].remaining, verdicts[best].wait))

    async def _decide(
        self, compiled: list[CompiledLimit], keys: list[str], tags: list[str]
    ) -> list[Verdict] | Decision:
        state = self._state
        enforced = [lim.enforced for lim in compiled]
        if state.redis is None:
            return state.local.check(keys, [lim.spec for lim in compiled], enforced)
        args = [a for lim in compiled for a in lim.args]
        try:
            reply = await state.redis.check(keys, args, tags)
        except RedisUnavailable:
            return self._fallback(compiled, keys)
        return [Verdict(reply[i] == 1, reply[i + 1], reply[i + 2]) for i in range(0, len(reply), 3)]

    def _fallback(self, compiled: list[CompiledLimit], keys: list[str]) -> list[Verdict] | Decision:
        """Redis failed or is skipped: each limit does what its `on_redis_error` says."""
        state = self._state
        fallbacks = state.stats.fallbacks
        for lim in compiled:
            fallbacks[lim.on_error] += 1
        for lim in compiled:
            if lim.on_error == "deny" and lim.enforced:
                assert state.redis is not None
                after = str(max(1, seconds(int(state.redis.health.retry_after() * US))))
                return Decision(
                    503, [("Retry-After", after)], "rate_limit_unavailable",
                    {"limit": lim.name, "retry_after": int(after),
                     "detail": "the rate-limit store is unavailable and this limit fails closed"},
                )
        verdicts = [Verdict(True, -1, 0)] * len(compiled)  # remaining -1: unknown, no headers
        local = [i for i, lim in enumerate(compiled) if lim.on_error == "local"]
        if local:
            answers = state.local.check(
                [keys[i] for i in local], [compiled[i].spec for i in local],
                [compiled[i].enforced for i in local],
            )
            for i, verdict in zip(local, answers, strict=True):
                verdicts[i] = verdict
        return verdicts

    def _hit(self, lim: CompiledLimit, limits: RouteLimits, identity: Identity) -> None:
        counts = self._state.stats.breaches if lim.enforced else self._state.stats.shadow_breaches
        counts[lim.name] = counts.get(lim.name, 0) + 1
        self._events.emit(
            "rate_limit_hit", actor=identity.actor, limit=lim.name, route=limits.route, key=lim.key_label,
            shadow=not lim.enforced,
        )

    @staticmethod
    def _refuse(lim: CompiledLimit, limits: RouteLimits, wait: int) -> Decision:
        headers = lim.headers.rejected(wait)
        return Decision(
            429, headers, "rate_limited",
            {"limit": lim.name, "route": limits.route, "retry_after": int(headers[-1][1])},
        )

    # -- overrides (the ops API) --

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every limit's current values and where they come from (policy or override)."""
        return {
            name: {
                "rate": lim.rate,
                "per": format_duration(lim.limit.per),
                "burst": lim.spec.capacity,
                "key": lim.key_label,
                "shadow": not lim.enforced,
                "on_redis_error": lim.on_error,
                "source": lim.source,
                "policy_rate": lim.limit.rate,
            }
            for name, lim in self.limits.items()
        }

    def override_of(self, name: str) -> int | None:
        """The override of one limit, None when it runs at the policy's rate."""
        return self._state.overrides.values.get(name) if name in self._limits else None

    async def set_overrides(self, rates: Mapping[str, int | None]) -> dict[str, Change]:
        """Set (or with None, or the policy's own rate, remove) overrides of known limits.

        Returns {name: (before, after)} for the limits that changed, None meaning "the policy's rate". Raises
        one of STORE_ERRORS, with nothing changed, when the shared store cannot take the change.
        """
        changes: dict[str, Change] = {}
        for name, rate in rates.items():
            before = self.override_of(name)
            after = None if rate is None or rate == self._limits[name].rate else rate
            if before != after:
                changes[name] = (before, after)
        if changes:
            await self._state.overrides.update(
                {n: a for n, (_, a) in changes.items() if a is not None},
                [n for n, (_, a) in changes.items() if a is None],
            )
            self._recompile()
        return changes

    async def reset_overrides(self) -> dict[str, Change]:
        """Every limit back to the policy's rate. Returns the changes like `set_overrides`."""
        changes: dict[str, Change] = {
            n: (r, None) for n, r in self._state.overrides.values.items() if n in self._limits
        }
        await self._state.overrides.update({}, [], clear=True)
        self._recompile()
        return changes

    def stats(self) -> LimiterReport:
        """Counters and state for metrics, read at scrape time."""
        state = self._state
        health = state.redis.health if state.redis is not None else None
        return {
            "checks": state.stats.checks,
            "breaches": dict(state.stats.breaches),
            "shadow_breaches": dict(state.stats.shadow_breaches),
            "fallbacks": dict(state.stats.fallbacks),
            "local_buckets": len(state.local),
            "redis": None if health is None else {
                "up": health.up,
                "errors": health.errors,
                "skipped": health.skipped,
                "transitions": health.transitions,
                "last_error": health.last_error,
                "round_trips": state.redis.round_trips if state.redis is not None else 0,
            },
        }
