"""`GET /api/ops/health`: public, cheap, and honest about what the gateway knows.

200 {"status": "ok" | "degraded", ...} while serving; 503 {"status": "draining", ...} once shutdown has
begun, so a load balancer stops sending new requests while in-flight ones finish. "degraded" means serving,
but Redis is configured and unreachable, a breaker is not closed, or the audit trail cannot record (its
writes fail, or its storage refuses a probe write: an unwritable directory, a Redis out of memory under
noeviction or short of replicas); `reasons` says which. The body: policy version and reload
state, Redis configured/reachable, each breaker's state and each upstream's last outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.audit import iso
from gateway.events import Event
from gateway.exchange import Exchange
from gateway.ops.http import GatewayView, json_response
from gateway.runtime import Runtime

REDIS_PROBE_TTL = 2.0  # a public endpoint must not turn each request into a Redis round trip


class HealthTracker:
    """Remembers what health reports that the request path does not keep: upstream outcomes, Redis state.

    `observe` is a pipeline observer (one dict store per proxied request); `on_event` subscribes to Events.
    """

    def __init__(
        self,
        gateway: GatewayView,
        clock: Callable[[], float] = time.time,
        *,
        instance: str | None = None,
        workers: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._gateway = gateway
        self.instance = instance  # this process's id
        self.workers = workers  # under `serve --workers N`: every worker's status (gateway/fleet/workers.py)
        self._clock = clock
        self.upstreams: dict[str, tuple[int | None, str | None, float]] = {}  # name -> (status, error, time)
        self.redis_up: bool | None = None
        self.redis_error: str | None = None
        self._redis_seen = 0.0
        self._probe_lock = asyncio.Lock()

    def observe(self, exchange: Exchange) -> None:
        """Pipeline observer: record the upstream's last outcome when the request reached it."""
        outcome = exchange.outcome
        if outcome.upstream_duration is None:
            return  # answered by the gateway (404, 429, open breaker): says nothing about the upstream
        route = exchange.route
        if route is not None:
            status = outcome.upstream_status
            error = outcome.error if status is None else None
            self.upstreams[route.client.name] = (status, error, self._clock())

    def on_event(self, event: Event) -> None:
        """Events subscriber: Redis state changes."""
        if event.type == "redis_state_change":
            self.redis_up = event.fields.get("to") == "up"
            error = event.fields.get("error")
            self.redis_error = str(error) if error is not None else None
            self._redis_seen = self._clock()

    async def redis_reachable(self) -> bool | None:
        """Last known Redis state, refreshed with one PING (through the audit store) when it is stale."""
        audit = self._gateway.audit
        if self._clock() - self._redis_seen < REDIS_PROBE_TTL or audit is None or audit.store.kind != "redis":
            return self.redis_up
        async with self._probe_lock:  # concurrent health checks share one probe
            if self._clock() - self._redis_seen >= REDIS_PROBE_TTL:
                self.redis_up = await audit.store.ping()
                self.redis_error = None if self.redis_up else "ping failed"
                self._redis_seen = self._clock()
        return self.redis_up

    def breakers(self, runtime: Runtime | None) -> dict[str, str]:
        """Each breaker's state by name."""
        if runtime is None:
            return {}
        return {name: snap["state"] for name, snap in runtime.breaker_snapshots().items()}

    async def report(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for the health endpoint."""
        gateway = self._gateway
        runtime = gateway.runtime
        loaded = runtime.loaded if runtime is not None else None
        configured = bool(runtime is not None and runtime.policy.storage.redis_url)
        reachable = await self.redis_reachable() if configured else None
        breakers = self.breakers(runtime)
        audit_problem = await gateway.audit.problem() if gateway.audit is not None else None
        reasons = []
        if configured and reachable is False:
            reasons.append(f"redis unreachable: {self.redis_error or 'no answer'}")
        reasons += [f"breaker {name} is {state}" for name, state in breakers.items() if state != "closed"]
        if audit_problem is not None:
            reasons.append(audit_problem)
        if gateway.draining:
            status, code = "draining", 503
        elif runtime is None:
            status, code = "starting", 503
        elif reasons:
            status, code = "degraded", 200
        else:
            status, code = "ok", 200
        last_error = gateway.last_error
        body: dict[str, Any] = {
            "status": status,
            "reasons": reasons,
            "instance": self.instance,
            "policy": {
                "version": loaded.version if loaded is not None else None,
                "loaded_at": iso(loaded.loaded_at) if loaded is not None else None,
                "last_error": str(last_error) if last_error is not None else None,
            },
            "redis": {"configured": configured, "reachable": reachable,
                      "error": self.redis_error if configured and reachable is False else None},
            "breakers": breakers,
            "upstreams": {
                name: {"status": s, "error": e, "at": iso(t)}
                for name, (s, e, t) in sorted(self.upstreams.items())
            },
        }
        if runtime is not None:
            for name in runtime.policy.upstreams:
                body["upstreams"].setdefault(name, None)  # not called yet
        if self.workers is not None:
            workers = self.workers()
            versions = {w.get("policy_version") for w in workers}
            body["workers"] = workers
            body["workers_agree"] = len(versions) <= 1  # false: workers serve different policy versions
        if gateway.audit is not None:
            body["audit"] = {**gateway.audit.stats(), "ok": audit_problem is None, "error": audit_problem}
        return code, body


HEALTH = web.AppKey("health", HealthTracker)


async def health(request: web.Request) -> web.Response:
    """GET /api/ops/health: public; 200 when serving, 503 when draining or not started."""
    code, body = await request.app[HEALTH].report()
    return json_response(body, code)


def add_routes(app: web.Application) -> None:
    """Register GET /api/ops/health (public: no credentials, reveals no secrets)."""
    app.router.add_get("/api/ops/health", health, allow_head=True)
