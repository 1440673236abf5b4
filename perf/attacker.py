"""A constant-rate, open-model attacker: what `vegeta attack` does, for machines without vegeta.

Request i of an attack is due at `start + i / rate`, whatever happened to the requests before it: a slow
server does not slow the schedule down (no coordinated omission). Latency is measured from the time a
request was *due*, so a request that waited for a free worker carries that wait, and the result's
`timestamp` is that due time (timestamp + latency = when the response was complete). Concurrency is
bounded by `max_workers`; when every worker is busy the schedule slips, the slip ("send lag") is recorded,
and requests that could not be sent before the end of the attack are counted as `unsent`, so a generator
that fell behind is visible rather than silently testing a lower rate.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from perf import http1
from perf.results import Result, canonical_header
from perf.targets import Target

Sink = Callable[[Result], None]
# A generator whose 99th-percentile send lag passes this did not keep the asked rate.
MAX_LAG_P99 = 0.1
LOG_PROGRESS_EVERY = 10.0  # seconds between progress lines when they go to a log, not a terminal


@dataclass(frozen=True)
class Attack:
    """One attack: targets hit round-robin at `rate` requests per second for `duration` seconds."""

    name: str
    targets: Sequence[Target]
    rate: float
    duration: float
    max_workers: int = 256
    timeout: float = 30.0
    max_body: int = 256  # response body bytes kept in each result (vegeta's -max-body)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration <= 0:
            raise ValueError("rate and duration must be positive")
        if not self.targets:
            raise ValueError("an attack needs at least one target")


@dataclass
class AttackStats:
    """What the generator achieved: the evidence behind "the asked rate was (not) kept"."""

    name: str
    rate: float
    duration: float
    expected: int = 0
    sent: int = 0
    completed: int = 0
    errors: int = 0
    max_in_flight: int = 0
    lags: list[float] = field(default_factory=list)  # seconds each request was sent after it was due

    @property
    def in_flight(self) -> int:
        return self.sent - self.completed

    @property
    def unsent(self) -> int:
        return max(0, self.expected - self.sent)

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.duration

    def lag(self, q: float) -> float:
        """The q-quantile (0..1) of send lag in seconds."""
        if not self.lags:
            return 0.0
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def fell_behind(self) -> bool:
        # A handful cut off at the very end is noise; a percent of the schedule missed is a slower attack.
        return self.unsent > max(1, self.expected // 100) or self.lag(0.99) > MAX_LAG_P99

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (written next to the results for the verdict)."""
        return {
            "name": self.name,
            "rate": self.rate,
            "duration": self.duration,
            "expected": self.expected,
            "sent": self.sent,
            "unsent": self.unsent,
            "completed": self.completed,
            "errors": self.errors,
            "achieved_rate": round(self.achieved_rate, 3),
            "max_in_flight": self.max_in_flight,
            "lag_p50_ms": round(self.lag(0.5) * 1000, 3),
            "lag_p99_ms": round(self.lag(0.99) * 1000, 3),
            "lag_max_ms": round(max(self.lags, default=0.0) * 1000, 3),
            "fell_behind": self.fell_behind,
        }


@dataclass(frozen=True, slots=True)
class _Prepared:
    method: str
    url: URL
    url_text: str
    headers: CIMultiDict[str]
    body: bytes
    raw: http1.Prepared | None  # plain http: the lean client's pre-encoded request


def _prepare(target: Target) -> _Prepared:
    headers: CIMultiDict[str] = CIMultiDict(target.headers)
    raw = None
    if target.url.startswith("http://"):
        raw = http1.prepare(target.method, target.url, target.headers, target.body)
    return _Prepared(target.method, URL(target.url, encoded=True), target.url, headers, target.body, raw)


class Attacker:
    """Runs attacks concurrently on one event loop, handing every result to `sink` as it completes.

    `clock` (monotonic seconds) and `wall_ns` (Unix ns) are injectable; they must advance together.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        progress: IO[str] | None = None,
        progress_every: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._sink = sink
        self._progress = progress
        if progress_every is None:  # a line a second on a terminal (one line, redrawn); a log gets fewer
            progress_every = 1.0 if progress is not None and progress.isatty() else LOG_PROGRESS_EVERY
        self._progress_every = progress_every
        self._clock = clock
        self._wall_ns = wall_ns
        self._pool = http1.Pool()

    async def run(self, attacks: Sequence[Attack]) -> list[AttackStats]:
        """Run every attack at once (each on its own schedule) and return their stats."""
        stats = [AttackStats(a.name, a.rate, a.duration, expected=int(a.rate * a.duration)) for a in attacks]
        workers = sum(a.max_workers for a in attacks)
        connector = aiohttp.TCPConnector(limit=workers, limit_per_host=workers, force_close=False)
        async with aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "gateway-perf-attacker"},
        ) as session:
            start = self._clock() + 0.05  # a short runway so the first requests are not already late
            wall_start = self._wall_ns() + 50_000_000
            reporter = asyncio.create_task(self._report(stats, start)) if self._progress else None
            try:
                await asyncio.gather(
                    *(
                        self._attack(session, a, s, start, wall_start)
                        for a, s in zip(attacks, stats, strict=True)
                    )
                )
            finally:
                if reporter is not None:
                    reporter.cancel()
                    await asyncio.gather(reporter, return_exceptions=True)
                self._pool.close()
            self._print_progress(stats, start, final=True)
        return stats

    async def _attack(
        self,
        session: aiohttp.ClientSession,
        attack: Attack,
        stats: AttackStats,
        start: float,
        wall_start: int,
    ) -> None:
        prepared = [_prepare(t) for t in attack.targets]
        slots = asyncio.Semaphore(attack.max_workers)
        timeout = aiohttp.ClientTimeout(total=attack.timeout)
        interval = 1.0 / attack.rate
        end = start + attack.duration
        tasks: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slots.release()

        for seq in range(stats.expected):
            due = start + seq * interval
            now = self._clock()
            if due > now:
                await asyncio.sleep(due - now)
            await slots.acquire()
            now = self._clock()
            if now >= end and seq > 0 and now - due > interval:
                slots.release()  # past the end and behind schedule: what is left is the shortfall
                break
            stats.lags.append(max(0.0, now - due))
            stats.sent += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            wall_due = wall_start + int((due - start) * 1e9)
            task = asyncio.create_task(
                self._hit(session, attack, stats, prepared[seq % len(prepared)], seq, due, wall_due, timeout)
            )
            tasks.add(task)
            task.add_done_callback(done)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _hit(
        self,
        session: aiohttp.ClientSession,
        attack: Attack,
        stats: AttackStats,
        target: _Prepared,
        seq: int,
        due: float,
        wall_due: int,
        client_timeout: aiohttp.ClientTimeout,
    ) -> None:
        code, error, bytes_in, body = 0, "", 0, b""
        headers: dict[str, list[str]] = {}
        try:
            if target.raw is not None:
                async with asyncio.timeout(attack.timeout):
                    answer = await self._pool.request(target.raw, keep=attack.max_body)
                code, reason, bytes_in, body, pairs = (
                    answer.status,
                    answer.reason,
                    answer.size,
                    answer.body,
                    answer.headers,
                )
            else:
                code, reason, bytes_in, body, pairs = await self._via_aiohttp(
                    session, attack, target, client_timeout
                )
            for name, value in pairs:
                headers.setdefault(canonical_header(name), []).append(value)
            if code < 200 or code >= 400:
                error = f"{code} {reason}".rstrip()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is a result, as with vegeta
            code, error = (
                0,
                f"{target.method} {target.url_text}: {exc.__class__.__name__}: {exc}".rstrip(": "),
            )
        latency = self._clock() - due
        stats.completed += 1
        if error:
            stats.errors += 1
        self._sink(
            Result(
                attack=attack.name,
                seq=seq,
                code=code,
                timestamp=wall_due,
                latency=int(latency * 1e9),
                bytes_out=len(target.body),
                bytes_in=bytes_in,
                error=error,
                body=body,
                method=target.method,
                url=target.url_text,
                headers=headers,
            )
        )

    @staticmethod
    async def _via_aiohttp(
        session: aiohttp.ClientSession,
        attack: Attack,
        target: _Prepared,
        client_timeout: aiohttp.ClientTimeout,
    ) -> tuple[int, str, int, bytes, list[tuple[str, str]]]:
        """https targets: (status, reason, body size, first body bytes, headers)."""
        body = bytearray()
        size = 0
        async with session.request(
            target.method,
            target.url,
            headers=target.headers,
            data=target.body or None,
            allow_redirects=False,
            timeout=client_timeout,
        ) as response:
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if len(body) < attack.max_body:
                    body += chunk[: attack.max_body - len(body)]
            return response.status, response.reason or "", size, bytes(body), list(response.headers.items())

    async def _report(self, stats: list[AttackStats], start: float) -> None:
        while True:
            await asyncio.sleep(self._progress_every)
            self._print_progress(stats, start, final=False)

    def _print_progress(self, stats: list[AttackStats], start: float, *, final: bool) -> None:
        if self._progress is None:
            return
        elapsed = max(1e-9, self._clock() - start)
        duration = max(s.duration for s in stats)
        asked = sum(s.rate for s in stats)
        sent = sum(s.sent for s in stats)
        done = sum(s.completed for s in stats)
        errors = sum(s.errors for s in stats)
        span = min(elapsed, duration)
        achieved = sent / span if span > 0 else 0.0
        behind = [s.name for s in stats if s.fell_behind] if final else []
        line = (
            f"[attack] {min(elapsed, duration):5.1f}s/{duration:.0f}s  asked {asked:.1f}/s  achieved"
            f" {achieved:.1f}/s  sent {sent}  in flight {sent - done}  errors {errors}"
            f" ({(errors / done * 100) if done else 0.0:.2f}%)"
        )
        if final:
            line += f"  fell behind: {', '.join(behind)}" if behind else "  generator kept the rate"
        tty = self._progress.isatty()
        self._progress.write(("\r" + line + ("\n" if final else "")) if tty else line + "\n")
        self._progress.flush()


def run_attacks(
    attacks: Sequence[Attack], sink: Sink, *, progress: IO[str] | None = sys.stderr
) -> list[AttackStats]:
    """Run attacks to completion on a fresh event loop (uvloop when available)."""
    try:
        import uvloop

        return uvloop.run(Attacker(sink, progress=progress).run(attacks))
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.run(Attacker(sink, progress=progress).run(attacks))
