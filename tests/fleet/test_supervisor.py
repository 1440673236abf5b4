"""`gateway serve --workers N`: one listener, N workers kept running, signals forwarded, one /metrics."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from tests.fleet.conftest import AS_ADMIN, Gw, fleet_policy, wait_until
from tests.support.process import ROOT

REQUESTS = re.compile(r'^gateway_requests_total\{[^}]*route="rest"[^}]*\} (\S+)$', re.M)


def requests_total(text: str) -> float:
    return sum(float(v) for v in REQUESTS.findall(text))


def restarts(text: str) -> float:
    match = re.search(r"^gateway_worker_restarts_total (\S+)$", text, re.M)
    assert match is not None, "no gateway_worker_restarts_total"
    return float(match.group(1))


async def test_more_than_one_worker_without_redis_is_refused_with_the_reason(
    tmp_path: Path, slow_upstream: TestServer
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(fleet_policy(slow_upstream.port, None))  # type: ignore[arg-type]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port", "1", "--workers", "2",
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT},
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"refusing --workers 2 without storage.redis_url" in err


async def test_a_sigkilled_worker_is_replaced_and_metrics_counters_never_go_backwards(
    tmp_path: Path, slow_upstream: TestServer, redis_url: str, start: Callable[..., Any]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(fleet_policy(slow_upstream.port, redis_url, fleet="kill"))  # type: ignore[arg-type]
    gw: Gw = await start(policy, workers=2)
    seen: list[float] = []
    async with aiohttp.ClientSession() as session:
        # Fresh connections, so the kernel's accept queue spreads them over both workers.
        for _ in range(60):
            async with aiohttp.ClientSession() as one:
                async with one.get(f"{gw.url}/x") as resp:
                    assert resp.status == 200

        async def all_counted() -> bool:
            seen.append(requests_total(await gw.scrape(session)))
            return seen[-1] == 60

        await wait_until(all_counted)  # every worker has written its counts at least once since
        before = (await gw.health(session))["workers"]
        assert len({w["pid"] for w in before}) == 2
        victim = before[0]["pid"]
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            seen.append(requests_total(await gw.scrape(session)))
            pids = {w["pid"] for w in (await gw.health(session))["workers"]}
            return len(pids) == 2 and victim not in pids

        await wait_until(replaced)
        for _ in range(20):
            async with aiohttp.ClientSession() as one:
                async with one.get(f"{gw.url}/x") as resp:
                    assert resp.status == 200
            seen.append(requests_total(await gw.scrape(session)))

        async def all_again() -> bool:
            seen.append(requests_total(await gw.scrape(session)))
            return seen[-1] == 80

        await wait_until(all_again)  # the dead worker's 60-odd requests are still counted
        text = await gw.scrape(session)
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False)), seen
    assert restarts(text) == 1
    assert "worker_exited" in gw.log.read_text()
    promtool = await asyncio.create_subprocess_exec(
        "promtool", "check", "metrics", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(promtool.communicate(text.encode()), 60)
    assert promtool.returncode == 0, output.decode()
    samples = [line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert len(samples) == len(set(samples))  # every series once: the workers' samples were added up


async def test_sighup_reloads_every_worker_and_health_shows_each_version(
    tmp_path: Path, slow_upstream: TestServer, redis_url: str, start: Callable[..., Any]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(fleet_policy(slow_upstream.port, redis_url, fleet="hup"))  # type: ignore[arg-type]
    gw: Gw = await start(policy, workers=2)
    async with aiohttp.ClientSession() as session:
        first = await gw.health(session)
        old = {w["policy_version"] for w in first["workers"]}
        assert len(old) == 1 and first["workers_agree"] is True
        policy.write_text(
            fleet_policy(slow_upstream.port, redis_url, fleet="hup")  # type: ignore[arg-type]
            + "# changed\n"
        )
        gw.signal(signal.SIGHUP)

        async def all_new() -> dict[str, Any] | None:
            health = await gw.health(session)
            versions = {w["policy_version"] for w in health["workers"]}
            return health if len(versions) == 1 and versions != old else None

        health = await wait_until(all_new)
    assert health["workers_agree"] is True
    assert health["policy"]["version"] in {w["policy_version"] for w in health["workers"]}


async def test_api_reload_and_breaker_actions_reach_every_worker(
    tmp_path: Path, slow_upstream: TestServer, redis_url: str, start: Callable[..., Any]
) -> None:
    policy = tmp_path / "p.yaml"
    extra = "breakers: {b: {consecutive_failures: 5}}\n"
    text = fleet_policy(slow_upstream.port, redis_url, fleet="relay", extra=extra)  # type: ignore[arg-type]
    policy.write_text(text.replace("upstream: app}", "upstream: app, breaker: b}"))
    gw: Gw = await start(policy, workers=2)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{gw.url}/api/ops/breakers/b", json={"action": "open"}, headers=AS_ADMIN
        ) as resp:
            assert resp.status == 200

        async def open_everywhere() -> bool:
            # Fresh connections land on either worker: every one of them must refuse.
            for _ in range(12):
                async with aiohttp.ClientSession() as one:
                    async with one.get(f"{gw.url}/x") as resp:
                        if resp.status != 503:
                            return False
            return True

        await wait_until(open_everywhere)
        policy.write_text(policy.read_text() + "# changed\n")
        async with session.post(f"{gw.url}/api/ops/reload", headers=AS_ADMIN) as resp:
            assert resp.status == 200
            new = (await resp.json())["version"]

        async def all_new() -> bool:
            health = await gw.health(session)
            return {w["policy_version"] for w in health["workers"]} == {new}

        await wait_until(all_new)


async def test_sigterm_drains_every_worker_with_in_flight_requests_finishing(
    tmp_path: Path, slow_upstream: TestServer, redis_url: str, start: Callable[..., Any]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(fleet_policy(slow_upstream.port, redis_url, fleet="term"))  # type: ignore[arg-type]
    gw: Gw = await start(policy, workers=2)

    async def one_slow() -> tuple[int, str]:
        async with aiohttp.ClientSession() as one:
            async with one.get(f"{gw.url}/slow?s=1.5") as resp:
                return resp.status, await resp.text()

    in_flight = [asyncio.ensure_future(one_slow()) for _ in range(8)]
    await asyncio.sleep(0.5)  # every request has reached a worker
    gw.signal(signal.SIGTERM)
    results = await asyncio.gather(*in_flight)
    assert results == [(200, "done")] * 8
    assert await asyncio.wait_for(gw.proc.wait(), 15) == 0
    log = gw.log.read_text()
    assert log.count("worker_stopped") == 2
