"""The verdict as a self-contained HTML page: tables plus inline SVG plots, with the SLO line drawn on them.

Per endpoint: latency over time (each request a dot, at the time it was due) and the latency distribution
(latency by percentile, with the percentile axis stretched towards the tail). No scripts, no external assets.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

from gateway.perf.results import Result
from gateway.perf.verdict import RouteMatcher, Verdict, fmt_ms, is_error, percentile
from gateway.policy.model import Policy

WIDTH, HEIGHT, PAD = 560, 220, 44
MAX_DOTS = 3000  # per plot: enough to see the shape, small enough to keep the page light
_COLORS = {"ok": "#2b6cb0", "error": "#c53030"}
_TAIL = (0.0, 0.5, 0.9, 0.99, 0.999)


def _scale(value: float, lo: float, hi: float, out_lo: float, out_hi: float) -> float:
    if hi <= lo:
        return out_lo
    return out_lo + (value - lo) / (hi - lo) * (out_hi - out_lo)


def _axes(x_label: str, y_label: str, y_max: float, x_ticks: Sequence[tuple[float, str]]) -> list[str]:
    parts = [
        f'<rect x="{PAD}" y="8" width="{WIDTH - PAD - 8}" height="{HEIGHT - PAD - 8}"'
        ' fill="none" stroke="#999"/>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" text-anchor="middle">{html.escape(x_label)}</text>',
        f'<text x="12" y="{HEIGHT / 2}" transform="rotate(-90 12 {HEIGHT / 2})" text-anchor="middle">'
        f"{html.escape(y_label)}</text>",
    ]
    for i in range(5):
        value = y_max * i / 4
        y = _scale(value, 0, y_max, HEIGHT - PAD, 8)
        parts.append(f'<text x="{PAD - 4}" y="{y + 4:.1f}" text-anchor="end">{value * 1000:.3g}</text>')
        parts.append(f'<line x1="{PAD}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
    for x, label in x_ticks:
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - PAD + 14}" text-anchor="middle">{html.escape(label)}</text>'
        )
    return parts


def _slo_line(slo: float | None, label: str, y_max: float) -> list[str]:
    if slo is None:
        return []
    y = _scale(min(slo, y_max), 0, y_max, HEIGHT - PAD, 8)
    return [
        f'<line x1="{PAD}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#dd6b20" stroke-width="2"'
        ' stroke-dasharray="6 4"/>',
        f'<text x="{WIDTH - 10}" y="{y - 4:.1f}" text-anchor="end" fill="#dd6b20">'
        f"{html.escape(label)}</text>",
    ]


def _svg(parts: Iterable[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-size="11"'
        f' font-family="sans-serif" role="img" aria-label="{html.escape(title)}">' + "".join(parts) + "</svg>"
    )


def _y_max(latencies: Sequence[float], slo: float | None) -> float:
    top = percentile(latencies, 0.999) if latencies else 0.001
    return max(top, slo or 0.0, 1e-4) * 1.15


def timeline_svg(
    points: Sequence[tuple[float, float, bool]],
    duration: float,
    slo: float | None,
    slo_label: str,
    marks: Sequence[tuple[float, str]] = (),
) -> str:
    """Latency over time: (seconds since start, latency s, failed) dots, the SLO line and action marks."""
    latencies = sorted(p[1] for p in points)
    y_max = _y_max(latencies, slo)
    step = max(1, len(points) // MAX_DOTS)
    ticks = [
        (_scale(duration * i / 4, 0, duration, PAD, WIDTH - 8), f"{duration * i / 4:.0f}s") for i in range(5)
    ]
    parts = _axes("time since start", "latency (ms)", y_max, ticks)
    for at, label in marks:
        x = _scale(at, 0, duration, PAD, WIDTH - 8)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="8" y2="{HEIGHT - PAD}" stroke="#555"'
            ' stroke-dasharray="2 3"/>'
        )
        parts.append(f'<text x="{x + 3:.1f}" y="20">{html.escape(label)}</text>')
    for at, latency, failed in points[::step]:
        x = _scale(at, 0, duration, PAD, WIDTH - 8)
        y = _scale(min(latency, y_max), 0, y_max, HEIGHT - PAD, 8)
        color = _COLORS["error" if failed else "ok"]
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.5" fill="{color}" fill-opacity="0.6"/>')
    parts += _slo_line(slo, slo_label, y_max)
    return _svg(parts, "latency over time")


def _tail_x(q: float) -> float:
    """Percentile -> x: log of 1/(1-q), so 50, 90, 99, 99.9 are evenly spaced."""
    return math.log10(1 / (1 - min(q, 0.9999)))


def distribution_svg(latencies: Sequence[float], slo: float | None, slo_label: str) -> str:
    """Latency by percentile (ascending `latencies`), with the SLO line."""
    y_max = _y_max(latencies, slo)
    x_hi = _tail_x(0.999)
    ticks = [(_scale(_tail_x(q), 0, x_hi, PAD, WIDTH - 8), f"p{q * 100:g}") for q in _TAIL]
    parts = _axes("percentile", "latency (ms)", y_max, ticks)
    if latencies:
        n = len(latencies)
        coords = []
        for i in range(200):
            q = 1 - 10 ** (-x_hi * i / 199)
            x = _scale(_tail_x(q), 0, x_hi, PAD, WIDTH - 8)
            y = _scale(min(latencies[min(n - 1, int(q * n))], y_max), 0, y_max, HEIGHT - PAD, 8)
            coords.append(f"{x:.1f},{y:.1f}")
        parts.append(
            f'<polyline points="{" ".join(coords)}" fill="none" stroke="{_COLORS["ok"]}" stroke-width="2"/>'
        )
    parts += _slo_line(slo, slo_label, y_max)
    return _svg(parts, "latency distribution")


def render_html(verdict: Verdict, results: Sequence[Result], policy: Policy, text_summary: str) -> str:
    """The whole report page."""
    match = RouteMatcher(policy)
    start = verdict.start_ns
    series: dict[str, list[tuple[float, float, bool]]] = {}
    duration = 1.0
    for result in results:
        route = match(result.method, result.url)
        at = (result.timestamp - start) / 1e9
        duration = max(duration, at)
        series.setdefault(route.name if route else "unmatched", []).append(
            (at, result.latency / 1e9, is_error(result))
        )
    marks = [
        (float(a.get("at", 0)), str(a.get("label") or "action")) for a in verdict.meta.get("actions") or []
    ]
    sections = []
    routes = {r.name: r for r in policy.routes}
    for name in sorted(series, key=lambda n: list(routes).index(n) if n in routes else len(routes)):
        route = routes.get(name)
        slo = route.slo if route else None
        target, label = None, ""
        if slo is not None:
            for q, value in (("p99", slo.p99), ("p95", slo.p95), ("p50", slo.p50)):
                if value is not None:
                    target, label = value, f"SLO {q} {fmt_ms(value)}"
                    break
        points = series[name]
        latencies = sorted(p[1] for p in points)
        sections.append(
            f"<h2>{html.escape(name)}</h2>"
            f"<p>{len(points)} requests, p50 {fmt_ms(percentile(latencies, 0.5))},"
            f" p95 {fmt_ms(percentile(latencies, 0.95))}, p99 {fmt_ms(percentile(latencies, 0.99))}"
            f"{(', ' + html.escape(label)) if label else ', no SLO'}</p><div>"
            + timeline_svg(points, duration, target, label, marks)
            + distribution_svg(latencies, target, label)
            + "</div>"
        )
    color = {"PASS": "#2f855a", "FAIL": "#c53030", "INCONCLUSIVE": "#b7791f"}[verdict.status]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>load run verdict</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}pre{background:#f7f7f7;padding:1em;"
        "overflow-x:auto}svg{margin:4px;border:1px solid #eee}</style></head><body>"
        f"<h1 style='color:{color}'>verdict: {verdict.status}</h1>"
        f"<pre>{html.escape(text_summary)}</pre>" + "".join(sections) + "</body></html>\n"
    )
