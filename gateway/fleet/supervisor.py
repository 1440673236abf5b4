"""`gateway serve --workers N`: one parent that binds the listener once and keeps N worker processes serving.

The listening socket is bound here and inherited by every worker (`--listen-fd`): all workers accept from one
queue, so a worker that dies loses only its own in-flight requests, never connections queued for it (as it
would with one SO_REUSEPORT queue per worker). The supervisor itself never accepts and does no I/O but this:

- a worker that exits while the supervisor is not stopping is started again after a backoff (0.1 s doubling
  to 30 s; back to 0.1 s once a worker has lived 30 s), logged (`worker_exited`, `worker_started`) and counted
  (`gateway_worker_restarts_total` in /metrics);
- SIGHUP (reload) and SIGUSR1 (a relayed ops action, gateway/fleet/workers.py) are forwarded to every worker;
- SIGTERM/SIGINT are forwarded to every worker, which drain (gateway/server.py); the supervisor exits when all
  have, 0 when every worker exited 0. A second signal is forwarded too: workers exit at once.

Signals are read from a wakeup fd in a plain select loop: no event loop, nothing to share with the workers.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.fleet.workers import SUPERVISOR, absorb, write_atomic
from gateway.logs import get_logger

log = get_logger("gateway.supervisor")
BACKOFF_START = 0.1
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 30.0  # a worker that lived this long resets its slot's backoff
FORWARDED = (signal.SIGHUP, signal.SIGUSR1)
STOPPING = (signal.SIGTERM, signal.SIGINT)


def worker_count(value: str) -> int:
    """`--workers`: a positive number or `auto` (the CPUs this process may run on)."""
    if value == "auto":
        if hasattr(os, "sched_getaffinity"):
            return max(1, len(os.sched_getaffinity(0)))
        return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--workers must be a number or auto, got {value!r}") from None
    if not 1 <= count <= 256:
        raise ValueError(f"--workers must be between 1 and 256, got {count}")
    return count


@dataclass
class Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = BACKOFF_START
    restart_at: float | None = None


class Supervisor:
    def __init__(
        self, worker_argv: list[str], workers: int, host: str, port: int, instance: str | None
    ) -> None:
        self.worker_argv = worker_argv  # `serve` arguments every worker gets (policy, log level, watch)
        self.slots = [Slot(i) for i in range(workers)]
        self.host = host
        self.port = port
        self.instance = instance
        self.restarts = 0
        self.stopping = False
        self.failed = False  # a worker exited non-zero while stopping
        self.directory = Path(tempfile.mkdtemp(prefix="gateway-workers-"))
        self.sock: socket.socket | None = None

    def _state(self) -> None:
        write_atomic(self.directory / SUPERVISOR, orjson.dumps(
            {"pid": os.getpid(), "workers": len(self.slots), "restarts": self.restarts}
        ))

    def _spawn(self, slot: Slot) -> None:
        assert self.sock is not None
        fd = self.sock.fileno()
        argv = [
            sys.executable, "-m", "gateway", "serve", *self.worker_argv,
            "--listen-fd", str(fd), "--worker-dir", str(self.directory),
            "--worker-index", str(slot.index), "--supervisor-pid", str(os.getpid()),
        ]
        if self.instance is not None:
            argv += ["--instance-id", f"{self.instance}-w{slot.index}"]
        slot.proc = subprocess.Popen(argv, pass_fds=(fd,))
        slot.started = time.monotonic()
        slot.restart_at = None
        log.info("worker_started", index=slot.index, pid=slot.proc.pid)

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.poll() is None:
                continue
            code = proc.returncode
            slot.proc = None
            try:
                absorb(self.directory, proc.pid)
            except OSError as exc:
                log.warning("worker_absorb_failed", pid=proc.pid, error=str(exc))
            if self.stopping:
                log.info("worker_stopped", index=slot.index, pid=proc.pid, code=code)
                self.failed |= code != 0
                continue
            if now - slot.started >= HEALTHY_AFTER:
                slot.backoff = BACKOFF_START
            slot.restart_at = now + slot.backoff
            log.error("worker_exited", index=slot.index, pid=proc.pid, code=code,
                      signal=signal.Signals(-code).name if code < 0 else None, restart_in_s=slot.backoff)
            slot.backoff = min(BACKOFF_MAX, slot.backoff * 2)

    def _forward(self, signum: int) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                try:
                    slot.proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    def run(self) -> int:
        try:
            self.sock = socket.create_server((self.host, self.port), backlog=1024)
        except OSError as exc:
            print(f"gateway: cannot listen on {self.host}:{self.port}: {exc}", file=sys.stderr)
            return 2
        self.sock.set_inheritable(True)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        for signum in (signal.SIGCHLD, *FORWARDED, *STOPPING):
            signal.signal(signum, lambda *_: None)  # the wakeup fd carries the signal number
        self._state()
        log.info("supervisor_listening", host=self.host, port=self.port, workers=len(self.slots),
                 directory=str(self.directory))
        try:
            for slot in self.slots:
                self._spawn(slot)
            while True:
                self._reap()
                if self.stopping and all(slot.proc is None for slot in self.slots):
                    break
                now = time.monotonic()
                for slot in self.slots:
                    if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                        self.restarts += 1
                        self._state()
                        self._spawn(slot)
                due = [s.restart_at for s in self.slots if s.proc is None and s.restart_at is not None]
                timeout = max(0.0, min(due) - time.monotonic()) if due and not self.stopping else 1.0
                readable, _, _ = select.select([wake_r], [], [], timeout)
                if not readable:
                    continue
                try:
                    data = wake_r.recv(256)
                except BlockingIOError:
                    continue
                for number in data:
                    signum = signal.Signals(number)
                    if signum in STOPPING:
                        if not self.stopping:
                            log.info("supervisor_draining", signal=signal.Signals(signum).name)
                        self.stopping = True
                        for slot in self.slots:
                            slot.restart_at = None
                        self._forward(signal.SIGTERM)
                    elif signum in FORWARDED:
                        self._forward(signum)
        finally:
            signal.set_wakeup_fd(-1)
            if not self.stopping:  # an unexpected error here: leave no orphan workers behind
                self._forward(signal.SIGKILL)
            self.sock.close()
            shutil.rmtree(self.directory, ignore_errors=True)
        log.info("supervisor_stopped", restarts=self.restarts)
        return 1 if self.failed else 0
