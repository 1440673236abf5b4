"""The HTML report reads well whatever the data: latency axes follow the data (an SLO far above it is named,
not drawn), ticks are round and readable, requests per second by status over time, shed and 429 shares, the
scenario and date in the title; progress lines going to a log instead of a terminal are few."""

from __future__ import annotations

import io
import re

from gateway.policy.loader import parse_policy
from perf.attacker import Attack, Attacker
from perf.report import render_html
from perf.results import ResultsWriter
from perf.targets import Target
from perf.verdict import judge, render_text
from tests.perf.test_attacker import loopback_server
from tests.perf.test_verdict import POLICY, make


def page(latencies_ms: list[float], **kwargs: object) -> str:
    policy = parse_policy(POLICY)
    results = make(latencies_ms, **kwargs)  # type: ignore[arg-type]
    verdict = judge(results, policy, {"scenario": "overload"})
    return render_html(verdict, results, policy, render_text(verdict))


def test_an_slo_far_above_the_data_is_named_not_drawn_and_the_axis_follows_the_data() -> None:
    html = page([2.0 + i % 5 for i in range(100)])  # 2-6 ms against a p95 SLO of 100 ms
    assert "SLO p95 100.0ms: above the scale, every request well under it</text>" in html
    assert 'stroke-dasharray="6 4"' not in html
    ticks = re.findall(r'text-anchor="end">([^<]+)</text>', html)
    assert "2ms" in ticks and "6ms" in ticks and "100ms" not in ticks
    assert not any("e+" in t or "e-" in t for t in ticks)


def test_an_slo_near_the_data_is_drawn_on_a_scale_that_includes_it() -> None:
    html = page([60.0 + i % 30 for i in range(100)])
    assert html.count('stroke-dasharray="6 4"') == 2  # timeline and distribution
    assert "100ms" in re.findall(r'text-anchor="end">([^<]+)</text>', html)


def test_requests_per_second_by_status_and_the_shares_of_503_and_429() -> None:
    codes = {i: 503 for i in range(0, 100, 2)} | {1: 429}
    html = page([5.0] * 100, rate=20.0, codes=codes)
    assert 'aria-label="requests per second by status"' in html
    for legend in ("2xx/3xx", "429", "503"):
        assert f">{legend}</text>" in html
    assert "503 (shed, breaker open) 50.0%, 429 1.0%" in html
    assert "<title>overload, 2025-09-13 08:00 UTC: FAIL</title>" in html


async def test_progress_to_a_log_is_one_line_at_the_end_and_a_terminal_gets_a_line_a_second() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    server = await loopback_server()
    target = [Target("GET", str(server.make_url("/ok")))]
    log, terminal = io.StringIO(), Terminal()
    try:
        for out in (log, terminal):
            attacker = Attacker(ResultsWriter(io.BytesIO()).write, progress=out)
            await attacker.run([Attack("a", target, 20, 1.5)])
    finally:
        await server.close()
    assert log.getvalue().count("[attack]") == 1 and log.getvalue().endswith("generator kept the rate\n")
    assert terminal.getvalue().count("[attack]") >= 2 and "\r" in terminal.getvalue()
