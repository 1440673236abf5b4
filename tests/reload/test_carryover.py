"""State survives a reload where its identity survives: rate-limit buckets and breakers."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestServer

from tests.conftest import FileGatewayFactory
from tests.reload.conftest import ADMIN, ADMIN_HEADERS, gateway_of, reload_events
from tests.support.upstream import base_url

LIMITED = """version: 1
upstreams:
  app: {{url: "{url}"}}
rate_limits:
  per_route: {{rate: {rate}, per: 1h, key: route}}
routes:
  - {{name: main, match: "* /{{path:.*}}", upstream: app, rate_limits: [per_route]}}
"""

BREAKER = """version: 1
admin: {{user_ids: ["{admin}"]}}
upstreams:
  app: {{url: "{url}", breaker: app}}
breakers:
  app: {{consecutive_failures: 2, failure_rate: null, reset_timeout: 60s}}
routes:
{extra}  - {{name: main, match: "* /{{path:.*}}", upstream: app}}
"""


async def test_a_changed_rate_applies_within_a_second_and_the_bucket_is_kept(
    make_gateway_file: FileGatewayFactory, upstream: TestServer
) -> None:
    client, path = await make_gateway_file(LIMITED, url=base_url(upstream), rate=5)
    events = reload_events(client)
    assert (await client.get("/x")).status == 200  # 12 of the hour's 60 minutes of quota spent

    path.write_text(LIMITED.format(url=base_url(upstream), rate=2))
    event = await asyncio.wait_for(events.get(), timeout=1.0)
    assert event.fields["result"] == "success"
    assert event.fields["diff"]["rate_limits"]["changed"] == ["per_route"]

    # At 2/h the 12 minutes spent leave room for one request, not two: the old rate would admit four more,
    # a fresh bucket (a restart) two.
    statuses = []
    for _ in range(2):
        resp = await client.get("/y")
        statuses.append(resp.status)
        assert resp.headers["RateLimit-Policy"] == '"per_route";q=2;w=3600'
    assert statuses == [200, 429]


async def test_raising_a_rate_keeps_an_exhausted_bucket(
    make_gateway_file: FileGatewayFactory, upstream: TestServer
) -> None:
    client, path = await make_gateway_file(LIMITED, url=base_url(upstream), rate=2, watch=False)
    assert [(await client.get("/x")).status for _ in range(3)] == [200, 200, 429]
    path.write_text(LIMITED.format(url=base_url(upstream), rate=100))
    result = await gateway_of(client).reload()
    assert result.result == "success"
    resp = await client.get("/y")
    # A restart would hand out 100 fresh tokens; a reload keeps the emptied bucket, now filling at 100/h.
    assert resp.status == 429
    assert '"per_route";q=100;w=3600' in resp.headers["RateLimit-Policy"]


async def test_an_open_breaker_stays_open_across_an_unrelated_edit(
    make_gateway_file: FileGatewayFactory, upstream: TestServer
) -> None:
    fields = {"admin": ADMIN, "url": base_url(upstream)}
    client, path = await make_gateway_file(BREAKER, extra="", watch=False, **fields)
    assert [(await client.get("/status/503")).status for _ in range(2)] == [503, 503]
    resp = await client.get("/ok")
    assert resp.status == 503 and (await resp.json())["error"] == "breaker_open"
    breaker = gateway_of(client).current().breakers["app"]

    path.write_text(BREAKER.format(extra='  - {name: other, match: "GET /other", upstream: app}\n', **fields))
    reply = await client.post("/api/ops/reload", json={}, headers=ADMIN_HEADERS)
    body = await reply.json()
    assert reply.status == 200 and body["diff"]["routes"]["added"] == ["other"]
    assert body["diff"]["breakers"] == {"added": [], "removed": [], "changed": []}

    assert gateway_of(client).current().breakers["app"] is breaker
    for path_ in ("/ok", "/other"):  # the new route shares the upstream's breaker, open as before
        resp = await client.get(path_)
        assert resp.status == 503 and (await resp.json())["error"] == "breaker_open", path_
