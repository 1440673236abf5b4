"""structlog configured once: JSON lines on stdout, rendered with orjson, level filtered before any work."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

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


def configure(level: str = "info") -> None:
    """Configure structlog for the process (idempotent)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _Timestamp(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger bound with the component name."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
