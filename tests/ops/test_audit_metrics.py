"""The audit trail's own counters reach /metrics, so dropped events are visible to alerting."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestServer

from gateway.app import GATEWAY
from tests.conftest import GatewayFactory
from tests.ops.conftest import policy
from tests.support.upstream import base_url


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match is not None, f"{name} missing from /metrics"
    return float(match.group(1))


async def test_audit_counters_are_exported(
    make_gateway: GatewayFactory, upstream: TestServer, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(policy(base_url(upstream), audit_dir=str(tmp_path / "audit")))
    gateway = gw.app[GATEWAY]  # type: ignore[index]
    for i in range(3):
        gateway.events.emit("admin_action", principal="test", action=f"probe{i}", before=None, after=None)
    await gateway.audit.flush(5)
    text = await (await gw.get("/metrics")).text()
    assert sample(text, "gateway_audit_events_written_total") >= 3
    assert sample(text, "gateway_audit_events_dropped_total") == 0
    assert "gateway_audit_queue_events" in text
