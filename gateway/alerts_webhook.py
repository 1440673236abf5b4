"""The runbook's siren: breaker transitions POSTed to `alerts.webhook_url` as Alertmanager-compatible alerts.

It subscribes to the domain events; the subscriber only queues (bounded, the oldest alert is dropped when
full), and one background task does the HTTP with retries and backoff, so the request path never waits for
the alert receiver. The body is what Alertmanager's `POST /api/v2/alerts` takes: a list of alerts with
labels, annotations, startsAt and, once the breaker closes, endsAt (the alert is resolved).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from gateway.events import Event
from gateway.logs import get_logger
from gateway.tasks import stop

log = get_logger("gateway.alerts")

ALERT_NAME = "CircuitBreakerOpen"


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlertWebhook:
    """Delivers breaker alerts to one URL from a background task. `start()`/`close()` pair with the app."""

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 256,
        attempts: int = 5,
        backoff: float = 0.5,
        timeout: float = 5.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.url = url
        self._queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue(maxsize=queue_size)
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._sleep = sleep
        self._firing_since: dict[str, float] = {}  # breaker -> when its alert started (bounded by the policy)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        # Counters for metrics.
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def alert_for(self, event: Event) -> dict[str, Any]:
        """The Alertmanager alert for one `circuit_state_change` event."""
        breaker = str(event.fields["breaker"])
        to = str(event.fields["to"])
        closed = to == "closed"
        starts = self._firing_since.get(breaker, event.time)
        if closed:
            self._firing_since.pop(breaker, None)
        else:
            self._firing_since.setdefault(breaker, event.time)
        alert: dict[str, Any] = {
            "labels": {"alertname": ALERT_NAME, "breaker": breaker, "severity": "critical"},
            "annotations": {
                "summary": f"circuit breaker {breaker} is {to.replace('_', '-')}",
                "description": (
                    f"breaker {breaker} went from {event.fields.get('from')} to {to} "
                    f"(cause: {event.fields.get('cause')})"
                ),
                "state": to,
                "cause": str(event.fields.get("cause")),
            },
            "startsAt": _iso(starts),
        }
        if closed:
            alert["endsAt"] = _iso(event.time)
        return alert

    def on_event(self, event: Event) -> None:
        """Events subscriber: queue an alert for a breaker transition; never blocks, never raises."""
        if event.type != "circuit_state_change":
            return
        alert = self.alert_for(event)
        if self._queue.full():
            self._queue.get_nowait()  # the newest state matters more than an old one
            self.dropped += 1
        self._queue.put_nowait([alert])

    async def start(self) -> None:
        """Open the HTTP session and start the delivery task."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._task = asyncio.create_task(self._run(), name="alerts-webhook")

    async def close(self) -> None:
        """Stop the delivery task (alerts still queued are dropped) and close the session."""
        await stop((self._task,))
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            alerts = await self._queue.get()
            await self._deliver(alerts)

    async def _deliver(self, alerts: list[dict[str, Any]]) -> None:
        assert self._session is not None
        body = orjson.dumps(alerts)
        for attempt in range(self._attempts):
            try:
                async with self._session.post(
                    self.url, data=body, headers={"Content-Type": "application/json"}, allow_redirects=False
                ) as response:
                    if response.status < 300:
                        self.sent += 1
                        return
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        break  # the receiver refuses this alert: sending it again will not help
                    reason = f"status {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = exc.__class__.__name__
            log.warning("alert_webhook_retry", attempt=attempt + 1, reason=reason)
            if attempt + 1 < self._attempts:
                await self._sleep(self._backoff * 2**attempt)
        self.failed += 1
        log.error("alert_webhook_failed", breaker=alerts[0]["labels"]["breaker"], attempts=self._attempts)

    def stats(self) -> dict[str, int]:
        """Counters for the metrics collector."""
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped,
                "queued": self._queue.qsize()}
