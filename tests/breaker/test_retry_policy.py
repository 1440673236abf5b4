"""Retry rules and the retry budget as pure logic, with a clock the test moves."""

from __future__ import annotations

import pytest

from gateway.policy.model import Retries
from gateway.retry import BUDGET_WINDOW, MAX_REPLAY_BODY, MIN_RETRIES_PER_SECOND, RetryBudget, RetryPolicy
from tests.support.clock import ManualClock

POLICY = RetryPolicy.compile(
    Retries.model_validate({"attempts": 3, "backoff": "50ms", "on": ["connect_error", 502, "503", "timeout"]})
)


def test_compiled_policy_splits_statuses_and_errors() -> None:
    assert POLICY.statuses == {502, 503}
    assert POLICY.errors == {"connect_error", "timeout"}
    assert POLICY.attempts == 3


@pytest.mark.parametrize(
    ("method", "headers", "has_body", "length", "replayable"),
    [
        ("GET", {}, False, None, True),
        ("DELETE", {}, False, None, True),
        ("TRACE", {}, False, None, True),  # idempotent by RFC 9110 9.2.2, as the pool's resend has it
        ("PUT", {}, True, 100, True),
        ("POST", {}, True, 100, False),
        ("PATCH", {}, True, 100, False),
        ("POST", {"Idempotency-Key": "k1"}, True, 100, True),
        ("PUT", {}, True, None, False),  # chunked: cannot be replayed without buffering all of it
        ("PUT", {}, True, MAX_REPLAY_BODY + 1, False),
        ("PUT", {}, True, MAX_REPLAY_BODY, True),
    ],
)
def test_only_idempotent_requests_with_a_replayable_body(
    method: str, headers: dict[str, str], has_body: bool, length: int | None, replayable: bool
) -> None:
    assert POLICY.replayable(method, headers, has_body, length) is replayable


def test_backoff_grows_exponentially_with_jitter() -> None:
    assert POLICY.delay(1, rand=lambda: 1.0) == pytest.approx(0.05)
    assert POLICY.delay(3, rand=lambda: 1.0) == pytest.approx(0.2)
    assert POLICY.delay(3, rand=lambda: 0.0) == pytest.approx(0.1)


def spend_all(budget: RetryBudget) -> int:
    granted = 0
    while budget.try_spend():
        granted += 1
    return granted


def test_budget_floor_lets_low_traffic_retry_a_little() -> None:
    budget = RetryBudget(0.2, clock=ManualClock())
    budget.request()
    assert spend_all(budget) == int(MIN_RETRIES_PER_SECOND * BUDGET_WINDOW)


def test_budget_is_a_share_of_recent_requests() -> None:
    budget = RetryBudget(0.2, clock=ManualClock())
    for _ in range(1000):
        budget.request()
    assert spend_all(budget) == 200
    assert budget.stats()["denied"] == 1


def test_budget_window_slides() -> None:
    clock = ManualClock()
    budget = RetryBudget(0.2, clock=clock)
    for _ in range(1000):
        budget.request()
    assert spend_all(budget) == 200
    clock.advance(BUDGET_WINDOW)  # the requests and retries above have left the window
    assert budget.stats()["window_requests"] == 0
    assert spend_all(budget) == int(MIN_RETRIES_PER_SECOND * BUDGET_WINDOW)
