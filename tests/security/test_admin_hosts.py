"""Item 10: the ops API answers only to the names it is known by (admin.hosts, plus the address the client
connected to). A web page whose name is rebound to 127.0.0.1 runs in a browser on the gateway's host, comes
from loopback and may send the runbook's X-User-Id admin header: before the fix it could drive the ops API.
The browser still sends the page's own name as Host, which is what is refused here."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer

from gateway.ops.auth import AdminAuth, host_name
from gateway.policy.loader import PolicyError, load_policy
from gateway.policy.model import Admin
from tests.conftest import GatewayFactory
from tests.ops.conftest import ADMIN_ID, policy
from tests.support.raw import raw_request


def get(path: str, host: str | None, extra: str = "") -> bytes:
    host_line = f"Host: {host}\r\n" if host is not None else ""
    return (f"GET {path} HTTP/1.1\r\n{host_line}X-User-Id: {ADMIN_ID}\r\n{extra}"
            "Connection: close\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("host", "name"),
    [("LocalHost.:8000", "localhost"), ("[::1]:8000", "::1"), ("[::ffff:127.0.0.1]", "127.0.0.1"),
     ("127.0.0.1", "127.0.0.1"), ("evil.example:8000", "evil.example"), ("::1", "::1")],
)
def test_host_values_are_read_as_names(host: str, name: str) -> None:
    assert host_name(host) == name


def test_the_default_hosts_are_the_loopback_names_and_the_connected_address() -> None:
    auth = AdminAuth(Admin())
    assert all(auth.host_allowed([h], "127.0.0.1") for h in ("localhost:8000", "127.0.0.1", "[::1]:1"))
    assert not auth.host_allowed(["evil.example:8000"], "127.0.0.1")
    assert not auth.host_allowed(["localhost.evil.example"], "127.0.0.1")
    assert auth.host_allowed(["10.1.2.3:8000"], "10.1.2.3")  # the pod IP a client connected to
    assert auth.host_allowed(["[::ffff:10.1.2.3]:8000"], "::ffff:10.1.2.3")
    assert not auth.host_allowed(["10.1.2.4:8000"], "10.1.2.3")
    assert not auth.host_allowed(["localhost", "evil.example"], "127.0.0.1")  # two Host lines
    assert auth.host_allowed([], "127.0.0.1")  # HTTP/1.0 without Host: no browser sends that
    assert AdminAuth(Admin(hosts=("*",))).host_allowed(["anything.example"], None)


async def test_a_rebinding_host_cannot_drive_the_ops_api(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(policy(str(upstream.make_url("")).rstrip("/"), extra="breakers:\n  b1: {}\n"))
    # The attack: the page's name resolved to 127.0.0.1, the admin header set by the page's script.
    status, headers, body = await raw_request(gw.port, get("/api/ops/breakers", f"evil.example:{gw.port}"))
    assert status == 421 and headers["content-type"].startswith("application/json")
    assert b'"misdirected_request"' in body
    assert (await raw_request(gw.port, get("/metrics", "evil.example")))[0] == 421
    # The same request by the gateway's own names, with or without a port, is served.
    for host in (f"localhost:{gw.port}", "localhost", f"127.0.0.1:{gw.port}", f"[::1]:{gw.port}"):
        assert (await raw_request(gw.port, get("/api/ops/breakers", host)))[0] == 200, host
    assert (await raw_request(gw.port, get("/metrics", f"localhost:{gw.port}")))[0] == 200
    # Health stays public: orchestrators probe it by pod IP, service name or whatever Host they like.
    assert (await raw_request(gw.port, get("/api/ops/health", "evil.example")))[0] in (200, 503)
    # The proxied routes are not the ops API: any Host goes through to the upstream.
    assert (await raw_request(gw.port, get("/echo", "evil.example")))[0] == 200


async def test_configured_hosts_replace_the_loopback_names(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    networks = "  trusted_networks: [127.0.0.1/32]\n"
    url = str(upstream.make_url("")).rstrip("/")
    text = policy(url).replace(networks, networks + "  hosts: [ops.internal]\n")
    gw = await make_gateway(text)
    assert (await raw_request(gw.port, get("/api/ops/breakers", "ops.internal:8000")))[0] == 200
    assert (await raw_request(gw.port, get("/api/ops/breakers", "localhost")))[0] == 421
    # The address the client connected to always names this listener.
    assert (await raw_request(gw.port, get("/api/ops/breakers", f"127.0.0.1:{gw.port}")))[0] == 200


def test_a_host_with_a_port_in_the_policy_is_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nadmin:\n  hosts: ['127.0.0.1:8000']\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert "p.yaml:3 admin.hosts" in str(caught.value) and "without a port" in str(caught.value)


async def test_every_ops_endpoint_but_health_refuses_a_foreign_host(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    """A guard for endpoints added later: each must go through the admin gate (or call `misdirected`)."""
    gw = await make_gateway(policy(str(upstream.make_url("")).rstrip("/")))
    checked = []
    for resource in gw.app.router.resources():  # type: ignore[union-attr]
        path = resource.canonical
        if not (path.startswith("/api/ops/") or path == "/metrics") or "{tail}" in path:
            continue
        for route in resource:
            if route.method in ("HEAD", "*"):
                continue  # ("*": the JSON 405 for other methods, which tells nothing)
            target = path.replace("{name}", "b1")
            data = get(target, "evil.example").replace(b"GET ", route.method.encode() + b" ", 1)
            status = (await raw_request(gw.port, data))[0]
            assert (status != 421) if path == "/api/ops/health" else (status == 421), (route.method, path)
            checked.append((route.method, path))
    assert len(checked) >= 11
