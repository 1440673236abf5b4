"""The verdict as a self-contained HTML page: tables plus inline SVG plots, with the SLO line drawn on them.

Per endpoint: latency over time (each request a dot, at the time it was due), the latency distribution
(latency by percentile, with the percentile axis stretched towards the tail), and requests per second by
status over time; the shares of 503 (shed, breaker open) and 429 answers. Latency axes follow the data: an
SLO far above it is named at the top edge instead of squashing every dot to the bottom. The title names the
scenario and the date. No scripts, no external assets.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Iterable, Sequence

from gateway.policy.model import Policy
from perf.results import Result
from perf.verdict import RouteMatcher, Verdict, fmt_ms, is_error, percentile

WIDTH, HEIGHT, PAD = 560, 220, 44
MAX_DOTS = 3000  # per plot: enough to see the shape, small enough to keep the page light
_COLORS = {"ok": "#2b6cb0", "error": "#c53030"}
_TAIL = (0.0, 0.5, 0.9, 0.99, 0.999)
SLO_FAR = 3.0  # an SLO this many times above the data's p99.9 does not set the latency scale
# Status groups of the requests-per-second plot: (label, color, test on the status code).
_STATUS_GROUPS: tuple[tuple[str, str, Callable[[int], bool]], ...] = (
    ("2xx/3xx", "#2b6cb0", lambda code: 200 <= code < 400),
    ("429", "#b7791f", lambda code: code == 429),
    ("503", "#805ad5", lambda code: code == 503),
    ("other 4xx/5xx", "#c53030", lambda code: code >= 400 and code not in (429, 503)),
    ("no answer", "#4a5568", lambda code: code < 200),
)


def _nice_step(top: float, ticks: int = 4) -> float:
    """A round step (1, 2 or 5 x 10^k) putting about `ticks` ticks under `top`."""
    raw = max(top, 1e-9) / ticks
    base = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0):
        if factor * base >= raw:
            return factor * base
    return 10.0 * base


def _seconds_label(value: float) -> str:
    """A latency tick: 0, 250ms, 1s, 1.5s (never 1.2e+03)."""
    if value == 0:
        return "0"
    if value < 1:
        return f"{value * 1000:.4g}ms"
    return f"{value:.4g}s"


def _scale(value: float, lo: float, hi: float, out_lo: float, out_hi: float) -> float:
    if hi <= lo:
        return out_lo
    return out_lo + (value - lo) / (hi - lo) * (out_hi - out_lo)


def _axes(
    x_label: str,
    y_label: str,
    y_max: float,
    x_ticks: Sequence[tuple[float, str]],
    y_format: Callable[[float], str] = _seconds_label,
) -> list[str]:
    parts = [
        f'<rect x="{PAD}" y="8" width="{WIDTH - PAD - 8}" height="{HEIGHT - PAD - 8}"'
        ' fill="none" stroke="#999"/>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" text-anchor="middle">{html.escape(x_label)}</text>',
        f'<text x="12" y="{HEIGHT / 2}" transform="rotate(-90 12 {HEIGHT / 2})" text-anchor="middle">'
        f"{html.escape(y_label)}</text>",
    ]
    step = _nice_step(y_max)
    value = 0.0
    while value <= y_max * 1.0001:
        y = _scale(value, 0, y_max, HEIGHT - PAD, 8)
        parts.append(f'<text x="{PAD - 4}" y="{y + 4:.1f}" text-anchor="end">{y_format(value)}</text>')
        parts.append(f'<line x1="{PAD}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        value += step
    for x, label in x_ticks:
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - PAD + 14}" text-anchor="middle">{html.escape(label)}</text>'
        )
    return parts


def _slo_line(slo: float | None, label: str, y_max: float) -> list[str]:
    if slo is None:
        return []
    if slo > y_max:  # far above the data: named at the top edge, not drawn
        return [
            f'<text x="{WIDTH - 10}" y="20" text-anchor="end" fill="#dd6b20">'
            f"{html.escape(label)}: above the scale, every request well under it</text>"
        ]
    y = _scale(slo, 0, y_max, HEIGHT - PAD, 8)
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
    """The latency scale: the data's p99.9, and the SLO when it is near enough to be read against it."""
    top = max(percentile(latencies, 0.999) if latencies else 0.001, 1e-4)
    if slo is not None and slo <= SLO_FAR * top:
        top = max(top, slo)
    return top * 1.15


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
    parts = _axes("time since start", "latency", y_max, _time_ticks(duration))
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


def _time_ticks(duration: float) -> list[tuple[float, str]]:
    step = _nice_step(duration)
    ticks, at = [], 0.0
    while at <= duration * 1.0001:
        ticks.append((_scale(at, 0, duration, PAD, WIDTH - 8), f"{at:g}s"))
        at += step
    return ticks


def rate_svg(points: Sequence[tuple[float, int]], duration: float) -> str:
    """Requests per second by status group over time, from (seconds since start, status code) pairs."""
    width = max(1.0, _nice_step(duration, 30))  # about 30 buckets: 1 s for a 30 s run
    buckets = int(duration // width) + 1
    counts = {label: [0] * buckets for label, _, _ in _STATUS_GROUPS}
    for at, code in points:
        for label, _, test in _STATUS_GROUPS:
            if test(code):
                counts[label][min(buckets - 1, int(at // width))] += 1
                break
    top = max((n for series in counts.values() for n in series), default=0) / width
    y_max = max(top, 1.0) * 1.15
    parts = _axes("time since start", "requests/s", y_max, _time_ticks(duration), lambda v: f"{v:g}")
    legend_x = PAD + 6
    for label, color, _ in _STATUS_GROUPS:
        series = counts[label]
        if not any(series):
            continue
        coords = " ".join(
            f"{_scale((i + 0.5) * width, 0, duration, PAD, WIDTH - 8):.1f},"
            f"{_scale(n / width, 0, y_max, HEIGHT - PAD, 8):.1f}"
            for i, n in enumerate(series)
        )
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        parts.append(f'<text x="{legend_x}" y="20" fill="{color}">{html.escape(label)}</text>')
        legend_x += 8 + 7 * len(label)
    return _svg(parts, "requests per second by status")


def _tail_x(q: float) -> float:
    """Percentile -> x: log of 1/(1-q), so 50, 90, 99, 99.9 are evenly spaced."""
    return math.log10(1 / (1 - min(q, 0.9999)))


def distribution_svg(latencies: Sequence[float], slo: float | None, slo_label: str) -> str:
    """Latency by percentile (ascending `latencies`), with the SLO line."""
    y_max = _y_max(latencies, slo)
    x_hi = _tail_x(0.999)
    ticks = [(_scale(_tail_x(q), 0, x_hi, PAD, WIDTH - 8), f"p{q * 100:g}") for q in _TAIL]
    parts = _axes("percentile", "latency", y_max, ticks)
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
    statuses: dict[str, list[tuple[float, int]]] = {}
    duration = 1.0
    for result in results:
        route = match(result.method, result.url)
        at = (result.timestamp - start) / 1e9
        duration = max(duration, at)
        name = route.name if route else "unmatched"
        series.setdefault(name, []).append((at, result.latency / 1e9, is_error(result)))
        statuses.setdefault(name, []).append((at, result.code))
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
        codes = [code for _, code in statuses[name]]
        shares = ", ".join(
            f"{what} {sum(1 for c in codes if c == code) / len(codes):.1%}"
            for what, code in (("503 (shed, breaker open)", 503), ("429", 429))
        )
        sections.append(
            f"<h2>{html.escape(name)}</h2>"
            f"<p>{len(points)} requests, p50 {fmt_ms(percentile(latencies, 0.5))},"
            f" p95 {fmt_ms(percentile(latencies, 0.95))}, p99 {fmt_ms(percentile(latencies, 0.99))}"
            f"{(', ' + html.escape(label)) if label else ', no SLO'}; {shares}</p><div>"
            + timeline_svg(points, duration, target, label, marks)
            + distribution_svg(latencies, target, label)
            + rate_svg(statuses[name], duration)
            + "</div>"
        )
    color = {"PASS": "#2f855a", "FAIL": "#c53030", "INCONCLUSIVE": "#b7791f"}[verdict.status]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start / 1e9)) if start else "no results"
    scenario = str(verdict.meta.get("scenario") or "load run")
    title = html.escape(f"{scenario}, {when}: {verdict.status}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}pre{background:#f7f7f7;padding:1em;"
        "overflow-x:auto}svg{margin:4px;border:1px solid #eee}</style></head><body>"
        f"<h1 style='color:{color}'>{html.escape(scenario)}: {verdict.status}</h1>"
        f"<p>{html.escape(when)}</p>"
        f"<pre>{html.escape(text_summary)}</pre>" + "".join(sections) + "</body></html>\n"
    )
