"""SLO measurement: per route and method latency, upstream latency, errors and SLO status over sliding
windows.

`SloRecorder` (built per policy snapshot, carried over on reload) counts each outcome the pipeline hands
it; `gateway.metrics` reads it at scrape time.
"""

from __future__ import annotations

from gateway.slo.recorder import (
    BURN_WINDOWS,
    DEFAULT_BUCKETS,
    OTHER_METHOD,
    UNMATCHED,
    RouteSlo,
    SloRecorder,
    latency_buckets,
)

__all__ = [
    "BURN_WINDOWS", "DEFAULT_BUCKETS", "OTHER_METHOD", "UNMATCHED", "RouteSlo", "SloRecorder",
    "latency_buckets",
]
