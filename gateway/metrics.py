"""The gateway's Prometheus metrics and the ops JSON view of them.

Nothing here runs per request. A custom collector reads, at scrape time, what the components already count:
the SLO recorder's series (`Runtime.slo`), each breaker's `snapshot()` (`Runtime.breakers`) and the rate
limiter's `stats()` (`Runtime.limiter`). Domain events that have no other home (rate-limit breaches, breaker
transitions, policy reloads, Redis state changes) are counted here by an `Events` subscriber: a dictionary
increment per event. The registry is the gateway's own, never prometheus-client's global one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from gateway.admission import Admission
from gateway.events import Event, Events
from gateway.logs import get_logger
from gateway.runtime import Runtime
from gateway.server import ServerStats
from gateway.slo import SloRecorder
from gateway.slo.snapshot import SeriesSnapshot
from gateway.tunnel import DURATION_BUCKETS, TunnelStats

log = get_logger("gateway.metrics")

BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
MAX_EVENT_LABELS = 1000  # distinct label values kept per event counter; the rest are counted under "other"


class _Counts:
    """Event counters keyed by bounded label tuples."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], int] = {}

    def inc(self, *labels: str) -> None:
        if labels not in self.values and len(self.values) >= MAX_EVENT_LABELS:
            labels = tuple("other" for _ in labels)
        self.values[labels] = self.values.get(labels, 0) + 1

    def total(self) -> int:
        return sum(self.values.values())


def _le(bound: float) -> str:
    """A bucket bound as Prometheus clients spell it (0.3 -> "0.3", 1 -> "1.0")."""
    return repr(float(bound))


def _text(value: Any, default: str = "unknown") -> str:
    return value if isinstance(value, str) and value else default


class GatewayMetrics:
    """The gateway's registry: subscribe once to the events bus, read the current runtime at scrape time."""

    def __init__(
        self,
        current: Callable[[], Runtime],
        events: Events,
        audit_stats: Callable[[], dict[str, Any]] | None = None,
        server_stats: ServerStats | None = None,
        tunnels: TunnelStats | None = None,
    ) -> None:
        self.tunnels = tunnels
        self._current = current
        self.audit_stats = audit_stats
        self.server_stats = server_stats
        self.breaches = _Counts()  # (limit,)
        self.shadow_breaches = _Counts()  # (limit,)
        self.transitions = _Counts()  # (breaker, from, to)
        self.reloads = _Counts()  # (result,)
        self.last_reload_success: float | None = None
        self.redis_changes = _Counts()  # (to,)
        self.admin_actions = _Counts()  # (action,)
        self.mode_changes = _Counts()  # (upstream, to): admission tightening by burn rate
        # Set for a worker of `serve --workers N` (gateway/fleet/workers.py): /metrics covers every worker.
        self.merged_exposition: Callable[[], bytes] | None = None
        events.subscribe(self._on_event)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_GatewayCollector(self))
        ProcessCollector(registry=self.registry)

    def runtime(self) -> Runtime:
        """The runtime the request path currently reads."""
        return self._current()

    def _on_event(self, event: Event) -> None:
        fields = event.fields
        kind = event.type
        if kind == "rate_limit_hit":
            limit = _text(fields.get("limit"))
            (self.shadow_breaches if fields.get("shadow") else self.breaches).inc(limit)
        elif kind == "circuit_state_change":
            breaker, to = _text(fields.get("breaker")), _text(fields.get("to"))
            self.transitions.inc(breaker, _text(fields.get("from")), to)
        elif kind == "policy_reload":
            result = "success" if fields.get("result") == "success" else "error"
            self.reloads.inc(result)
            if result == "success":
                self.last_reload_success = event.time
        elif kind == "redis_state_change":
            to = "up" if fields.get("to") == "up" else "down"
            self.redis_changes.inc(to)
        elif kind == "admin_action":
            self.admin_actions.inc(_text(fields.get("action")))
        elif kind == "admission_mode_change":
            self.mode_changes.inc(_text(fields.get("upstream")), _text(fields.get("to")))

    def exposition(self) -> bytes:
        """The Prometheus text exposition of everything (of every worker, under a supervisor)."""
        if self.merged_exposition is not None:
            return self.merged_exposition()
        return generate_latest(self.registry)

    # -- the ops JSON view (/api/ops/metrics) --

    def breakers(self) -> dict[str, dict[str, Any]]:
        """name -> {state, failures, opened_at, retry_in, ...}: each breaker's snapshot, without its name."""
        out: dict[str, dict[str, Any]] = {}
        for name, snap in self.runtime().breaker_snapshots().items():
            snap.pop("name", None)
            out[name] = snap
        return out

    def fleet_extra(self) -> dict[str, Any]:
        """The counters this process publishes beside its SLO snapshot, summed in the fleet view."""
        return {
            "breaches": {k[0]: v for k, v in self.breaches.values.items()},
            "shadow_breaches": self.shadow_breaches.total(),
        }

    def ops_report(
        self, snapshots: list[SeriesSnapshot] | None = None, extras: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """The body of GET /api/ops/metrics: the runbook's flat keys plus the structured SLO status.

        `snapshots` and `extras`: the fleet's SLO series and counters (gateway/fleet/), merged here; without
        them, this process's own."""
        runtime = self.runtime()
        metrics: dict[str, Any] = {}
        slo = runtime.slo
        statuses = slo.status(snapshots)
        metrics.update(slo.flat(statuses))
        breaches: dict[str, int] = {}
        shadow = 0
        for extra in extras if extras is not None else [self.fleet_extra()]:
            raw = extra.get("breaches")
            for limit, n in (raw.items() if isinstance(raw, dict) else ()):
                if isinstance(limit, str) and isinstance(n, int):
                    breaches[limit] = breaches.get(limit, 0) + n
            shadow_n = extra.get("shadow_breaches")
            shadow += shadow_n if isinstance(shadow_n, int) else 0
        metrics["rate_limit_breaches_total"] = sum(breaches.values())
        metrics["rate_limit_breaches"] = dict(sorted(breaches.items()))
        metrics["rate_limit_shadow_breaches_total"] = shadow
        metrics["circuit_breakers"] = self.breakers()
        metrics["admission"] = {name: admission_report(a) for name, a in sorted(runtime.admissions.items())}
        metrics["routes"] = statuses
        metrics["window_seconds"] = slo.window
        return {"metrics": metrics, "generated_at": time.time()}


def admission_report(admission: Admission) -> dict[str, Any]:
    """One upstream's admission state and its shed counts, for /api/ops/metrics."""
    shed: dict[str, dict[str, int]] = {}
    for (route, priority, _reason), n in admission.shed.items():
        by_priority = shed.setdefault(route, {})
        by_priority[priority] = by_priority.get(priority, 0) + n
    would: dict[str, int] = {}
    for (route, _priority), n in admission.would_shed.items():
        would[route] = would.get(route, 0) + n
    return {**admission.snapshot(), "shed": shed, "shed_total": sum(admission.shed.values()),
            "shadow_shed": would}


class _GatewayCollector(Collector):
    """Reads the components' counters when Prometheus scrapes."""

    def __init__(self, owner: GatewayMetrics) -> None:
        self._owner = owner
        self._le_cache: dict[tuple[float, ...], list[str]] = {}

    def _les(self, bounds: tuple[float, ...]) -> list[str]:
        les = self._le_cache.get(bounds)
        if les is None:
            les = [_le(b) for b in bounds] + ["+Inf"]
            self._le_cache = {bounds: les}  # one policy at a time: keep only the latest
        return les

    def collect(self) -> Iterator[Metric]:
        owner = self._owner
        runtime = owner.runtime()
        yield from self._slo(runtime.slo)
        yield from self._breakers(runtime)
        yield from self._events()
        yield from self._limiter(runtime)
        yield from self._admission(runtime)
        yield from self._audit()
        yield from self._server()

    def _server(self) -> Iterator[Metric]:
        stats = self._owner.server_stats
        if stats is None:
            return
        family = CounterMetricFamily(
            "gateway_connections_dropped",
            "Client connections the gateway ended itself, by reason: refused (over server.max_connections),"
            " header_timeout (no request head within server.header_timeout), write_stall (the client read"
            " nothing of its answer for server.write_timeout).",
            labels=["reason"],
        )
        family.add_metric(["refused"], stats.refused)
        family.add_metric(["header_timeout"], stats.header_timeouts)
        family.add_metric(["write_stall"], stats.write_stalls)
        yield family
        tunnels = self._owner.tunnels
        if tunnels is None:
            return
        yield GaugeMetricFamily("gateway_tunnels_open", "Upgraded connections (WebSocket) open now.",
                                value=tunnels.open)
        moved = CounterMetricFamily("gateway_tunnel_bytes", "Bytes relayed through upgraded connections.",
                                    labels=["direction"])
        moved.add_metric(["to_upstream"], tunnels.bytes_to_upstream)
        moved.add_metric(["to_client"], tunnels.bytes_to_client)
        yield moved
        ends = CounterMetricFamily("gateway_tunnels_closed", "Upgraded connections ended, by reason.",
                                   labels=["reason"])
        for reason, n in sorted(tunnels.closed.items()):
            ends.add_metric([reason], n)
        yield ends
        cumulative, running = [], 0
        for bound, n in zip([*(_le(b) for b in DURATION_BUCKETS), "+Inf"], tunnels.durations, strict=True):
            running += n
            cumulative.append((bound, float(running)))
        yield HistogramMetricFamily(
            "gateway_tunnel_duration_seconds", "How long upgraded connections lasted.",
            buckets=cumulative, sum_value=tunnels.duration_sum,
        )

    def _admission(self, runtime: Runtime) -> Iterator[Metric]:
        by_upstream = ["upstream"]
        gauges = [
            (GaugeMetricFamily("gateway_admission_limit", "Adaptive concurrency limit in force.",
                               labels=by_upstream), "limit"),
            (GaugeMetricFamily("gateway_admission_inflight", "Requests in flight under admission control.",
                               labels=by_upstream), "inflight"),
            (GaugeMetricFamily("gateway_admission_queued", "Requests waiting for an admission slot.",
                               labels=by_upstream), "queued"),
        ]
        mode = GaugeMetricFamily(
            "gateway_admission_mode",
            "Burn-rate tightening: 0 normal, 1 sheddable capped, 2 sheddable refused and normal capped.",
            labels=by_upstream,
        )
        no_load = GaugeMetricFamily("gateway_admission_no_load_latency_seconds",
                                    "Learned no-load latency of each route of the upstream.",
                                    labels=["upstream", "route"])
        shed = CounterMetricFamily("gateway_admission_shed", "Requests shed (503) by admission control.",
                                   labels=["upstream", "route", "priority", "reason"])
        would = CounterMetricFamily("gateway_admission_shadow_shed",
                                    "Requests a shadow-mode admission would have shed.",
                                    labels=["upstream", "route", "priority"])
        for name, admission in sorted(runtime.admissions.items()):
            snap = admission.snapshot()
            for family, key in gauges:
                family.add_metric([name], snap[key])
            mode.add_metric([name], admission.level)
            for route, seconds in sorted(admission.no_load.items()):
                no_load.add_metric([name, route], seconds)
            for (route, priority, reason), n in sorted(admission.shed.items()):
                shed.add_metric([name, route, priority, reason], n)
            for (route, priority), n in sorted(admission.would_shed.items()):
                would.add_metric([name, route, priority], n)
        yield from (family for family, _ in gauges)
        yield from (mode, no_load, shed, would)

    def _audit(self) -> Iterator[Metric]:
        if self._owner.audit_stats is None:
            return
        stats = self._owner.audit_stats()
        for key, doc in (("written", "Audit events stored."),
                         ("dropped", "Audit events dropped because the write queue was full."),
                         ("write_errors", "Audit batches that failed to be written.")):
            yield CounterMetricFamily(f"gateway_audit_events_{key}", doc, value=stats.get(key, 0))
        yield GaugeMetricFamily("gateway_audit_queue_events", "Audit events waiting to be written.",
                                value=stats.get("queued", 0))
        dropped = CounterMetricFamily(
            "gateway_audit_dropped", "Audit events lost, by reason: queue_full, closed, shutdown (never"
            " stored), cap (deleted by audit.max_total_bytes or audit.max_events before audit.max_age).",
            labels=["reason"])
        for reason, count in sorted(stats.get("dropped_by_reason", {}).items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily("gateway_audit_events_unconfirmed", "Audit events whose write shutdown cut"
                                  " short and storage could not confirm: maybe stored.",
                                  value=stats.get("unconfirmed", 0))

    def _slo(self, slo: SloRecorder) -> Iterator[Metric]:
        duration = HistogramMetricFamily(
            "gateway_request_duration_seconds",
            "From the first byte of the request in to the last byte of the response out.",
            labels=["route", "method"],
        )
        upstream = HistogramMetricFamily(
            "gateway_upstream_duration_seconds",
            "From sending the request upstream to the end of the upstream response, by route and method.",
            labels=["route", "method"],
        )
        requests = CounterMetricFamily(
            "gateway_requests", "Requests answered, by route, method and status class.",
            labels=["route", "method", "status_class"],
        )
        errors = CounterMetricFamily(
            "gateway_request_errors",
            "Requests counted as errors: 5xx (the gateway's own 502/503/504 included), and 429 when "
            "slo.count_429_as_error is set.",
            labels=["route", "method"],
        )
        throttled = CounterMetricFamily(
            "gateway_requests_throttled", "Requests answered 429.", labels=["route", "method"]
        )
        for s in slo.all_series():
            labels = [s.route, s.method]
            les = self._les(s.bounds)
            for family, counts, total_sum in (
                (duration, s.buckets, s.duration_sum),
                (upstream, s.upstream_buckets, s.upstream_sum),
            ):
                running = 0
                cumulative: list[tuple[str, float]] = []
                for le, n in zip(les, counts, strict=True):
                    running += n
                    cumulative.append((le, running))
                family.add_metric(labels, cumulative, total_sum)
            for cls, n in enumerate(s.status_classes):
                if cls or n:
                    requests.add_metric([*labels, STATUS_CLASSES[cls]], n)
            errors.add_metric(labels, s.errors_total)
            throttled.add_metric(labels, s.throttled_total)
        yield from (duration, upstream, requests, errors, throttled)

    def _breakers(self, runtime: Runtime) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "gateway_circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half_open, 2 open.",
            labels=["breaker"],
        )
        by_breaker = ["breaker"]
        calls = CounterMetricFamily("gateway_circuit_breaker_calls", "Calls admitted.", labels=by_breaker)
        failures = CounterMetricFamily(
            "gateway_circuit_breaker_failures", "Admitted calls counted as failures.", labels=by_breaker
        )
        rejected = CounterMetricFamily(
            "gateway_circuit_breaker_rejected", "Calls refused while the breaker was open.", labels=by_breaker
        )
        for name, snap in self._owner.breakers().items():
            state.add_metric([name], BREAKER_STATE_VALUES.get(str(snap.get("state")), 0))
            for family, key in ((calls, "calls"), (failures, "failures"), (rejected, "rejected")):
                value = snap.get(key)
                if isinstance(value, int):
                    family.add_metric([name], value)
        yield from (state, calls, failures, rejected)

    def _events(self) -> Iterator[Metric]:
        owner = self._owner
        specs: list[tuple[str, str, list[str], dict[tuple[str, ...], int]]] = [
            ("gateway_rate_limit_breaches", "Requests refused (429) by a rate limit, by limit.",
             ["limit"], owner.breaches.values),
            ("gateway_rate_limit_shadow_breaches", "Requests a shadow-mode limit would have refused.",
             ["limit"], owner.shadow_breaches.values),
            ("gateway_circuit_breaker_transitions", "Circuit breaker state changes.",
             ["breaker", "from", "to"], owner.transitions.values),
            ("gateway_policy_reloads", "Policy reload attempts, by result.",
             ["result"], owner.reloads.values),
            ("gateway_redis_state_changes", "Redis availability changes seen by the gateway.",
             ["to"], owner.redis_changes.values),
            ("gateway_admin_actions", "Audited admin actions, by action.",
             ["action"], owner.admin_actions.values),
            ("gateway_admission_mode_changes", "Burn-rate tightening changes, by upstream and new mode.",
             ["upstream", "to"], owner.mode_changes.values),
        ]
        for name, doc, labels, values in specs:
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, n in sorted(values.items()):
                family.add_metric(list(key), n)
            yield family
        if owner.last_reload_success is not None:
            yield GaugeMetricFamily(
                "gateway_policy_last_reload_success_timestamp_seconds",
                "Unix time of the last successful policy reload.", value=owner.last_reload_success,
            )

    def _limiter(self, runtime: Runtime) -> Iterator[Metric]:
        stats = runtime.limiter.stats()
        yield CounterMetricFamily("gateway_rate_limit_checks", "Requests checked against rate limits.",
                                  value=stats["checks"])
        family = CounterMetricFamily(
            "gateway_rate_limit_fallbacks", "Limit checks decided without Redis, by action.",
            labels=["action"],
        )
        for action, n in sorted(stats["fallbacks"].items()):
            family.add_metric([action], n)
        yield family
        yield GaugeMetricFamily("gateway_rate_limit_local_buckets", "In-process token buckets held.",
                                value=stats["local_buckets"])
        redis = stats["redis"]
        if redis is not None:
            yield CounterMetricFamily(
                "gateway_redis_errors", "Rate limiter Redis calls that failed or timed out.",
                value=redis["errors"],
            )
            yield CounterMetricFamily(
                "gateway_redis_skipped", "Limit checks that skipped Redis while it was down.",
                value=redis["skipped"],
            )
            yield CounterMetricFamily(
                "gateway_redis_round_trips",
                "Batched writes of rate-limit checks to Redis (checks per round trip: how well they batch).",
                value=redis["round_trips"],
            )
            yield GaugeMetricFamily(
                "gateway_redis_up", "1 when the rate limiter's Redis is reachable, else 0.",
                value=1.0 if redis["up"] else 0.0,
            )
