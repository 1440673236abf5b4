"""Local helpers for load runs, benchmarks and tests: a free loopback port and a throw-away redis-server."""

from __future__ import annotations

import contextlib
import socket
import time


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_command(binary: str, port: int, workdir: str, *extra: str) -> list[str]:
    """A redis-server on loopback that keeps nothing on disk (unless `extra` says otherwise)."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
        *extra,
    ]


def wait_for_redis(port: int, timeout: float = 10.0) -> bool:
    """Poll until the server on `port` answers PING; False when it has not within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return True
        time.sleep(0.02)
    return False
