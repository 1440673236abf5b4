"""The SLO recorder's logic with an injected clock: sketch accuracy, windows, burn rates, labels, reload."""

from __future__ import annotations

import math
import random

import pytest
import yaml

from gateway.outcome import Outcome
from gateway.policy.model import Policy
from gateway.slo import SloRecorder, latency_buckets
from gateway.slo.sketch import ALPHA, key_of, merge, quantiles
from tests.support.clock import ManualClock

POLICY = """
version: 1
slo: {{window: 5m, count_429_as_error: {count_429}}}
upstreams:
  app: {{url: "http://127.0.0.1:9"}}
routes:
  - {{name: daily, match: "GET /api/horoscopes/daily", upstream: app,
     slo: {{p95: 300ms, error_rate: 1%, alias: horoscopes}}}}
  - {{name: orders, match: "POST /api/orders", upstream: app,
     slo: {{p95: {orders_p95}, p99: 1s, error_rate: 2%}}}}
  - {{name: default, match: "* /{{path:.*}}", upstream: app}}
"""


def make_policy(count_429: bool = False, orders_p95: str = "500ms") -> Policy:
    text = POLICY.format(count_429=str(count_429).lower(), orders_p95=orders_p95)
    return Policy.model_validate(yaml.safe_load(text))


def record(
    rec: SloRecorder,
    route: str,
    method: str,
    seconds: float,
    status: int = 200,
    upstream: float | None = None,
) -> None:
    outcome = Outcome(route=route, method=method, status=status, duration=seconds, upstream_duration=upstream)
    rec.observe(outcome)


def lower_rank(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[math.floor(q * (len(ordered) - 1))]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sketch_quantiles_are_within_half_a_percent_of_the_exact_sample(seed: int) -> None:
    rng = random.Random(seed)
    samples = [rng.lognormvariate(-4, 1.2) for _ in range(5000)]
    samples += [rng.uniform(0.001, 0.03) for _ in range(2000)]
    counts: dict[int, int] = {}
    for x in samples:
        counts[key_of(x)] = counts.get(key_of(x), 0) + 1
    qs = (0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
    got = quantiles(counts, len(samples), qs)
    for q, value in zip(qs, got, strict=True):
        exact = lower_rank(samples, q)
        assert value is not None
        assert abs(value - exact) <= ALPHA * exact * 1.0001, (q, value, exact)


def test_sketch_merge_adds_counts_and_empty_is_none() -> None:
    merged, total = merge([{1: 2, 3: 1}, {3: 4}])
    assert merged == {1: 2, 3: 5} and total == 7
    assert quantiles({}, 0, (0.5,)) == [None]


def test_windowed_percentiles_forget_samples_older_than_the_window() -> None:
    clock = ManualClock()
    rec = SloRecorder(make_policy(), clock=clock)
    for _ in range(100):
        record(rec, "daily", "GET", 0.8)  # a slow minute
    assert rec.route_status("daily")["latency_ms"]["p95"] == pytest.approx(800, rel=ALPHA)
    clock.now += 120
    for i in range(100):
        record(rec, "daily", "GET", 0.010 + i * 0.0001)
    status = rec.route_status("daily")
    assert status["requests"] == 200
    assert status["latency_ms"]["p95"] == pytest.approx(800, rel=ALPHA)  # still inside the 5 min window
    clock.now += 190  # the slow samples are now 310 s old: out of the window, whatever the slot alignment
    status = rec.route_status("daily")
    assert status["requests"] == 100
    fast = [0.010 + i * 0.0001 for i in range(100)]
    assert status["latency_ms"]["p50"] == pytest.approx(lower_rank(fast, 0.5) * 1000, rel=ALPHA)
    assert status["latency_ms"]["p95"] < 20
    clock.now += 400
    empty = rec.route_status("daily")
    assert empty["requests"] == 0 and empty["latency_ms"]["p95"] is None and empty["compliant"] is None


def test_upstream_latency_is_measured_separately() -> None:
    clock = ManualClock()
    rec = SloRecorder(make_policy(), clock=clock)
    for _ in range(50):
        record(rec, "daily", "GET", 0.050, upstream=0.030)
    record(rec, "daily", "GET", 0.001, status=502)  # the gateway's own answer: no upstream part
    status = rec.route_status("daily")
    assert status["upstream_latency_ms"]["p50"] == pytest.approx(30, rel=ALPHA)
    assert status["latency_ms"]["p50"] == pytest.approx(50, rel=ALPHA)
    series = rec.routes["daily"].series["GET"]
    assert series.upstream_count() == 50 and series.requests_total == 51


def test_share_within_target_is_exact_and_decides_compliance() -> None:
    clock = ManualClock()
    rec = SloRecorder(make_policy(), clock=clock)
    for _ in range(95):
        record(rec, "daily", "GET", 0.3)  # exactly on the target counts as within it
    for _ in range(5):
        record(rec, "daily", "GET", 0.31)
    latency = rec.route_status("daily")["objectives"]["latency_p95"]
    assert latency["good_share"] == 0.95 and latency["met"] is True
    record(rec, "daily", "GET", 0.31)
    status = rec.route_status("daily")
    assert status["objectives"]["latency_p95"]["good_share"] == pytest.approx(95 / 101, abs=1e-6)
    assert status["objectives"]["latency_p95"]["met"] is False
    assert status["compliant"] is False
    assert status["target"] == {"p95_ms": 300.0, "error_rate": 0.01}


def test_error_rate_burn_rates_and_budget_over_the_sre_windows() -> None:
    clock = ManualClock(0.0)
    rec = SloRecorder(make_policy(), clock=clock)
    # Two hours ago (inside 6h only): 1000 requests, 50 errors = 5% = 5x the 1% budget.
    for i in range(1000):
        record(rec, "daily", "GET", 0.01, status=500 if i < 50 else 200)
    clock.now += 2 * 3600
    # Now (inside every window): 1000 requests, 20 errors (503 from the gateway itself) = 2%.
    for i in range(1000):
        record(rec, "daily", "GET", 0.01, status=503 if i < 20 else 200)
    status = rec.route_status("daily")
    assert status["error_rate"] == pytest.approx(0.02)
    assert status["burn_rate"] == {"5m": 2.0, "30m": 2.0, "1h": 2.0, "6h": 3.5}  # 6h: 70 / 2000 / 1%
    assert status["error_budget_remaining"] == pytest.approx(1 - 3.5)  # overspent: negative
    assert status["objectives"]["error_rate"]["met"] is False
    clock.now += 5 * 3600  # the old errors leave the 6h window, the new ones are 5h old
    later = rec.route_status("daily")
    assert later["burn_rate"]["6h"] == 2.0 and later["burn_rate"]["1h"] is None


def test_429_counted_apart_unless_configured() -> None:
    for count_429, expected in ((False, 0.0), (True, 0.25)):
        rec = SloRecorder(make_policy(count_429=count_429), clock=ManualClock())
        for status in (200, 200, 200, 429):
            record(rec, "orders", "POST", 0.01, status=status)
        status = rec.route_status("orders")
        assert status["error_rate"] == expected
        assert status["throttled"] == 1 and status["throttle_rate"] == 0.25
        series = rec.routes["orders"].series["POST"]
        assert series.throttled_total == 1 and series.errors_total == (1 if count_429 else 0)


def test_labels_stay_bounded_whatever_the_method_or_route() -> None:
    rec = SloRecorder(make_policy(), clock=ManualClock())
    for i in range(500):
        record(rec, "default", f"X-METHOD-{i}", 0.01)  # any token is a valid HTTP method
        record(rec, "unmatched", f"BREW{i}", 0.01, status=404)
    record(rec, "default", "PATCH", 0.01)
    record(rec, "daily", "HEAD", 0.01)
    record(rec, "route-of-an-older-policy", "GET", 0.01)
    labels = {(s.route, s.method) for s in rec.all_series()}
    assert labels == {("default", "OTHER"), ("unmatched", "OTHER"), ("default", "PATCH"), ("daily", "HEAD")}
    assert len(rec._lookup) == 2  # unknown method tokens never become lookup keys


def test_flat_keys_name_method_and_template_or_the_route() -> None:
    rec = SloRecorder(make_policy(), clock=ManualClock())
    for _ in range(10):
        record(rec, "daily", "GET", 0.100)
        record(rec, "daily", "HEAD", 0.900)  # a GET route answers HEAD too, under its own label
        record(rec, "default", "GET", 0.020, status=500)
        record(rec, "default", "PUT", 0.020)
    flat = rec.flat(rec.status())
    assert flat["latency_ms_p95_GET_/api/horoscopes/daily"] == pytest.approx(100, rel=ALPHA)
    assert flat["p95_horoscopes"] == flat["p95_daily"] == flat["latency_ms_p95_GET_/api/horoscopes/daily"]
    assert flat["error_rate_GET_/api/horoscopes/daily"] == 0.0
    assert flat["latency_ms_p95_POST_/api/orders"] is None and flat["error_rate_POST_/api/orders"] is None
    assert flat["error_rate_default"] == 0.5  # a `*` route: keyed by its name, all methods together
    assert flat["error_rates"] == {"daily": 0.0, "orders": None, "default": 0.5, "unmatched": None}
    assert "p95_default" not in flat  # short keys only for SLO routes and aliases


def test_histogram_buckets_include_every_slo_threshold() -> None:
    policy = make_policy(orders_p95="420ms")
    bounds = latency_buckets(policy)
    assert {0.3, 0.42, 1.0} <= set(bounds) and list(bounds) == sorted(set(bounds))
    rec = SloRecorder(policy, clock=ManualClock())
    record(rec, "orders", "POST", 0.42)
    record(rec, "orders", "POST", 0.4200001)
    series = rec.routes["orders"].series["POST"]
    assert series.buckets[bounds.index(0.42)] == 1  # le="0.42" holds the request exactly on the target


def test_reload_keeps_windows_of_unchanged_routes_and_counters_of_all() -> None:
    clock = ManualClock()
    first = SloRecorder(make_policy(), clock=clock)
    for _ in range(10):
        record(first, "daily", "GET", 0.2)
        record(first, "orders", "POST", 0.2)
    same = SloRecorder(make_policy(), first)
    assert same.route_status("daily")["requests"] == 10
    assert same.routes["daily"].series["GET"].buckets == first.routes["daily"].series["GET"].buckets
    changed = SloRecorder(make_policy(orders_p95="420ms"), same)  # orders' target changed: new bounds too
    assert changed.route_status("daily")["requests"] == 10  # daily unchanged: its window is kept
    assert changed.route_status("orders")["requests"] == 0  # orders' window meant another target
    orders = changed.routes["orders"].series["POST"]
    assert orders.requests_total == 10  # counters continue (Prometheus sees no reset)
    assert sum(orders.buckets) == 0 and 0.42 in orders.bounds  # the bounds changed: the histogram restarts
    record(changed, "orders", "POST", 0.2)
    assert changed.route_status("orders")["objectives"]["latency_p95"]["good_share"] == 1.0


def test_a_clock_that_goes_back_keeps_counting_in_the_newest_slot() -> None:
    clock = ManualClock(500.0)
    rec = SloRecorder(make_policy(), clock=clock)
    record(rec, "daily", "GET", 0.01)
    clock.now -= 60
    record(rec, "daily", "GET", 0.01)
    clock.now += 60
    assert rec.route_status("daily")["requests"] == 2
