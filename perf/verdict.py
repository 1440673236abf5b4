"""Judge a load run's results against the SLOs in the policy: one verdict, per endpoint and per attack.

Results (vegeta JSON lines, from vegeta or the built-in attacker) are matched to routes with the gateway's
own router, so an endpoint is judged by the SLO of the route that served it. A run's metadata
(`RESULTS.meta.json`, written by `gateway perf run`) adds what the results cannot say: the rate asked of the
generator and how well it kept it, the scenario's expectations (a breaker that must open, an actor that must
be rate limited), and the breaker states polled from `/api/ops/metrics` during the run.

Status: FAIL (exit 1) when an SLO or an expectation is missed; INCONCLUSIVE (exit 3) when nothing failed but
the run cannot vouch for itself (the generator fell behind, a breaker state could not be observed); else PASS.
"""

from __future__ import annotations

import email.utils
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.policy.model import Policy, Route, Slo
from gateway.policy.units import parse_duration
from gateway.routing import Router, normalize_path
from perf.results import Result

DEFAULT_ERROR_RATE = 0.01  # the runbook's "error rate < 1%" where a route's SLO does not say
RATE_TOLERANCE = 0.95  # achieved below 95% of the asked rate: the generator fell behind
EXIT = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank q-quantile (0..1) of an ascending sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, -(-int(q * 10_000) * len(ordered) // 10_000))  # ceil(q * n) without float drift
    return ordered[min(len(ordered), rank) - 1]


def is_error(result: Result) -> bool:
    """vegeta's definition: success is 200 <= code < 400; a transport error has code 0."""
    return not 200 <= result.code < 400


def valid_retry_after(value: str | None) -> bool:
    """RFC 9110 10.2.3: delay-seconds (a non-negative integer) or an HTTP-date."""
    if value is None:
        return False
    value = value.strip()
    if value.isdigit():
        return True
    try:
        return email.utils.parsedate_to_datetime(value) is not None
    except (TypeError, ValueError):
        return False


def seconds(value: Any) -> float | None:
    """A duration from run metadata: seconds as a number, or text such as `100ms` (None stays None)."""
    if value is None or isinstance(value, int | float) and not isinstance(value, bool):
        return None if value is None else float(value)
    return parse_duration(value)


def fmt_ms(seconds: float) -> str:
    """Seconds as a short millisecond figure."""
    ms = seconds * 1000
    return f"{ms:.2f}ms" if ms < 10 else f"{ms:.1f}ms" if ms < 1000 else f"{ms:.0f}ms"


@dataclass
class Stats:
    """Latency and status figures of a group of results."""

    count: int = 0
    errors: int = 0
    codes: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, ascending once `close()`d
    error_latencies: list[float] = field(default_factory=list)
    earliest: int = 0
    latest: int = 0
    too_many: int = 0  # 429 answers
    retry_after_missing: int = 0

    def add(self, result: Result) -> None:
        latency = result.latency / 1e9
        if self.count == 0 or result.timestamp < self.earliest:
            self.earliest = result.timestamp
        self.latest = max(self.latest, result.timestamp)
        self.count += 1
        self.codes[result.code] += 1
        self.latencies.append(latency)
        if is_error(result):
            self.errors += 1
            self.error_latencies.append(latency)
        if result.code == 429:
            self.too_many += 1
            if not valid_retry_after(result.header("Retry-After")):
                self.retry_after_missing += 1

    def close(self) -> Stats:
        self.latencies.sort()
        self.error_latencies.sort()
        return self

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    @property
    def rate(self) -> float:
        """Requests per second between the first and the last request sent."""
        span = (self.latest - self.earliest) / 1e9
        return (self.count - 1) / span if self.count > 1 and span > 0 else 0.0

    def codes_text(self) -> str:
        return " ".join(f"{code}:{n}" for code, n in sorted(self.codes.items())) or "-"


@dataclass
class Check:
    """One judged statement: ok True (met), False (missed) or None (could not be verified)."""

    subject: str
    ok: bool | None
    detail: str

    @property
    def mark(self) -> str:
        return {True: "ok", False: "FAIL", None: "??"}[self.ok]


@dataclass
class Endpoint:
    route: str
    match: str
    slo: Slo | None
    stats: Stats
    checks: list[Check] = field(default_factory=list)


@dataclass
class AttackReport:
    name: str
    stats: Stats
    asked: float | None
    generator: dict[str, Any]
    checks: list[Check] = field(default_factory=list)


@dataclass
class Verdict:
    """The judgement of one run."""

    endpoints: list[Endpoint]
    attacks: list[AttackReport]
    checks: list[Check]
    breaker_transitions: list[str]
    meta: dict[str, Any]
    total: int
    start_ns: int

    def all_checks(self) -> Iterable[Check]:
        for endpoint in self.endpoints:
            yield from endpoint.checks
        for attack in self.attacks:
            yield from attack.checks
        yield from self.checks

    @property
    def status(self) -> str:
        oks = [c.ok for c in self.all_checks()]
        if False in oks or self.total == 0:
            return "FAIL"
        return "INCONCLUSIVE" if None in oks else "PASS"

    @property
    def exit_code(self) -> int:
        return EXIT[self.status]


class RouteMatcher:
    """URL + method -> the policy route that would serve it (cached: a run repeats few distinct URLs)."""

    def __init__(self, policy: Policy) -> None:
        self._router: Router[Route] = Router([(route.match, route) for route in policy.routes])
        self._cache: dict[tuple[str, str], Route | None] = {}

    def __call__(self, method: str, url: str) -> Route | None:
        key = (method, url)
        if key not in self._cache:
            path = normalize_path(urlsplit(url).path or "/")
            self._cache[key] = self._router.match(method, path) if path is not None else None
        return self._cache[key]


def _latency_checks(route: Route, stats: Stats) -> list[Check]:
    checks = []
    slo = route.slo
    for label, q, target in (
        ("p50", 0.50, slo.p50 if slo else None),
        ("p95", 0.95, slo.p95 if slo else None),
        ("p99", 0.99, slo.p99 if slo else None),
    ):
        if target is None:
            continue
        seen = stats.p(q)
        checks.append(
            Check(
                f"{route.name} {label}",
                seen <= target,
                f"{fmt_ms(seen)} {'<=' if seen <= target else '>'} SLO {fmt_ms(target)}",
            )
        )
    limit = slo.error_rate if slo and slo.error_rate is not None else DEFAULT_ERROR_RATE
    checks.append(
        Check(
            f"{route.name} error rate",
            stats.error_rate < limit,
            f"{stats.error_rate:.2%} {'<' if stats.error_rate < limit else '>='} {limit:.2%}"
            f" ({stats.errors}/{stats.count})",
        )
    )
    return checks


def _breaker_transitions(meta: dict[str, Any]) -> tuple[list[str], dict[str, set[str]], bool]:
    """Transitions seen in the polled breaker states: (lines, states seen per breaker, polling worked)."""
    polled = meta.get("breakers") or {}
    samples = polled.get("samples") or []
    lines: list[str] = []
    seen: dict[str, set[str]] = {}
    last: dict[str, str] = {}
    for at, states in samples:
        for name, state in sorted(states.items()):
            seen.setdefault(name, set()).add(state)
            if name in last and last[name] != state:
                lines.append(f"{at:6.1f}s  {name}: {last[name]} -> {state}")
            last[name] = state
    return lines, seen, bool(polled.get("available"))


def judge(results: Iterable[Result], policy: Policy, meta: dict[str, Any] | None = None) -> Verdict:
    """Judge results against the policy's route SLOs and the run's expectations (see the module doc)."""
    meta = meta or {}
    expect: dict[str, Any] = meta.get("expect") or {}
    may_fail: dict[str, Any] = expect.get("may_fail") or {}
    limited: list[str] = list(expect.get("rate_limited") or [])
    sheds: list[str] = list(expect.get("sheds") or [])
    exempt = set(may_fail) | set(limited) | set(sheds)
    match = RouteMatcher(policy)
    by_route: dict[str, Stats] = {}
    routes: dict[str, Route] = {}
    by_attack: dict[str, Stats] = {}
    total, start = 0, 0
    for result in results:
        total += 1
        start = result.timestamp if total == 1 else min(start, result.timestamp)
        by_attack.setdefault(result.attack, Stats()).add(result)
        if result.attack in exempt:
            continue  # judged by its expectation, not by the route's SLO
        route = match(result.method, result.url)
        name = route.name if route is not None else "unmatched"
        if route is not None:
            routes[name] = route
        by_route.setdefault(name, Stats()).add(result)

    endpoints = []
    order = {route.name: i for i, route in enumerate(policy.routes)}
    for name in sorted(by_route, key=lambda n: order.get(n, len(order))):
        stats = by_route[name].close()
        route_or_none = routes.get(name)
        if route_or_none is None:
            endpoints.append(
                Endpoint(
                    name,
                    "-",
                    None,
                    stats,
                    [
                        Check(
                            "unmatched requests", False, f"{stats.count} results match no route of the policy"
                        )
                    ],
                )
            )
            continue
        endpoints.append(
            Endpoint(
                name,
                str(route_or_none.match),
                route_or_none.slo,
                stats,
                _latency_checks(route_or_none, stats),
            )
        )

    asked = {a["name"]: a for a in meta.get("attacks") or []}
    attacks = []
    for name in sorted(by_attack):
        stats = by_attack[name].close()
        generator = asked.get(name, {})
        report = AttackReport(name, stats, generator.get("rate"), generator)
        if report.asked:
            achieved = generator.get("achieved_rate") or stats.rate
            behind = bool(generator.get("fell_behind")) or achieved < RATE_TOLERANCE * report.asked
            report.checks.append(
                Check(
                    f"{name} rate",
                    None if behind else True,
                    f"asked {report.asked:.1f}/s, achieved {achieved:.1f}/s"
                    + (
                        f", {generator.get('unsent', 0)} unsent,"
                        f" send lag p99 {generator.get('lag_p99_ms', 0):.1f}ms"
                        if generator
                        else ""
                    )
                    + (": the load generator fell behind, the run does not prove the rate" if behind else ""),
                )
            )
        if name in limited:
            others = stats.errors - stats.too_many
            report.checks.append(
                Check(
                    f"{name} rate limited",
                    stats.too_many > 0 and others == 0,
                    f"{stats.too_many} x 429 of {stats.count}, other errors {others}",
                )
            )
        if name in set(expect.get("unaffected") or []):
            report.checks.append(
                Check(f"{name} unaffected", stats.too_many == 0, f"{stats.too_many} x 429 of {stats.count}")
            )
        if name in sheds:
            shed, others = stats.codes[503], stats.errors - stats.codes[503]
            report.checks.append(
                Check(
                    f"{name} absorbs the shedding",
                    shed > 0 and others == 0,
                    f"{shed} x 503 of {stats.count} ({shed / max(1, stats.count):.1%}), other errors {others}"
                    + ("" if shed else ": nothing was shed, the run did not overload"),
                )
            )
        if name in may_fail:
            fast = seconds((may_fail[name] or {}).get("fast"))
            if fast is not None:
                seen = percentile(stats.error_latencies, 0.95)
                report.checks.append(
                    Check(
                        f"{name} fails fast",
                        stats.errors > 0 and seen <= fast,
                        f"{stats.errors} failures, p95 {fmt_ms(seen)} (must be <= {fmt_ms(fast)})"
                        if stats.errors
                        else "no failures seen: the fault did not show",
                    )
                )
        attacks.append(report)

    checks = []
    too_many = sum(s.too_many for s in by_attack.values())
    missing = sum(s.retry_after_missing for s in by_attack.values())
    checks.append(
        Check(
            "429 Retry-After",
            missing == 0,
            f"{too_many - missing}/{too_many} responses with 429 carry a valid Retry-After",
        )
    )
    transitions, states_seen, available = _breaker_transitions(meta)
    for breaker in expect.get("breakers_open") or []:
        if not available:
            checks.append(
                Check(
                    f"breaker {breaker} opens",
                    None,
                    "not verified: breaker states were not available from /api/ops/metrics",
                )
            )
        else:
            states = states_seen.get(breaker, set())
            checks.append(
                Check(
                    f"breaker {breaker} opens",
                    "open" in states,
                    f"states seen: {', '.join(sorted(states)) or 'none'}",
                )
            )
    return Verdict(endpoints, attacks, checks, transitions, meta, total, start)


def render_text(verdict: Verdict) -> str:
    """The plain-text summary."""
    meta = verdict.meta
    head = f"verdict: {verdict.status}"
    about = [f"{verdict.total} results"]
    if meta.get("scenario"):
        about.insert(0, f"scenario {meta['scenario']}")
    if meta.get("generator"):
        about.append(f"generator {meta['generator']}")
    lines = [f"{head}  ({', '.join(about)})", ""]
    row = "{:<18} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7}  {}"
    lines.append(row.format("endpoint", "n", "rate/s", "p50", "p95", "p99", "max", "errors", "codes"))
    def stats_row(name: str, s: Any) -> str:
        return row.format(
            name[:18],
            s.count,
            f"{s.rate:.1f}",
            fmt_ms(s.p(0.5)),
            fmt_ms(s.p(0.95)),
            fmt_ms(s.p(0.99)),
            fmt_ms(s.latencies[-1] if s.latencies else 0),
            f"{s.error_rate:.2%}",
            s.codes_text(),
        )

    lines.extend(stats_row(e.route, e.stats) for e in verdict.endpoints)
    lines += ["", row.format("attack", "n", "rate/s", "p50", "p95", "p99", "max", "errors", "codes")]
    lines.extend(stats_row(a.name, a.stats) for a in verdict.attacks)
    lines += ["", "checks:"]
    lines += [f"  [{c.mark:>4}] {c.subject}: {c.detail}" for c in verdict.all_checks()]
    polled = meta.get("breakers") or {}
    if polled:
        lines += ["", f"breakers ({polled.get('source', '/api/ops/metrics')}):"]
        if not polled.get("available"):
            lines.append(f"  not available: {polled.get('reason', 'no answer')}")
        elif verdict.breaker_transitions:
            lines += [f"  {t}" for t in verdict.breaker_transitions]
        else:
            lines.append("  no transitions seen")
    for action in meta.get("actions") or []:
        lines.append(
            f"action at {action.get('at', 0):.1f}s: {action.get('describe', '')} -> {action.get('result')}"
        )
    return "\n".join(lines) + "\n"
