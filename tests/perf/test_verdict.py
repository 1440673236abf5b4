"""The verdict on results generated here from known latencies: runs that pass, fail, or cannot vouch for
themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.policy.loader import parse_policy
from gateway.policy.model import Policy
from perf.results import Result, ResultsWriter
from perf.run import meta_path, write_verdict
from perf.verdict import Verdict, judge, percentile, render_text, valid_retry_after

POLICY = """
version: 1
upstreams:
  app: {url: "http://127.0.0.1:8001"}
routes:
  - {name: fast, match: "GET /fast", upstream: app, slo: {p95: 100ms, error_rate: 1%}}
  - {name: slow, match: "POST /slow/{id}", upstream: app, slo: {p50: 200ms, p99: 800ms}}
  - {name: plain, match: "GET /plain", upstream: app}
"""
T0 = 1_757_750_400 * 10**9  # 2025-09-13T08:00:00Z


@pytest.fixture
def policy() -> Policy:
    return parse_policy(POLICY)


def make(latencies_ms: list[float], *, path: str = "/fast", method: str = "GET", attack: str = "a",
         rate: float = 10.0, code: int = 200, codes: dict[int, int] | None = None,
         headers: dict[str, list[str]] | None = None) -> list[Result]:
    """One result per latency, due every 1/rate s; `codes` maps a result index to its status."""
    out = []
    for i, ms in enumerate(latencies_ms):
        status = (codes or {}).get(i, code)
        out.append(Result(
            attack=attack, seq=i, code=status, timestamp=T0 + int(i / rate * 1e9), latency=int(ms * 1e6),
            error="" if 200 <= status < 400 else f"{status} Error", method=method,
            url=f"http://127.0.0.1:8000{path}?n={i}", headers=headers or {},
        ))
    return out


def check(verdict: Verdict, subject: str) -> tuple[bool | None, str]:
    found = [c for c in verdict.all_checks() if c.subject == subject]
    assert len(found) == 1, [c.subject for c in verdict.all_checks()]
    return found[0].ok, found[0].detail


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95), percentile(values, 0.99)) == (50.0, 95.0, 99.0)
    assert percentile([7.0], 0.99) == 7.0 and percentile([], 0.5) == 0.0


def test_a_run_inside_every_slo_passes(policy: Policy) -> None:
    results = make([float(ms) for ms in range(1, 101)])  # p95 = 95 ms, SLO 100 ms
    results += make([150.0] * 50 + [700.0] * 50, path="/slow/42", method="POST", attack="b")
    verdict = judge(results, policy, {"attacks": [{"name": "a", "rate": 10}, {"name": "b", "rate": 10}]})
    assert verdict.status == "PASS" and verdict.exit_code == 0
    assert check(verdict, "fast p95") == (True, "95.0ms <= SLO 100.0ms")
    assert check(verdict, "slow p50")[0] is True  # 150 ms <= 200 ms
    assert check(verdict, "slow p99")[0] is True  # 700 ms <= 800 ms
    fast = next(e for e in verdict.endpoints if e.route == "fast")
    assert (fast.stats.count, fast.stats.p(0.5), fast.stats.rate) == (100, 0.05, pytest.approx(10.0))
    assert "verdict: PASS" in render_text(verdict)


def test_a_missed_latency_slo_fails(policy: Policy) -> None:
    verdict = judge(make([10.0] * 90 + [150.0] * 10), policy)  # p95 = 150 ms > 100 ms
    assert verdict.status == "FAIL" and verdict.exit_code == 1
    assert check(verdict, "fast p95") == (False, "150.0ms > SLO 100.0ms")


@pytest.mark.parametrize(("failures", "total", "ok"), [(2, 100, False), (1, 100, False), (1, 200, True)])
def test_the_error_rate_must_stay_under_the_slo(policy: Policy, failures: int, total: int, ok: bool) -> None:
    results = make([5.0] * total, codes={i: 503 for i in range(failures)})
    verdict = judge(results, policy)
    assert check(verdict, "fast error rate")[0] is ok
    assert verdict.status == ("PASS" if ok else "FAIL")


def test_a_route_without_an_slo_is_held_to_one_percent_errors_only(policy: Policy) -> None:
    verdict = judge(make([5000.0] * 100, path="/plain", codes={0: 0}), policy)
    # A transport error (code 0) is an error; 5 s latencies are not judged without an SLO.
    assert check(verdict, "plain error rate") == (False, "1.00% >= 1.00% (1/100)")
    assert not [c for c in verdict.all_checks() if c.subject.startswith("plain p")]


def test_every_429_must_carry_a_valid_retry_after(policy: Policy) -> None:
    good = make([1.0] * 10, code=429, attack="x", headers={"Retry-After": ["3"]})
    dated = make([1.0] * 10, code=429, attack="y", headers={"Retry-After": ["Wed, 21 Oct 2026 07:28:00 GMT"]})
    bad = make([1.0] * 2, code=429, attack="z", headers={"Retry-After": ["soon"]})
    meta = {"expect": {"rate_limited": ["x", "y", "z"]}}
    assert check(judge(good + dated, policy, meta), "429 Retry-After") == (
        True, "20/20 responses with 429 carry a valid Retry-After")
    assert check(judge(good + bad, policy, meta), "429 Retry-After") == (
        False, "10/12 responses with 429 carry a valid Retry-After")
    assert not valid_retry_after(None) and not valid_retry_after("-1") and valid_retry_after(" 0 ")


def test_a_generator_that_fell_behind_is_flagged_not_passed(policy: Policy) -> None:
    results = make([1.0] * 100, rate=30.0)
    asked_50 = {"attacks": [{"name": "a", "rate": 50.0}]}
    verdict = judge(results, policy, asked_50)
    assert verdict.status == "INCONCLUSIVE" and verdict.exit_code == 3
    ok, detail = check(verdict, "a rate")
    assert ok is None and "asked 50.0/s, achieved 30.0/s" in detail and "fell behind" in detail
    # The attacker's own account (unsent requests, send lag) is believed even when the rate looks kept.
    lagging = {"attacks": [{"name": "a", "rate": 30.0, "achieved_rate": 30.0, "fell_behind": True,
                            "unsent": 4}]}
    assert judge(results, policy, lagging).status == "INCONCLUSIVE"
    # An SLO miss still fails: a slow generator does not excuse it.
    assert judge(make([500.0] * 100, rate=30.0), policy, asked_50).status == "FAIL"


def test_abuse_expectations(policy: Policy) -> None:
    retry = {"Retry-After": ["60"]}
    abuser = make([2.0] * 15, attack="abuser") + [
        r for r in make([1.0] * 20, attack="abuser", code=429, headers=retry)]
    others = make([3.0] * 40, attack="others")
    meta: dict[str, Any] = {"expect": {"rate_limited": ["abuser"], "unaffected": ["others"]}}
    verdict = judge(abuser + others, policy, meta)
    assert verdict.status == "PASS"
    assert check(verdict, "abuser rate limited") == (True, "20 x 429 of 35, other errors 0")
    # The abuser's 429s are judged by the expectation, not counted against the route's error rate.
    assert check(verdict, "fast error rate")[0] is True
    hurt = make([3.0] * 40, attack="others", codes={5: 429}, headers=retry)
    verdict = judge(abuser + hurt, policy, meta)
    assert verdict.status == "FAIL" and check(verdict, "others unaffected") == (False, "1 x 429 of 40")
    unlimited = judge(make([1.0] * 30, attack="abuser") + others, policy, meta)
    assert check(unlimited, "abuser rate limited")[0] is False


def breaker_meta(samples: list[tuple[float, dict[str, str]]], available: bool = True) -> dict[str, Any]:
    return {"expect": {"breakers_open": ["provider"], "may_fail": {"pay": {"fast": "100ms"}}},
            "breakers": {"source": "/api/ops/metrics", "available": available, "samples": samples}}


def test_provider_down_expectations(policy: Policy) -> None:
    pay = make([20.0] * 50 + [4.0] * 50, attack="pay", path="/slow/1", method="POST",
               codes={i: 503 for i in range(50, 100)})
    fast = make([5.0] * 100)
    opened = breaker_meta([(0.5, {"provider": "closed"}), (5.0, {"provider": "open"}),
                           (9.0, {"provider": "half_open"})])
    verdict = judge(pay + fast, policy, opened)
    assert verdict.status == "PASS"
    assert check(verdict, "breaker provider opens") == (True, "states seen: closed, half_open, open")
    assert verdict.breaker_transitions == ["   5.0s  provider: closed -> open",
                                           "   9.0s  provider: open -> half_open"]
    assert check(verdict, "pay fails fast") == (True, "50 failures, p95 4.00ms (must be <= 100.0ms)")
    never = judge(pay + fast, policy, breaker_meta([(0.5, {"provider": "closed"})]))
    assert never.status == "FAIL" and check(never, "breaker provider opens")[0] is False
    unseen = judge(pay + fast, policy, breaker_meta([], available=False))
    assert unseen.status == "INCONCLUSIVE" and check(unseen, "breaker provider opens")[0] is None
    slow_failures = make([900.0] * 10, attack="pay", code=503, path="/slow/1", method="POST")
    assert check(judge(slow_failures + fast, policy, opened), "pay fails fast")[0] is False


def test_results_that_match_no_route_fail(policy: Policy) -> None:
    verdict = judge(make([1.0] * 5, path="/nowhere"), policy)
    assert verdict.status == "FAIL" and check(verdict, "unmatched requests")[0] is False


def test_no_results_at_all_fail(policy: Policy) -> None:
    assert judge([], policy).status == "FAIL"


def test_written_verdict_has_summary_and_html_with_slo_lines(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    results = tmp_path / "results.json"
    with open(results, "wb") as fp:
        ResultsWriter(fp).write_all(make([10.0] * 90 + [150.0] * 10))
    meta = {"attacks": [{"name": "a", "rate": 10.0}], "actions": [{"at": 3.0, "label": "fault on"}]}
    meta_path(results).write_bytes(orjson.dumps(meta))
    assert write_verdict(results, policy_file, meta, tmp_path / "out") == 1
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary.startswith("verdict: FAIL") and "fast p95: 150.0ms > SLO 100.0ms" in summary
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<svg") == 3  # one endpoint: latency over time, distribution, requests/s by status
    assert page.count("SLO p95 100.0ms</text>") == 2 and "fault on" in page
