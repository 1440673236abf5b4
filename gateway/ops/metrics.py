"""`GET /metrics` (Prometheus, for `admin.metrics_networks`) and `GET /api/ops/metrics` (admin: the
runbook's JSON)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.fleet.slo import FleetSlo
from gateway.logs import get_logger
from gateway.metrics import GatewayMetrics
from gateway.ops.http import admin_only, json_response, method_not_allowed, misdirected, problem
from gateway.ratelimit.redis import STORE_ERRORS
from gateway.server import SERVER_NAME

log = get_logger("gateway.ops")
METRICS = web.AppKey("metrics", GatewayMetrics)
SCOPES = ("fleet", "instance")


@dataclass
class FleetView:
    """Who this process is and, with Redis, the fleet it publishes to (app.py sets it)."""

    instance: str
    version: Callable[[], str]
    fleet: FleetSlo | None = None
    name: str = "gateway"


FLEET = web.AppKey("fleet_view", FleetView)


def _allowed(metrics: GatewayMetrics, peer: str | None) -> bool:
    # The direct peer, never X-Forwarded-For: a header cannot open the scrape endpoint.
    try:
        ip = ipaddress.ip_address((peer or "").strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in metrics.runtime().policy.admin.metrics_networks)


async def prometheus(request: web.Request) -> web.StreamResponse:
    """Prometheus text exposition; 403 JSON unless the peer is in `admin.metrics_networks`, 421 unless the
    Host is one of `admin.hosts` or the address scraped."""
    refused = misdirected(request)  # a rebinding page in a browser on this host must not read it
    if refused is not None:
        return refused
    metrics = request.app[METRICS]
    if not _allowed(metrics, request.remote):
        return problem(403, "forbidden", "/metrics is only served to admin.metrics_networks")
    return web.Response(
        body=metrics.exposition(),
        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store", "Server": SERVER_NAME},
    )


def _own(view: FleetView) -> dict[str, Any]:
    return {"instance": view.instance, "self": True, "age_s": 0.0, "policy_version": view.version(),
            "pid": os.getpid()}


@admin_only
async def ops_metrics(request: web.Request) -> web.StreamResponse:
    """The runbook's metrics: latency_ms_p95_<METHOD>_<path>, error_rate_..., rate_limit_breaches_total,
    circuit_breakers, and per route SLO status under `routes`.

    `?scope=fleet` (the default): every process publishing to the same Redis under the same fleet name,
    merged from their counts; this process's own part is read from memory. `?scope=instance`: this process
    alone. Without Redis, or when Redis fails, the answer is this process's with `scope: instance` (and
    `fleet_error` saying why)."""
    scope = request.query.get("scope", "fleet")
    if scope not in SCOPES:
        return problem(400, "bad_scope", f"scope must be one of {', '.join(SCOPES)}", allowed=list(SCOPES))
    metrics = request.app[METRICS]
    view = request.app[FLEET]
    own = _own(view)
    if scope == "instance" or view.fleet is None:
        body = metrics.ops_report()
        body.update(scope="instance", fleet=view.name, instance=view.instance, instances=[own])
        return json_response(body)
    try:
        members = await view.fleet.members()
    except STORE_ERRORS as exc:
        error = str(exc) or exc.__class__.__name__
        log.warning("fleet_read_failed", error=error)
        body = metrics.ops_report()
        body.update(scope="instance", fleet=view.name, instance=view.instance, instances=[own],
                    fleet_error=f"redis: {error}")
        return json_response(body)
    others = [m for m in members if m.instance != view.instance]
    runtime_slo = metrics.runtime().slo
    snapshots = [*runtime_slo.snapshot(), *(s for m in others for s in m.snapshots)]
    extras = [metrics.fleet_extra(), *(m.extra for m in others)]
    body = metrics.ops_report(snapshots, extras)
    body.update(scope="fleet", fleet=view.name, instance=view.instance,
                instances=[own, *(m.describe(False) for m in sorted(others, key=lambda m: m.instance))])
    return json_response(body)


def add_routes(app: web.Application) -> None:
    """Register the metrics endpoints (app[METRICS] must be set)."""
    app.router.add_get("/metrics", prometheus)
    app.router.add_route("*", "/metrics", method_not_allowed("GET"))  # the gateway's path: never proxied
    app.router.add_get("/api/ops/metrics", ops_metrics)
