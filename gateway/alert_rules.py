"""Prometheus alerting rules rendered from the policy (`python -m gateway alerts policies.yaml`).

Every rule reads the metric names `gateway.metrics` exposes, so the rules and the exposition cannot drift:
- HighLatency per route and latency target: histogram_quantile over `gateway_request_duration_seconds` above
  the target for 5m. The targets are histogram bounds, so the quantile crosses the target exactly when the
  share of requests over it does (no interpolation error at the threshold).
- HighErrorRate per route with an error_rate target: errors / requests over 5m above the target for 2m.
- CircuitBreakerOpen: `gateway_circuit_breaker_state == 2`.
- RateLimitBreachesRising: a limit refusing more than 3 requests a minute, at over twice its hourly rate.
- ErrorBudgetBurn (Google SRE workbook, multi-window): 1h and 5m burn rates both above 14.4, or 6h and 30m
  both above 6, from recording rules `gateway:request_error_ratio:rate<window>`.
"""

from __future__ import annotations

from typing import Any

import yaml

from gateway.policy.model import Policy, Route

RECORDING_WINDOWS = ("5m", "30m", "1h", "6h")
FAST_BURN = (14.4, "1h", "5m")  # spends 2 % of a 30-day budget in one hour
SLOW_BURN = (6.0, "6h", "30m")  # spends 5 % of a 30-day budget in six hours
BREACH_FLOOR_PER_SECOND = 0.05  # 3 refusals a minute: below this a "rise" is noise
HEADER = (
    "# Generated: `python -m gateway alerts policies.yaml > config/alerts.yml`; edit the policy, not this.\n"
    "# Tested by config/alerts.test.yml (`promtool test rules config/alerts.test.yml`).\n"
)


def _num(value: float) -> str:
    """A threshold as PromQL reads it, without float noise (0.144, not 0.14400000000000002)."""
    return format(round(value, 9), "g") if value < 1e6 else repr(value)


def _label(value: str) -> str:
    # Route names match ^[A-Za-z0-9_][A-Za-z0-9_.\-]*$: nothing to escape, but stay safe if that widens.
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000, 3):g}ms"


def _latency_rules(route: Route) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    if route.slo is None:
        return rules
    selector = f'route="{_label(route.name)}"'
    for label, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        target = getattr(route.slo, label)
        if target is None:
            continue
        rules.append({
            "alert": "HighLatency",
            "expr": (f"histogram_quantile({q}, sum by (le) (rate(gateway_request_duration_seconds_bucket"
                     f"{{{selector}}}[5m]))) > {_num(target)}"),
            "for": "5m",
            "labels": {"severity": "warning", "route": route.name, "quantile": label},
            "annotations": {
                "summary": f"{route.name} {label} latency > {_ms(target)}",
                "description": f"{route.name} ({route.match}): {label} over the last 5m is "
                               "{{ $value | humanizeDuration }}, above the SLO target of "
                               f"{_ms(target)}.",
            },
        })
    return rules


def _error_rules(route: Route) -> list[dict[str, Any]]:
    if route.slo is None or route.slo.error_rate is None:
        return []
    target = route.slo.error_rate
    selector = f'route="{_label(route.name)}"'
    percent = f"{target * 100:g}%"
    rules: list[dict[str, Any]] = [{
        "alert": "HighErrorRate",
        "expr": (f"sum(rate(gateway_request_errors_total{{{selector}}}[5m])) / "
                 f"sum(rate(gateway_requests_total{{{selector}}}[5m])) > {_num(target)}"),
        "for": "2m",
        "labels": {"severity": "warning", "route": route.name},
        "annotations": {
            "summary": f"{route.name} error rate > {percent}",
            "description": f"{route.name} ({route.match}): {{{{ $value | humanizePercentage }}}} of requests "
                           f"failed over the last 5m (SLO: below {percent}).",
        },
    }]
    for name, (factor, long_window, short_window) in (("ErrorBudgetBurnFast", FAST_BURN),
                                                      ("ErrorBudgetBurnSlow", SLOW_BURN)):
        threshold = _num(factor * target)
        rules.append({
            "alert": name,
            "expr": (f"gateway:request_error_ratio:rate{long_window}{{{selector}}} > {threshold} and "
                     f"gateway:request_error_ratio:rate{short_window}{{{selector}}} > {threshold}"),
            "labels": {"severity": "page", "route": route.name, "burn_rate": _num(factor),
                       "windows": f"{long_window}/{short_window}"},
            "annotations": {
                "summary": f"{route.name} is burning its error budget {factor:g}x too fast",
                "description": f"{route.name}: the error ratio over {long_window} and {short_window} is "
                               f"above {factor:g} x {percent}; at this pace the budget is gone early.",
            },
        })
    return rules


def render(policy: Policy) -> dict[str, Any]:
    """The rule groups for a policy, as a YAML-ready structure."""
    recording = [
        {
            "record": f"gateway:request_error_ratio:rate{window}",
            "expr": (f"sum by (route) (rate(gateway_request_errors_total[{window}])) / "
                     f"sum by (route) (rate(gateway_requests_total[{window}]))"),
        }
        for window in RECORDING_WINDOWS
    ]
    alerts: list[dict[str, Any]] = []
    for route in policy.routes:
        alerts.extend(_latency_rules(route))
        alerts.extend(_error_rules(route))
    alerts.append({
        "alert": "CircuitBreakerOpen",
        "expr": "max by (breaker) (gateway_circuit_breaker_state) == 2",
        "labels": {"severity": "page"},
        "annotations": {
            "summary": "Circuit breaker {{ $labels.breaker }} is OPEN",
            "description": "Calls through {{ $labels.breaker }} fail fast with 503 until a probe succeeds.",
        },
    })
    rate = "sum by (limit) (rate(gateway_rate_limit_breaches_total[{}]))"
    alerts.append({
        "alert": "RateLimitBreachesRising",
        "expr": (f"{rate.format('5m')} > {_num(BREACH_FLOOR_PER_SECOND)} and "
                 f"{rate.format('5m')} > 2 * {rate.format('1h')}"),
        "for": "2m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "Rate limit {{ $labels.limit }} refuses more and more requests",
            "description": "{{ $value | humanize }} refusals/s over 5m, over twice the hourly rate: look for "
                           "repeated rate_limit_hit events from the same actors (POST /api/ops/export).",
        },
    })
    return {"groups": [
        {"name": "gateway-slo-recording", "rules": recording},
        {"name": "gateway-slo-alerts", "rules": alerts},
    ]}


def render_yaml(policy: Policy) -> str:
    """The rules file text."""
    return HEADER + yaml.safe_dump(render(policy), sort_keys=False, width=1000, allow_unicode=True)
