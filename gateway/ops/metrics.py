"""`GET /metrics` (Prometheus, for `admin.metrics_networks`) and `GET /api/ops/metrics` (admin: the
runbook's JSON)."""

from __future__ import annotations

import ipaddress

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.metrics import GatewayMetrics
from gateway.ops.http import admin_only, json_response, method_not_allowed, misdirected, problem
from gateway.server import SERVER_NAME

METRICS = web.AppKey("metrics", GatewayMetrics)


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


@admin_only
async def ops_metrics(request: web.Request) -> web.StreamResponse:
    """The runbook's metrics: latency_ms_p95_<METHOD>_<path>, error_rate_..., rate_limit_breaches_total,
    circuit_breakers, and per route SLO status under `routes`."""
    return json_response(request.app[METRICS].ops_report())


def add_routes(app: web.Application) -> None:
    """Register the metrics endpoints (app[METRICS] must be set)."""
    app.router.add_get("/metrics", prometheus)
    app.router.add_route("*", "/metrics", method_not_allowed("GET"))  # the gateway's path: never proxied
    app.router.add_get("/api/ops/metrics", ops_metrics)
