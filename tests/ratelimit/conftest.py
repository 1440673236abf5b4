"""Rate-limit fixtures: a real three-node Redis Cluster, a gateway on a clock the test moves, policy text."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import GATEWAY
from gateway.events import Event
from gateway.ratelimit.limiter import Limiter
from perf.local import free_port
from tests.conftest import GatewayFactory
from tests.support.clock import ManualClock
from tests.support.redis import RedisProcess
from tests.support.upstream import base_url

Client = TestClient[web.Request, web.Application]

# One limit per key kind and failure mode; {redis} is empty for in-process buckets.
POLICY = """
version: 1
storage: {{redis_url: "{redis}", cluster: {cluster}, timeout: {timeout}, retry_interval: 300ms,
           key_prefix: "{prefix}", override_refresh: 100ms}}
identity: {{user_header: X-User-Id, trusted_proxies: [{trusted}]}}
admin: {{user_ids: [admin-1]}}
upstreams:
  app: {{url: "{url}", timeout: 2s}}
rate_limits:
  ten_per_minute: {{rate: 10, per: 1m, key: user}}
  two_per_2s:     {{rate: 2, per: 2s, key: user}}
  by_ip:          {{rate: 2, per: 1m, key: ip}}
  by_api_key:     {{rate: 2, per: 1m, key: "header:X-Api-Key"}}
  by_route:       {{rate: 3, per: 1m, key: route}}
  everyone:       {{rate: 100, per: 1m, key: global}}  # (a token back in 0.6 s: its key outlives a scan)
  dry_run:        {{rate: 2, per: 1m, key: user, shadow: true}}
  fail_local:     {{rate: 2, per: 1m, key: user, on_redis_error: local}}
  fail_allow:     {{rate: 2, per: 1m, key: user, on_redis_error: allow}}
  fail_deny:      {{rate: 2, per: 1m, key: user, on_redis_error: deny}}
routes:
  - {{name: ten, match: "GET /ten", upstream: app, rate_limits: [ten_per_minute]}}
  - {{name: ten_global, match: "GET /ten-global", upstream: app, rate_limits: [ten_per_minute, everyone]}}
  - {{name: short, match: "GET /short", upstream: app, rate_limits: [two_per_2s]}}
  - {{name: ip, match: "GET /ip", upstream: app, rate_limits: [by_ip]}}
  - {{name: api_key, match: "GET /api-key", upstream: app, rate_limits: [by_api_key]}}
  - {{name: route, match: "GET /route", upstream: app, rate_limits: [by_route]}}
  - {{name: shadow, match: "GET /shadow", upstream: app, rate_limits: [dry_run]}}
  - {{name: both, match: "GET /both", upstream: app, rate_limits: [dry_run, by_ip]}}
  - {{name: local, match: "GET /local", upstream: app, rate_limits: [fail_local]}}
  - {{name: allow, match: "GET /allow", upstream: app, rate_limits: [fail_allow]}}
  - {{name: deny, match: "GET /deny", upstream: app, rate_limits: [fail_deny]}}
  - {{name: slow, match: "GET /slow", upstream: app, rate_limits: [fail_local]}}
  - {{name: open, match: "* /{{path:.*}}", upstream: app}}
"""

ADMIN = {"X-User-Id": "admin-1"}


def policy_fields(upstream: TestServer, redis: str = "", *, cluster: bool = False, prefix: str | None = None,
                  trusted: str = "10.9.9.9/32", timeout: str = "500ms") -> dict[str, Any]:
    """Format fields for POLICY; a fresh key prefix per test keeps tests apart on the shared Redis.

    The deadline is generous by default so that a loaded test machine does not turn a slow answer into a
    fallback; the fault tests set the production default, 50ms.
    """
    return {
        "timeout": timeout,
        "redis": redis,
        "cluster": "true" if cluster else "false",
        "prefix": prefix or f"t{os.urandom(4).hex()}",
        "trusted": trusted,
        "url": base_url(upstream),
    }


def limiter_of(client: Client) -> Limiter:
    limiter = client.app[GATEWAY].current().limiter
    assert limiter is not None
    return limiter


def record_events(client: Client) -> list[Event]:
    """Every domain event the gateway emits from now on."""
    seen: list[Event] = []
    client.app[GATEWAY].events.subscribe(seen.append)
    return seen


CLUSTER_ARGS = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000"]


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def start_cluster(nodes: int = 3) -> list[RedisProcess]:
    """A real Redis Cluster of `nodes` masters on free loopback ports."""
    servers: list[RedisProcess] = []
    try:
        for _ in range(nodes):
            server = RedisProcess(port=cluster_port(), workdir=Path(tempfile.mkdtemp(prefix="gw-cluster-")),
                                  extra_args=CLUSTER_ARGS)
            servers.append(server)
            server.start()
        form_cluster(servers)
    except BaseException:
        stop_cluster(servers)
        raise
    return servers


def stop_cluster(servers: list[RedisProcess]) -> None:
    for server in servers:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def form_cluster(servers: list[RedisProcess]) -> None:
    cli = shutil.which("redis-cli")
    assert cli is not None, "redis-cli is needed to create the cluster (Debian package redis-tools)"
    subprocess.run(
        [cli, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in servers), "--cluster-replicas", "0",
         "--cluster-yes"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
    )
    deadline = time.monotonic() + 20
    pending = list(servers)
    while pending:
        info = subprocess.run([cli, "-p", str(pending[0].port), "cluster", "info"], capture_output=True,
                              text=True, timeout=5).stdout
        if "cluster_state:ok" in info:
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster did not reach cluster_state:ok: {info}")
        time.sleep(0.05)  # waiting on another process's gossip: there is no clock of ours to move


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """A three-node Redis Cluster for the session; yields the URL of one node."""
    servers = start_cluster()
    yield f"redis://127.0.0.1:{servers[0].port}/0"
    stop_cluster(servers)


ClockedFactory = Callable[..., Awaitable[tuple[Client, ManualClock]]]


@pytest.fixture
def clocked_gateway(make_gateway: GatewayFactory) -> ClockedFactory:
    """A gateway whose monotonic clock (in-process buckets, Redis back-off) the test moves."""

    async def factory(policy_text: str, **fields: Any) -> tuple[Client, ManualClock]:
        clock = ManualClock()
        return await make_gateway(policy_text, clock=clock, **fields), clock

    return factory
