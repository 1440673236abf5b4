"""Item 9: X-Forwarded-For hops written with a port (or IPv6 brackets) behind a trusted proxy are read as the
client's address. Before the fix they fell back to the proxy's own address, so every such client shared one
per-IP bucket: one noisy client locked out all the others."""

from __future__ import annotations

import os

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.identity import ClientResolver, hop_address
from gateway.policy.units import parse_network
from tests.conftest import GatewayFactory

POLICY = """
version: 1
storage: {{redis_url: "{redis}", key_prefix: "{prefix}"}}
identity: {{trusted_proxies: [127.0.0.1/32]}}
upstreams: {{app: {{url: "{url}"}}}}
rate_limits:
  by_ip: {{rate: 2, per: 1m, key: ip}}
routes:
  - {{name: ip, match: "GET /ip", upstream: app, rate_limits: [by_ip]}}
"""


@pytest.mark.parametrize(
    ("hop", "address"),
    [
        ("10.9.9.9:1234", "10.9.9.9"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8:0::1", "2001:db8::1"),
        ("10.9.9.9", "10.9.9.9"),
        ("10.9.9.9:", None),
        ("10.9.9.9:99999", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]x", None),
        ("unknown", None),
        ("_hidden", None),
    ],
)
def test_one_hop_is_read_as_its_address(hop: str, address: str | None) -> None:
    assert hop_address(hop) == address


def test_the_rightmost_untrusted_hop_is_the_client_even_with_ports() -> None:
    resolver = ClientResolver([parse_network("127.0.0.1/32"), parse_network("10.0.0.0/8")])
    assert resolver.client_ip("127.0.0.1", "203.0.113.9:5555, 10.1.1.1:80") == "203.0.113.9"
    assert resolver.client_ip("127.0.0.1", "[2001:db8::7]:443") == "2001:db8::7"
    assert resolver.client_ip("127.0.0.1", "10.1.1.1:80") == "10.1.1.1"  # only proxies: the leftmost
    assert resolver.client_ip("127.0.0.1", "not-an-address") == "127.0.0.1"


@pytest.mark.parametrize(
    ("first", "second"),
    [("10.9.9.9:1234", "10.9.9.8:1234"), ("[2001:db8::1]:443", "[2001:db8::2]:443"),
     ("[2001:db8::1]", "[2001:db8::2]")],
)
async def test_clients_behind_a_trusted_proxy_with_ported_hops_have_their_own_buckets(
    make_gateway: GatewayFactory, upstream: TestServer, redis_url: str, first: str, second: str
) -> None:
    gw = await make_gateway(POLICY, redis=redis_url, prefix=f"t{os.urandom(4).hex()}",
                            url=str(upstream.make_url("")).rstrip("/"))
    async with aiohttp.ClientSession() as session:  # a real socket from 127.0.0.1: the trusted proxy
        url = f"http://127.0.0.1:{gw.port}/ip"

        async def status(hop: str) -> int:
            async with session.get(url, headers={"X-Forwarded-For": hop}) as resp:
                await resp.read()
                return resp.status

        assert [await status(first) for _ in range(3)] == [200, 200, 429]
        # The other client behind the same proxy has a bucket of its own: it is not the proxy's address.
        assert await status(second) == 200
        # The same client with another source port is the same client.
        assert await status(first.replace("1234", "4321").replace("443", "8443")) == 429
