"""A live gateway for tests that drive it from outside the event loop (a browser, schemathesis).

The gateway runs as `python -m gateway serve` in its own process, exactly as deployed; the recording upstream
runs in a thread with its own event loop. Both on free loopback ports.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from perf.local import free_port
from tests.support.upstream import recording_app

ROOT = str(Path(__file__).resolve().parents[2])


class UpstreamThread:
    """The recording upstream served from a background thread (its own loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = free_port()
        self.runner = web.AppRunner(recording_app())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class LiveGateway:
    url: str  # http://127.0.0.1:<port>
    policy: Path
    upstream: UpstreamThread
    proc: subprocess.Popen[bytes]
    log: Path


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/api/ops/health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the gateway did not become healthy: {log.read_text()[-2000:]}")


@contextmanager
def live_gateway(workdir: Path, policy_text: str, env: dict[str, str]) -> Iterator[LiveGateway]:
    """Start the upstream, write `policy_text` (with `{upstream}` filled in) and serve it; stop both after."""
    upstream = UpstreamThread()
    upstream.start()
    policy = workdir / "policy.yaml"
    policy.write_text(policy_text.replace("{upstream}", upstream.url))
    port = free_port()
    log = workdir / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port", str(port),
             "--no-watch", "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
            env={**os.environ, "PYTHONPATH": ROOT, **env},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield LiveGateway(url, policy, upstream, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        upstream.stop()
