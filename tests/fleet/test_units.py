"""The fleet's pure logic: snapshots merge and round-trip, worker metrics add up, a follower breaker waits."""

from __future__ import annotations

import math
import os
import random
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway.breaker import Breaker, State, Transition
from gateway.fleet.supervisor import worker_count
from gateway.fleet.workers import families_of, merge_families
from gateway.outcome import Outcome
from gateway.policy.model import Breaker as BreakerSettings
from gateway.policy.model import Policy
from gateway.slo import SloRecorder
from gateway.slo.series import SUB_WINDOW, Totals, Window
from gateway.slo.sketch import ALPHA, key_of
from gateway.slo.snapshot import MAX_KEYS, SeriesSnapshot, bounded, decode, encode, merge_snapshots
from tests.support.clock import ManualClock

POLICY = Policy.model_validate(yaml.safe_load("""
version: 1
upstreams: {app: {url: "http://127.0.0.1:9"}}
routes:
  - {name: daily, match: "GET /daily", upstream: app, slo: {p95: 300ms, error_rate: 1%}}
"""))


def lower_rank(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[math.floor(q * (len(ordered) - 1))]


def test_fleet_percentiles_come_from_merged_counts_not_averaged_percentiles() -> None:
    clock = ManualClock()
    rng = random.Random(3)
    recorders = [SloRecorder(POLICY, clock=clock) for _ in range(3)]
    everything: list[float] = []
    for i, rec in enumerate(recorders):
        for _ in range(400 * (i + 1)):
            seconds = rng.uniform(0.01, 0.1 * (i + 1) ** 2)
            everything.append(seconds)
            status = 500 if rng.random() < 0.01 * i else 200
            rec.observe(Outcome(route="daily", method="GET", status=status, duration=seconds))
    # Published and read back, as another process would.
    wire = [decode(encode(rec.snapshot(), instance=f"i{n}"))[1] for n, rec in enumerate(recorders)]
    merged = recorders[0].status([s for part in wire for s in part])["daily"]
    exact = lower_rank(everything, 0.95)
    assert merged["latency_ms"]["p95"] == pytest.approx(exact * 1000, rel=ALPHA)
    averaged = sum(r.status()["daily"]["latency_ms"]["p95"] for r in recorders) / 3
    assert abs(averaged - exact * 1000) > 0.1 * exact * 1000  # the wrong way is visibly wrong here
    assert merged["requests"] == len(everything)
    errors = sum(r.status()["daily"]["errors"] for r in recorders)
    assert merged["errors"] == errors
    assert merged["objectives"]["error_rate"]["burn_rate"]["5m"] == pytest.approx(
        errors / len(everything) / 0.01, rel=1e-3
    )


def test_decode_refuses_what_encode_did_not_write() -> None:
    for raw in (b"nope", b"{}", b'{"format": 1, "series": [{"r": 1}]}',
                b'{"format": 1, "series": [{"r": "a", "m": "GET", "l": [1], "u": [], "t": {}}]}'):
        with pytest.raises(ValueError):
            decode(raw)


def test_a_sketch_is_bounded_by_folding_its_fastest_keys() -> None:
    counts = {key_of(1e-6 * 1.01**i): 1 for i in range(3 * MAX_KEYS)}
    folded = bounded(counts)
    assert len(folded) == MAX_KEYS
    assert sum(folded.values()) == sum(counts.values())
    assert max(folded) == max(counts)


def test_merging_adds_totals_of_different_widths() -> None:
    one = SeriesSnapshot("r", "GET", {1: 2}, {}, {"window": Totals(2, 1, 0, (1, 1))})
    two = SeriesSnapshot("r", "GET", {1: 1, 2: 1}, {}, {"window": Totals(2, 0, 1, (2,))})
    (merged,) = merge_snapshots([[one], [two]])
    assert merged.latency == {1: 3, 2: 1}
    assert merged.totals["window"] == Totals(4, 1, 1, (3, 1))


def registry(requests: float, state: float, up: float) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)

    class One:
        def collect(self) -> Any:
            yield CounterMetricFamily("gateway_requests", "r", value=requests)
            yield GaugeMetricFamily("gateway_circuit_breaker_state", "s", value=state)
            yield GaugeMetricFamily("gateway_redis_up", "u", value=up)
            yield GaugeMetricFamily("gateway_audit_queue_events", "q", value=3)

    reg.register(One())  # type: ignore[arg-type]
    return reg


def test_worker_metrics_add_up_and_gauges_that_cannot_be_summed_are_not() -> None:
    merged = merge_families([families_of(registry(5, 0, 1)), families_of(registry(7, 2, 0))])
    values = {f["n"]: f["s"][0][2] for f in merged}
    assert values == {"gateway_requests": 12, "gateway_circuit_breaker_state": 2, "gateway_redis_up": 0,
                      "gateway_audit_queue_events": 6}
    retired = merge_families([families_of(registry(5, 0, 1))], counters_only=True)
    assert [f["n"] for f in retired] == ["gateway_requests"]  # a dead worker leaves its counters only


class Link:
    def __init__(self) -> None:
        self.sent: list[Transition] = []
        self.up = True

    def active(self) -> bool:
        return self.up

    def local_transition(self, breaker: Breaker, transition: Transition) -> None:
        self.sent.append(transition)


def shared_breaker(clock: ManualClock) -> tuple[Breaker, Link, list[Transition]]:
    seen: list[Transition] = []
    settings = BreakerSettings.model_validate(
        {"consecutive_failures": 2, "failure_rate": None, "reset_timeout": "10s", "shared": True}
    )
    breaker = Breaker("b", settings, probe_deadline=3.0, clock=clock, listeners=[seen.append])
    link = Link()
    breaker.fleet = link
    return breaker, link, seen


def test_a_follower_fails_fast_probes_nothing_and_takes_over_only_after_the_grace() -> None:
    clock = ManualClock()
    breaker, link, seen = shared_breaker(clock)
    breaker.adopt(State.OPEN, held=False, follower=True)
    assert breaker.acquire() is None
    assert seen[-1].shared and link.sent == []  # adopted: neither announced nor audited here
    clock.advance(10)  # the owner's reset timeout: the follower still waits for the owner's verdict
    assert breaker.acquire() is None
    breaker.adopt(State.HALF_OPEN, held=False, follower=True)
    assert breaker.acquire() is None  # the owner holds the fleet's probe
    clock.advance(breaker.fleet_grace)  # the owner went quiet: probe here
    permit = breaker.acquire()
    assert permit is not None and permit.probe
    permit.record(False, 0.01)
    assert breaker.state is State.CLOSED
    assert [(t.from_state, t.to_state) for t in link.sent] == [(State.HALF_OPEN, State.CLOSED)]


def test_an_opening_judged_here_is_announced_and_left_to_the_fleet_to_audit() -> None:
    clock = ManualClock()
    breaker, link, seen = shared_breaker(clock)
    for _ in range(2):
        permit = breaker.acquire()
        assert permit is not None
        permit.record(True, 0.01)
    assert breaker.state is State.OPEN
    assert [(t.to_state, t.shared) for t in link.sent] == [(State.OPEN, True)]
    link.up = False  # Redis down: a local breaker again, audited locally
    breaker.force_close()
    assert len(link.sent) == 1 and seen[-1].to_state is State.CLOSED and not seen[-1].shared


def test_burn_window_counts_from_running_sums_equal_the_sum_of_their_slots() -> None:
    rng = random.Random(5)
    window = Window((0.1, 0.3), 300.0)
    for step in range(4000):
        if rng.random() < 0.3:
            continue  # slots exist only for periods with traffic
        slot = window.open(step)
        for _ in range(rng.randint(1, 5)):
            slot.total += 1
            slot.errors += rng.random() < 0.2
            slot.throttled += rng.random() < 0.1
            slot.exceed[rng.randint(0, 2)] += 1
        if step % 97 == 0:
            for seconds in (300.0, 1800.0, 3600.0, 21600.0):
                got = window.totals(step, seconds)
                edge = step - math.ceil(seconds / SUB_WINDOW - 1e-9)
                spans = [
                    (s.total, s.errors, s.throttled, tuple(s.exceed)) for s in window.recent if s.slot > edge
                ]
                spans += [o[1:] for o in window.old if o[0] > edge]
                assert got == Totals(
                    sum(s[0] for s in spans), sum(s[1] for s in spans), sum(s[2] for s in spans),
                    tuple(sum(s[3][i] for s in spans) for i in range(3)),
                ), (step, seconds)


def test_workers_is_a_number_or_auto() -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "many", "257"):
        with pytest.raises(ValueError, match="--workers"):
            worker_count(bad)
