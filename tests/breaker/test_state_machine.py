"""The breaker as a pure state machine: an injected clock, no network, no sleeps."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.breaker import Breaker, FailureRule, State, Transition, build_breakers
from gateway.policy.loader import parse_policy
from gateway.policy.model import Breaker as Settings
from tests.support.clock import ManualClock


def make(clock: ManualClock, **settings: Any) -> tuple[Breaker, list[Transition]]:
    seen: list[Transition] = []
    breaker = Breaker(
        "b",
        Settings.model_validate(settings),
        probe_deadline=3.0,
        clock=clock,
        wall=lambda: 1.7e9 + clock(),
        listeners=[seen.append],
    )
    return breaker, seen


def call(breaker: Breaker, failed: bool, duration: float = 0.01) -> None:
    permit = breaker.acquire()
    assert permit is not None, "the breaker rejected a call the test expected it to admit"
    permit.record(failed, duration)


def tripped(clock: ManualClock, **settings: Any) -> tuple[Breaker, list[Transition]]:
    """A breaker that opens at the first failure, just opened by one."""
    breaker, seen = make(clock, consecutive_failures=1, **settings)
    call(breaker, True)
    return breaker, seen


def test_opens_after_consecutive_failures_and_a_success_resets_the_count() -> None:
    clock = ManualClock()
    breaker, seen = make(clock, consecutive_failures=3, failure_rate=None)
    for failed in (True, True, False, True, True):
        call(breaker, failed)
    assert breaker.state is State.CLOSED
    call(breaker, True)
    assert breaker.state is State.OPEN
    assert [(t.from_state, t.to_state, t.cause) for t in seen] == [
        (State.CLOSED, State.OPEN, "consecutive_failures")
    ]
    assert breaker.acquire() is None


def test_failure_rate_needs_min_calls() -> None:
    clock = ManualClock()
    breaker, seen = make(clock, consecutive_failures=None, failure_rate="50%", window=20, min_calls=6)
    for failed in (True, False, True, False, True):  # 60% failed, but only 5 calls
        call(breaker, failed)
    assert breaker.state is State.CLOSED
    call(breaker, False)  # 3 of 6: 50%
    assert breaker.state is State.OPEN
    assert seen[-1].cause == "failure_rate"


def test_count_window_forgets_calls_beyond_its_size() -> None:
    clock = ManualClock()
    breaker, _ = make(clock, consecutive_failures=None, failure_rate="50%", window=4, min_calls=4)
    for failed in (True, False, False, False, True, False, False):  # the last 4: 1 failure
        call(breaker, failed)
    assert breaker.snapshot()["window"] == {"calls": 4, "failures": 1, "slow": 0}
    assert breaker.state is State.CLOSED


def test_time_window_drops_old_calls() -> None:
    clock = ManualClock()
    breaker, _ = make(clock, consecutive_failures=None, failure_rate="50%", window="10s", min_calls=4)
    for _ in range(3):
        call(breaker, True)
    clock.advance(11)  # those failures are now outside the window
    for failed in (True, False, False, False):
        call(breaker, failed)
    assert breaker.snapshot()["window"] == {"calls": 4, "failures": 1, "slow": 0}
    assert breaker.state is State.CLOSED


def test_slow_call_rate_opens() -> None:
    clock = ManualClock()
    breaker, seen = make(
        clock,
        consecutive_failures=None,
        failure_rate=None,
        slow_call="1s",
        slow_call_rate="80%",
        window=5,
        min_calls=5,
    )
    for duration in (1.5, 1.2, 0.1, 2.0):
        call(breaker, False, duration)
    assert breaker.state is State.CLOSED
    call(breaker, False, 1.0)  # 4 of 5 slow (a call of exactly slow_call counts as slow)
    assert breaker.state is State.OPEN
    assert seen[-1].cause == "slow_call_rate"


def test_open_counts_down_then_half_open_admits_exactly_the_probes() -> None:
    clock = ManualClock()
    breaker, seen = tripped(clock, reset_timeout="60s", half_open_requests=2)
    clock.advance(10.2)
    assert breaker.retry_in() == pytest.approx(49.8)
    assert breaker.retry_after() == 50
    assert breaker.snapshot()["opened_at"] == pytest.approx(1.7e9 + 1000.0)
    clock.advance(49.8)
    probes = [breaker.acquire() for _ in range(5)]
    assert [p is not None for p in probes] == [True, True, False, False, False]
    assert breaker.state is State.HALF_OPEN
    assert breaker.snapshot()["half_open_in_flight"] == 2
    assert seen[-1].cause == "reset_timeout"
    first, second = probes[0], probes[1]
    assert first is not None and second is not None
    first.record(False, 0.1)
    assert breaker.state is State.HALF_OPEN  # every probe must succeed
    second.record(False, 0.1)
    assert breaker.state is State.CLOSED
    assert seen[-1].cause == "probes_succeeded"
    assert breaker.snapshot()["opened_at"] is None


def test_a_failed_probe_reopens_and_restarts_the_timer() -> None:
    clock = ManualClock()
    breaker, seen = tripped(clock, reset_timeout="60s")
    clock.advance(60)
    call(breaker, True)
    assert breaker.state is State.OPEN
    assert seen[-1].cause == "probe_failed"
    assert breaker.retry_in() == 60


def test_a_released_probe_frees_its_slot_without_a_verdict() -> None:
    clock = ManualClock()
    breaker, _ = tripped(clock, reset_timeout="1s")
    clock.advance(1)
    probe = breaker.acquire()
    assert probe is not None and breaker.acquire() is None
    probe.release()  # e.g. the client went away and the handler was cancelled
    assert breaker.state is State.HALF_OPEN
    assert breaker.acquire() is not None


def test_a_stuck_probe_is_a_failure_after_its_deadline() -> None:
    clock = ManualClock()
    breaker, seen = tripped(clock, reset_timeout="1s")
    clock.advance(1)
    stuck = breaker.acquire()
    assert stuck is not None
    clock.advance(2.9)
    assert breaker.acquire() is None and breaker.state is State.HALF_OPEN
    clock.advance(0.1)  # probe_deadline is 3s
    assert breaker.state is State.OPEN
    assert seen[-1].cause == "probe_failed"
    stuck.record(False, 3.5)  # a late answer from the stuck probe changes nothing
    assert breaker.state is State.OPEN


def test_a_late_report_from_before_a_transition_is_ignored() -> None:
    clock = ManualClock()
    breaker, _ = make(clock, consecutive_failures=2)
    slow = breaker.acquire()
    assert slow is not None
    call(breaker, True)
    call(breaker, True)
    assert breaker.state is State.OPEN
    breaker.force_close()
    slow.record(True, 0.1)  # admitted before the manual close: not counted against the fresh breaker
    assert breaker.snapshot()["consecutive_failures"] == 0


def test_manual_open_holds_until_closed_and_reset_clears_the_window() -> None:
    clock = ManualClock()
    breaker, seen = make(clock, consecutive_failures=3, reset_timeout="1s")
    breaker.force_open()
    clock.advance(3600)
    assert breaker.state is State.OPEN
    assert breaker.snapshot()["held"] is True and breaker.snapshot()["retry_in"] is None
    breaker.force_close()
    assert breaker.state is State.CLOSED
    assert [(t.to_state, t.cause) for t in seen] == [(State.OPEN, "manual"), (State.CLOSED, "manual")]
    call(breaker, True)
    call(breaker, True)
    breaker.reset()
    call(breaker, True)
    call(breaker, True)
    assert breaker.state is State.CLOSED  # the two failures before the reset were forgotten


def test_snapshot_counts_transitions() -> None:
    clock = ManualClock()
    breaker, _ = tripped(clock, reset_timeout="1s")
    clock.advance(1)
    call(breaker, False)
    snap = breaker.snapshot()
    assert snap["state"] == "closed" and snap["failures"] == 1 and snap["calls"] == 2
    assert snap["transitions"] == [
        {"from": "closed", "to": "open", "count": 1},
        {"from": "half_open", "to": "closed", "count": 1},
        {"from": "open", "to": "half_open", "count": 1},
    ]


@pytest.mark.parametrize(
    ("failure_on", "status", "error", "failed"),
    [
        (["5xx"], 503, None, True),
        (["5xx"], 429, None, False),
        (["5xx", "429"], 429, None, True),
        (["5xx"], 404, None, False),
        (["5xx"], None, "reset", True),
        (["5xx"], None, "protocol", True),
        (["5xx"], None, "timeout", False),
        (["timeout"], None, "timeout", True),
        (["connect_error"], None, "connect_error", True),
        ([500, 502, 504, "timeout"], 503, None, False),
        ([500, 502, 504, "timeout"], 502, None, True),
    ],
)
def test_failure_on_decides_what_counts(
    failure_on: list[Any], status: int | None, error: str | None, failed: bool
) -> None:
    rule = FailureRule.compile(Settings.model_validate({"failure_on": failure_on}).failure_on)
    assert rule.is_failure(status, error) is failed


def test_an_error_that_says_nothing_about_the_upstream_only_releases() -> None:
    clock = ManualClock()
    breaker, _ = make(clock, consecutive_failures=1)
    permit = breaker.acquire()
    assert permit is not None
    permit.record_outcome(None, "client_closed", 0.1)
    assert breaker.state is State.CLOSED and breaker.calls == 0


POLICY = """
version: 1
upstreams:
  a: {url: "http://127.0.0.1:1", timeout: 2s, breaker: shared}
  b: {url: "http://127.0.0.1:2", timeout: 7s}
breakers:
  shared: {consecutive_failures: RESET}
  own: {consecutive_failures: 3}
routes:
  - {name: r1, match: "GET /a", upstream: a}
  - {name: r2, match: "GET /b", upstream: b, breaker: own, timeout: 4s}
"""


def test_reload_carries_over_an_unchanged_breaker_with_its_state() -> None:
    clock = ManualClock()
    first = build_breakers(parse_policy(POLICY.replace("RESET", "2")), {}, lambda t: None, clock)
    assert first["shared"].probe_deadline == 2.0 and first["own"].probe_deadline == 4.0
    first["shared"].force_open()
    same = build_breakers(parse_policy(POLICY.replace("RESET", "2")), first, lambda t: None, clock)
    assert same["shared"] is first["shared"] and same["shared"].state is State.OPEN
    changed = build_breakers(parse_policy(POLICY.replace("RESET", "9")), first, lambda t: None, clock)
    assert changed["shared"] is not first["shared"] and changed["shared"].state is State.CLOSED
    assert changed["own"] is first["own"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"consecutive_failures": None, "failure_rate": None}, "at least one of"),
        ({"slow_call": "1s"}, "slow_call and slow_call_rate go together"),
        ({"window": 5, "min_calls": 10}, "cannot exceed a window of 5 calls"),
    ],
)
def test_incoherent_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.model_validate(settings)
