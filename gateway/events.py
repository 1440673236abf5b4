"""Domain events (rate_limit_hit, circuit_state_change, policy_reload, ...) fanned out to subscribers.

Emitting is synchronous and cheap; subscribers that do I/O (the audit sink, the alert webhook) queue the
event and do the I/O in their own task, so nothing on the request path waits for a disk or a network.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.logs import get_logger

log = get_logger("gateway.events")


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    time: float  # Unix seconds
    fields: dict[str, Any] = field(default_factory=dict)
    instance: str | None = None  # the process that saw it (gateway/fleet/instance.py)

    def as_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"type": self.type, "time": self.time}
        if self.instance is not None:
            head["instance"] = self.instance
        return {**head, **self.fields}


Subscriber = Callable[[Event], None]


class Events:
    """A synchronous fan-out. A subscriber that raises is logged and skipped, never propagated."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._subscribers: list[Subscriber] = []
        self._clock = clock
        self.instance: str | None = None  # stamped on every event (audit records name the process)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def emit(self, type: str, **fields: Any) -> Event:
        """Publish one event to every subscriber and return it."""
        event = Event(type=type, time=self._clock(), fields=fields, instance=self.instance)
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception("event_subscriber_failed", event_type=type)
        return event
