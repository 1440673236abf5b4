"""POST /api/ops/export: range and filter, json / ndjson / csv, both backends, streamed, 400s with reasons."""

from __future__ import annotations

import csv
import io
import json
import time
import tracemalloc
import uuid
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestServer

from gateway.audit import Batch, iso
from gateway.events import Event
from tests.conftest import GatewayFactory
from tests.ops.conftest import ADMIN, Client, audit_of, policy
from tests.support.upstream import base_url

BASE = time.time() - 3600  # an hour ago: the events below are spread over the following 100 s


def sample() -> list[Event]:
    """100 events, one a second: rate limit hits by three actors, and some breaker changes."""
    events = []
    for i in range(100):
        at = BASE + i
        if i % 10 == 9:
            events.append(
                Event(
                    "circuit_state_change",
                    at,
                    {"breaker": "payments", "from": "closed", "to": "open", "cause": "consecutive_failures"},
                )
            )
        else:
            actor = ("10.0.0.1", "10.0.0.2", "u-42")[i % 3]
            events.append(
                Event(
                    "rate_limit_hit",
                    at,
                    {"actor": actor, "limit": "per_ip", "route": "orders", "key": "ip", "shadow": False},
                )
            )
    return events


def expected(events: list[Event], start: float, end: float, **where: Any) -> list[dict[str, Any]]:
    """What the export must return: computed from the events, not copied from a run."""
    out = []
    for e in events:
        record = {"time": iso(e.time), "type": e.type, **e.fields}
        if start <= e.time <= end and all(record.get(k) == v for k, v in where.items()):
            out.append(record)
    return out


@pytest.fixture(params=["file", "redis"])
async def gw(
    request: pytest.FixtureRequest, make_gateway: GatewayFactory, upstream: TestServer, redis_url: str
) -> Client:
    """A gateway on each audit backend, holding the sample events."""
    text = policy(
        base_url(upstream),
        redis_url=redis_url if request.param == "redis" else "",
        prefix=f"x{uuid.uuid4().hex[:12]}",
    )
    client = await make_gateway(text)
    trail = audit_of(client)
    for e in sample():
        trail(e)  # the trail is an Events subscriber: this is exactly what the bus does
    assert await trail.flush()
    return client


async def export_audit(gw: Client, start: float, end: float | None = None, **options: Any) -> ClientResponse:
    """POST /api/ops/export of the audit trail from `start` (to `end`), with `options` as the other fields."""
    span = {"from": iso(start)} if end is None else {"from": iso(start), "to": iso(end)}
    body = {"entities": ["audit"], "range": span, **options}
    return await gw.post("/api/ops/export", headers=ADMIN, json=body)


def strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert all(r.get("event_id") for r in records if r.get("entity", "audit") == "audit")
    return [{k: v for k, v in r.items() if k not in ("id", "event_id", "entity")} for r in records]


async def test_json_export_by_time_range_and_filter(gw: Client) -> None:
    start, end = BASE + 20, BASE + 60
    resp = await export_audit(gw, start, end, filter={"type": "rate_limit_hit", "actor": "u-42"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Transfer-Encoding"] == "chunked"
    body = await resp.json()
    want = expected(sample(), start, end, type="rate_limit_hit", actor="u-42")
    assert want and strip(body["audit"]) == want
    assert body["audit_count"] == len(want)
    assert body["range"] == {"from": iso(start), "to": iso(end)}


async def test_ndjson_export(gw: Client) -> None:
    resp = await export_audit(gw, BASE, format="ndjson", filter={"type": ["circuit_state_change"]})
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert {line["entity"] for line in lines} == {"audit"}
    assert strip(lines) == expected(sample(), BASE, time.time(), type="circuit_state_change")


async def test_csv_export(gw: Client) -> None:
    resp = await export_audit(gw, BASE, BASE + 30, format="csv")
    assert resp.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    want = expected(sample(), BASE, BASE + 30)
    assert [(r["time"], r["type"], r["actor"] or None, r["breaker"] or None) for r in rows] == [
        (w["time"], w["type"], w.get("actor"), w.get("breaker")) for w in want
    ]
    hit = next(r for r in rows if r["type"] == "rate_limit_hit")
    assert json.loads(hit["details"]) == {"shadow": False}  # fields without a column of their own


async def test_repeated_hits_by_the_same_actors_in_one_call(gw: Client) -> None:
    """The runbook's "look for repeated rate_limit_hit events from same actors"."""
    resp = await export_audit(gw, BASE, filter={"type": "rate_limit_hit"}, group_by="actor")
    audit = (await resp.json())["audit"]
    counts: dict[str, int] = {}
    for record in expected(sample(), BASE, time.time(), type="rate_limit_hit"):
        counts[record["actor"]] = counts.get(record["actor"], 0) + 1
    assert [(g["actor"], g["count"]) for g in audit["groups"]] == sorted(
        counts.items(), key=lambda kv: -kv[1]
    )
    assert audit["matched"] == sum(counts.values())
    first = audit["groups"][0]
    assert first["first"] <= first["last"]


async def test_the_runbook_curl_sends_a_form_content_type_and_still_works(gw: Client) -> None:
    # curl -X POST .../api/ops/export -H "X-User-Id: <admin-uuid>" -d '{...}'
    resp = await gw.post(
        "/api/ops/export",
        headers={**ADMIN, "Content-Type": "application/x-www-form-urlencoded"},
        data='{"entities": ["audit"], "range": {"from": "2025-09-13T00:00:00Z"}}',
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["audit_count"] >= 100 and body["range"]["from"] == "2025-09-13T00:00:00.000000Z"


async def test_state_entities(gw: Client) -> None:
    resp = await gw.post(
        "/api/ops/export",
        headers=ADMIN,
        json={"entities": ["breakers", "rate_limits", "slo"], "format": "json"},
    )
    body = await resp.json()
    assert set(body) >= {"breakers", "rate_limits", "slo"}
    assert isinstance(body["breakers"], list) and isinstance(body["rate_limits"], list)
    assert "default" in {row["route"] for row in body["slo"]} if body["slo"] else True


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"entities": ["audit"]}, "needs a range"),
        ({"entities": ["audit"], "range": {"from": "yesterday"}}, "not ISO 8601"),
        (
            {"entities": ["audit"], "range": {"from": "2025-09-14T00:00:00Z", "to": "2025-09-13T00:00:00Z"}},
            "after",
        ),
        ({"entities": ["audits"], "range": {"from": "2025-09-13"}}, "unknown entity"),
        ({"entities": ["audit", "breakers"], "range": {"from": "2025-09-13"}, "format": "csv"}, "one entity"),
        ({"entities": ["audit"], "range": {"from": "2025-09-13"}, "format": "xml"}, "format"),
        (
            {"entities": ["audit"], "range": {"from": "2025-09-13"}, "filter": {"password": "x"}},
            "cannot filter",
        ),
        (
            {"entities": ["audit"], "range": {"from": "2025-09-13"}, "filter": {"actor": {"$ne": 1}}},
            "filter.actor",
        ),
        ({"entities": ["audit"], "range": {"from": "2025-09-13"}, "group_by": "time"}, "cannot group"),
        ({"entities": ["audit"], "range": {"from": "2025-09-13"}, "format": []}, "format"),  # not a 500
        ({"entities": ["audit"], "range": {"from": "2025-09-13"}, "group_by": {}}, "cannot group"),
        ({"entities": ["audit"], "range": {"from": "2025-09-13"}, "limit": 0}, "limit"),
        ({"entities": ["audit"], "range": {"from": "2025-09-13"}, "since": "x"}, "unknown field"),
        ([1, 2], "JSON object"),
    ],
)
async def test_bad_requests_are_400_with_the_reason(gw: Client, body: Any, reason: str) -> None:
    resp = await gw.post("/api/ops/export", headers=ADMIN, json=body)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["error"] == "bad_export" and reason in answer["detail"]


async def test_invalid_json_is_400(gw: Client) -> None:
    resp = await gw.post("/api/ops/export", headers=ADMIN, data=b'{"entities": [')
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_json"


async def test_a_large_range_is_streamed_without_being_held_in_memory(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(policy(base_url(upstream)))
    store = audit_of(gw).store
    n = 50_000
    for chunk in range(0, n, 5000):
        await store.append(
            Batch.of(
                b'{"time":"%s","type":"rate_limit_hit","actor":"10.1.%d.%d","limit":"per_ip","route":"orders",'
                b'"key":"ip","shadow":false}' % (iso(BASE + (chunk + i) / 100).encode(), i // 256, i % 256)
                for i in range(5000)
            )
        )
    tracemalloc.start()
    try:
        resp = await export_audit(gw, BASE, format="ndjson")
        assert resp.status == 200 and resp.headers["Transfer-Encoding"] == "chunked"
        size, lines = 0, 0
        async for chunk_bytes in resp.content.iter_chunked(1 << 16):
            size += len(chunk_bytes)
            lines += chunk_bytes.count(b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == n
    assert peak < size / 8, f"peak {peak} bytes while exporting {size} bytes"
