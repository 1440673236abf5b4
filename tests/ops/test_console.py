"""The console's server side: static files with a strict CSP, the gateway's own paths never proxied, the CSRF
rule for state-changing ops calls from browsers, the OpenAPI document served, and policy validation."""

from __future__ import annotations

from aiohttp.test_utils import TestServer

from gateway.ops.console import openapi_text
from tests.conftest import GatewayFactory
from tests.ops.conftest import ADMIN, BEARER, Client, policy
from tests.support.upstream import RECORDER

BREAKER = """
breakers:
  app: {consecutive_failures: 5, reset_timeout: 60s}
"""


async def gateway(make_gateway: GatewayFactory, upstream: TestServer) -> Client:
    text = policy(str(upstream.make_url("")).rstrip("/"), extra=BREAKER)
    return await make_gateway(text.replace("connect_timeout: 1s", "connect_timeout: 1s, breaker: app"))


async def test_the_console_is_served_with_a_strict_content_security_policy(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await gateway(make_gateway, upstream)
    files = (("/ops/", "text/html"), ("/ops/app.js", "text/javascript"), ("/ops/app.css", "text/css"))
    for path, kind in files:
        resp = await gw.get(path)
        assert resp.status == 200 and resp.content_type == kind
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "http" not in csp  # no inline code, no other origin
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    page = await (await gw.get("/ops/")).text()
    assert "<script>" not in page and "style=" not in page and "://" not in page.replace("www.w3.org", "")
    redirect = await gw.get("/ops", allow_redirects=False)
    assert redirect.status == 308 and redirect.headers["Location"] == "/ops/"
    assert upstream.app[RECORDER].requests == []


async def test_other_methods_on_the_gateways_own_paths_are_a_json_405_never_proxied(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await gateway(make_gateway, upstream)
    calls = (("POST", "/metrics"), ("DELETE", "/metrics"), ("PUT", "/ops/"), ("POST", "/ops/app.js"))
    for method, path in calls:
        resp = await gw.request(method, path)
        assert resp.status == 405, (method, path)
        assert (await resp.json())["error"] == "method_not_allowed"
        assert resp.headers["Allow"] == "GET, HEAD"
    assert upstream.app[RECORDER].requests == []  # before: POST /metrics reached the upstream


async def test_a_cross_site_state_change_is_refused_even_for_a_trusted_admin_id(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await gateway(make_gateway, upstream)
    # A page elsewhere posting a form (a "simple" request: no preflight) to a gateway whose admin is believed
    # by address: the browser adds Origin, and an SSO proxy may add X-User-Id.
    form = {**ADMIN, "Origin": "http://evil.example", "Content-Type": "text/plain"}
    resp = await gw.post("/api/ops/breakers/app", headers=form, data='{"action": "open"}')
    assert resp.status == 403 and (await resp.json())["error"] == "cross_origin"
    same_site_no_header = {**ADMIN, "Origin": f"http://{gw.host}:{gw.port}"}
    resp = await gw.post("/api/ops/breakers/app", headers=same_site_no_header, json={"action": "open"})
    assert resp.status == 403  # a browser call without the console's custom header
    fetch_meta = {**ADMIN, "Sec-Fetch-Site": "cross-site", "X-Requested-By": "x"}
    resp = await gw.post("/api/ops/breakers/app", headers=fetch_meta, json={"action": "open"})
    assert resp.status == 403
    state = await gw.get("/api/ops/breakers/app", headers={**ADMIN, "Origin": "http://evil.example"})
    assert (await state.json())["state"] == "closed"  # nothing changed; reads are same-origin-policy bound
    console = {**ADMIN, "Origin": f"http://{gw.host}:{gw.port}", "Sec-Fetch-Site": "same-origin",
               "X-Requested-By": "ops-console"}
    resp = await gw.post("/api/ops/breakers/app", headers=console, json={"action": "open"})
    assert resp.status == 200 and (await resp.json())["state"] == "open"
    resp = await gw.post("/api/ops/breakers/app", headers=ADMIN, json={"action": "close"})  # curl: unchanged
    assert resp.status == 200 and (await resp.json())["state"] == "closed"


async def test_the_openapi_document_is_served_to_admins(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await gateway(make_gateway, upstream)
    assert (await gw.get("/api/ops/openapi.yaml")).status == 401
    resp = await gw.get("/api/ops/openapi.yaml", headers=BEARER)
    assert resp.status == 200 and resp.content_type == "application/yaml"
    assert await resp.read() == openapi_text()


async def test_a_candidate_policy_is_validated_with_the_checks_of_gateway_check_and_not_applied(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await gateway(make_gateway, upstream)
    before = (await (await gw.get("/api/ops/policy", headers=BEARER)).json())["version"]
    good = ("version: 1\nupstreams:\n  a: {url: 'http://127.0.0.1:9'}\n"
            "routes:\n  - {name: r, match: 'GET /x', upstream: a}\n")
    resp = await gw.post("/api/ops/policy/validate", headers=BEARER, json={"text": good})
    body = await resp.json()
    assert resp.status == 200 and body["valid"] is True and body["problems"] == []
    assert body["summary"].startswith("candidate.yaml: ok (version ") and "1 routes" in body["summary"]
    bad = good + "rate_limits:\n  x: {rate: -1, per: 1s}\n"
    resp = await gw.post("/api/ops/policy/validate", headers=BEARER, json={"text": bad, "name": "mine.yaml"})
    body = await resp.json()
    assert resp.status == 200 and body["valid"] is False
    assert body["problems"] == ["mine.yaml:7 rate_limits.x.rate: Input should be greater than 0"]
    dangling = good.replace("upstream: a}", "upstream: nowhere}")
    body = await (await gw.post("/api/ops/policy/validate", headers=BEARER, json={"text": dangling})).json()
    assert body["valid"] is False
    assert body["problems"][0].startswith("candidate.yaml:5 routes[0].upstream: unknown upstream 'nowhere'")
    for wrong in ({}, {"text": 1}, {"text": "", "extra": 1}, {"text": "", "name": "../etc/passwd"}):
        resp = await gw.post("/api/ops/policy/validate", headers=BEARER, json=wrong)
        assert resp.status == 400 and (await resp.json())["error"] == "bad_request"
    after = (await (await gw.get("/api/ops/policy", headers=BEARER)).json())["version"]
    assert after == before


async def test_the_consoles_successful_polls_are_not_audited_but_changes_and_refusals_are(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await gateway(make_gateway, upstream)
    poll = {**BEARER, "X-Ops-Poll": "1"}
    for _ in range(3):
        assert (await gw.get("/api/ops/metrics", headers=poll)).status == 200
        export = {"entities": ["breakers"]}
        assert (await gw.post("/api/ops/export", headers=poll, json=export)).status == 200
    assert (await gw.get("/api/ops/breakers", headers=BEARER)).status == 200  # not a poll: audited
    assert (await gw.post("/api/ops/breakers/app", headers=poll, json={"action": "reset"})).status == 200
    assert (await gw.get("/api/ops/metrics", headers={"X-Ops-Poll": "1"})).status == 401
    resp = await gw.post("/api/ops/export", headers=BEARER, json={
        "entities": ["audit"], "range": {"from": "2020-01-01T00:00:00Z"}, "filter": {"type": "admin_action"}})
    actions = [(r["action"], r["status"]) for r in (await resp.json())["audit"]]
    assert actions == [("GET /api/ops/breakers", 200), ("breaker.reset", 200), ("auth_failed", 401)]
