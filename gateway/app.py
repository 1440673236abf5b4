"""The one place that wires the gateway together: policy -> runtime -> pipeline -> aiohttp application."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from gateway import heap
from gateway.alerts_webhook import AlertWebhook
from gateway.audit import AuditTrail, build_audit
from gateway.cors import add_proxy_route
from gateway.events import Event, Events
from gateway.fleet.breakers import SharedBreakers
from gateway.fleet.instance import default_instance_id
from gateway.fleet.slo import FleetSlo
from gateway.fleet.workers import WorkerLink, worker_statuses
from gateway.logs import get_logger
from gateway.metrics import GatewayMetrics
from gateway.ops import breakers as breaker_ops
from gateway.ops import console as console_ops
from gateway.ops import export as export_ops
from gateway.ops import health as health_ops
from gateway.ops import metrics as metrics_ops
from gateway.ops import policy as policy_ops
from gateway.ops import ratelimits as ratelimit_ops
from gateway.ops.auth import AdminAuth
from gateway.ops.http import ADMIN_AUTH, GATEWAY_VIEW
from gateway.ops.http import install as install_ops
from gateway.pipeline import Pipeline
from gateway.policy.loader import LoadedPolicy
from gateway.reload import RELOADER, Reloader, ReloadResult, close_all
from gateway.runtime import Runtime, build_runtime
from gateway.server import SERVER_STATS, ServerStats
from gateway.tunnel import TunnelStats

log = get_logger("gateway.app")


class Gateway:
    """Holds the current runtime: the single reference the request path reads.

    The runtime is built when the application starts (connection pools need the running loop).
    """

    def __init__(self, loaded: LoadedPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.loaded = loaded
        self.clock = clock  # the monotonic clock breakers and retry budgets read; tests pass one they move
        self.events = Events()
        self.runtime: Runtime | None = None
        self.draining = False  # set at the first shutdown signal: health answers 503 from then on
        self.audit: AuditTrail | None = None  # stores every domain event (build_app subscribes it)
        self.reloader = Reloader(self)
        self.instance = ""  # this process's id (build_app sets it): health, audit events, the fleet view

    def build(self, loaded: LoadedPolicy, previous: Runtime | None = None) -> Runtime:
        """A runtime for `loaded` wired to this gateway (events, clock): used by start and every reload."""
        return build_runtime(loaded, previous, events=self.events, clock=self.clock)

    async def start(self) -> None:
        self.runtime = self.build(self.loaded)
        await self.runtime.start()
        heap.settle()  # the policy and everything built from it: out of the collector's full passes

    def current(self) -> Runtime:
        assert self.runtime is not None, "the gateway is not started"
        return self.runtime

    @property
    def last_error(self) -> str | None:
        """The last rejected reload, by location (health is public); None once a reload succeeds."""
        return self.reloader.error_summary()

    async def reload(self) -> ReloadResult:
        """Load the policy file again and swap it in if valid (the same path as the watcher and SIGHUP)."""
        return await self.reloader.reload("api")

    async def rollback(self) -> ReloadResult:
        """Return to the previous policy held in memory."""
        return await self.reloader.rollback()

    async def close(self) -> None:
        await self.reloader.close()  # first: no reload may swap in while the runtime closes
        if self.runtime is not None:
            await close_all(self.runtime.retired_by(None))


GATEWAY = web.AppKey("gateway", Gateway)

# How the server runs the application: the CLI and the tests use the same settings.
RUNNER_KWARGS = {
    "access_log": None,  # the pipeline writes one structured line per request
    "handler_cancellation": True,  # a client that goes away cancels the upstream call
}


def build_app(
    loaded: LoadedPolicy,
    *,
    watch: bool = True,
    clock: Callable[[], float] = time.monotonic,
    instance: str | None = None,
    worker: WorkerLink | None = None,
) -> web.Application:
    """The gateway application for a validated policy: ops endpoints first, then the catch-all proxy.

    `watch`: reload when the policy file changes on disk (SIGHUP and POST /api/ops/reload always work).
    `instance`: this process's id (default host:pid). `worker`: set when this process is one worker of
    `serve --workers N` (gateway/fleet/supervisor.py): reloads, rollbacks and breaker actions are relayed to
    the other workers, `/metrics` answers for all of them, health lists each worker's policy version.
    """
    server = loaded.policy.server
    app = web.Application(
        handler_args={
            "max_field_size": server.max_field_size,
            "max_headers": server.max_headers,
            "keepalive_timeout": server.idle_timeout,
        },
    )
    gateway = Gateway(loaded, clock=clock)
    gateway.instance = instance if instance is not None else default_instance_id()
    gateway.events.instance = gateway.instance
    app[GATEWAY] = app[GATEWAY_VIEW] = gateway
    app[RELOADER] = gateway.reloader
    auth = app[ADMIN_AUTH] = AdminAuth(loaded.policy.admin, loaded.policy.identity)

    def follow_identity(event: Event) -> None:
        if event.type == "policy_reload" and event.fields.get("result") == "success":
            auth.follow(gateway.current().loaded.policy.identity)

    gateway.events.subscribe(follow_identity)
    install_ops(app, gateway.events)
    storage = loaded.policy.storage
    audit = gateway.audit = build_audit(
        loaded.policy.audit, storage.redis_url, storage.key_prefix, storage.timeout,
        Path(loaded.source).resolve().parent, cluster=storage.cluster,
    )
    gateway.events.subscribe(audit)  # subscribed first and closed last: it sees every event, even at shutdown

    async def audit_lifecycle(_: web.Application) -> AsyncIterator[None]:
        audit.start()
        yield
        await audit.close()  # drains the queue: a clean restart loses no event

    app.cleanup_ctx.append(audit_lifecycle)
    health = app[health_ops.HEALTH] = health_ops.HealthTracker(
        gateway, instance=gateway.instance,
        workers=(lambda: worker_statuses(worker.directory)) if worker is not None else None,
    )
    gateway.events.subscribe(health.on_event)

    async def mark_draining(_: web.Application) -> None:
        gateway.draining = True  # the CLI sets it at the signal already; other runners get it here

    app.on_shutdown.append(mark_draining)
    server_stats = app[SERVER_STATS] = ServerStats()
    tunnels = TunnelStats()
    app[metrics_ops.METRICS] = GatewayMetrics(
        gateway.current, gateway.events, audit.stats, server_stats, tunnels
    )
    pipeline = Pipeline(
        gateway.current,
        observers=[health.observe],
        reject_escaped_slashes=server.escaped_slashes == "reject",
        tunnels=tunnels,
        keep_upstream_server=server.upstream_server_header == "keep",
    )

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        await gateway.reloader.start(watch=watch)
        yield
        await gateway.close()

    app.cleanup_ctx.append(lifecycle)
    storage, fleet_settings = loaded.policy.storage, loaded.policy.fleet
    view = app[metrics_ops.FLEET] = metrics_ops.FleetView(
        gateway.instance, lambda: gateway.current().loaded.version, name=fleet_settings.name
    )
    if storage.redis_url:
        metrics = app[metrics_ops.METRICS]
        fleet = view.fleet = FleetSlo(
            storage.redis_url, cluster=storage.cluster, prefix=storage.key_prefix, name=fleet_settings.name,
            interval=fleet_settings.publish_interval, instance=gateway.instance,
            snapshot=lambda: (gateway.current().slo.snapshot(), metrics.fleet_extra()),
            version=lambda: gateway.current().loaded.version,
        )

        async def fleet_lifecycle(_: web.Application) -> AsyncIterator[None]:
            fleet.start()
            yield
            await fleet.close()

        app.cleanup_ctx.append(fleet_lifecycle)
    if storage.redis_url and any(b.shared for b in loaded.policy.breakers.values()):
        if storage.cluster:
            log.warning("fleet_breakers_local", reason="shared breakers are not wired for a Redis Cluster")
        else:
            shared = SharedBreakers(
                storage.redis_url, prefix=storage.key_prefix, fleet=fleet_settings.name,
                instance=gateway.instance, events=gateway.events, breakers=lambda: gateway.current().breakers,
                retry_interval=storage.retry_interval,
            )

            def reattach(event: Event) -> None:
                if event.type == "policy_reload" and event.fields.get("result") == "success":
                    shared.attach()  # a breaker whose settings changed is a new object

            gateway.events.subscribe(reattach)

            async def breakers_lifecycle(_: web.Application) -> AsyncIterator[None]:
                shared.start()
                yield
                await shared.close()

            app.cleanup_ctx.append(breakers_lifecycle)
    if worker is not None:
        worker.install(app, gateway, app[metrics_ops.METRICS])
    webhook_url = loaded.policy.alerts.webhook_url
    if webhook_url is not None:
        webhook = AlertWebhook(webhook_url)
        gateway.events.subscribe(webhook.on_event)  # queues only; delivery runs in the webhook's own task

        async def alerts(_: web.Application) -> AsyncIterator[None]:
            await webhook.start()
            yield
            await webhook.close()

        app.cleanup_ctx.append(alerts)
    # Ops endpoints: each module adds its routes here, before the catch-all.
    app[breaker_ops.BREAKERS] = lambda: gateway.current().breakers
    breaker_ops.add_routes(app)
    policy_ops.add_routes(app)
    app[ratelimit_ops.RATE_LIMITS] = lambda: (
        gateway.runtime.limiter if gateway.runtime is not None else None, gateway.events
    )
    ratelimit_ops.add_routes(app)
    health_ops.add_routes(app)
    export_ops.add_routes(app)
    metrics_ops.add_routes(app)
    console_ops.add_routes(app)
    # Last: the proxy, with CORS if configured, and before it a JSON 404/405 for the rest of /api/ops/.
    add_proxy_route(app, pipeline.handle, loaded.policy.cors)
    return app
