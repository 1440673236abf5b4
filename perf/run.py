"""`gateway perf run SCENARIO`: start what the scenario needs, attack at a constant rate, then judge.

Everything runs on free loopback ports in a fresh run directory (perf/results/SCENARIO-TIME/): a private
redis-server when the scenario wants Redis, the fake payment provider, the demo upstream (its payments go
through the gateway's egress route) and the gateway itself (`python -m gateway serve`) with a copy of the
policy whose upstream URLs point at those ports. Target files and actions name the `make run` ports (8000
gateway, 8001 upstream, 8002 provider) and are rewritten to the run's ports. A body containing
`{{order_id}}` gets an order created beforehand for that target's X-User-Id.

The attack uses `vegeta attack | vegeta encode` when vegeta is on PATH, else the built-in attacker; both
write vegeta's JSON lines. While it runs, breaker states are polled from `/api/ops/metrics` as the admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
import yaml

from gateway.policy.loader import parse_policy
from perf.attacker import Attack, Attacker
from perf.local import free_port, redis_command, wait_for_redis
from perf.results import ResultsWriter, read_results
from perf.scenarios import Scenario, load_scenarios
from perf.targets import Target, format_targets, load_targets
from perf.verdict import Verdict, fmt_ms, judge, render_text

DEFAULT_PORTS = {"gateway": 8000, "upstream": 8001, "provider": 8002}
POLL_EVERY = 0.5


def meta_path(results: Path) -> Path:
    """Where a results file's metadata lives: results.json -> results.meta.json."""
    return results.with_name(results.name.rsplit(".", 1)[0] + ".meta.json")


@dataclass
class Stack:
    """The processes of one run and the ports they listen on."""

    run_dir: Path
    ports: dict[str, int]
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    redis_url: str | None = None

    def origin(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def rewrite(self, url: str) -> str:
        """A URL naming a `make run` port, pointed at this run's port instead."""
        for name, port in DEFAULT_PORTS.items():
            for host in ("127.0.0.1", "localhost"):
                prefix = f"http://{host}:{port}"
                if url == prefix or url.startswith(prefix + "/"):
                    return self.origin(name) + url[len(prefix) :]
        return url

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.run_dir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child process
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=Path.cwd()
        )
        log.close()
        self.procs.append((name, proc))

    def stop(self) -> None:
        """SIGTERM every process this run started, newest first; SIGKILL what does not stop."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def wait_ready(self, name: str, url: str, timeout: float = 20.0) -> None:
        """Poll `url` until it answers below 500; fail with the process log's tail."""
        deadline = time.monotonic() + timeout
        proc = dict(self.procs)[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                import urllib.request

                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status < 500:
                        return
            except OSError:
                time.sleep(0.1)
        tail = (self.run_dir / f"{name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} did not become ready at {url}:\n{tail}")


def start_redis(stack: Stack) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        print("perf: no redis-server on PATH: the gateway keeps limits in-process", file=sys.stderr)
        return
    port = free_port()
    stack.spawn("redis", redis_command(binary, port, str(stack.run_dir)))
    if not wait_for_redis(port):
        raise RuntimeError("redis-server did not start")
    stack.redis_url = f"redis://127.0.0.1:{port}/0"


def derive_policy(scenario: Scenario, stack: Stack) -> tuple[Path, dict[str, Any]]:
    """The scenario's policy with its upstreams on this run's ports (and Redis, and any overrides)."""
    data = yaml.safe_load(Path(scenario.policy).read_text())
    for upstream in (data.get("upstreams") or {}).values():
        upstream["url"] = stack.rewrite(upstream["url"])
    storage = data.setdefault("storage", {}) or {}
    data["storage"] = storage
    storage["redis_url"] = stack.redis_url or ""
    _merge(data, scenario.policy_overrides)
    path = stack.run_dir / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    parse_policy(path.read_text(), str(path))  # fail here, with the loader's message, not in the child
    return path, data


def _merge(into: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def start_stack(scenario: Scenario, run_dir: Path) -> tuple[Stack, Path, dict[str, Any]]:
    """Start redis (if wanted), provider, upstream and gateway; return them with the policy that runs."""
    stack = Stack(run_dir, {name: free_port() for name in DEFAULT_PORTS})
    try:
        if scenario.redis:
            start_redis(stack)
        policy_path, policy = derive_policy(scenario, stack)
        python = sys.executable
        stack.spawn(
            "provider", [python, "-m", "upstream_app.provider", "--port", str(stack.ports["provider"])]
        )
        stack.spawn(
            "upstream",
            [
                python,
                "-m",
                "upstream_app",
                "--port",
                str(stack.ports["upstream"]),
                "--db",
                str(run_dir / "upstream.sqlite3"),
                "--payment-provider-url",
                stack.origin("gateway") + "/egress/payments",
                *upstream_knobs(scenario),
            ],
        )
        stack.spawn(
            "gateway",
            [
                python,
                "-m",
                "gateway",
                "serve",
                "--policy",
                str(policy_path),
                "--port",
                str(stack.ports["gateway"]),
            ],
            env={"REDIS_URL": stack.redis_url or ""},
        )
        stack.wait_ready("provider", stack.origin("provider") + "/healthz")
        stack.wait_ready("upstream", stack.origin("upstream") + "/healthz")
        stack.wait_ready("gateway", stack.origin("gateway") + "/healthz")
    except BaseException:
        stack.stop()
        raise
    return stack, policy_path, policy


def upstream_knobs(scenario: Scenario) -> list[str]:
    """The demo upstream's capacity flags for the scenario (none: as fast as it runs)."""
    knobs = scenario.upstream
    if knobs.capacity is None:
        return []
    return ["--capacity", str(knobs.capacity), "--service-time", f"{knobs.service_time:g}"]


def _create_order(stack: Stack, user: str) -> str:
    import urllib.request

    request = urllib.request.Request(
        stack.origin("upstream") + "/api/orders",
        method="POST",
        data=b'{"service": "tarot_reading", "quantity": 1}',
        headers={"Content-Type": "application/json", "X-User-Id": user},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        order_id: str = orjson.loads(answer.read())["id"]
        return order_id


def render_targets(scenario: Scenario, stack: Stack) -> dict[str, list[Target]]:
    """Every attack's targets on this run's ports, bodies rendered into the run directory."""
    bodies = stack.run_dir / "bodies"
    bodies.mkdir(exist_ok=True)
    orders: dict[str, str] = {}
    rendered: dict[str, list[Target]] = {}
    for attack in scenario.attacks:
        targets = []
        for i, target in enumerate(load_targets(attack.targets)):
            body = target.body
            if b"{{order_id}}" in body:
                user = target.header("X-User-Id") or "perf-anonymous"
                if user not in orders:
                    orders[user] = _create_order(stack, user)
                body = body.replace(b"{{order_id}}", orders[user].encode())
            body_path = None
            if target.body_path is not None:
                body_file = bodies / f"{attack.name}-{i}.body"
                body_file.write_bytes(body)
                body_path = str(body_file)
            targets.append(
                Target(target.method, stack.rewrite(target.url), target.headers, body, body_path, target.line)
            )
        (stack.run_dir / f"{attack.name}.http").write_text(format_targets(targets))
        rendered[attack.name] = targets
    return rendered


def breaker_states(document: Any) -> dict[str, str]:
    """Breaker name -> state found anywhere under a key naming breakers (shape-tolerant: list or map)."""
    found: dict[str, str] = {}

    def states(node: Any) -> None:
        items: Iterator[tuple[Any, Any]]
        if isinstance(node, dict):
            items = iter(node.items())
        elif isinstance(node, list):
            items = ((item.get("name"), item) for item in node if isinstance(item, dict))
        else:
            return
        for name, info in items:
            state = info if isinstance(info, str) else info.get("state") if isinstance(info, dict) else None
            if isinstance(name, str) and isinstance(state, str):
                found[name] = state.strip().lower().replace("-", "_").replace(" ", "_")

    def walk(node: Any, depth: int) -> None:
        if depth > 6:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                if "breaker" in str(key).lower():
                    states(value)
                else:
                    walk(value, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)

    walk(document, 0)
    return found


ADMISSION_FIELDS = ("limit", "inflight", "queued", "mode", "shed_total", "shadow_shed")


def admission_sample(document: Any, at: float, record: dict[str, Any]) -> None:
    """Keep each upstream's admission state (limit, in flight, queued, mode, shed so far) at time `at`."""
    metrics = document.get("metrics") if isinstance(document, dict) else None
    admission = metrics.get("admission") if isinstance(metrics, dict) else None
    if isinstance(admission, dict) and admission:
        picked = {
            name: {k: state.get(k) for k in ADMISSION_FIELDS}
            for name, state in admission.items() if isinstance(state, dict)
        }
        record.setdefault("admission", []).append((at, picked))


async def poll_breakers(
    url: str, admin: str | None, started: float, stop: asyncio.Event, record: dict[str, Any]
) -> None:
    """Sample breaker states every POLL_EVERY seconds until `stop` is set (and once after)."""
    headers = {"X-User-Id": admin} if admin else {}
    samples: list[tuple[float, dict[str, str]]] = record.setdefault("samples", [])
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(
                    url, headers=headers, timeout=aiohttp.ClientTimeout(total=2)
                ) as answer:
                    if answer.status == 200:
                        document = orjson.loads(await answer.read())
                        admission_sample(document, round(time.monotonic() - started, 2), record)
                        states = breaker_states(document)
                        if states:
                            record["available"] = True
                            samples.append((round(time.monotonic() - started, 2), states))
                        else:
                            record.setdefault("reason", "the answer names no breaker states")
                    else:
                        record["reason"] = f"GET {record['source']}: HTTP {answer.status}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                record["reason"] = f"GET {record['source']}: {exc.__class__.__name__}"
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_EVERY)


async def run_actions(scenario: Scenario, stack: Stack, started: float, log: list[dict[str, Any]]) -> None:
    """Perform the scenario's timed actions (e.g. flip the provider's fault knob)."""
    async with aiohttp.ClientSession() as session:
        for action in sorted(scenario.actions, key=lambda a: a.at):
            delay = started + action.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            url = stack.rewrite(action.post)
            entry: dict[str, Any] = {
                "at": round(time.monotonic() - started, 2),
                "label": action.label,
                "describe": f"POST {action.post} {orjson.dumps(action.body).decode()}",
            }
            try:
                async with session.post(
                    url, json=action.body, timeout=aiohttp.ClientTimeout(total=5)
                ) as answer:
                    entry["result"] = f"HTTP {answer.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                entry["result"] = exc.__class__.__name__
            print(f"perf: {entry['describe']} -> {entry['result']}", file=sys.stderr)
            log.append(entry)


async def attack_with_vegeta(
    vegeta: str, scenario: Scenario, stack: Stack, results: Path
) -> list[dict[str, Any]]:
    """One `vegeta attack | vegeta encode` pipeline per attack, concurrently; results concatenated."""

    async def one(attack_name: str, rate: float) -> Path:
        out = stack.run_dir / f"results-{attack_name}.json"
        q = shlex.quote
        command = (
            f"{q(vegeta)} attack -name {q(attack_name)} -rate {rate:g}/1s -duration {scenario.duration:g}s"
            f" -max-body 256 -targets {q(str(stack.run_dir / (attack_name + '.http')))}"
            f" | {q(vegeta)} encode -to json > {q(str(out))}"
        )
        proc = await asyncio.create_subprocess_shell(command)
        if await proc.wait() != 0:
            raise RuntimeError(f"vegeta failed for attack {attack_name}")
        return out

    outs = await asyncio.gather(*(one(a.name, a.rate) for a in scenario.attacks))
    with open(results, "wb") as sink:  # noqa: ASYNC230 - after the attack: nothing left to stall
        for out in outs:
            sink.write(out.read_bytes())
    return [{"name": a.name, "rate": a.rate, "duration": scenario.duration} for a in scenario.attacks]


async def attack_builtin(
    scenario: Scenario, targets: dict[str, list[Target]], results: Path, progress: IO[str]
) -> list[dict[str, Any]]:
    attacks = [Attack(a.name, targets[a.name], a.rate, scenario.duration) for a in scenario.attacks]
    # Buffered writes of a few hundred bytes per result: cheaper inline than a hop to a thread.
    with open(results, "wb") as sink:  # noqa: ASYNC230
        writer = ResultsWriter(sink)
        stats = await Attacker(writer.write, progress=progress).run(attacks)
    return [s.as_dict() for s in stats]


async def execute(
    scenario: Scenario,
    stack: Stack,
    policy: dict[str, Any],
    targets: dict[str, list[Target]],
    results: Path,
    *,
    use_vegeta: str | None,
) -> dict[str, Any]:
    """Attack while polling breakers and performing actions; return the run's metadata."""
    admins = (policy.get("admin") or {}).get("user_ids") or []
    source = "/api/ops/metrics"
    breakers: dict[str, Any] = {"source": source, "available": False}
    actions: list[dict[str, Any]] = []
    stop = asyncio.Event()
    started = time.monotonic()
    poller = asyncio.create_task(
        poll_breakers(
            stack.origin("gateway") + source, admins[0] if admins else None, started, stop, breakers
        )
    )
    actor = asyncio.create_task(run_actions(scenario, stack, started, actions))
    try:
        if use_vegeta:
            attacks = await attack_with_vegeta(use_vegeta, scenario, stack, results)
        else:
            attacks = await attack_builtin(scenario, targets, results, sys.stderr)
    finally:
        stop.set()
        actor.cancel()
        await asyncio.gather(poller, actor, return_exceptions=True)
    return {
        "scenario": scenario.name,
        "generator": "vegeta" if use_vegeta else "builtin",
        "attacks": attacks,
        "expect": scenario.expect,
        "breakers": breakers,
        "actions": actions,
        "ports": stack.ports,
        "redis": stack.redis_url,
    }


def run_scenario(
    name: str,
    *,
    scenarios_file: Path,
    out: Path | None = None,
    builtin: bool = False,
    duration: float | None = None,
    rate_scale: float = 1.0,
) -> int:
    """The whole run; returns the verdict's exit code."""
    scenario = load_scenarios(scenarios_file).get(name)
    scenario = scenario.adjusted(duration=duration, rate_scale=rate_scale)
    run_dir = out or Path("perf/results") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    vegeta = None if builtin else shutil.which("vegeta")
    print(f"perf: scenario {name}: {scenario.describe()} -> {run_dir}", file=sys.stderr)
    print(
        f"perf: load generator: {'vegeta (' + vegeta + ')' if vegeta else 'built-in attacker'}",
        file=sys.stderr,
    )
    if not scenario.variants:
        return run_once(scenario, run_dir, vegeta)
    # One run per variant, each in its own directory and stack, then the comparison of their verdicts.
    codes: list[int] = []
    compared: list[tuple[str, bool, Path]] = []
    for variant in scenario.variants:
        print(f"perf: run {variant.name}: {variant.description or 'policy changes only'}", file=sys.stderr)
        code = run_once(scenario.variant(variant), run_dir / variant.name, vegeta)
        if variant.judged:
            codes.append(code)
        compared.append((variant.name, variant.judged, run_dir / variant.name))
    text = render_comparison(name, [(n, judged, d, verdict_of(d)) for n, judged, d in compared])
    (run_dir / "summary.txt").write_text(text)
    print(text, end="")
    print(f"written: {run_dir / 'summary.txt'}")
    return max(codes, default=0)


def verdict_of(run_dir: Path) -> Verdict:
    """The verdict of a finished run, from what it left in its directory."""
    results = run_dir / "results.json"
    policy_path = run_dir / "policy.yaml"
    meta = orjson.loads(meta_path(results).read_bytes())
    return judge(read_results(results), parse_policy(policy_path.read_text(), str(policy_path)), meta)


def render_comparison(name: str, runs: list[tuple[str, bool, Path, Verdict]]) -> str:
    """A scenario's variants side by side (each attack's figures per run), then each run's own summary."""
    lines = [f"scenario {name}: {len(runs)} runs compared", ""]
    row = "{:<14} {:<16} {:>6} {:>8} {:>9} {:>9} {:>8} {:>6}  {}"
    lines.append(row.format("attack", "run", "n", "rate/s", "p50", "p95", "errors", "503s", "codes"))
    attacks = sorted({a.name for *_, verdict in runs for a in verdict.attacks})
    for attack in attacks:
        for variant, _, _, verdict in runs:
            for report in verdict.attacks:
                if report.name == attack:
                    s = report.stats
                    lines.append(row.format(
                        attack[:14], variant[:16], s.count, f"{s.rate:.1f}", fmt_ms(s.p(0.5)),
                        fmt_ms(s.p(0.95)), f"{s.error_rate:.2%}", s.codes[503], s.codes_text(),
                    ))
    lines.append("")
    for variant, judged, run_dir, verdict in runs:
        note = "" if judged else "  (for comparison: its misses do not fail the run)"
        lines.append(f"{variant}: {verdict.status}{note}  [{run_dir / 'summary.txt'}]")
    lines.append("")
    for variant, _, run_dir, _ in runs:
        lines.append(f"== {variant}")
        lines.append((run_dir / "summary.txt").read_text().rstrip("\n"))
        lines.append("")
    return "\n".join(lines)


def run_once(scenario: Scenario, run_dir: Path, vegeta: str | None) -> int:
    """One stack, one attack, one verdict in `run_dir`; returns the verdict's exit code."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stack, policy_path, policy = start_stack(scenario, run_dir)
    try:
        targets = render_targets(scenario, stack)
        results = run_dir / "results.json"
        loop_runner = _loop_runner()
        meta = loop_runner(execute(scenario, stack, policy, targets, results, use_vegeta=vegeta))
    finally:
        stack.stop()
    meta_path(results).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return write_verdict(results, policy_path, meta, run_dir)


def _loop_runner() -> Any:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.run


def write_verdict(results: Path, policy_path: Path, meta: dict[str, Any], out_dir: Path) -> int:
    """Judge, print the summary, write summary.txt and report.html into `out_dir`; return the exit code."""
    from perf.report import render_html

    policy = parse_policy(policy_path.read_text(), str(policy_path))
    loaded = list(read_results(results))
    verdict = judge(loaded, policy, meta)
    text = render_text(verdict)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.txt").write_text(text)
    (out_dir / "report.html").write_text(render_html(verdict, loaded, policy, text))
    print(text, end="")
    print(f"written: {out_dir / 'summary.txt'}, {out_dir / 'report.html'}")
    return verdict.exit_code
