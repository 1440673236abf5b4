"""The adaptive limiter's logic (gateway/admission.py) with a hand-moved clock: probe, gradient, queue order,
eviction, deadlines, tightening, shadow mode and the carry-over of what was learned."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.admission import CRITICAL, NORMAL, SHEDDABLE, Admission
from gateway.policy.model import Concurrency
from tests.support.clock import ManualClock


def spec(**changes: Any) -> Concurrency:
    base: dict[str, Any] = {
        "adaptive": True, "min": 2, "max": 100, "window": "1s", "probe_samples": 3,
        "probe_interval": "1h", "queue": 2, "queue_timeout": "5s", "tolerance": "25%",
    }
    base.update(changes)
    return Concurrency.model_validate(base)


def served(
    admission: Admission, clock: ManualClock, latency: float, n: int, *, at_once: int = 1, route: str = "r"
) -> None:
    """`n` requests of `latency` seconds, `at_once` in flight together, then the window closes."""
    done = 0
    while done < n:
        batch = min(at_once, n - done)
        for _ in range(batch):
            assert admission.enter("r", CRITICAL)
        for _ in range(batch):
            admission.leave(route, latency)
        done += batch
    clock.advance(1.0)
    assert admission.enter("r", CRITICAL)
    admission.leave("r", None)  # the first call after the window's end recomputes the limit


def learned(clock: ManualClock, **changes: Any) -> Admission:
    admission = Admission("app", spec(**changes), clock=clock)
    served(admission, clock, 0.010, 3)  # the probe: three samples of 10 ms
    assert not admission.probing
    return admission


def test_a_probe_learns_the_no_load_latency_at_the_minimum_limit() -> None:
    clock = ManualClock()
    admission = Admission("app", spec(), clock=clock)
    assert admission.probing and admission.current_limit == 2
    served(admission, clock, 0.010, 2)
    assert admission.probing  # two samples of the three needed
    served(admission, clock, 0.030, 1)
    assert not admission.probing
    assert admission.no_load == {"r": 0.010}  # the median, not the slow outlier


def test_the_limit_grows_at_no_load_latency_when_used_and_shrinks_when_latency_climbs() -> None:
    clock = ManualClock()
    admission = learned(clock)
    before = admission.current_limit
    served(admission, clock, 0.010, 20, at_once=admission.current_limit)
    grown = admission.limit
    assert grown > before
    served(admission, clock, 0.010, 40, at_once=admission.current_limit)
    assert admission.limit > grown
    high = admission.limit
    for _ in range(3):
        served(admission, clock, 0.010, 40, at_once=admission.current_limit)
    high = admission.limit
    served(admission, clock, 0.040, 40, at_once=admission.current_limit)  # 4x the no-load latency: queueing
    assert admission.limit == high * 0.75  # half way to half the limit (the gradient's floor is 0.5)
    served(admission, clock, 0.040, 40, at_once=admission.current_limit)
    assert admission.limit < high * 0.6


def test_an_idle_upstream_teaches_nothing_about_room_to_grow() -> None:
    clock = ManualClock()
    admission = learned(clock, min=8)
    for _ in range(5):
        served(admission, clock, 0.010, 20, at_once=3)  # three at a time: under half the limit
    assert admission.current_limit == 8


def test_the_limit_stays_within_min_and_max() -> None:
    clock = ManualClock()
    admission = learned(clock, max=5)
    for _ in range(10):
        served(admission, clock, 0.010, 50, at_once=admission.current_limit)
    assert admission.current_limit == 5
    for _ in range(10):
        served(admission, clock, 1.0, 5, at_once=admission.current_limit)
    assert admission.current_limit == 2


def test_a_probe_relearns_the_no_load_latency_periodically() -> None:
    clock = ManualClock()
    admission = learned(clock, probe_interval="10s")
    clock.advance(10.0)
    served(admission, clock, 0.020, 3)  # this window ends past probe_interval: a probe starts
    assert admission.probing and admission.current_limit == 2
    served(admission, clock, 0.020, 3)
    assert not admission.probing and admission.no_load == {"r": 0.020}


def test_latency_is_judged_against_each_routes_own_no_load_latency() -> None:
    clock = ManualClock()
    admission = Admission("app", spec(min=4), clock=clock)
    for route, latency in (("fast", 0.010), ("slow", 0.100)):
        for _ in range(2):
            assert admission.enter(route, NORMAL)
            admission.leave(route, latency)
    clock.advance(1.0)
    admission.enter("fast", NORMAL)
    admission.leave("fast", None)
    assert admission.no_load == {"fast": 0.010, "slow": 0.100}
    for _ in range(5):  # only slow requests get through now (as when the fast ones are shed): no queueing
        served(admission, clock, 0.100, 20, at_once=admission.current_limit, route="slow")
    assert admission.current_limit > 8
    before = admission.limit
    served(admission, clock, 0.300, 20, at_once=admission.current_limit, route="slow")
    assert admission.limit < before  # three times its own no-load latency: queueing


def test_a_route_first_seen_between_probes_learns_at_low_concurrency() -> None:
    clock = ManualClock()
    admission = learned(clock)
    for _ in range(4):
        served(admission, clock, 0.010, 20, at_once=admission.current_limit)
    assert admission.current_limit >= 5
    for _ in range(5):
        assert admission.enter("new", NORMAL)
    admission.leave("new", 0.500)  # four others still in flight: says nothing of no-load
    assert "new" not in admission.no_load
    for _ in range(3):
        admission.leave("new", None)
    admission.leave("new", 0.050)  # alone: that is its no-load latency
    assert admission.no_load["new"] == 0.050


async def test_a_freed_slot_goes_to_the_highest_priority_waiter_first() -> None:
    clock = ManualClock()
    admission = learned(clock, queue=5)
    assert admission.enter("r", NORMAL) and admission.enter("r", NORMAL)  # the limit (2) is used
    assert not admission.enter("r", CRITICAL)
    order: list[str] = []

    async def queued(name: str, priority: int) -> None:
        assert await admission.wait(priority) is None
        order.append(name)

    tasks = [asyncio.create_task(queued(n, p)) for n, p in
             (("shed", SHEDDABLE), ("normal", NORMAL), ("critical", CRITICAL))]
    await asyncio.sleep(0)  # let them queue
    assert admission.queued == 3
    admission.leave("r", 0.010)
    await asyncio.sleep(0)
    assert order == ["critical"]
    admission.leave("r", 0.010)
    admission.leave("r", 0.010)
    await asyncio.gather(*tasks)
    assert order == ["critical", "normal", "shed"]
    assert admission.inflight == 2 and admission.queued == 0


async def test_a_full_queue_evicts_the_newest_lower_priority_waiter_and_refuses_critical_last() -> None:
    clock = ManualClock()
    admission = learned(clock, queue=2)
    admission.enter("r", CRITICAL)
    admission.enter("r", CRITICAL)
    first = asyncio.create_task(admission.wait(SHEDDABLE))
    second = asyncio.create_task(admission.wait(SHEDDABLE))
    await asyncio.sleep(0)
    assert await admission.wait(SHEDDABLE) == "queue_full"  # same priority: no one to push out
    critical = asyncio.create_task(admission.wait(CRITICAL))
    await asyncio.sleep(0)
    assert await second == "evicted"  # the newest sheddable waiter made room
    assert not first.done()
    normal = asyncio.create_task(admission.wait(NORMAL))
    await asyncio.sleep(0)
    assert await first == "evicted"
    assert await admission.wait(NORMAL) == "queue_full"  # a critical and a normal wait: nothing lower
    admission.leave("r", 0.01)
    admission.leave("r", 0.01)
    assert await critical is None and await normal is None


async def test_a_waiter_is_refused_at_its_deadline_and_frees_its_place() -> None:
    clock = ManualClock()
    admission = learned(clock, queue=1, queue_timeout="10ms")
    admission.enter("r", NORMAL)
    admission.enter("r", NORMAL)
    assert await admission.wait(NORMAL) == "queue_timeout"
    assert admission.queued == 0
    admission.leave("r", 0.01)
    assert admission.inflight == 1


async def test_a_client_gone_while_queued_leaves_no_slot_behind() -> None:
    clock = ManualClock()
    admission = learned(clock)
    admission.enter("r", NORMAL)
    admission.enter("r", NORMAL)
    task = asyncio.create_task(admission.wait(NORMAL))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert admission.queued == 0
    admission.leave("r", 0.01)
    admission.leave("r", 0.01)
    assert admission.inflight == 0


async def test_tightening_caps_sheddable_then_refuses_it_and_caps_normal() -> None:
    clock = ManualClock()
    admission = learned(clock, min=10, tighten_share="50%")
    assert admission.caps == [10, 10, 10]
    admission.set_level(1)
    assert admission.caps == [5, 10, 10] and admission.mode == "tight_sheddable"
    admission.set_level(2)
    assert admission.caps == [0, 5, 10] and admission.mode == "tight_normal"
    assert not admission.enter("r", SHEDDABLE)
    assert await admission.wait(SHEDDABLE) == "tightened"
    admission.set_level(0)
    assert admission.enter("r", SHEDDABLE)


async def test_tightening_refuses_the_sheddable_waiters_at_once() -> None:
    clock = ManualClock()
    admission = learned(clock, queue=4)
    admission.enter("r", CRITICAL)
    admission.enter("r", CRITICAL)
    waiting = asyncio.create_task(admission.wait(SHEDDABLE))
    await asyncio.sleep(0)
    admission.set_level(2)
    assert await waiting == "tightened"
    assert admission.queued == 0


def test_shadow_mode_admits_everything_and_counts_what_it_would_shed() -> None:
    clock = ManualClock()
    admission = learned(clock, shadow=True, queue=1)
    assert all(admission.enter("payments", CRITICAL) for _ in range(3))  # limit 2 + queue 1: all "fit"
    assert admission.would_shed == {}
    assert admission.enter("horoscopes", SHEDDABLE)
    assert admission.inflight == 4
    assert admission.would_shed == {("horoscopes", "sheddable"): 1}
    assert admission.shed == {}


def test_what_was_learned_carries_into_a_new_object() -> None:
    clock = ManualClock()
    old = learned(clock)
    for _ in range(6):
        served(old, clock, 0.010, 30, at_once=old.current_limit)
    assert old.current_limit > 5
    new = Admission("app", spec(queue=9), clock=clock, learned=old)
    assert not new.probing
    assert new.current_limit == old.current_limit and new.no_load == old.no_load == {"r": 0.010}
    clamped = Admission("app", spec(max=4), clock=clock, learned=old)
    assert clamped.current_limit == 4
