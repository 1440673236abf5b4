"""CORS from the policy on proxied routes (gateway/cors.py), preflights answered here, never on /api/ops."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.policy.loader import PolicyError, load_policy
from tests.conftest import GatewayFactory
from tests.ops.conftest import ADMIN, Client, policy
from tests.support.upstream import RECORDER, base_url

ORIGIN = "https://app.example.com"
CORS = f"""
cors:
  origins: ["{ORIGIN}"]
  methods: [GET, POST]
  headers: [Content-Type, X-User-Id]
  credentials: true
  max_age: 10m
"""


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: TestServer) -> Client:
    return await make_gateway(policy(base_url(upstream), extra=CORS))


def preflight(origin: str = ORIGIN, method: str = "POST", headers: str = "content-type") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def test_preflight_from_an_allowed_origin_is_answered_by_the_gateway(
    gw: Client, upstream: TestServer
) -> None:
    resp = await gw.options("/api/orders", headers=preflight())
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert resp.headers["Access-Control-Allow-Methods"] == "POST"
    assert resp.headers["Access-Control-Allow-Headers"].upper() == "CONTENT-TYPE"
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert resp.headers["Access-Control-Max-Age"] == "600"
    assert resp.headers["Vary"] == "Origin"  # the answer names one origin: caches must key on it
    assert upstream.app[RECORDER].requests == []  # never reached the upstream


@pytest.mark.parametrize(
    "headers",
    [
        preflight(origin="https://evil.example.net"),
        preflight(method="DELETE"),
        preflight(headers="x-secret"),
    ],
)
async def test_preflight_outside_the_policy_is_403_json(gw: Client, headers: dict[str, str]) -> None:
    resp = await gw.options("/api/orders", headers=headers)
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert (await resp.json())["error"] == "cors_preflight_rejected"


async def test_actual_request_gets_cors_headers_and_upstream_ones_are_replaced(
    make_gateway: GatewayFactory,
) -> None:
    async def with_own_cors(request: web.Request) -> web.Response:
        # An upstream with its own, wider CORS answer: the policy must win.
        return web.Response(
            text="x",
            headers={"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "PUT, DELETE"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", with_own_cors)
    own = TestServer(app)
    await own.start_server()
    try:
        gw = await make_gateway(policy(base_url(own), extra=CORS))
        resp = await gw.get("/api/things", headers={"Origin": ORIGIN})
        assert resp.status == 200
        assert resp.headers.getall("Access-Control-Allow-Origin") == [ORIGIN]
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        assert "X-Request-Id" in resp.headers["Access-Control-Expose-Headers"]
        assert "Access-Control-Allow-Methods" not in resp.headers
        assert resp.headers.getall("Vary") == ["Origin"]  # else a shared cache serves it to other origins
        other = await gw.get("/api/things", headers={"Origin": "https://evil.example.net"})
        assert other.status == 200 and "Access-Control-Allow-Origin" not in other.headers
    finally:
        await own.close()


async def test_plain_options_without_origin_is_still_proxied(gw: Client, upstream: TestServer) -> None:
    resp = await gw.options("/api/things")
    assert resp.status == 200
    assert (await resp.json())["method"] == "OPTIONS"
    assert [r.method for r in upstream.app[RECORDER].requests] == ["OPTIONS"]


async def test_an_actual_options_request_from_an_allowed_origin_gets_cors_headers(
    gw: Client, upstream: TestServer
) -> None:
    """OPTIONS with an Origin but no Access-Control-Request-Method is no preflight: a page's own OPTIONS call
    (after its preflight). It is proxied, and the browser shows the answer only if it names the origin."""
    resp = await gw.options("/api/things", headers={"Origin": ORIGIN})
    assert resp.status == 200 and (await resp.json())["method"] == "OPTIONS"
    assert [r.method for r in upstream.app[RECORDER].requests] == ["OPTIONS"]
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert resp.headers.getall("Vary") == ["Origin"]


async def test_ops_endpoints_are_never_cors_enabled(gw: Client) -> None:
    resp = await gw.get("/api/ops/health", headers={"Origin": ORIGIN})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    export = await gw.post(
        "/api/ops/export", headers={**ADMIN, "Origin": ORIGIN}, json={"entities": ["breakers"]}
    )
    # A state-changing ops call from another origin is refused outright (CSRF; see test_console.py).
    assert export.status == 403 and "Access-Control-Allow-Origin" not in export.headers
    pre = await gw.options("/api/ops/export", headers=preflight())
    assert pre.status == 405 and "Access-Control-Allow-Origin" not in pre.headers


async def test_without_a_cors_section_preflights_go_to_the_upstream(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(policy(base_url(upstream)))
    resp = await gw.options("/api/orders", headers=preflight())
    assert (await resp.json())["method"] == "OPTIONS"
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_credentials_with_any_origin_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy("http://127.0.0.1:9", extra='cors: {origins: ["*"], credentials: true}\n'))
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert any("cors" in str(p) and "credentials" in str(p) for p in err.value.problems)


@pytest.mark.parametrize(
    ("setting", "exposed"),
    [
        ("", {"X-Request-Id", "RateLimit", "RateLimit-Policy", "Retry-After"}),  # the default
        ("  expose_headers: [X-Trace-Id, X-Cost]\n", {"X-Trace-Id", "X-Cost"}),
    ],
    ids=["default", "set"],
)
async def test_a_cors_answer_exposes_the_policys_expose_headers(
    make_gateway: GatewayFactory, upstream: TestServer, setting: str, exposed: set[str]
) -> None:
    gw = await make_gateway(policy(base_url(upstream), extra=CORS + setting))
    resp = await gw.get("/api/things", headers={"Origin": ORIGIN})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    listed = {name.strip() for name in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert listed == exposed
