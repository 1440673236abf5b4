"""A Grafana dashboard rendered from the policy (`python -m gateway alerts policies.yaml --grafana`).

Built on the same metric names as `gateway.metrics` and the recording rules of `gateway.alert_rules`; the
per-route "share within target" and burn-rate panels are written for each SLO route of the policy.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.policy.model import Policy

_DS = {"type": "prometheus", "uid": "${datasource}"}
_SEL = 'route=~"$route"'


def _panel(pid: int, title: str, targets: list[tuple[str, str]], unit: str, x: int, y: int,
           kind: str = "timeseries", width: int = 12) -> dict[str, Any]:
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": _DS,
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": _DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def render(policy: Policy) -> dict[str, Any]:
    """The dashboard model."""
    quantile = (
        "histogram_quantile({q}, sum by (route, le) "
        "(rate(gateway_{kind}_duration_seconds_bucket{{{sel}}}[5m])))"
    )
    latency = [
        (quantile.format(q=q, kind="request", sel=_SEL), f"{{{{route}}}} p{round(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]
    upstream = [(quantile.format(q=0.95, kind="upstream", sel=_SEL), "{{route}} upstream p95")]
    within: list[tuple[str, str]] = []
    burn: list[tuple[str, str]] = []
    for route in policy.routes:
        if route.slo is None:
            continue
        sel = f'route="{route.name}"'
        if route.slo.p95 is not None:
            le = repr(round(route.slo.p95, 9))
            within.append((
                f'sum(rate(gateway_request_duration_seconds_bucket{{{sel},le="{le}"}}[5m])) / '
                f"sum(rate(gateway_request_duration_seconds_count{{{sel}}}[5m]))",
                f"{route.name} share <= {round(route.slo.p95 * 1000):g}ms (target 95%)",
            ))
        if route.slo.error_rate is not None:
            ratio = f"gateway:request_error_ratio:rate1h{{{sel}}}"
            burn.append((f"{ratio} / {route.slo.error_rate:g}", f"{route.name} 1h burn"))
    panels = [
        _panel(1, "Requests per second", [(f"sum by (route) (rate(gateway_requests_total{{{_SEL}}}[5m]))",
                                           "{{route}}")], "reqps", 0, 0),
        _panel(2, "Latency p50 / p95 / p99 (client side)", latency, "s", 12, 0),
        _panel(3, "Error ratio (5xx; 429 if counted)", [(
            f"sum by (route) (rate(gateway_request_errors_total{{{_SEL}}}[5m])) / "
            f"sum by (route) (rate(gateway_requests_total{{{_SEL}}}[5m]))", "{{route}}",
        )], "percentunit", 0, 8),
        _panel(4, "Upstream latency p95", upstream, "s", 12, 8),
        _panel(5, "Share of requests within the p95 target (exact: the target is a bucket bound)",
               within, "percentunit", 0, 16),
        _panel(6, "Error budget burn rate (1h; page above 14.4 with 5m)", burn, "none", 12, 16),
        _panel(7, "Circuit breaker state (0 closed, 1 half-open, 2 open)",
               [("max by (breaker) (gateway_circuit_breaker_state)", "{{breaker}}")], "none", 0, 24),
        _panel(8, "Rate-limit refusals per second", [
            ("sum by (limit) (rate(gateway_rate_limit_breaches_total[5m]))", "{{limit}}"),
            (f"sum by (route) (rate(gateway_requests_throttled_total{{{_SEL}}}[5m]))", "429 on {{route}}"),
        ], "reqps", 12, 24),
        _panel(9, "Breaker transitions (1h)", [
            ("sum by (breaker, to) (increase(gateway_circuit_breaker_transitions_total[1h]))",
             "{{breaker}} -> {{to}}"),
        ], "short", 0, 32),
        _panel(10, "Policy reloads (1h) and Redis errors", [
            ("sum by (result) (increase(gateway_policy_reloads_total[1h]))", "reload {{result}}"),
            ("sum(rate(gateway_redis_errors_total[5m]))", "redis errors/s"),
        ], "short", 12, 32),
    ]
    return {
        "title": "Resilience gateway: SLOs",
        "uid": "resilience-gateway-slo",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "tags": ["gateway", "slo"],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "route", "type": "query", "datasource": _DS, "label": "route", "multi": True,
             "includeAll": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"},
             "query": {"query": "label_values(gateway_requests_total, route)", "refId": "routes"},
             "definition": "label_values(gateway_requests_total, route)", "refresh": 2},
        ]},
        "panels": panels,
    }


def render_json(policy: Policy) -> str:
    """The dashboard file text."""
    return json.dumps(render(policy), indent=2) + "\n"
