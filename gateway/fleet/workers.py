"""What the workers of one supervisor (`serve --workers N`) share through the supervisor's private directory.

- `worker-<pid>.json`: each worker's status (instance id, policy version) and its metric samples, rewritten
  every second, at each scrape it answers and when it stops. Health lists every worker's policy version from
  these files (a mismatch is visible), and `/metrics` answers for all workers by adding them up.
- `retired.json`: the counters of workers that died, added up by the supervisor when it reaps one, so a dead
  worker's counts are not lost. It names the files it absorbed; a reader reads the worker files first and
  `retired.json` last and skips the absorbed ones, so nothing is counted twice or lost in between.
- `commands.jsonl`: ops actions one worker took that every worker must take (a rollback, a manual breaker
  action), appended under a lock; the worker then sends SIGUSR1 to the supervisor, which forwards it to every
  worker, and each applies the lines it has not seen and did not write. (A reload needs no line: the worker
  sends SIGHUP to the supervisor, which forwards it to every worker.)

Why not prometheus-client's multiprocess mode: it requires every metric to be a prometheus-client object
that writes an mmap'd file on each increment, where this gateway counts in plain attributes and reads them
at scrape time (gateway/metrics.py); moving to it would put file writes on the request path. Here a worker's
counters reach the others once a second, and a scrape first refreshes the answering worker's own file.
Counters never go backwards across scrapes answered by different workers: every answer reads the files only,
and each file's counters only grow. A worker killed with SIGKILL loses at most its last second of counts.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from gateway.events import Event, Events
from gateway.logs import get_logger
from gateway.runtime import Runtime

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.metrics import GatewayMetrics

log = get_logger("gateway.fleet")
WRITE_INTERVAL = 1.0
RETIRED = "retired.json"
COMMANDS = "commands.jsonl"
SUPERVISOR = "supervisor.json"
SUMMED_TYPES = frozenset({"counter", "histogram", "summary"})
GAUGE_MAX = frozenset(
    {
        "gateway_circuit_breaker_state",
        "gateway_policy_last_reload_success_timestamp_seconds",
        "process_max_fds",
    }
)
GAUGE_MIN = frozenset({"gateway_redis_up", "process_start_time_seconds"})
MAX_ABSORBED = 10_000  # names of absorbed worker files remembered (pids; a crash loop is bounded by backoff)

Families = list[dict[str, Any]]


class Gateway(Protocol):
    """What a worker reads and drives of the gateway (gateway.app.Gateway, which imports this module)."""

    instance: str
    events: Events
    runtime: Runtime | None

    def current(self) -> Runtime: ...

    async def rollback(self) -> Any: ...


def worker_file(directory: Path, pid: int) -> Path:
    return directory / f"worker-{pid}.json"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def families_of(registry: CollectorRegistry) -> Families:
    """A registry's samples as plain data (no timestamps, no exemplars)."""
    return [
        {"n": m.name, "t": m.type, "h": m.documentation,
         "s": [[s.name, s.labels, s.value] for s in m.samples]}
        for m in registry.collect()
    ]


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def merge_families(parts: Iterable[Families], *, counters_only: bool = False) -> Families:
    """Families of several workers, added up: counters and histograms summed; gauges summed, or their max
    or min for the few where a sum means nothing (a breaker's state, Redis up, start time)."""
    order: list[str] = []
    heads: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in parts:
        for fam in families:
            name, kind = fam.get("n"), fam.get("t")
            if not isinstance(name, str) or not isinstance(kind, str):
                continue
            if counters_only and kind not in SUMMED_TYPES:
                continue
            if name not in heads:
                heads[name] = (kind, str(fam.get("h", "")))
                order.append(name)
                values[name] = {}
            samples = values[name]
            for sample in fam.get("s", ()):
                sname, labels, value = sample
                key = (sname, _key(labels))
                old = samples.get(key)
                if old is None:
                    samples[key] = value
                elif kind in SUMMED_TYPES or (name not in GAUGE_MAX and name not in GAUGE_MIN):
                    samples[key] = old + value
                elif name in GAUGE_MAX:
                    samples[key] = max(old, value)
                else:
                    samples[key] = min(old, value)
    return [
        {"n": name, "t": heads[name][0], "h": heads[name][1],
         "s": [[sname, dict(labels), value] for (sname, labels), value in values[name].items()]}
        for name in order
    ]


class _Replay(Collector):
    def __init__(self, families: Families, extra: list[Metric]) -> None:
        self._families = families
        self._extra = extra

    def collect(self) -> Iterable[Metric]:
        for fam in self._families:
            metric = Metric(fam["n"], fam["h"], fam["t"])
            for sname, labels, value in fam["s"]:
                metric.add_sample(sname, labels, value)
            yield metric
        yield from self._extra


def read_all(directory: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(the live worker files, retired.json): worker files first, then retired, absorbed files left out."""
    files = sorted(directory.glob("worker-*.json"))
    workers = [(path.name, read_json(path)) for path in files]
    retired = read_json(directory / RETIRED)
    absorbed = set(retired.get("absorbed", ())) if retired is not None else set()
    return [data for name, data in workers if data is not None and name not in absorbed], retired


def exposition(directory: Path) -> bytes:
    """The Prometheus text for every worker of the supervisor, dead ones' counters included."""
    workers, retired = read_all(directory)
    parts: list[Families] = [w.get("families", []) for w in workers]
    if retired is not None:
        parts.append(retired.get("families", []))
    supervisor = read_json(directory / SUPERVISOR) or {}
    extra: list[Metric] = [
        GaugeMetricFamily("gateway_workers", "Workers of this supervisor with a status file.",
                          value=len(workers)),
    ]
    restarts = Metric("gateway_worker_restarts", "Workers the supervisor restarted after they died.",
                      "counter")
    restarts.add_sample("gateway_worker_restarts_total", {}, float(supervisor.get("restarts", 0)))
    extra.append(restarts)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Replay(merge_families(parts), extra))
    return generate_latest(registry)


def absorb(directory: Path, pid: int) -> None:
    """Add a dead worker's counters to retired.json (atomically), then remove its file (supervisor side)."""
    path = worker_file(directory, pid)
    dead = read_json(path)
    if dead is None:
        path.unlink(missing_ok=True)
        return
    retired = read_json(directory / RETIRED) or {"absorbed": [], "families": []}
    families = merge_families([retired.get("families", []), dead.get("families", [])], counters_only=True)
    absorbed = [*retired.get("absorbed", []), path.name][-MAX_ABSORBED:]
    write_atomic(directory / RETIRED, orjson.dumps({"absorbed": absorbed, "families": families}))
    path.unlink(missing_ok=True)


def worker_statuses(directory: Path, now: float | None = None) -> list[dict[str, Any]]:
    """Each live worker's instance, pid, policy version and the age of its status (for health)."""
    now = time.time() if now is None else now
    workers, _ = read_all(directory)
    out = []
    for w in workers:
        at = w.get("at")
        out.append({
            "instance": w.get("instance"), "pid": w.get("pid"), "index": w.get("index"),
            "policy_version": w.get("policy_version"),
            "age_s": round(max(0.0, now - at), 3) if isinstance(at, (int, float)) else None,
        })
    return sorted(out, key=lambda w: (w["index"] if isinstance(w["index"], int) else -1))


@dataclass
class WorkerLink:
    """This process as one worker of a supervisor: writes its file, relays and applies ops actions."""

    directory: Path
    supervisor_pid: int
    index: int
    _offset: int = 0
    _applying: bool = False
    _task: asyncio.Task[None] | None = None
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    def _write(self, gateway: Gateway, metrics: GatewayMetrics) -> None:
        runtime = gateway.runtime
        data = {
            "pid": os.getpid(), "index": self.index, "instance": gateway.instance, "at": time.time(),
            "policy_version": runtime.loaded.version if runtime is not None else None,
            "families": families_of(metrics.registry) if runtime is not None else [],
        }
        write_atomic(worker_file(self.directory, os.getpid()), orjson.dumps(data))

    def install(self, app: web.Application, gateway: Gateway, metrics: GatewayMetrics) -> None:
        """Wire this worker into the app: the status file, merged /metrics, relays (call from build_app)."""
        commands = self.directory / COMMANDS
        try:
            self._offset = commands.stat().st_size  # a new worker does not replay what came before it
        except FileNotFoundError:
            self._offset = 0

        def merged() -> bytes:
            self._write(gateway, metrics)  # this worker's counters as of now, then everyone's files
            return exposition(self.directory)

        metrics.merged_exposition = merged
        gateway.events.subscribe(lambda event: self._on_event(gateway, event))

        async def loop() -> None:
            while True:
                try:
                    self._write(gateway, metrics)
                except OSError as exc:
                    log.warning("worker_status_write_failed", error=str(exc))
                await asyncio.sleep(WRITE_INTERVAL)

        async def lifecycle(_: web.Application) -> AsyncIterator[None]:
            loop_ = asyncio.get_running_loop()
            loop_.add_signal_handler(signal.SIGUSR1, self._on_sigusr1, gateway)
            self._task = loop_.create_task(loop(), name="worker-status")
            yield
            loop_.remove_signal_handler(signal.SIGUSR1)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            try:
                self._write(gateway, metrics)  # the final counts: the supervisor absorbs them
            except OSError:
                pass

        app.cleanup_ctx.insert(0, lifecycle)  # first in, last out: the final write follows the drain

    # -- relaying what an operator did at this worker --

    def _on_event(self, gateway: Gateway, event: Event) -> None:
        if self._applying:
            return
        fields = event.fields
        if event.type == "policy_reload" and fields.get("result") == "success":
            trigger = fields.get("trigger")
            if trigger == "api":
                self._signal(signal.SIGHUP)  # the supervisor makes every worker reload (this one: unchanged)
            elif trigger == "rollback":
                self._relay({"op": "rollback", "to": fields.get("version")})
        elif event.type == "admin_action" and str(fields.get("action", "")).startswith("breaker."):
            before = fields.get("before")
            if fields.get("status") == 200 and isinstance(before, dict):
                runtime = gateway.runtime
                breaker = runtime.breakers.get(str(before.get("breaker"))) if runtime is not None else None
                if breaker is not None and breaker.fleet is not None and breaker.fleet.active():
                    return  # a shared breaker: Redis carries the action to every process, workers included
                action = str(fields["action"])[len("breaker."):]
                self._relay({"op": "breaker", "action": action, "name": before.get("breaker")})

    def _signal(self, signum: int) -> None:
        try:
            os.kill(self.supervisor_pid, signum)
        except OSError as exc:
            log.warning("supervisor_unreachable", error=str(exc))

    def _relay(self, command: dict[str, Any]) -> None:
        line = orjson.dumps({**command, "from": os.getpid()}) + b"\n"
        try:
            with open(self.directory / COMMANDS, "ab") as out:
                fcntl.flock(out, fcntl.LOCK_EX)
                out.write(line)
        except OSError as exc:
            log.warning("worker_relay_failed", error=str(exc))
            return
        self._signal(signal.SIGUSR1)

    def _on_sigusr1(self, gateway: Gateway) -> None:
        task = asyncio.get_running_loop().create_task(self._apply(gateway))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _read_commands(self) -> bytes:
        with open(self.directory / COMMANDS, "rb") as src:  # a few lines on a local disk
            src.seek(self._offset)
            return src.read()

    async def _apply(self, gateway: Gateway) -> None:
        try:
            data = self._read_commands()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self._offset += end
        for raw in data[:end].splitlines():
            try:
                command = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(command, dict) or command.get("from") == os.getpid():
                continue
            self._applying = True
            try:
                await self._apply_one(gateway, command)
            except Exception:
                log.exception("worker_relay_apply_failed", command=command.get("op"))
            finally:
                self._applying = False

    async def _apply_one(self, gateway: Gateway, command: dict[str, Any]) -> None:
        op = command.get("op")
        if op == "rollback":
            if gateway.current().loaded.version != command.get("to"):
                await gateway.rollback()
        elif op == "breaker":
            breaker = gateway.current().breakers.get(str(command.get("name")))
            action = command.get("action")
            if breaker is None:
                return
            if action == "open":
                breaker.force_open()
            elif action == "close":
                breaker.force_close()
            elif action == "reset":
                breaker.reset()
        log.info("worker_relay_applied", op=op, source_pid=command.get("from"))
