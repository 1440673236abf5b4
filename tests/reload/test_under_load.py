"""Twenty reloads in a row while clients keep sending: no request fails and none is lost."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestServer

from tests.conftest import FileGatewayFactory
from tests.reload.conftest import ADMIN, ADMIN_HEADERS, gateway_of, seen
from tests.support.upstream import base_url

POLICY = """version: 1
admin: {{user_ids: ["{admin}"]}}
upstreams:
  app: {{url: "{url}", timeout: 2s}}
routes:
{extra}  - {{name: main, match: "* /{{path:.*}}", upstream: app}}
"""
EXTRA = '  - {{name: extra{n}, match: "GET /extra/{n}", upstream: app}}\n'
WORKERS = 4
RELOADS = 20


async def test_twenty_reloads_under_a_steady_stream_of_requests_lose_nothing(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    servers = (upstream, upstream_b)

    def version(i: int) -> str:
        # Every reload moves `app` to the other server (a new connection pool; the old one is retired) and
        # adds or removes a route.
        extra = EXTRA.format(n=i) if i % 2 else ""
        return POLICY.format(admin=ADMIN, url=base_url(servers[i % 2]), extra=extra)

    client, path = await make_gateway_file(version(0), watch=False)
    sent = ok = 0
    failures: list[str] = []
    stop = asyncio.Event()
    progress = asyncio.Condition()

    async def worker(w: int) -> None:
        nonlocal sent, ok
        n = 0
        while not stop.is_set():
            n += 1
            sent += 1
            try:
                resp = await client.get(f"/load/{w}/{n}")
                await resp.read()
                if resp.status == 200:
                    ok += 1
                else:
                    failures.append(f"{resp.status} for /load/{w}/{n}")
            except Exception as exc:  # a dropped connection counts as a failure, not a test crash
                failures.append(f"{exc!r} for /load/{w}/{n}")
            async with progress:
                progress.notify_all()

    async def requests_flow(after: int, at_least: int = 10) -> None:
        async with progress:
            await asyncio.wait_for(progress.wait_for(lambda: ok >= after + at_least), timeout=5.0)

    workers = [asyncio.create_task(worker(w)) for w in range(WORKERS)]
    try:
        await requests_flow(0)
        for i in range(1, RELOADS + 1):
            path.write_text(version(i))
            resp = await client.post("/api/ops/reload", json={}, headers=ADMIN_HEADERS)
            body = await resp.json()
            assert resp.status == 200 and body["result"] == "success", body
            await requests_flow(ok)  # requests keep flowing between the reloads, not only around them
    finally:
        stop.set()
        await asyncio.gather(*workers)

    assert failures == []
    assert sent == ok
    assert ok >= RELOADS * 10
    assert gateway_of(client).reloader.stats()["success"] == RELOADS
    assert len(seen(upstream)) + len(seen(upstream_b)) == ok
    assert seen(upstream) and seen(upstream_b)
