"""A slow upstream cannot gather every request: beyond `max_requests` in flight the gateway answers 503."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory
from tests.support.upstream import base_url


async def test_requests_beyond_the_in_flight_cap_get_503_with_retry_after(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(
        'version: 1\nupstreams: {{app: {{url: "{url}", max_requests: 3}}}}\n'
        'routes: [{{name: d, match: "* /{{p:.*}}", upstream: app}}]\n',
        url=base_url(upstream),
    )
    responses = await asyncio.gather(*(gw.get("/slow?s=0.5") for _ in range(8)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 3 + [503] * 5
    refused = [r for r in responses if r.status == 503]
    assert all(r.headers["Retry-After"] == "1" for r in refused)
    assert {(await r.json())["error"] for r in refused} == {"upstream_overloaded"}
    # The slots come back: once the slow ones finish, new requests pass again.
    assert (await gw.get("/echo")).status == 200
