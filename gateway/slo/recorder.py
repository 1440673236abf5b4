"""The SLO recorder of one policy snapshot: which series a request counts under, and each route's SLO status.

Labels are bounded by construction: a series is (route name, method), where the route name comes from the
policy (or `unmatched` for requests no route took) and the method is one the route can match, or `OTHER` for
any method token outside the standard set. Raw paths, IPs and user ids never become labels.

Reload: a new recorder takes over the series of the previous one by route name. A route whose match and
latency targets are unchanged keeps its windows; the cumulative counters always continue (histograms restart
only when the policy's bucket bounds change).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.outcome import Outcome
from gateway.policy.model import HTTP_METHODS, Policy, Route, Slo
from gateway.slo.series import SUB_WINDOW, Series, Totals, Window
from gateway.slo.sketch import merge, quantiles
from gateway.slo.snapshot import SeriesSnapshot, add_totals, merge_snapshots

UNMATCHED = "unmatched"
OTHER_METHOD = "OTHER"
QUANTILES = (0.5, 0.95, 0.99)
# Google SRE workbook, "Alerting on SLOs": page on 1h & 5m > 14.4, or 6h & 30m > 6.
BURN_WINDOWS = (("5m", 300.0), ("30m", 1800.0), ("1h", 3600.0), ("6h", 21600.0))
BUDGET_WINDOW = "6h"  # the error budget is judged over the longest window held in memory
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LATENCY_OBJECTIVES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def latency_buckets(policy: Policy) -> tuple[float, ...]:
    """Histogram bounds: the configured (or default) buckets plus every SLO threshold of the policy, so that
    "share of requests under the target" is an exact bucket, never an interpolation."""
    base = policy.slo.buckets if policy.slo.buckets is not None else DEFAULT_BUCKETS
    return tuple(sorted({round(b, 9) for b in (*base, *policy.slo_thresholds())}))


def _slower(index: int) -> Callable[[Totals], int]:
    """The count of requests slower than the route's index-th latency target."""
    return lambda totals: totals.slower_than(index)


WINDOW = "window"  # the label of the percentile window's counts in a SeriesSnapshot


def _window_totals(snaps: list[SeriesSnapshot], label: str) -> Totals:
    return add_totals(s.totals[label] for s in snaps if label in s.totals)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _ratio(part: int, whole: int) -> float | None:
    return None if whole <= 0 else part / whole


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class RouteSlo:
    """One route as the recorder sees it, with its series by method label."""

    name: str
    match: str
    labels: frozenset[str]  # the method labels this route can produce besides OTHER
    slo: Slo | None
    thresholds: tuple[float, ...]  # the route's latency targets, sorted, without duplicates
    key: str  # the suffix of the flat ops keys: METHOD_/template for one-method routes, else the route name
    key_method: str | None  # the one method the flat key names, if any
    alias: str | None
    series: dict[str, Series] = field(default_factory=dict)

    @classmethod
    def of(cls, route: Route | None) -> RouteSlo:
        """Describe a policy route (None: the `unmatched` pseudo-route)."""
        if route is None:
            return cls(UNMATCHED, "* (no route)", HTTP_METHODS, None, (), UNMATCHED, None, None)
        methods = route.match.methods
        labels = HTTP_METHODS if methods is None else methods | ({"HEAD"} if "GET" in methods else set())
        one = next(iter(methods)) if methods is not None and len(methods) == 1 else None
        slo = route.slo
        return cls(
            name=route.name,
            match=str(route.match),
            labels=frozenset(labels),
            slo=slo,
            thresholds=tuple(sorted({round(t, 9) for t in slo.thresholds()})) if slo else (),
            key=f"{one}_{route.match.template}" if one else route.name,
            key_method=one,
            alias=slo.alias if slo else None,
        )

    def same_windows(self, other: RouteSlo) -> bool:
        """Whether windows recorded under `other` mean the same thing here."""
        return self.match == other.match and self.thresholds == other.thresholds


class SloRecorder:
    """Per route and method: latency/upstream sketches over a sliding window, counts for burn rates, and the
    cumulative counters behind /metrics. `observe` is the pipeline observer; everything else is read-side."""

    def __init__(
        self, policy: Policy, previous: SloRecorder | None = None, *, clock: Callable[[], float] | None = None
    ) -> None:
        if clock is None:
            clock = previous.clock if previous is not None else time.monotonic
        self.clock: Callable[[], float] = clock
        self.window = policy.slo.window
        self.count_429 = policy.slo.count_429_as_error
        self.bounds = latency_buckets(policy)
        self.routes: dict[str, RouteSlo] = {}
        for described in [*(RouteSlo.of(r) for r in policy.routes), RouteSlo.of(None)]:
            self.routes[described.name] = described
            before = previous.routes.get(described.name) if previous is not None else None
            if before is None:
                continue
            keep_windows = described.same_windows(before)
            for label, series in before.series.items():
                if label != OTHER_METHOD and label not in described.labels:
                    continue  # the route no longer matches this method
                window = series.window if keep_windows else Window(described.thresholds, self.window)
                window.resize(self.window)
                series.reconfigure(window, self.bounds, self.count_429)
                described.series[label] = series
        # Pre-resolved (route, method) -> series for the hot path; filled as methods are first seen.
        self._lookup: dict[tuple[str, str], Series] = {
            (r.name, label): s
            for r in self.routes.values()
            for label, s in r.series.items()
            if label != OTHER_METHOD
        }

    # -- hot path --

    def observe(self, outcome: Outcome) -> None:
        """Count one finished request (the pipeline calls this once per request)."""
        series = self._lookup.get((outcome.route, outcome.method))
        if series is None:
            series = self._resolve(outcome.route, outcome.method)
            if series is None:
                return
        series.record(self.clock(), outcome.duration, outcome.upstream_duration, outcome.status)

    def _resolve(self, route_name: str, method: str) -> Series | None:
        route = self.routes.get(route_name)
        if route is None:
            return None  # a route of an older policy, finishing after a reload: nothing to count it under
        label = method if method in route.labels else OTHER_METHOD
        series = route.series.get(label)
        if series is None:
            window = Window(route.thresholds, self.window)
            series = Series(route.name, label, window, self.bounds, self.count_429)
            route.series[label] = series
        if label != OTHER_METHOD:  # an unknown method token must not become a lookup key: that would grow
            self._lookup[(route_name, method)] = series
        return series

    # -- read side --

    def all_series(self) -> Iterator[Series]:
        """Every series, for the metrics collector."""
        for route in self.routes.values():
            yield from route.series.values()

    def _slot(self) -> int:
        return int(self.clock() // SUB_WINDOW)

    def _errors(self, totals: Totals) -> int:
        return totals.errors + (totals.throttled if self.count_429 else 0)

    def snapshot(self) -> list[SeriesSnapshot]:
        """Every series now: sketches over the percentile window, counts over it and each burn window.

        What an SLO status reads, and what a process publishes for the fleet view (gateway/fleet/).
        """
        slot = self._slot()
        out: list[SeriesSnapshot] = []
        for series in self.all_series():
            window = series.window
            latency, upstream = window.sketches(slot)
            totals = {label: window.totals(slot, seconds) for label, seconds in BURN_WINDOWS}
            totals[WINDOW] = window.totals(slot, self.window)
            out.append(
                SeriesSnapshot(
                    series.route, series.method, merge(latency)[0], merge(upstream)[0], totals
                )
            )
        return out

    def _summary(self, snaps: list[SeriesSnapshot]) -> dict[str, Any]:
        latency, n = merge(s.latency for s in snaps)
        upstream, un = merge(s.upstream for s in snaps)
        totals = _window_totals(snaps, WINDOW)
        p = quantiles(latency, n, QUANTILES)
        u = quantiles(upstream, un, QUANTILES)
        return {
            "requests": totals.total,
            "errors": self._errors(totals),
            "throttled": totals.throttled,
            "error_rate": _round(_ratio(self._errors(totals), totals.total)),
            "throttle_rate": _round(_ratio(totals.throttled, totals.total)),
            "latency_ms": {"p50": _ms(p[0]), "p95": _ms(p[1]), "p99": _ms(p[2])},
            "upstream_latency_ms": {"p50": _ms(u[0]), "p95": _ms(u[1]), "p99": _ms(u[2])},
        }

    def route_status(self, name: str, snapshots: list[SeriesSnapshot] | None = None) -> dict[str, Any]:
        """The SLO status of one route (KeyError when unknown): windowed percentiles and error rate, each
        objective's compliance, burn rates over 5m/30m/1h/6h and error budget remaining over 6h.

        `snapshots`: read these (e.g. the fleet's, merged) instead of this process's own series."""
        route = self.routes[name]
        if snapshots is None:
            snapshots = self.snapshot()
        by_method = {s.method: s for s in merge_snapshots([[s for s in snapshots if s.route == name]])}
        snaps = list(by_method.values())
        status: dict[str, Any] = {"route": route.name, "match": route.match, "window_seconds": self.window}
        status.update(self._summary(snaps))
        status["methods"] = {label: self._summary([s]) for label, s in sorted(by_method.items())}
        status["current_p95_ms"] = status["latency_ms"]["p95"]
        slo = route.slo
        if slo is None:
            status.update(
                target=None, objectives={}, compliant=None, burn_rate=None, error_budget_remaining=None
            )
            return status
        by_window = {label: _window_totals(snaps, label) for label, _ in BURN_WINDOWS}
        window = _window_totals(snaps, WINDOW)
        objectives: dict[str, dict[str, Any]] = {}
        target: dict[str, float] = {}
        for label, q in _LATENCY_OBJECTIVES:
            threshold = getattr(slo, label)
            if threshold is None:
                continue
            index = route.thresholds.index(round(threshold, 9))
            allowed = 1.0 - q

            def bad(t: Totals, index: int = index) -> int:
                return t.slower_than(index)

            target[f"{label}_ms"] = round(threshold * 1000.0, 3)
            objectives[f"latency_{label}"] = self._objective(
                window, by_window, bad, allowed,
                target_ms=_ms(threshold), current_ms=status["latency_ms"][label],
            )
        if slo.error_rate is not None:
            target["error_rate"] = slo.error_rate
            objectives["error_rate"] = self._objective(
                window, by_window, self._errors, slo.error_rate,
                target=slo.error_rate, current=status["error_rate"],
            )
        met = [o["met"] for o in objectives.values()]
        errors = objectives.get("error_rate")
        status.update(
            target=target,
            objectives=objectives,
            compliant=None if any(m is None for m in met) else all(met),
            burn_rate=errors["burn_rate"] if errors else None,
            error_budget_remaining=errors["error_budget_remaining"] if errors else None,
        )
        return status

    def _objective(
        self,
        window: Totals,
        by_window: dict[str, Totals],
        bad: Callable[[Totals], int],
        allowed: float,
        **shown: Any,
    ) -> dict[str, Any]:
        """One objective: `allowed` is the share of bad requests the SLO tolerates (its error budget)."""
        bad_share = _ratio(bad(window), window.total)
        burn: dict[str, float | None] = {}
        for label, totals in by_window.items():
            share = _ratio(bad(totals), totals.total)
            burn[label] = None if share is None else _round(share / allowed, 4)
        budget_burn = burn[BUDGET_WINDOW]
        return {
            **shown,
            "good_share": None if bad_share is None else _round(1.0 - bad_share),
            "allowed_bad_share": _round(allowed),
            "met": None if bad_share is None else bad_share <= allowed,
            "burn_rate": burn,
            "error_budget_remaining": None if budget_burn is None else _round(1.0 - budget_burn, 4),
        }

    def burning(
        self, name: str, factor: float, long_window: float, short_window: float, min_requests: int = 10
    ) -> list[str]:
        """The objectives of route `name` whose burn rate is above `factor` over both windows (seconds): the
        multi-window rule of the generated ErrorBudgetBurn alerts, applied to every objective of the route
        (error rate and latency targets). A window with fewer than `min_requests` requests never fires."""
        route = self.routes.get(name)
        slo = route.slo if route is not None else None
        if route is None or slo is None:
            return []
        slot = self._slot()
        series = list(route.series.values())
        windows = [add_totals(s.window.totals(slot, w) for s in series) for w in (long_window, short_window)]
        if any(t.total < min_requests for t in windows):
            return []
        objectives: list[tuple[str, Callable[[Totals], int], float]] = []
        if slo.error_rate is not None:
            objectives.append(("error_rate", self._errors, slo.error_rate))
        for label, q in _LATENCY_OBJECTIVES:
            threshold = getattr(slo, label)
            if threshold is not None:
                index = route.thresholds.index(round(threshold, 9))
                objectives.append((f"latency_{label}", _slower(index), 1.0 - q))
        return [
            label for label, bad, allowed in objectives
            if all(bad(t) / t.total > factor * allowed for t in windows)
        ]

    def status(self, snapshots: list[SeriesSnapshot] | None = None) -> dict[str, dict[str, Any]]:
        """Every route's status (and the `unmatched` pseudo-route's), by route name; from `snapshots` (the
        fleet's) when given, else from this process's series. Routes this policy does not know are skipped."""
        if snapshots is None:
            snapshots = self.snapshot()
        return {name: self.route_status(name, snapshots) for name in self.routes}

    def flat(self, statuses: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The runbook's flat keys from route statuses: latency_ms_p95_GET_/api/horoscopes/daily,
        error_rate_..., upstream_latency_ms_p95_..., p95_<SLO route or alias>, and `error_rates` by route."""
        out: dict[str, Any] = {}
        error_rates: dict[str, float | None] = {}
        for name, route in self.routes.items():
            status = statuses[name]
            view = status
            if route.key_method is not None:
                # The key names one method: report that method's own series (a GET route also answers HEAD).
                view = status["methods"].get(route.key_method) or {
                    "latency_ms": {"p50": None, "p95": None, "p99": None},
                    "upstream_latency_ms": {"p50": None, "p95": None, "p99": None},
                    "error_rate": None,
                }
            for q in ("p50", "p95", "p99"):
                out[f"latency_ms_{q}_{route.key}"] = view["latency_ms"][q]
                out[f"upstream_latency_ms_{q}_{route.key}"] = view["upstream_latency_ms"][q]
            out[f"error_rate_{route.key}"] = view["error_rate"]
            if route.slo is not None:  # short keys for SLO routes only: the runbook's `watch` reads these
                out[f"p95_{name}"] = view["latency_ms"]["p95"]
            if route.alias is not None:
                out[f"p95_{route.alias}"] = view["latency_ms"]["p95"]
            error_rates[name] = view["error_rate"]
        out["error_rates"] = error_rates
        return out
