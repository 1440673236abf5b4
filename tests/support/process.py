"""`gateway serve` as a real process, for tests of what only a process has: signals, RSS, exit codes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from perf.local import free_port
from tests.support.wait import refuses_connections, until

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

    async def listening() -> bool:
        if proc.returncode is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode} before it listened")
        return not await refuses_connections(port)

    try:
        await until(listening, within=10, every=0.05, what="the gateway process listens")
    except AssertionError:
        proc.kill()
        raise RuntimeError("gateway did not start") from None
    return proc, port
