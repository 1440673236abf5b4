"""Per-upstream settings a policy sets reach the request the upstream receives."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import Client, GatewayFactory
from tests.support.upstream import base_url

CLIENT_HOST = "shop.example.com"


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: TestServer) -> Client:
    # Two names for the same recording upstream: one keeps the client's Host, one does not (the default).
    return await make_gateway(
        'version: 1\nupstreams:\n  kept: {{url: "{url}", preserve_host: true}}\n  plain: {{url: "{url}"}}\n'
        'routes:\n  - {{name: kept, match: "* /kept/{{p:.*}}", upstream: kept, strip_prefix: /kept}}\n'
        '  - {{name: plain, match: "* /plain/{{p:.*}}", upstream: plain, strip_prefix: /plain}}\n',
        url=base_url(upstream),
    )


async def host_seen_upstream(gw: Client, path: str) -> list[str]:
    resp = await gw.get(path, headers={"Host": CLIENT_HOST})
    assert resp.status == 200
    return [v for k, v in json.loads(await resp.text())["headers"] if k.lower() == "host"]


@pytest.mark.parametrize(("path", "preserve_host"), [("/kept/echo", True), ("/plain/echo", False)])
async def test_the_upstream_sees_the_clients_host_only_with_preserve_host(
    gw: Client, upstream: TestServer, path: str, preserve_host: bool
) -> None:
    authority = f"127.0.0.1:{upstream.port}"
    assert await host_seen_upstream(gw, path) == [CLIENT_HOST if preserve_host else authority]
