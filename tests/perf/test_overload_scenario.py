"""The overload scenario's parts: variants (admission off, then on) merged over the scenario's policy changes,
the upstream's capacity flags, the `sheds` expectation and the comparison of the runs."""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway.policy.loader import parse_policy
from perf.results import ResultsWriter
from perf.run import meta_path, render_comparison, upstream_knobs, verdict_of, write_verdict
from perf.scenarios import load_scenarios, merged
from perf.verdict import judge
from tests.perf.test_verdict import POLICY, check, make

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_overload_scenario_runs_admission_off_then_on_over_a_capacity_limited_upstream() -> None:
    scenario = load_scenarios(ROOT / "perf" / "scenarios.yaml").get("overload")
    assert [v.name for v in scenario.variants] == ["admission_off", "admission_on"]
    assert upstream_knobs(scenario) == ["--capacity", "4", "--service-time", "0.05"]
    off, on = (scenario.variant(v) for v in scenario.variants)
    assert not off.judged and on.judged and off.variants == ()
    for run in (off, on):  # the scenario's own changes stay under each variant's
        assert run.policy_overrides["rate_limits"]["per_ip"]["rate"] == 100000
    assert off.policy_overrides["upstreams"]["app"]["concurrency"] == {"adaptive": False}
    assert on.policy_overrides["upstreams"]["app"]["concurrency"]["adaptive"] is True
    offered = sum(a.rate for a in scenario.attacks)
    capacity = 4 / 0.05
    assert 2 * capacity <= offered <= 3 * capacity  # the 2-3x


def test_a_scenario_without_capacity_knobs_starts_the_upstream_as_fast_as_it_runs() -> None:
    assert upstream_knobs(load_scenarios(ROOT / "perf" / "scenarios.yaml").get("steady")) == []


def test_merged_keeps_both_sides_and_changes_neither() -> None:
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    changes = {"a": {"c": 9}, "e": 4}
    assert merged(base, changes) == {"a": {"b": 1, "c": 9}, "d": 3, "e": 4}
    assert base == {"a": {"b": 1, "c": 2}, "d": 3} and changes == {"a": {"c": 9}, "e": 4}


def test_an_attack_that_absorbs_the_shedding_must_get_503s_and_nothing_else() -> None:
    policy = parse_policy(POLICY)
    shed = {i: 503 for i in range(0, 100, 2)}
    verdict = judge(make([5.0] * 100, attack="h", codes=shed), policy, {"expect": {"sheds": ["h"]}})
    ok, detail = check(verdict, "h absorbs the shedding")
    assert ok is True and detail.startswith("50 x 503 of 100 (50.0%)")
    assert verdict.endpoints == []  # its route's SLO is not what it is judged by
    worse = judge(make([5.0] * 10, attack="h", codes={1: 503, 2: 504}), policy, {"expect": {"sheds": ["h"]}})
    assert check(worse, "h absorbs the shedding") == (False, "1 x 503 of 10 (10.0%), other errors 1")
    calm = judge(make([5.0] * 10, attack="h"), policy, {"expect": {"sheds": ["h"]}})
    ok, detail = check(calm, "h absorbs the shedding")
    assert ok is False and "did not overload" in detail


def test_the_comparison_puts_each_attack_of_each_run_side_by_side(tmp_path: Path) -> None:
    runs = []
    failing = {i: 504 for i in range(5)}
    for name, judged, latency, codes in (("off", False, 900.0, failing), ("on", True, 20.0, {})):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "policy.yaml").write_text(POLICY)
        results = run_dir / "results.json"
        with open(results, "wb") as fp:
            ResultsWriter(fp).write_all(make([latency] * 20, attack="payments", codes=codes))
        meta = {"scenario": "overload", "attacks": [{"name": "payments", "rate": 10.0}]}
        meta_path(results).write_bytes(orjson.dumps(meta))
        write_verdict(results, run_dir / "policy.yaml", meta, run_dir)
        runs.append((name, judged, run_dir, verdict_of(run_dir)))
    text = render_comparison("overload", runs)
    table = text.split("\n\n")[1]  # the side-by-side table, before each run's own summary
    rows = [line.split() for line in table.splitlines() if line.startswith("payments")]
    assert [r[:3] for r in rows] == [["payments", "off", "20"], ["payments", "on", "20"]]
    assert rows[0][5] == "900.0ms" and rows[0][6] == "25.00%" and rows[1][6] == "0.00%"
    assert "off: FAIL  (for comparison: its misses do not fail the run)" in text
    assert "on: PASS" in text and "== off" in text and "== on" in text
