"""structlog configured once: JSON lines on stdout, rendered with orjson, level filtered before any work."""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import EventDict


class _Timestamp:
    """ISO 8601 UTC time with microseconds; the second is formatted once per second, not per line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: Any, __: str, event: EventDict) -> EventDict:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["time"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event


class BatchingBytesLogger:
    """The access log's sink: lines are gathered and written in batches, not flushed one by
    one (a write system call per request is a measurable share of a proxy's CPU). A batch is written when it
    reaches 64 KiB or 200 ms after its first line, and at shutdown."""

    MAX_BYTES = 64 * 1024
    MAX_DELAY = 0.2

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        atexit.register(self.flush)

    def msg(self, message: bytes) -> None:
        self._buffer += message + b"\n"
        if len(self._buffer) >= self.MAX_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.MAX_DELAY, self.flush)
            except RuntimeError:  # no loop running: nothing would flush later, so write now
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            try:
                self._stream.write(data)
                self._stream.flush()
            except (OSError, ValueError):
                pass  # stdout closed or full: an access log line must never fail a request


class AccessLog:
    """The per-request line: the fields given, `event`, `time`, rendered by orjson straight into the batch.

    The same JSON as a structlog line, without a processor chain per request: the access log writes one
    line per request, and structlog's generic path (bound context copy, processor loop) cost a measurable
    share of the gateway's CPU.
    """

    def __init__(self, sink: BatchingBytesLogger) -> None:
        self._sink = sink
        self._stamp = _Timestamp()

    def info(self, event: str, **fields: Any) -> None:
        fields["event"] = event
        self._sink.msg(orjson.dumps(self._stamp(None, "info", fields), default=repr))


_access: AccessLog | None = None
_access_sink: BatchingBytesLogger | None = None


def configure(level: str = "info") -> None:
    """Configure structlog for the process (idempotent)."""
    global _access, _access_sink
    threshold = logging.getLevelNamesMapping()[level.upper()]
    renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _Timestamp(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    if _access_sink is not None:
        _access_sink.flush()
    _access_sink = BatchingBytesLogger(sys.stdout.buffer)
    _access = AccessLog(_access_sink) if threshold <= logging.INFO else None


def access_log() -> AccessLog | None:
    """The per-request logger, or None before `configure` or when info lines are filtered out."""
    return _access


def flush_access_log() -> None:
    """Write out buffered access-log lines (at shutdown)."""
    if _access_sink is not None:
        _access_sink.flush()


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger bound with the component name."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
