"""What happened to one request: the record every observer (SLO recorder, access log, breakers) reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Outcome:
    route: str  # route name, or "unmatched": a bounded label
    method: str
    status: int  # what the client got; 499 when the client went away first
    duration: float  # seconds, handler entry to last byte written
    upstream_status: int | None = None
    upstream_duration: float | None = None  # seconds, request sent to response body read
    error: str | None = None  # connect_error | timeout | reset | protocol | rate_limited | breaker_open | ...
    bytes_in: int = 0
    bytes_out: int = 0
