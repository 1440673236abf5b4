"""Fleet SLOs: each process publishes its SLO window counts to Redis; any process reads them all and merges.

Publishing runs in a background task every `fleet.publish_interval` (about 1 s), never on the request path.
One publish is one pipeline of three commands:

    SET   {prefix}:fleet:{<name>}:slo:<instance>  <snapshot JSON>  PX <ttl>
    ZADD  {prefix}:fleet:{<name>}:members  <unix time>  <instance>
    ZREMRANGEBYSCORE {prefix}:fleet:{<name>}:members  -inf  <now - ttl>

The TTL is three intervals (at least 3 s), so a dead process drops out of the fleet view within a few periods.
The fleet's keys share one hash tag (the fleet name), so on a Redis Cluster they live in one slot and the
reader's MGET is one call. The snapshot is bounded: one entry per (route, method) of the policy, sketches of
at most `MAX_KEYS` keys each.

Reading (`GET /api/ops/metrics`, an admin call) is one ZRANGEBYSCORE and one MGET. The reader's own counts
come from its memory, not from Redis, so they are never older than the call.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster

from gateway.logs import get_logger
from gateway.ratelimit.redis import ADMIN_TIMEOUT, STORE_ERRORS, make_client
from gateway.slo.snapshot import SeriesSnapshot, decode, encode

log = get_logger("gateway.fleet")
MIN_TTL = 3.0


@dataclass(frozen=True, slots=True)
class Member:
    """One process's published counts, as the fleet view lists it."""

    instance: str
    age: float  # seconds since it published (wall clocks: skew between hosts adds to it)
    policy_version: str | None
    pid: int | None
    snapshots: list[SeriesSnapshot]
    extra: dict[str, Any]

    def describe(self, own: bool) -> dict[str, Any]:
        return {"instance": self.instance, "self": own, "age_s": round(max(0.0, self.age), 3),
                "policy_version": self.policy_version, "pid": self.pid}


class FleetSlo:
    """Publishes this process's SLO snapshot and reads the fleet's. `snapshot` returns (snapshots, extra): the
    recorder's series and small extra counters (rate-limit breaches) summed across the fleet."""

    def __init__(
        self,
        url: str,
        *,
        cluster: bool,
        prefix: str,
        name: str,
        interval: float,
        instance: str,
        snapshot: Callable[[], tuple[list[SeriesSnapshot], dict[str, Any]]],
        version: Callable[[], str],
        wall: Callable[[], float] = time.time,
        client: Redis | RedisCluster | None = None,
    ) -> None:
        if client is None:
            client = make_client(url, cluster=cluster, timeout=ADMIN_TIMEOUT)
        self.client = client
        self.name = name
        self.interval = interval
        self.ttl = max(MIN_TTL, 3 * interval)
        self.instance = instance
        self._snapshot = snapshot
        self._version = version
        self._wall = wall
        head = f"{prefix}:fleet:{{{name}}}"
        self.members_key = f"{head}:members"
        self._slo_head = f"{head}:slo:"
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def key(self, instance: str) -> str:
        return self._slo_head + instance

    def payload(self) -> bytes:
        snapshots, extra = self._snapshot()
        return encode(snapshots, instance=self.instance, at=self._wall(), policy_version=self._version(),
                      pid=os.getpid(), extra=extra)

    async def publish(self) -> None:
        """Publish once (raises one of STORE_ERRORS when Redis fails)."""
        payload = self.payload()
        now = self._wall()
        async with asyncio.timeout(ADMIN_TIMEOUT):
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.key(self.instance), payload, px=int(self.ttl * 1000))
            pipe.zadd(self.members_key, {self.instance: now})
            pipe.zremrangebyscore(self.members_key, "-inf", now - self.ttl)
            await pipe.execute()

    async def _loop(self) -> None:
        while True:
            try:
                await self.publish()
            except STORE_ERRORS as exc:
                error = str(exc) or exc.__class__.__name__
                if error != self.last_error:
                    log.warning("fleet_publish_failed", error=error)
                self.last_error = error
            else:
                if self.last_error is not None:
                    log.info("fleet_publish_resumed")
                self.last_error = None
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="fleet-slo-publish")

    async def members(self) -> list[Member]:
        """Every process that published within the TTL (this one included if it did)."""
        now = self._wall()
        async with asyncio.timeout(ADMIN_TIMEOUT):
            raw_names = await self.client.zrangebyscore(self.members_key, now - self.ttl, "+inf")
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names]
            raws = await self.client.mget([self.key(n) for n in names]) if names else []
        out: list[Member] = []
        for name, raw in zip(names, raws, strict=True):
            if raw is None:
                continue  # expired between the two calls
            try:
                meta, snapshots = decode(raw)
            except ValueError as exc:
                log.warning("fleet_snapshot_unreadable", instance=name, error=str(exc))
                continue
            at = meta.get("at")
            version = meta.get("policy_version")
            pid = meta.get("pid")
            extra = meta.get("extra")
            out.append(Member(
                instance=name,
                age=now - at if isinstance(at, (int, float)) else self.ttl,
                policy_version=version if isinstance(version, str) else None,
                pid=pid if isinstance(pid, int) else None,
                snapshots=snapshots,
                extra=extra if isinstance(extra, dict) else {},
            ))
        return out

    async def close(self) -> None:
        """Stop publishing and withdraw this process from the fleet view (best effort)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT):
                pipe = self.client.pipeline(transaction=False)
                pipe.delete(self.key(self.instance))
                pipe.zrem(self.members_key, self.instance)
                await pipe.execute()
        except STORE_ERRORS:
            pass  # the keys expire on their own
        await self.client.aclose()
