"""The alert webhook: Alertmanager-shaped POSTs on breaker transitions, received by a real loopback server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.alerts_webhook import AlertWebhook
from gateway.events import Events
from tests.breaker.conftest import GatewayStarter, Provider
from tests.breaker.test_breaker_e2e import POLICY, intent, open_breaker


@dataclass
class Receiver:
    server: TestServer
    alerts: list[dict[str, Any]] = field(default_factory=list)
    fail_first: int = 0  # answer 500 to this many POSTs before accepting
    posts: int = 0
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/api/v2/alerts"))

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.alerts) >= count), timeout=5)
        return self.alerts


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    holder: list[Receiver] = []

    async def accept(request: web.Request) -> web.Response:
        rec = holder[0]
        rec.posts += 1
        if rec.posts <= rec.fail_first:
            return web.Response(status=500)
        body = await request.json()
        async with rec.arrived:
            rec.alerts.extend(body)
            rec.arrived.notify_all()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/api/v2/alerts", accept)
    server = TestServer(app)
    await server.start_server()
    holder.append(Receiver(server))
    yield holder[0]
    await server.close()


async def test_the_webhook_receives_open_and_close(
    start_gateway: GatewayStarter, provider: Provider, receiver: Receiver
) -> None:
    policy = POLICY.replace("upstreams:", f"alerts: {{webhook_url: \"{receiver.url}\"}}\nupstreams:")
    gw = await start_gateway(policy, PROVIDER=provider.url, CONSECUTIVE="3", PROBES="1", ADMIN="x")
    await open_breaker(gw, provider)
    opened = (await receiver.wait_for(1))[0]
    assert opened["labels"] == {"alertname": "CircuitBreakerOpen", "breaker": "payment_provider",
                                "severity": "critical"}
    assert opened["annotations"]["state"] == "open"
    assert opened["annotations"]["cause"] == "consecutive_failures"
    assert "endsAt" not in opened and opened["startsAt"].endswith("Z")
    provider.knobs(failure_ratio=0.0)
    gw.clock.advance(60)
    assert await intent(gw) == 201
    half_open, closed = (await receiver.wait_for(3))[1:]
    assert half_open["annotations"]["state"] == "half_open" and "endsAt" not in half_open
    assert closed["labels"] == opened["labels"]  # the same alert, now resolved
    assert closed["annotations"]["state"] == "closed"
    assert closed["startsAt"] == opened["startsAt"] and closed["endsAt"] >= closed["startsAt"]


def transition(events: Events, to: str) -> None:
    events.emit("circuit_state_change", breaker="b", to=to, cause="test", retry_in=None,
                **{"from": "closed" if to == "open" else "open"})


async def test_delivery_is_retried_with_backoff(receiver: Receiver) -> None:
    receiver.fail_first = 2
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    webhook = AlertWebhook(receiver.url, backoff=0.5, sleep=sleep)
    events = Events()
    events.subscribe(webhook.on_event)
    await webhook.start()
    try:
        transition(events, "open")
        await receiver.wait_for(1)
    finally:
        await webhook.close()
    assert receiver.posts == 3 and slept == [0.5, 1.0]
    assert webhook.stats()["sent"] == 1


async def test_a_full_queue_drops_the_oldest_alert_and_never_blocks(receiver: Receiver) -> None:
    webhook = AlertWebhook(receiver.url, queue_size=2)
    events = Events()
    events.subscribe(webhook.on_event)
    for to in ("open", "half_open", "closed"):  # not started: nothing is sent, the queue fills
        transition(events, to)
    assert webhook.stats() == {"sent": 0, "failed": 0, "dropped": 1, "queued": 2}
    await webhook.start()
    try:
        alerts = await receiver.wait_for(2)
    finally:
        await webhook.close()
    assert [a["annotations"]["state"] for a in alerts] == ["half_open", "closed"]
