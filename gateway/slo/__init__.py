"""SLO measurement: per route and method latency, upstream latency, errors and SLO status over sliding
windows.

`SloRecorder` (built per policy snapshot, carried over on reload) is the pipeline observer; `gateway.metrics`
reads it at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gateway.identity import Identity
from gateway.outcome import Outcome
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
    "latency_buckets", "slo_observer",
]


class _HasSlo(Protocol):
    @property
    def slo(self) -> SloRecorder | None: ...


def slo_observer(current: Callable[[], _HasSlo]) -> Callable[[Outcome, Identity], None]:
    """The pipeline observer: records each outcome into the recorder of the runtime current when it ends."""

    def record_slo(outcome: Outcome, _identity: Identity) -> None:
        recorder = current().slo
        if recorder is not None:
            recorder.observe(outcome)

    return record_slo
