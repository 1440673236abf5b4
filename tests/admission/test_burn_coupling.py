"""Burn-rate coupling through a real gateway on a hand-moved clock: a critical route burning its error budget
fast (the ErrorBudgetBurnFast rule: 14.4x over 1h and 5m) tightens sheddable, then normal traffic on its
upstream, and the tightening releases step by step once the route recovers; every change is an event."""

from __future__ import annotations

import time

from gateway.outcome import Outcome
from tests.admission.conftest import Starter, Upstream
from tests.admission.test_admission_e2e import policy
from tests.support.clock import ManualClock


async def test_tightening_engages_on_a_fast_burn_and_releases_when_it_recovers(
    start_gateway: Starter, capacity_upstream: Upstream
) -> None:
    capacity_upstream.state.service_time = 0.0
    clock = ManualClock()
    gw = await start_gateway(policy(capacity_upstream.url, min=8, max=8, queue=0, tighten_hold="30s"), clock)
    admission = gw.admission()
    slo = gw.gateway.current().slo
    assert (await gw.client.get("/shed")).status == 200
    assert admission.mode == "normal"

    for _ in range(20):  # the payments route failing: what the pipeline hands the recorder
        slo.observe(Outcome(route="payments", method="POST", status=502, duration=0.01))
    clock.advance(5)  # the next burn check is due
    assert (await gw.client.get("/shed")).status == 200  # capped at half the limit, not refused
    assert admission.mode == "tight_sheddable" and admission.caps == [4, 8, 8]

    clock.advance(10)
    await gw.client.get("/normal")
    assert admission.mode == "tight_sheddable"  # a level holds for tighten_hold before the next step
    clock.advance(20)
    response = await gw.client.get("/shed")
    assert response.status == 503
    assert (await response.json())["reason"] == "tightened"
    assert admission.mode == "tight_normal"
    assert (await gw.client.get("/normal")).status == 200
    assert (await gw.client.get("/critical")).status == 200
    assert capacity_upstream.state.seen["/shed"] == 2  # the refused one never reached it

    clock.advance(301)  # the errors leave the 5m window: the fast-burn rule no longer holds
    for _ in range(20):
        slo.observe(Outcome(route="payments", method="POST", status=200, duration=0.01))
    assert (await gw.client.get("/shed")).status == 200
    assert admission.mode == "tight_sheddable"  # one step down per check
    clock.advance(30)
    await gw.client.get("/shed")
    assert admission.mode == "normal" and admission.caps == [8, 8, 8]

    changes = [(e["from"], e["to"]) for e in gw.of_type("admission_mode_change")]
    assert changes == [
        ("normal", "tight_sheddable"), ("tight_sheddable", "tight_normal"),
        ("tight_normal", "tight_sheddable"), ("tight_sheddable", "normal"),
    ]
    first = gw.of_type("admission_mode_change")[0]
    assert first["upstream"] == "app" and first["burning"] == {"payments": ["error_rate"]}
    assert gw.of_type("admission_mode_change")[-1]["burning"] == {}
    audit = gw.gateway.audit  # the audit trail stores every event of the bus: the changes are in it
    assert audit is not None and await audit.flush()
    stored = [r async for page in audit.store.scan(0, time.time() + 60) for r in page]
    assert [(r["from"], r["to"]) for r in stored if r["type"] == "admission_mode_change"] == changes
    metrics = (await (await gw.client.get("/metrics")).read()).decode()
    assert 'gateway_admission_mode_changes_total{to="tight_normal",upstream="app"} 1.0' in metrics
    assert 'gateway_admission_mode{upstream="app"} 0.0' in metrics


async def test_a_critical_route_without_trouble_never_tightens(
    start_gateway: Starter, capacity_upstream: Upstream
) -> None:
    capacity_upstream.state.service_time = 0.0
    clock = ManualClock()
    gw = await start_gateway(policy(capacity_upstream.url, min=8, max=8), clock)
    slo = gw.gateway.current().slo
    for _ in range(5):  # too few requests to judge (a window needs 10)
        slo.observe(Outcome(route="payments", method="POST", status=502, duration=0.01))
    for _ in range(3):
        clock.advance(5)
        assert (await gw.client.get("/shed")).status == 200
    assert gw.admission().mode == "normal" and gw.of_type("admission_mode_change") == []
