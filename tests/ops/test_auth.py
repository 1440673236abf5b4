"""Admin auth: bearer tokens from anywhere, X-User-Id only from trusted networks, 401/403/429, audited."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.events import Event, Events
from gateway.ops.auth import FAILURE_WINDOW, MAX_FAILURES, AdminAuth, fingerprint, load_tokens
from gateway.ops.http import ADMIN_AUTH, PRINCIPAL, admin_only, install, json_response
from gateway.policy.model import Admin, Identity
from tests.conftest import GatewayFactory
from tests.ops.conftest import (
    ADMIN,
    ADMIN_ID,
    BEARER,
    REMOTE_ADDRESS,
    TOKEN,
    TOKENS_ENV,
    Client,
    audit_of,
    policy,
)
from tests.support.clock import ManualClock
from tests.support.upstream import base_url


def auth(clock: ManualClock | None = None, proxies: tuple[str, ...] = ()) -> AdminAuth:
    admin = Admin.model_validate(
        {"user_ids": [ADMIN_ID], "trusted_networks": ["127.0.0.1/32"], "tokens_env": TOKENS_ENV}
    )
    identity = Identity.model_validate({"trusted_proxies": list(proxies)})
    return AdminAuth(admin, identity, clock=clock or ManualClock())


# -- the decision itself (pure logic) --


def test_bearer_token_is_accepted_from_any_address() -> None:
    verdict = auth().check("203.0.113.9", f"Bearer {TOKEN}", None)
    assert verdict.status == 200
    assert verdict.principal == f"token:{fingerprint(TOKEN)}"
    assert TOKEN not in (verdict.principal or "")  # the audit never holds the secret


def test_wrong_token_is_403_and_a_malformed_header_is_401() -> None:
    a = auth()
    assert a.check("127.0.0.1", "Bearer not-the-right-token-at-all", None).status == 403
    assert a.check("127.0.0.1", f"Basic {TOKEN}", None).status == 401
    assert a.check("127.0.0.1", "Bearer ", None).status == 401


def test_tokens_shorter_than_16_characters_are_ignored() -> None:
    assert auth().check("127.0.0.1", "Bearer short", None).status == 403  # env holds "short" and TOKEN
    admin = Admin(tokens_env=TOKENS_ENV)
    assert load_tokens(admin) == (TOKEN,)


def test_tokens_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "tokens"
    secret.write_text("# rotated 2025-09\nfile-token-abcdefghijklmnop\n")
    monkeypatch.delenv(TOKENS_ENV)
    a = AdminAuth(Admin(tokens_env=TOKENS_ENV, tokens_file=str(secret)))
    assert a.check("198.51.100.1", "Bearer file-token-abcdefghijklmnop", None).status == 200
    assert a.check("198.51.100.1", "Bearer # rotated 2025-09", None).status == 403


def test_user_id_is_believed_only_from_trusted_networks() -> None:
    a = auth()
    assert a.check("127.0.0.1", None, ADMIN_ID).principal == f"user:{ADMIN_ID}"
    assert a.check(REMOTE_ADDRESS, None, ADMIN_ID).status == 403
    assert a.check("127.0.0.1", None, "someone-else").status == 403
    assert a.check("127.0.0.1", None, None).status == 401


def test_behind_a_trusted_proxy_the_forwarded_client_decides() -> None:
    a = auth(proxies=("127.0.0.1/32",))
    # A proxy on loopback forwarding a remote caller must not make that caller a loopback admin.
    assert a.check("127.0.0.1", None, ADMIN_ID, forwarded_for="203.0.113.7").status == 403
    # A proxy that does not say whom it forwards for: the caller is unknown, not loopback.
    assert a.check("127.0.0.1", None, ADMIN_ID).status == 403


def test_failed_attempts_are_limited_per_client_then_forgiven() -> None:
    clock = ManualClock()
    a = auth(clock)
    for _ in range(MAX_FAILURES):
        assert a.check(REMOTE_ADDRESS, "Bearer guess-guess-guess-guess", None).status == 403
    limited = a.check(REMOTE_ADDRESS, "Bearer guess-guess-guess-guess", None)
    assert limited.status == 429 and limited.retry_after == int(FAILURE_WINDOW)
    assert a.check(REMOTE_ADDRESS, None, None).status == 429  # no credentials is a failure too
    # The throttle refuses failures only: a valid token from the same address is never locked out.
    assert a.check(REMOTE_ADDRESS, f"Bearer {TOKEN}", None).status == 200
    assert a.check("127.0.0.1", None, ADMIN_ID).status == 200  # other clients are unaffected
    clock.now += FAILURE_WINDOW
    assert a.check(REMOTE_ADDRESS, "Bearer guess-guess-guess-guess", None).status == 403  # forgiven


# -- over HTTP, against a running gateway --


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: TestServer):  # type: ignore[no-untyped-def]
    return await make_gateway(policy(base_url(upstream), extra="breakers:\n  b1: {}\n"))


async def export_breakers(
    session: aiohttp.ClientSession, gw: Client, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """POST /api/ops/export of the breakers from `session` (another address than the gateway's own client)."""
    url = gw.make_url("/api/ops/export")
    async with session.post(url, json={"entities": ["breakers"]}, headers=headers) as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def test_no_credentials_is_401_json_with_a_challenge(gw) -> None:  # type: ignore[no-untyped-def]
    resp = await gw.post("/api/ops/export", json={"entities": ["breakers"]})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    body = await resp.json()
    assert body["error"] == "unauthorized" and "Bearer" in body["detail"]


async def test_not_an_admin_is_403_json(gw) -> None:  # type: ignore[no-untyped-def]
    resp = await gw.post("/api/ops/export", json={"entities": ["breakers"]}, headers={"X-User-Id": "u1"})
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden"


async def test_spoofed_admin_user_id_from_an_untrusted_network_is_403(  # type: ignore[no-untyped-def]
    gw, remote_session: aiohttp.ClientSession
) -> None:
    status, body = await export_breakers(remote_session, gw, ADMIN)
    assert status == 403
    assert "trusted_networks" in body["detail"]
    # The same header from 127.0.0.1 is an admin: the difference is only where the call came from.
    assert (await gw.post("/api/ops/export", json={"entities": ["breakers"]}, headers=ADMIN)).status == 200


async def test_bearer_token_works_from_an_untrusted_network(  # type: ignore[no-untyped-def]
    gw, remote_session: aiohttp.ClientSession
) -> None:
    status, body = await export_breakers(remote_session, gw, BEARER)
    assert status == 200
    assert "breakers" in body


async def test_too_many_failures_from_one_address_get_429(  # type: ignore[no-untyped-def]
    gw, remote_session: aiohttp.ClientSession
) -> None:
    url = gw.make_url("/api/ops/export")
    wrong = {"Authorization": "Bearer wrong-token-wrong-token"}
    for _ in range(MAX_FAILURES):
        async with remote_session.post(url, json={}, headers=wrong) as resp:
            assert resp.status == 403
    async with remote_session.post(url, json={}, headers=wrong) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"] == "too_many_attempts"
    # Loopback is another client: its admin still gets in.
    assert (await gw.post("/api/ops/export", json={"entities": ["breakers"]}, headers=ADMIN)).status == 200


async def test_every_admin_call_and_every_refusal_is_audited_once(gw) -> None:  # type: ignore[no-untyped-def]
    await gw.get("/api/ops/breakers", headers=BEARER)
    await gw.post("/api/ops/export", json={"entities": ["nope"]}, headers=ADMIN)
    await gw.get("/api/ops/breakers", headers={"X-User-Id": "mallory"})
    # A handler names its action and records before/after: still one event.
    assert (await gw.post("/api/ops/breakers/b1", json={"action": "open"}, headers=ADMIN)).status == 200
    audit = audit_of(gw)
    assert await audit.flush()
    records = [r async for page in audit.store.scan(0, time.time() + 60) for r in page]
    actions = [(r["principal"], r["action"], r.get("status")) for r in records if r["type"] == "admin_action"]
    assert actions == [
        (f"token:{fingerprint(TOKEN)}", "GET /api/ops/breakers", 200),
        (f"user:{ADMIN_ID}", "POST /api/ops/export", 400),
        (None, "auth_failed", 403),
        (f"user:{ADMIN_ID}", "breaker.open", 200),
    ]
    assert records[-1]["before"] == {"breaker": "b1", "state": "closed"}
    assert records[-1]["after"] == {"breaker": "b1", "state": "open"}


async def test_a_handler_that_emits_its_own_admin_action_is_not_audited_twice(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    events = Events()
    seen: list[Event] = []
    events.subscribe(seen.append)
    app = web.Application()
    app[ADMIN_AUTH] = auth()
    install(app, events)

    @admin_only
    async def self_auditing(request: web.Request) -> web.StreamResponse:
        events.emit("admin_action", principal=request[PRINCIPAL], action="thing.set", before=1, after=2)
        return json_response({"ok": True})

    @admin_only
    async def quiet(request: web.Request) -> web.StreamResponse:
        return json_response({"ok": True})

    app.router.add_post("/self", self_auditing)
    app.router.add_post("/quiet", quiet)
    client = await aiohttp_client(app)
    assert (await client.post("/self", headers=BEARER)).status == 200
    assert (await client.post("/quiet", headers=BEARER)).status == 200
    assert [(e.fields["action"], e.fields["before"], e.fields["after"]) for e in seen] == [
        ("thing.set", 1, 2),
        ("POST /quiet", None, None),
    ]
