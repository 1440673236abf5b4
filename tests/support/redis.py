"""A real redis-server for tests: REDIS_URL when set, else one started on a free port in a temp dir."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from perf.local import free_port, redis_command, wait_for_redis


@dataclass
class RedisProcess:
    """A redis-server this test session owns: it may be stopped, frozen, killed and restarted."""

    port: int
    workdir: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found: `make test` installs it (apt-get install redis-server)"
            )
        self.proc = subprocess.Popen(
            redis_command(binary, self.port, str(self.workdir), *self.extra_args),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for_redis(self.port):
            raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()


def start_redis(*extra_args: str) -> RedisProcess:
    """Start a private redis-server on a free port."""
    server = RedisProcess(
        port=free_port(), workdir=Path(tempfile.mkdtemp(prefix="gw-redis-")), extra_args=list(extra_args)
    )
    server.start()
    return server


def shared_redis_url() -> tuple[str, RedisProcess | None]:
    """REDIS_URL if the environment gives one, else a private server (returned so it can be stopped)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    server = start_redis()
    return server.url, server
