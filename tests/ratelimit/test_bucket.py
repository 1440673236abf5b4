"""The bucket math, the in-process store's memory bound and the header values: pure logic, no I/O."""

from __future__ import annotations

from gateway.ratelimit.bucket import US, BucketSpec, evaluate, evaluate_all
from gateway.ratelimit.headers import LimitHeaders
from gateway.ratelimit.memory import MemoryBuckets
from tests.support.clock import ManualClock

NOW = 5_000 * US


def run(spec: BucketSpec, n: int, now: int = NOW, tat: int = 0) -> tuple[list[bool], int]:
    allowed = []
    for _ in range(n):
        verdict, new_tat = evaluate(tat, now, spec)
        allowed.append(verdict.allowed)
        if verdict.allowed:
            tat = new_tat
    return allowed, tat


def test_a_full_bucket_admits_exactly_its_burst_then_one_per_interval() -> None:
    spec = BucketSpec.of(10, 60.0, 10)
    assert spec.interval == 6 * US
    allowed, tat = run(spec, 30)
    assert allowed.count(True) == 10 and allowed[:10] == [True] * 10
    later, tat = run(spec, 5, now=NOW + 6 * US, tat=tat)
    assert later == [True, False, False, False, False]
    almost, _ = run(spec, 1, now=NOW + 12 * US - 1, tat=tat)
    assert almost == [False]


def test_remaining_and_wait_count_down_exactly() -> None:
    spec = BucketSpec.of(15, 3600.0, 15)  # the runbook's 15 orders per hour: one token every 240 s
    verdict, tat = evaluate(0, NOW, spec)
    assert (verdict.allowed, verdict.remaining, verdict.wait) == (True, 14, 240 * US)
    verdict, tat = evaluate(tat, NOW + 100 * US, spec)  # 100 s later: still 13 left after this one
    assert (verdict.remaining, verdict.wait) == (13, 140 * US)
    for _ in range(13):
        verdict, tat = evaluate(tat, NOW + 100 * US, spec)
    assert (verdict.allowed, verdict.remaining) == (True, 0)
    refused, _ = evaluate(tat, NOW + 100 * US, spec)
    assert (refused.allowed, refused.remaining, refused.wait) == (False, 0, 140 * US)


def test_a_bucket_never_refuses_once_its_wait_has_passed() -> None:
    spec = BucketSpec.of(3, 1.0, 3)
    assert spec.interval == 333_334  # rounded up: never faster than the declared rate
    _, tat = run(spec, 3)
    refused, _ = evaluate(tat, NOW, spec)
    assert not refused.allowed
    admitted, _ = evaluate(tat, NOW + refused.wait, spec)
    assert admitted.allowed
    too_early, _ = evaluate(tat, NOW + refused.wait - 1, spec)
    assert not too_early.allowed


def test_a_refused_request_takes_nothing_from_its_other_limits() -> None:
    roomy, tight = BucketSpec.of(100, 60.0, 100), BucketSpec.of(1, 60.0, 1)
    verdicts, stores = evaluate_all([0, 0], NOW, [roomy, tight], [True, True])
    assert [v.allowed for v in verdicts] == [True, True] and None not in stores
    tats = [t for t in stores if t is not None]
    verdicts, stores = evaluate_all(tats, NOW, [roomy, tight], [True, True])
    assert [v.allowed for v in verdicts] == [True, False]
    assert stores == [None, None]


def test_a_shadow_limit_reports_but_never_blocks_or_is_taken_when_over() -> None:
    shadow, real = BucketSpec.of(1, 60.0, 1), BucketSpec.of(100, 60.0, 100)
    _, stores = evaluate_all([0, 0], NOW, [shadow, real], [False, True])
    tats = [t or 0 for t in stores]
    verdicts, stores = evaluate_all(tats, NOW, [shadow, real], [False, True])
    assert [v.allowed for v in verdicts] == [False, True]
    assert stores[0] is None and stores[1] is not None


def test_a_smaller_burst_after_a_change_is_no_emptier_than_empty() -> None:
    big, small = BucketSpec.of(10, 60.0, 10), BucketSpec.of(2, 60.0, 2)  # same interval, smaller span
    _, tat = run(big, 10)  # empty: 60 s from full
    refused, _ = evaluate(tat, NOW, small)
    assert not refused.allowed and refused.wait == 30 * US  # one token of the new bucket, not 60 s
    _, full = run(big, 0)
    assert evaluate(full, NOW, small)[0].remaining == 1


def test_in_process_buckets_stay_bounded_and_drop_idle_ones() -> None:
    clock = ManualClock()
    store = MemoryBuckets(max_keys=100, clock=clock)
    spec = [BucketSpec.of(1, 1.0, 1)]
    for i in range(150):
        store.check([f"k{i}"], spec, [True])
    assert len(store) == 100
    clock.advance(2.0)  # every bucket is full again: each new write sweeps idle ones away
    for i in range(60):
        store.check([f"new{i}"], spec, [True])
    assert len(store) == 60


def test_the_most_recently_used_bucket_survives_eviction() -> None:
    clock = ManualClock()
    store = MemoryBuckets(max_keys=100, clock=clock)
    slow = [BucketSpec.of(1, 3600.0, 1)]
    store.check(["kept"], slow, [True])
    for i in range(99):
        store.check([f"k{i}"], slow, [True])
    assert not store.check(["kept"], slow, [True])[0].allowed  # refused, and so the most recently used
    for i in range(99, 150):
        store.check([f"k{i}"], slow, [True])
    assert len(store) == 100
    assert store.check(["k0"], slow, [True])[0].allowed  # k0 was evicted: a fresh bucket
    assert not store.check(["kept"], slow, [True])[0].allowed


def test_header_values_follow_the_draft() -> None:
    hourly = LimitHeaders.build("rate_orders_per_hour", BucketSpec.of(15, 3600.0, 15))
    assert hourly.policy == '"rate_orders_per_hour";q=15;w=3600'
    assert hourly.allowed(14, 240 * US)[1] == ("RateLimit", '"rate_orders_per_hour";r=14;t=240')
    assert hourly.rejected(239 * US + 1) == [
        ("RateLimit-Policy", '"rate_orders_per_hour";q=15;w=3600'),
        ("RateLimit", '"rate_orders_per_hour";r=0;t=240'),
        ("Retry-After", "240"),  # rounded up: never earlier than the token arrives
    ]
    burst = LimitHeaders.build("per_ip", BucketSpec.of(50, 1.0, 100))
    assert burst.policy == '"per_ip";q=100;w=2'  # 100 at once, or 50 a second: both true of "100 per 2 s"
    assert burst.remaining(100, 0) == '"per_ip";r=100'  # full: no more quota to wait for, no t
