"""`gateway serve` as a real process, for tests of what only a process has: signals, RSS, exit codes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from perf.local import free_port

ROOT = str(Path(__file__).resolve().parents[2])


async def start_gateway(policy: Path, *args: str) -> tuple[asyncio.subprocess.Process, int]:
    """Start `python -m gateway serve --policy POLICY --no-watch ARGS` on a free port; wait for it."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--policy",
        str(policy),
        "--port",
        str(port),
        "--no-watch",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=policy.parent,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return proc, port
        except OSError:
            await asyncio.sleep(0.05)
    proc.kill()
    raise RuntimeError("gateway did not start")
