"""Client claims are believed only by rule: the user header from identity.user_networks, address headers from
identity.trusted_proxies. A client on 127.0.0.2 stands for a remote one (Linux routes 127/8 to lo)."""

from __future__ import annotations

import json

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from tests.conftest import FileGatewayFactory, GatewayFactory
from tests.support.upstream import base_url

POLICY = """
version: 1
identity: {{user_header: X-User-Id, user_networks: [127.0.0.1/32], trusted_proxies: [{proxies}]}}
upstreams: {{app: {{url: "{url}"}}}}
rate_limits:
  per_user: {{rate: 2, per: 1m, key: user}}
routes:
  - {{name: limited, match: "GET /limited", upstream: app, rate_limits: [per_user]}}
  - {{name: echo, match: "* /{{p:.*}}", upstream: app}}
"""
SPOOF = {"X-User-Id": "victim", "Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6", "X-Forwarded-Port": "1"}


async def get_from(
    gw: TestClient, address: str, path: str, headers: dict[str, str]
) -> aiohttp.ClientResponse:  # type: ignore[type-arg]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0))) as session:
        resp = await session.get(f"http://127.0.0.1:{gw.port}{path}", headers=headers)
        await resp.read()
        return resp


def sent(body: bytes) -> dict[str, str]:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


async def test_user_header_from_an_untrusted_network_is_ignored_and_not_forwarded(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(POLICY, url=base_url(upstream), proxies="10.0.0.0/8")
    resp = await get_from(gw, "127.0.0.2", "/echo", SPOOF)
    seen = sent(await resp.read())
    assert "x-user-id" not in seen  # the upstream cannot be fooled either
    assert "forwarded" not in seen and "x-real-ip" not in seen and "x-forwarded-port" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.2"
    # Rotating user ids from one address does not buy more quota: the limit falls back to the IP.
    statuses = [
        (await get_from(gw, "127.0.0.2", "/limited", {"X-User-Id": f"rot{i}"})).status for i in range(3)
    ]
    assert statuses == [200, 200, 429]
    # ...and nobody remote can exhaust "victim"'s bucket: a trusted caller still has its full quota.
    trusted = [(await gw.get("/limited", headers={"X-User-Id": "victim"})).status for _ in range(3)]
    assert trusted == [200, 200, 429]


async def test_user_header_from_a_trusted_network_is_believed_and_forwarded(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(POLICY, url=base_url(upstream), proxies="10.0.0.0/8")
    seen = sent(await (await gw.get("/echo", headers={"X-User-Id": "alice"})).read())
    assert seen["x-user-id"] == "alice"
    statuses = [(await gw.get("/limited", headers={"X-User-Id": f"user{i}"})).status for i in range(3)]
    assert statuses == [200, 200, 200]  # three users, three buckets


async def test_a_trusted_proxy_keeps_its_address_headers(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(POLICY, url=base_url(upstream), proxies="127.0.0.2/32")
    headers = {
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": "443",
        "Forwarded": "for=203.0.113.9;proto=https",
    }
    seen = sent(await (await get_from(gw, "127.0.0.2", "/echo", headers)).read())
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.2"
    assert seen["x-forwarded-proto"] == "https" and seen["x-forwarded-port"] == "443"
    assert seen["forwarded"] == "for=203.0.113.9;proto=https"
    # A trusted proxy that sends no X-Forwarded-For is still trusted for the protocol it reports.
    seen = sent(await (await get_from(gw, "127.0.0.2", "/echo", {"X-Forwarded-Proto": "https"})).read())
    assert seen["x-forwarded-proto"] == "https"


async def test_every_forwarded_for_line_counts_so_a_forged_first_line_cannot_win(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    """A proxy that adds its own X-Forwarded-For line (rather than extending the client's) puts the hop that
    counts in the last line: read alone, the client's forged first line made anyone an admin."""
    gw = await make_gateway(
        POLICY.replace("version: 1\n", "version: 1\nadmin: {{user_ids: [admin-1]}}\n"),
        url=base_url(upstream),
        proxies="127.0.0.2/32",
    )
    lines = CIMultiDict([("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-For", "203.0.113.9")])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as session:
        base = f"http://127.0.0.1:{gw.port}"
        lines.add("X-User-Id", "admin-1")
        async with session.get(f"{base}/api/ops/metrics", headers=lines) as resp:
            assert resp.status == 403  # the client is 203.0.113.9, outside admin.trusted_networks
        async with session.get(f"{base}/echo", headers=lines) as resp:
            seen = sent(await resp.read())
    assert seen["x-forwarded-for"] == "127.0.0.1, 203.0.113.9, 127.0.0.2"  # one list, the proxy's hop kept


async def test_a_proxy_removed_from_trust_by_a_reload_loses_the_admin_gate_too(
    make_gateway_file: FileGatewayFactory, upstream: TestServer
) -> None:
    admin = "admin: {{user_ids: [admin-1], trusted_networks: [127.0.0.1/32]}}\n"
    text = POLICY.replace("version: 1\n", "version: 1\n" + admin).format(
        url=base_url(upstream), proxies="{proxies}"
    )
    client, path = await make_gateway_file(text.replace("{proxies}", "127.0.0.2/32"), watch=False)
    claim = {"X-Forwarded-For": "127.0.0.1", "X-User-Id": "admin-1"}  # "my client is local and an admin"
    assert (await get_from(client, "127.0.0.2", "/api/ops/policy", claim)).status == 200
    path.write_text(text.replace("{proxies}", ""))  # 127.0.0.2 is no proxy of ours any more
    resp = await client.post("/api/ops/reload", json={}, headers={"X-User-Id": "admin-1"})
    assert resp.status == 200 and (await resp.json())["result"] == "success"
    assert (await get_from(client, "127.0.0.2", "/api/ops/policy", claim)).status == 403
