"""`serve --workers 2` against `--workers 1`, and what the fleet features cost Redis (a benchmark, not a
test): `python perf/bench_workers.py [--duration 10] [--rounds 2] [--connections 32] [--idle 10]`.

The same setup as bench_overhead.py's (c): every policy on (a Redis token bucket, a breaker, now shared, the
route's SLO, the access log to a file), nginx serving a static file upstream, wrk as the load, a private
redis-server. For each worker count, alternately `--rounds` times: requests/s (best run kept) and the CPU time
of the supervisor and all its workers per request served (median). Then Redis `INFO commandstats` deltas: at
idle (commands/s per gateway process: the fleet's SLO publishing and breaker subscription) and under load
(EVALSHA per request is the request path's only Redis command; everything else is off the path).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from perf.bench_overhead import (
    REPO,
    Load,
    Procs,
    commandstats,
    gateway_policy,
    load,
    machine,
    start_upstream,
)
from perf.local import free_port, redis_command


def tree_cpu(root: int) -> float:
    """User + system CPU seconds of a process and its children (the supervisor and its workers)."""
    total = 0.0
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        pending.extend(int(c) for c in children)
    return total


# Commands of the fleet features and the override refresh (all off the request path); SET is the SLO publish
# (as many as ZADD: the bucket script's own SETs are left out), EVALSHA beyond one per request is left out.
OFF_PATH = ("zadd", "zremrangebyscore", "zrangebyscore", "mget", "hgetall", "subscribe", "hello", "ping")


def off_path(delta: dict[str, int]) -> int:
    return sum(delta.get(k, 0) for k in OFF_PATH) + delta.get("zadd", 0)  # + the SETs of the SLO publish


def start(procs: Procs, policy: Path, workers: int) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    access_log = open(procs.tmp / f"w{workers}-access.log", "wb")  # noqa: SIM115 - handed to the child
    proc = procs.start(
        f"w{workers}",
        [sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port", str(port),
         "--workers", str(workers), "--no-watch"],
        port,
        stdout=access_log,
    )
    access_log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every worker up: the supervisor listens before its workers do
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ops/health", timeout=2) as response:
                health = json.loads(response.read())
            if workers == 1 or len(health.get("workers", [])) == workers:
                break
        except OSError:
            pass
        time.sleep(0.2)
    return port, proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle Redis accounting")
    args = parser.parse_args()
    args.tool = "wrk"
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        print("needs wrk and redis-server", file=sys.stderr)
        return 2
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-workers-{os.getpid()}"
    tmp.mkdir(parents=True)
    procs = Procs(tmp)
    try:
        redis_port = free_port()
        binary = shutil.which("redis-server") or ""
        procs.start("redis", redis_command(binary, redis_port, str(tmp)), redis_port)
        upstream, upstream_kind = start_upstream(procs)
        policies = {}
        for workers in (1, 2):
            path = gateway_policy(tmp, f"w{workers}", upstream, redis_port)
            text = path.read_text().replace("reset_timeout: 10s}", "reset_timeout: 10s, shared: true}")
            path.write_text(text)
            policies[workers] = path
        runs: dict[int, list[Load]] = {1: [], 2: []}
        cpu: dict[int, list[float]] = {1: [], 2: []}
        stats: dict[int, list[tuple[dict[str, int], int, float]]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for workers in (1, 2):
                port, proc = start(procs, policies[workers], workers)
                url = f"http://127.0.0.1:{port}/bench/item"
                load(url, argparse.Namespace(**{**vars(args), "duration": args.warmup, "warmup": 0}))
                before_cpu, before = tree_cpu(proc.pid), commandstats(redis_port)
                started = time.monotonic()
                result = load(url, argparse.Namespace(**{**vars(args), "warmup": 0}))
                elapsed = time.monotonic() - started
                after_cpu, after = tree_cpu(proc.pid), commandstats(redis_port)
                runs[workers].append(result)
                cpu[workers].append((after_cpu - before_cpu) / max(1, result.requests) * 1e6)
                delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                stats[workers].append((delta, result.requests, elapsed))
                procs.stop(proc)
        # Idle: two workers, no traffic.
        port, proc = start(procs, policies[2], 2)
        before = commandstats(redis_port)
        time.sleep(args.idle)
        idle = {k: v - before.get(k, 0) for k, v in commandstats(redis_port).items()}
        procs.stop(proc)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"machine: {machine()}")
    print(f"upstream: {upstream_kind}; load: wrk {args.threads} thread, {args.connections} connections,"
          f" {args.duration:g}s runs, best of {args.rounds} alternating rounds")
    for workers in (1, 2):
        best = max(runs[workers], key=lambda r: r.rps)
        print(f"--workers {workers}: {best.rps:8.0f} req/s  p50 {best.p50 * 1e3:6.2f} ms  p99"
              f" {best.p99 * 1e3:6.2f} ms  CPU/request (supervisor + workers, median)"
              f" {statistics.median(cpu[workers]):6.0f} us  non-2xx {best.non_2xx}")
    ratio = max(r.rps for r in runs[2]) / max(r.rps for r in runs[1])
    print(f"throughput --workers 2 / --workers 1: {ratio:.2f}")
    for workers in (1, 2):
        delta, requests, elapsed = max(stats[workers], key=lambda s: s[1])
        evalsha = delta.get("evalsha", 0)
        print(f"under load, --workers {workers}: {requests} requests, EVALSHA/request"
              f" {evalsha / max(1, requests):.3f} (the request path's only command; the script's TIME/GET/SET"
              f" are counted by Redis too); off the path {off_path(delta) / elapsed:.1f} commands/s in all,"
              f" {off_path(delta) / elapsed / workers:.1f}/s per process")
    print(f"idle, --workers 2 for {args.idle:g}s: {sum(idle.values()) / args.idle:.1f} commands/s in all"
          f" ({off_path(idle) / args.idle / 2:.1f}/s per process off the path): "
          + ", ".join(f"{k} {v}" for k, v in sorted(idle.items()) if v))
    print(f"(repository: {REPO})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
