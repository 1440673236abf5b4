"""Burn-rate coupling: a critical route burning its error budget fast tightens admission on its upstream.

Every `CHECK_INTERVAL` seconds (driven by the requests themselves: `tick()` is one clock read and a
comparison until a check is due), each critical route of an upstream with adaptive concurrency is judged by
the rule of the generated `ErrorBudgetBurnFast` alert (gateway/alert_rules.py): burn rate above 14.4 over
both 1h and 5m, for any of its objectives (error rate, latency targets). While one fires, the upstream's
admission steps up one level per `tighten_hold`: first sheddable traffic is capped (level 1), then refused
and normal traffic capped (level 2). When none fires, it steps down one level per `tighten_hold`. Every change
is logged, emitted on the events bus (`admission_mode_change`: audited, counted as a metric) and shown by the
`gateway_admission_mode` gauge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.admission import MODES, Admission
from gateway.alert_rules import FAST_BURN
from gateway.events import Events
from gateway.logs import get_logger
from gateway.slo import BURN_WINDOWS, SloRecorder

log = get_logger("gateway.admission")
CHECK_INTERVAL = 5.0  # seconds between two judgements of the burn rates
_SECONDS = dict(BURN_WINDOWS)
FACTOR, LONG_WINDOW, SHORT_WINDOW = FAST_BURN[0], _SECONDS[FAST_BURN[1]], _SECONDS[FAST_BURN[2]]


class BurnWatch:
    """Per runtime: which critical routes watch which upstream's admission."""

    def __init__(
        self,
        recorder: SloRecorder,
        admissions: Mapping[str, Admission],
        critical: Mapping[str, tuple[str, ...]],  # upstream -> its critical routes with an SLO
        events: Events,
        clock: Callable[[], float],
    ) -> None:
        self._recorder = recorder
        self._watched = [(admissions[name], routes) for name, routes in critical.items() if routes]
        self._events = events
        self._clock = clock
        self._due = float("-inf")

    def tick(self) -> None:
        """Judge the burn rates when a check is due (the request path calls this)."""
        now = self._clock()
        if now < self._due:
            return
        self._due = now + CHECK_INTERVAL
        self.check(now)

    def check(self, now: float) -> None:
        recorder = self._recorder
        for admission, routes in self._watched:
            firing = {}
            for route in routes:
                objectives = recorder.burning(route, FACTOR, LONG_WINDOW, SHORT_WINDOW)
                if objectives:
                    firing[route] = objectives
            level = admission.level
            held = now - admission.level_since >= admission.spec.tighten_hold
            if firing:
                new = 1 if level == 0 else (2 if level == 1 and held else level)
            else:
                new = level - 1 if level > 0 and held else level
            if new == level:
                continue
            admission.set_level(new)
            fields = {
                "upstream": admission.upstream,
                "from": MODES[level],
                "to": MODES[new],
                "burning": firing,  # route -> objectives over the fast-burn threshold (empty: recovered)
                "shadow": admission.shadow,
            }
            log.warning("admission_mode_change", **fields)
            self._events.emit("admission_mode_change", **fields)
