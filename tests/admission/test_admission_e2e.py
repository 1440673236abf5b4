"""Admission control through a real gateway in front of a real upstream of fixed capacity: the limit follows
the upstream's latency, priorities decide who is shed, a shed request costs the upstream nothing, shadow
mode refuses nothing, and a reload keeps what was learned."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tests.admission.conftest import Starter, Tally, Upstream, load

CONCURRENCY = {
    "adaptive": True, "min": 2, "max": 64, "window": "50ms", "probe_samples": 5, "probe_interval": "1h",
    "queue": 16, "queue_timeout": "500ms",
}


def policy(url: str, **changes: Any) -> str:
    concurrency = {**CONCURRENCY, **changes}
    upstream = {"url": url, "timeout": "5s", "breaker": "app", "concurrency": concurrency}
    return f"""
version: 1
upstreams:
  app: {json.dumps(upstream)}
breakers:
  app: {{consecutive_failures: 1, failure_rate: 50%, window: 10, min_calls: 1, reset_timeout: 60s}}
routes:
  - {{name: payments, match: "* /critical", upstream: app, priority: critical,
     slo: {{p95: 500ms, error_rate: 1%}}}}
  - {{name: orders, match: "* /normal", upstream: app, priority: normal}}
  - {{name: horoscopes, match: "* /shed", upstream: app, priority: sheddable}}
  - {{name: hold, match: "* /hold", upstream: app, priority: critical}}
"""


async def test_the_limit_grows_and_shrinks_with_the_upstreams_real_latency(
    start_gateway: Starter, capacity_upstream: Upstream
) -> None:
    state = capacity_upstream.state
    # 100 ms of service keeps the whole test (client, gateway, upstream: one process) far from CPU-bound, so
    # the latency the gateway measures is the upstream's queue, not its own.
    state.capacity, state.service_time = 3, 0.1
    gw = await start_gateway(policy(capacity_upstream.url, queue=64, queue_timeout="5s", window="100ms"))
    admission = gw.admission()

    async def phase(seconds: float) -> list[int]:
        limits: list[int] = []
        until = time.monotonic() + seconds
        loader = asyncio.create_task(load(gw.client, "GET", "/normal", 24, until, Tally()))
        while not loader.done():
            await asyncio.sleep(0.05)  # sampling the limit while the load runs, not waiting for an outcome
            limits.append(admission.current_limit)
        await loader
        return limits[len(limits) // 2:]  # the settled second half

    small = await phase(3.0)
    assert not admission.probing and set(admission.no_load) == {"orders"}
    # Capacity 3: queueing starts past 3 in flight (the gradient tolerates 25% and adds headroom; a busy
    # machine inflates the no-load latency a probe learns, so the bound is loose and the test relative).
    assert sum(small) / len(small) <= 9, small
    await state.resize(16)
    large = await phase(3.0)
    assert max(large) >= 14 and sum(large) / len(large) > 2 * sum(small) / len(small), (small, large)
    await state.resize(3)
    again = await phase(3.0)
    assert sum(again) / len(again) < sum(large) / len(large) / 2, (large, again)


async def test_priorities_are_honoured_under_a_real_overload(
    start_gateway: Starter, capacity_upstream: Upstream
) -> None:
    state = capacity_upstream.state
    state.capacity, state.service_time = 2, 0.04  # 50 requests/s
    # A deadline long enough that a busy machine (the whole suite on two cores) does not decide the test:
    # what is judged here is who waits and who is refused, not how fast the process is.
    gw = await start_gateway(policy(capacity_upstream.url, queue=8, queue_timeout="1s"))
    critical, normal, sheddable = Tally(), Tally(), Tally()
    until = time.monotonic() + 3.0
    await asyncio.gather(
        load(gw.client, "POST", "/critical", 2, until, critical),
        load(gw.client, "POST", "/normal", 2, until, normal),
        load(gw.client, "GET", "/shed", 24, until, sheddable),
    )
    assert sheddable.share(503) > 0.5, sheddable  # the overload lands on the sheddable route
    assert set(sheddable.status) <= {200, 503} and sheddable.reasons
    assert critical.share(200) >= 0.97 and normal.share(200) >= 0.9, (critical, normal)
    assert critical.p95() < sheddable.p95() + 0.5
    shed = gw.admission().shed
    assert sum(n for (route, _, _), n in shed.items() if route == "payments") <= critical.status[503]
    assert sum(n for (route, _, _), n in shed.items() if route == "horoscopes") == sheddable.status[503]
    # Every 200 reached the upstream; no shed request did.
    assert state.seen["/shed"] == sheddable.status[200]


async def test_a_shed_request_never_reaches_the_upstream_nor_moves_the_breaker(
    start_gateway: Starter, capacity_upstream: Upstream
) -> None:
    state = capacity_upstream.state
    gw = await start_gateway(policy(capacity_upstream.url, min=1, max=1, queue=0))
    held = asyncio.create_task(gw.client.post("/hold"))  # takes the only slot and keeps it
    await state.holding.wait()  # the upstream has it
    for path in ("/shed", "/normal", "/critical"):
        response = await gw.client.get(path)
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        body = await response.json()
        assert body["error"] == "shed" and body["reason"] == "queue_full" and body["upstream"] == "app"
    assert state.seen["/shed"] == state.seen["/normal"] == state.seen["/critical"] == 0
    breaker = gw.gateway.current().breakers["app"].snapshot()
    assert breaker["state"] == "closed" and breaker["failures"] == 0, breaker
    state.release.set()
    assert (await held).status == 200
    assert (await gw.client.get("/shed")).status == 200  # the slot is free again
    metrics = (await (await gw.client.get("/metrics")).read()).decode()
    assert ('gateway_admission_shed_total{priority="sheddable",reason="queue_full",route="horoscopes",'
            'upstream="app"} 1.0') in metrics
    assert 'gateway_admission_limit{upstream="app"} 1.0' in metrics


async def test_shadow_mode_refuses_nothing_and_counts_what_it_would_shed(
    start_gateway: Starter, capacity_upstream: Upstream
) -> None:
    state = capacity_upstream.state
    gw = await start_gateway(policy(capacity_upstream.url, min=1, max=1, queue=0, shadow=True))
    held = asyncio.create_task(gw.client.post("/hold"))
    await state.holding.wait()
    statuses = [(await gw.client.get("/shed")).status for _ in range(5)]
    assert statuses == [200] * 5
    assert state.seen["/shed"] == 5
    admission = gw.admission()
    assert admission.would_shed == {("horoscopes", "sheddable"): 5} and admission.shed == {}
    state.release.set()
    await held


async def test_a_reload_keeps_the_learned_limit(start_gateway: Starter, capacity_upstream: Upstream) -> None:
    state = capacity_upstream.state
    state.capacity, state.service_time = 8, 0.02
    gw = await start_gateway(policy(capacity_upstream.url))
    await load(gw.client, "GET", "/normal", 16, time.monotonic() + 1.5, Tally())
    before = gw.admission()
    assert not before.probing and before.current_limit > 2
    learned_limit, no_load = before.current_limit, before.no_load
    extra = '  - {name: extra, match: "GET /extra", upstream: app}\n'
    gw.path.write_text(policy(capacity_upstream.url) + extra)
    assert (await gw.gateway.reload()).result == "success"
    assert gw.admission() is before  # unchanged upstream: the same object, limit and queue
    gw.path.write_text(policy(capacity_upstream.url, queue=5))
    assert (await gw.gateway.reload()).result == "success"
    after = gw.admission()
    assert after is not before and not after.probing
    assert after.no_load == no_load and after.current_limit == min(64, max(2, int(before.limit)))
    assert after.current_limit >= learned_limit - 1
