"""Live policy reload: one code path for three triggers (file change, SIGHUP, `POST /api/ops/reload`).

Validate, then swap whole: the new file is loaded and validated completely, every runtime object is built
for it (carrying state over from the running runtime where settings are unchanged), and only then is the
holder's `runtime` replaced, in one assignment. The request path reads that reference once per request, so
requests in flight finish on the runtime they started with. Objects the new runtime no longer uses
(connection pools of changed upstreams, a replaced limiter) are closed after a grace period long enough for
those requests to finish. A file that does not validate changes nothing: it is logged, counted, kept as
`last_error`, reported to the caller and audited as a `policy_reload` event with result "error".

Rollback applies the previous policy's text from memory; the file on disk is not rewritten (an operator who
rolls back is expected to fix the file; until then `file_differs` says so, and the next edit or SIGHUP
loads the file again).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from aiohttp import web
from yarl import URL

from gateway import heap
from gateway.events import Events
from gateway.logs import get_logger
from gateway.policy.loader import LoadedPolicy, PolicyError, Problem, load_policy, parse_policy
from gateway.policy.model import Policy
from gateway.policy.watcher import DEFAULT_INTERVAL, PolicyWatcher, content_version
from gateway.runtime import Resource, Runtime
from gateway.tasks import stop

log = get_logger("gateway.reload")

HISTORY = 10  # applied policies kept in memory for rollback
GRACE_EXTRA = 1.0  # seconds added to the longest request a retired runtime may still be serving
MAX_PROBLEMS = 50  # a broken file can produce many problems; the event and the answer stay bounded
DIFF_KINDS = ("routes", "upstreams", "rate_limits", "breakers")
# Sections read once when the server starts (listener limits, the admin gate, CORS, the audit backend, the
# alert webhook): a change is accepted and reported as needing a restart.
RESTART_SECTIONS = ("server", "admin", "cors", "audit", "alerts", "fleet")

Trigger = Literal["file", "sighup", "api", "rollback"]
Result = Literal["success", "error", "unchanged"]


class RuntimeHolder(Protocol):
    """What the reloader swaps: the gateway's current runtime (the one reference the request path reads)."""

    runtime: Runtime | None
    loaded: LoadedPolicy
    events: Events

    def build(self, loaded: LoadedPolicy, previous: Runtime | None = None) -> Runtime:
        """Build every runtime object for `loaded`, carrying state over from `previous`."""
        ...


class RollbackUnavailable(Exception):
    """There is no earlier policy in memory to return to."""


@dataclass(frozen=True)
class ReloadResult:
    """The outcome of one reload attempt."""

    result: Result
    trigger: Trigger
    version: str  # the version running after the attempt
    attempted: str | None  # the version that was tried (None when the file could not be read)
    diff: dict[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()
    duration: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of `POST /api/ops/reload`."""
        body: dict[str, Any] = {
            "result": self.result,
            "trigger": self.trigger,
            "version": self.version,
            "attempted_version": self.attempted,
            "duration_ms": round(self.duration * 1000, 3),
        }
        if self.result == "error":
            body["problems"] = list(self.problems)
        else:
            body["diff"] = self.diff
            body["restart_required"] = list(self.restart_required)
        return body


def _named(policy: Policy, kind: str) -> dict[str, Any]:
    if kind == "routes":
        return {route.name: route for route in policy.routes}
    items: dict[str, Any] = getattr(policy, kind)
    return dict(items)


def diff_policies(old: Policy, new: Policy) -> dict[str, Any]:
    """What a reload changes: names added, removed, changed per kind; other top-level sections changed."""
    diff: dict[str, Any] = {}
    for kind in DIFF_KINDS:
        before, after = _named(old, kind), _named(new, kind)
        diff[kind] = {
            "added": sorted(after.keys() - before.keys()),
            "removed": sorted(before.keys() - after.keys()),
            "changed": sorted(n for n in before.keys() & after.keys() if before[n] != after[n]),
        }
    sections = (name for name in Policy.model_fields if name not in DIFF_KINDS)
    diff["settings"] = {"changed": sorted(s for s in sections if getattr(old, s) != getattr(new, s))}
    return diff


def grace_period(runtime: Runtime, extra: float = GRACE_EXTRA) -> float:
    """How long a retired runtime's requests may still run: slowest route's timeouts and retries + `extra`."""
    longest = 0.0
    for route in runtime.routes.values():
        longest = max(longest, route.retries.longest(route.timeout) if route.retries else route.timeout)
    return longest + extra


def _redact_url(url: str | None, *, whole_path: bool) -> str | None:
    if not url:
        return url
    parsed = URL(url)
    if parsed.password is not None:
        parsed = parsed.with_password("***")
    if whole_path and parsed.path not in ("", "/"):
        parsed = parsed.with_path("/***").with_query(None)  # webhook URLs carry their secret in the path
    return str(parsed)


def policy_dump(policy: Policy) -> dict[str, Any]:
    """The model as JSON, with secrets that env expansion may have put into URLs masked."""
    dump: dict[str, Any] = policy.model_dump(mode="json")
    dump["storage"]["redis_url"] = _redact_url(dump["storage"].get("redis_url"), whole_path=False)
    dump["alerts"]["webhook_url"] = _redact_url(dump["alerts"].get("webhook_url"), whole_path=True)
    return dump


def policy_text(loaded: LoadedPolicy) -> str:
    """The file as loaded, with the same secrets masked as in `policy_dump` where the file spells them out
    (a password in storage.redis_url, the token path of alerts.webhook_url)."""
    text = loaded.text
    policy = loaded.policy
    for url, whole_path in ((policy.storage.redis_url, False), (policy.alerts.webhook_url, True)):
        masked = _redact_url(url, whole_path=whole_path)
        if url and masked and masked != url:
            text = text.replace(url, masked)
    return text


async def close_all(resources: Iterable[Resource]) -> None:
    """Close each resource; one failing to close does not keep the others open."""
    for resource in resources:
        try:
            await resource.close()
        except Exception:
            log.exception("retire_failed", object=type(resource).__name__)


def _disk_version(path: str) -> str | None:
    try:
        return content_version(Path(path).read_bytes())
    except OSError:
        return None


# SIGHUP has one handler per event loop; every reloader started in that loop (tests run several gateways
# in one loop) is registered here, and the handler is removed with the last of them.
_SIGHUP: dict[asyncio.AbstractEventLoop, list[Reloader]] = {}


def _on_sighup(loop: asyncio.AbstractEventLoop) -> None:
    for reloader in list(_SIGHUP.get(loop, ())):
        reloader.trigger("sighup")


class Reloader:
    """Reloads the policy of one gateway: serialised, validated completely, swapped whole, audited."""

    def __init__(
        self,
        holder: RuntimeHolder,
        *,
        history: int = HISTORY,
        clock: Callable[[], float] = time.time,
        grace_extra: float = GRACE_EXTRA,
        watch_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self._holder = holder
        self._clock = clock
        self._grace_extra = grace_extra
        self._watch_interval = watch_interval
        self._lock = asyncio.Lock()
        self._history: deque[LoadedPolicy] = deque(maxlen=max(2, history))
        self._counts: dict[Result, int] = {"success": 0, "error": 0, "unchanged": 0}
        self._disk_version: str | None = None
        self._watcher: PolicyWatcher | None = None
        self._sighup_loop: asyncio.AbstractEventLoop | None = None
        self._triggered: set[asyncio.Task[ReloadResult]] = set()
        self._retiring: dict[asyncio.Task[None], list[Resource]] = {}
        self.last_error: dict[str, Any] | None = None

    # -- what is running --

    @property
    def running(self) -> LoadedPolicy:
        """The policy the gateway is serving right now."""
        runtime = self._holder.runtime
        return runtime.loaded if runtime is not None else self._holder.loaded

    @property
    def events(self) -> Events:
        """The gateway's domain-event bus (policy_reload and admin_action are emitted on it)."""
        return self._holder.events

    @property
    def file_differs(self) -> bool:
        """True when the file on disk (as last read) is not the policy being served: an error, a rollback."""
        return self._disk_version is not None and self._disk_version != self.running.version

    @property
    def retirements(self) -> tuple[asyncio.Task[None], ...]:
        """Pending delayed closes of retired objects (connection pools of replaced upstreams, ...)."""
        return tuple(self._retiring)

    def stats(self) -> dict[str, int]:
        """Reload attempts by result (success/error/unchanged), for gateway_policy_reloads_total{result}."""
        return {result: count for result, count in self._counts.items()}

    def error_summary(self) -> str | None:
        """The last failed reload in one line, or None after a success.

        It names where (file:line key.path) but not what: health is public and a message may quote a value.
        The full messages are in GET /api/ops/policy and the POST /api/ops/reload answer.
        """
        if self.last_error is None:
            return None
        locations: list[str] = self.last_error["locations"]
        more = f" and {len(locations) - 3} more" if len(locations) > 3 else ""
        return (f"policy reload ({self.last_error['trigger']}) rejected: {len(locations)} problem(s) at "
                f"{'; '.join(locations[:3])}{more}; the previous policy is still serving")

    def health(self) -> dict[str, Any]:
        """The `policy` block of /api/ops/health: version, loaded_at, last_error (None after a success)."""
        running = self.running
        return {
            "version": running.version,
            "loaded_at": running.loaded_at,
            "last_error": self.last_error,
            "file_differs": self.file_differs,
        }

    def describe(self) -> dict[str, Any]:
        """The body of GET /api/ops/policy: the running policy's text and model, with its history."""
        running = self.running
        return {
            **self.health(),
            "source": running.source,
            "history": [{"version": p.version, "loaded_at": p.loaded_at} for p in reversed(self._history)],
            "stats": self.stats(),
            "text": policy_text(running),
            "policy": policy_dump(running.policy),
        }

    # -- lifecycle --

    async def start(self, *, watch: bool = True, sighup: bool = True) -> None:
        """Remember the starting policy; start the file watcher and the SIGHUP handler as asked."""
        running = self.running
        if not self._history:
            self._history.append(running)
        self._disk_version = running.version
        if watch and self._watcher is None:
            self._watcher = PolicyWatcher(running.source, self._on_file_change, last_version=running.version,
                                          interval=self._watch_interval)
            await self._watcher.start()
        if sighup:
            self._install_sighup()

    async def close(self) -> None:
        """Stop the triggers, cancel reloads in progress, and close retired objects now."""
        self._remove_sighup()
        if self._watcher is not None:
            await self._watcher.close()
            self._watcher = None
        await stop(self._triggered)
        pending = [(task, objects) for task, objects in self._retiring.items() if not task.done()]
        await stop(task for task, _ in pending)
        await close_all(obj for _, objects in pending for obj in objects)

    def _install_sighup(self) -> None:
        # Signal handlers can only be installed from the main thread (a gateway embedded elsewhere has none).
        if self._sighup_loop is not None or threading.current_thread() is not threading.main_thread():
            return
        if not hasattr(signal, "SIGHUP"):
            return
        loop = asyncio.get_running_loop()
        group = _SIGHUP.setdefault(loop, [])
        if not group:
            try:
                loop.add_signal_handler(signal.SIGHUP, _on_sighup, loop)
            except (NotImplementedError, RuntimeError, ValueError):
                del _SIGHUP[loop]
                return
        group.append(self)
        self._sighup_loop = loop

    def _remove_sighup(self) -> None:
        loop, self._sighup_loop = self._sighup_loop, None
        if loop is None:
            return
        group = _SIGHUP.get(loop, [])
        if self in group:
            group.remove(self)
        if not group:
            _SIGHUP.pop(loop, None)
            if not loop.is_closed():
                loop.remove_signal_handler(signal.SIGHUP)

    def trigger(self, trigger: Trigger) -> asyncio.Task[ReloadResult]:
        """Start a reload from a synchronous context (a signal handler) and keep a reference to it."""
        task = asyncio.get_running_loop().create_task(self.reload(trigger), name=f"policy-reload:{trigger}")
        self._triggered.add(task)
        task.add_done_callback(self._triggered.discard)
        return task

    async def _on_file_change(self, version: str) -> None:
        self._disk_version = version
        await self.reload("file")

    # -- the one code path --

    async def reload(self, trigger: Trigger = "api") -> ReloadResult:
        """Load the policy file again and apply it if it is valid; never raises for a bad file."""
        async with self._lock:
            started = time.perf_counter()
            source = self.running.source
            try:
                # Parsing a large policy is CPU work: off the event loop so requests keep flowing meanwhile.
                loaded = await asyncio.to_thread(load_policy, source)
            except PolicyError as exc:
                attempted = await asyncio.to_thread(_disk_version, source)
                self._disk_version = attempted or self._disk_version
                return self._failed(trigger, attempted, exc.problems, started)
            self._disk_version = loaded.version
            return await self._apply(loaded, trigger, started)

    async def rollback(self) -> ReloadResult:
        """Apply the previous policy again (from memory, re-validated); RollbackUnavailable without one."""
        async with self._lock:
            if len(self._history) < 2:
                raise RollbackUnavailable("no previous policy in memory to roll back to")
            started = time.perf_counter()
            target = self._history[-2]
            try:
                policy = await asyncio.to_thread(parse_policy, target.text, target.source)
            except PolicyError as exc:  # e.g. an environment variable it expands has changed since
                return self._failed("rollback", target.version, exc.problems, started)
            loaded = LoadedPolicy(
                policy=policy, source=target.source, text=target.text, version=target.version,
                loaded_at=self._clock(),
            )
            return await self._apply(loaded, "rollback", started)

    async def _apply(self, loaded: LoadedPolicy, trigger: Trigger, started: float) -> ReloadResult:
        current = self._holder.runtime
        if current is None:
            raise RuntimeError("the gateway is not started")
        old = current.loaded
        if loaded.version == old.version and loaded.policy == old.policy:
            self._counts["unchanged"] += 1
            self.last_error = None
            log.info("policy_unchanged", version=old.version, trigger=trigger)
            return ReloadResult("unchanged", trigger, old.version, loaded.version,
                                duration=time.perf_counter() - started)
        runtime: Runtime | None = None
        try:
            runtime = self._holder.build(loaded, current)
            await runtime.start()
        except asyncio.CancelledError:
            if runtime is not None:
                await close_all(runtime.retired_by(current))
            raise
        except Exception as exc:
            log.exception("policy_build_failed", version=loaded.version, trigger=trigger)
            if runtime is not None:
                await close_all(runtime.retired_by(current))
            reason = f"the runtime could not be built: {exc.__class__.__name__}: {exc}"
            problem = Problem(loaded.source, 0, "", reason)
            return self._failed(trigger, loaded.version, [problem], started)

        self._holder.runtime = runtime  # the swap: new requests see the new policy from here on
        self._holder.loaded = loaded
        duration = time.perf_counter() - started
        heap.settle()

        self._retire(current.retired_by(runtime), grace_period(current, self._grace_extra))
        if trigger == "rollback":
            self._history.pop()  # the policy rolled back from
            self._history.pop()  # the target, replaced by its re-validated copy
        self._history.append(loaded)
        self._counts["success"] += 1
        self.last_error = None
        diff = diff_policies(old.policy, loaded.policy)
        restart = tuple(s for s in RESTART_SECTIONS if getattr(old.policy, s) != getattr(loaded.policy, s))
        self._holder.events.emit("policy_reload", result="success", version=loaded.version, trigger=trigger,
                                 diff=diff)
        log.info("policy_reloaded", version=loaded.version, previous=old.version, trigger=trigger,
                 duration_ms=round(duration * 1000, 3), diff=diff, restart_required=list(restart))
        if restart:
            log.warning("policy_restart_required", sections=list(restart), version=loaded.version)
        return ReloadResult("success", trigger, loaded.version, loaded.version, diff=diff,
                            restart_required=restart, duration=duration)

    def _failed(
        self, trigger: Trigger, attempted: str | None, problems: list[Problem], started: float
    ) -> ReloadResult:
        shown = [str(p) for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more problems")
        self._counts["error"] += 1
        self.last_error = {
            "time": self._clock(), "trigger": trigger, "version": attempted, "problems": shown,
            "locations": [f"{p.file}:{p.line} {p.path}".rstrip() for p in problems[:MAX_PROBLEMS]],
        }
        running = self.running.version
        for problem in shown:
            log.error("policy_reload_failed", trigger=trigger, running=running, problem=problem)
        self._holder.events.emit("policy_reload", result="error", version=attempted, trigger=trigger,
                                 error="\n".join(shown))
        return ReloadResult("error", trigger, running, attempted, problems=tuple(shown),
                            duration=time.perf_counter() - started)

    def _retire(self, objects: list[Resource], grace: float) -> None:
        # Even with nothing to close, the old runtime is unreferenced only once its requests end: the
        # retirement's end is when its garbage can be collected (`_retired`).
        task = asyncio.get_running_loop().create_task(self._close_later(objects, grace), name="policy-retire")
        self._retiring[task] = objects
        task.add_done_callback(self._retired)

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.pop(task, None)
        heap.settle()  # the retired runtime is unreferenced now: its cycles can go

    async def _close_later(self, objects: list[Resource], grace: float) -> None:
        await asyncio.sleep(grace)  # requests that started on the old runtime finish within this
        await close_all(objects)


RELOADER = web.AppKey("reloader", Reloader)
