"""Live reload of a running gateway: file edits, SIGHUP, the ops API, rollback; bad files change nothing.

Real gateway on a loopback port, real upstreams, real files and a real signal.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.audit import iso
from gateway.reload import RELOADER
from tests.conftest import FileGatewayFactory
from tests.reload.conftest import (
    ADMIN,
    ADMIN_HEADERS,
    Client,
    gateway_of,
    reload_events,
    replace_atomically,
    seen,
)
from tests.support.upstream import base_url

POLICY = """version: 1
admin: {{user_ids: ["{admin}"]}}
upstreams:
  a: {{url: "{a}", timeout: {timeout}}}
  b: {{url: "{b}", timeout: {timeout}}}
routes:
{extra}  - {{name: main, match: "* /{{path:.*}}", upstream: {target}}}
"""


def policy(a: TestServer, b: TestServer, *, target: str = "a", extra: str = "", timeout: str = "2s") -> str:
    urls = {"a": base_url(a), "b": base_url(b)}
    return POLICY.format(admin=ADMIN, **urls, target=target, extra=extra, timeout=timeout)


async def reload_api(client: Client, body: object = None) -> tuple[int, dict[str, object]]:
    resp = await client.post("/api/ops/reload", json=body if body is not None else {}, headers=ADMIN_HEADERS)
    return resp.status, await resp.json()


async def running(client: Client) -> dict[str, object]:
    resp = await client.get("/api/ops/policy", headers=ADMIN_HEADERS)
    assert resp.status == 200
    body: dict[str, object] = await resp.json()
    return body


async def test_editing_the_file_switches_a_routes_upstream_within_a_second(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    client, path = await make_gateway_file(policy(upstream, upstream_b, target="a"))
    events = reload_events(client)
    assert (await client.get("/before")).status == 200
    assert seen(upstream) == ["/before"]

    loop = asyncio.get_running_loop()
    edited_at = loop.time()
    path.write_text(policy(upstream, upstream_b, target="b"))  # an in-place edit, no restart, no signal
    event = await asyncio.wait_for(events.get(), timeout=1.0)
    resp = await client.get("/after")
    took = loop.time() - edited_at

    assert resp.status == 200
    assert seen(upstream_b) == ["/after"] and seen(upstream) == ["/before"]
    assert took < 1.0
    assert event.fields["result"] == "success" and event.fields["trigger"] == "file"
    assert event.fields["version"] == gateway_of(client).current().loaded.version
    assert event.fields["diff"]["routes"] == {"added": [], "removed": [], "changed": ["main"]}


async def test_a_route_can_be_added_and_removed(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    client, path = await make_gateway_file(policy(upstream, upstream_b), watch=False)
    assert (await client.get("/new")).status == 200
    assert seen(upstream) == ["/new"]

    path.write_text(policy(upstream, upstream_b, extra='  - {name: new, match: "GET /new", upstream: b}\n'))
    status, body = await reload_api(client)
    assert status == 200, body
    assert body["result"] == "success"
    assert body["diff"]["routes"] == {"added": ["new"], "removed": [], "changed": []}  # type: ignore[index]
    assert (await client.get("/new")).status == 200
    assert seen(upstream_b) == ["/new"]

    path.write_text(policy(upstream, upstream_b))
    status, body = await reload_api(client)
    assert status == 200 and body["diff"]["routes"]["removed"] == ["new"]  # type: ignore[index]
    assert (await client.get("/new")).status == 200
    assert seen(upstream) == ["/new", "/new"] and seen(upstream_b) == ["/new"]


async def test_invalid_yaml_changes_nothing_and_the_error_is_visible(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    client, path = await make_gateway_file(policy(upstream, upstream_b), watch=False)
    before = gateway_of(client).current().loaded.version
    events = reload_events(client)
    path.write_text("version: 1\nupstreams:\n  a: {url: 'http://x'\nroutes: []\n")  # unclosed flow mapping

    status, body = await reload_api(client)
    assert status == 400
    assert body["error"] == "invalid_policy" and body["version"] == before
    problems = body["problems"]
    assert isinstance(problems, list) and len(problems) == 1
    assert problems[0].startswith(f"{path}:4 ") and "YAML error" in problems[0]

    assert (await client.get("/still")).status == 200
    assert seen(upstream) == ["/still"]  # the last good policy keeps serving
    event = events.get_nowait()
    assert event.fields["result"] == "error" and event.fields["trigger"] == "api"
    assert event.fields["version"] != before and problems[0] in event.fields["error"]

    shown = await running(client)
    assert shown["version"] == before and shown["file_differs"] is True
    assert shown["last_error"]["problems"] == problems  # type: ignore[index]
    assert str(shown["last_error"]["time"]).endswith("Z")  # type: ignore[index]
    assert shown["stats"] == {"success": 0, "error": 1, "unchanged": 0}
    health = await (await client.get("/api/ops/health")).json()  # public: where the problem is, not what
    assert health["policy"]["version"] == before
    assert f"{path}:4" in health["policy"]["last_error"] and "YAML" not in health["policy"]["last_error"]


async def test_a_schema_error_in_the_watched_file_changes_nothing_until_it_is_fixed(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    client, path = await make_gateway_file(policy(upstream, upstream_b))
    events = reload_events(client)
    before = gateway_of(client).current().loaded.version
    bad = policy(upstream, upstream_b, timeout="5x")
    path.write_text(bad)

    event = await asyncio.wait_for(events.get(), timeout=1.0)
    assert event.fields["result"] == "error" and event.fields["trigger"] == "file"
    error = event.fields["error"]
    assert f"{path}:4 upstreams.a.timeout: bad duration '5x'" in error
    assert gateway_of(client).current().loaded.version == before
    assert (await client.get("/x")).status == 200 and seen(upstream) == ["/x"]
    summary = gateway_of(client).last_error
    assert summary is not None and f"{path}:4 upstreams.a.timeout" in summary
    assert "5x" not in summary  # health is public: where, not what

    path.write_text(policy(upstream, upstream_b, target="b"))
    event = await asyncio.wait_for(events.get(), timeout=1.0)
    assert event.fields["result"] == "success"
    assert gateway_of(client).last_error is None
    assert (await client.get("/y")).status == 200 and seen(upstream_b) == ["/y"]


async def test_an_atomic_rename_is_noticed(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    client, path = await make_gateway_file(policy(upstream, upstream_b))
    events = reload_events(client)
    replace_atomically(path, policy(upstream, upstream_b, target="b"))
    event = await asyncio.wait_for(events.get(), timeout=1.0)
    assert event.fields["result"] == "success"
    assert (await client.get("/renamed")).status == 200 and seen(upstream_b) == ["/renamed"]


async def test_a_configmap_symlink_swap_is_noticed(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer, tmp_path: Path
) -> None:
    mount = tmp_path / "configmap"
    (mount / "..2024_01_01").mkdir(parents=True)
    (mount / "..2024_01_01" / "policies.yaml").write_text(policy(upstream, upstream_b))
    (mount / "..data").symlink_to("..2024_01_01")
    (mount / "policies.yaml").symlink_to("..data/policies.yaml")
    client, path = await make_gateway_file(path=mount / "policies.yaml")
    events = reload_events(client)

    (mount / "..2024_01_02").mkdir()
    (mount / "..2024_01_02" / "policies.yaml").write_text(policy(upstream, upstream_b, target="b"))
    (mount / "..data_tmp").symlink_to("..2024_01_02")
    os.replace(mount / "..data_tmp", mount / "..data")

    event = await asyncio.wait_for(events.get(), timeout=1.0)
    assert event.fields["result"] == "success" and event.fields["trigger"] == "file"
    assert (await client.get("/swapped")).status == 200 and seen(upstream_b) == ["/swapped"]
    assert gateway_of(client).current().loaded.source == str(path)


async def test_sighup_reloads_and_the_handler_is_removed_on_close(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    client, path = await make_gateway_file(policy(upstream, upstream_b), watch=False)
    events = reload_events(client)
    # Without the gateway's handler SIGHUP would terminate the test process: check before sending it.
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    path.write_text(policy(upstream, upstream_b, target="b"))
    assert (await client.get("/unwatched")).status == 200 and seen(upstream) == ["/unwatched"]

    os.kill(os.getpid(), signal.SIGHUP)
    event = await asyncio.wait_for(events.get(), timeout=1.0)
    assert event.fields["result"] == "success" and event.fields["trigger"] == "sighup"
    assert (await client.get("/hup")).status == 200 and seen(upstream_b) == ["/hup"]

    await client.close()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


async def test_sighup_reaches_every_gateway_and_the_handler_stays_while_one_runs(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    first, first_path = await make_gateway_file(policy(upstream, upstream_b), watch=False)
    second, second_path = await make_gateway_file(policy(upstream, upstream_b), watch=False)
    first_events, second_events = reload_events(first), reload_events(second)
    first_path.write_text(policy(upstream, upstream_b, target="b"))
    second_path.write_text(policy(upstream, upstream_b, target="b"))

    os.kill(os.getpid(), signal.SIGHUP)
    assert (await asyncio.wait_for(first_events.get(), 1.0)).fields["trigger"] == "sighup"
    assert (await asyncio.wait_for(second_events.get(), 1.0)).fields["trigger"] == "sighup"

    await first.close()
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    second_path.write_text(policy(upstream, upstream_b, target="a"))
    os.kill(os.getpid(), signal.SIGHUP)
    assert (await asyncio.wait_for(second_events.get(), 1.0)).fields["result"] == "success"
    await second.close()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


async def test_rollback_returns_to_the_previous_policy_from_memory(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    original = policy(upstream, upstream_b, target="a")
    client, path = await make_gateway_file(original, watch=False)
    first = gateway_of(client).current().loaded.version
    status, body = await reload_api(client, {"rollback": True})
    assert status == 409 and body["error"] == "no_previous_policy"

    path.write_text(policy(upstream, upstream_b, target="b"))
    status, body = await reload_api(client)
    assert status == 200
    second = body["version"]
    assert (await client.get("/on-b")).status == 200 and seen(upstream_b) == ["/on-b"]

    events = reload_events(client)
    status, body = await reload_api(client, {"rollback": True})
    assert status == 200, body
    assert body["result"] == "success" and body["trigger"] == "rollback"
    assert body["version"] == first and body["file_differs"] is True  # the file on disk is not rewritten
    assert (await client.get("/on-a")).status == 200 and seen(upstream) == ["/on-a"]
    assert events.get_nowait().fields["trigger"] == "rollback"
    shown = await running(client)
    assert shown["text"] == original and shown["version"] == first
    assert [h["version"] for h in shown["history"]] == [first]  # type: ignore[attr-defined]
    assert path.read_text() != original

    status, body = await reload_api(client, {"rollback": True})
    assert status == 409  # the history walked back to the start
    status, body = await reload_api(client)  # reloading the file brings the edited policy back
    assert status == 200 and body["version"] == second and body["file_differs"] is False


async def test_a_request_in_flight_finishes_on_the_upstream_it_started_with(
    make_gateway_file: FileGatewayFactory, upstream_b: TestServer
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="from the old upstream")

    held_app = web.Application()
    held_app.router.add_get("/{tail:.*}", hold)
    old = TestServer(held_app)
    await old.start_server()
    try:
        client, path = await make_gateway_file(policy(old, upstream_b, timeout="1s"), watch=False)
        gateway = gateway_of(client)
        old_client = gateway.current().clients["a"]
        in_flight = asyncio.create_task(client.get("/slow"))
        await asyncio.wait_for(entered.wait(), 1.0)

        # The new policy drops upstream `a` altogether: its connection pool is retired, not closed at once.
        path.write_text(policy(upstream_b, upstream_b, target="b", timeout="1s").replace(
            f'  a: {{url: "{base_url(upstream_b)}", timeout: 1s}}\n', ""))
        status, body = await reload_api(client)
        assert status == 200, body
        assert body["diff"]["upstreams"]["removed"] == ["a"]  # type: ignore[index]
        assert (await client.get("/new")).status == 200 and seen(upstream_b) == ["/new"]
        assert not old_client.closed

        release.set()
        resp = await asyncio.wait_for(in_flight, 1.0)
        assert resp.status == 200 and await resp.text() == "from the old upstream"

        retirements = gateway.reloader.retirements
        assert len(retirements) == 1
        await asyncio.wait_for(asyncio.gather(*retirements), timeout=1.0 + 1.0 + 1.0)  # grace: timeout + 1 s
        assert old_client.closed
    finally:
        await old.close()


async def test_the_reload_endpoints_are_admin_only_and_check_their_input(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    client, _ = await make_gateway_file(policy(upstream, upstream_b), watch=False)
    assert (await client.post("/api/ops/reload")).status == 401
    assert (await client.get("/api/ops/policy")).status == 401
    assert (await client.post("/api/ops/reload", headers={"X-User-Id": "someone"})).status == 403
    for bad in ([1], {"rollback": "yes"}, {"rollback": True, "force": True}):
        status, body = await reload_api(client, bad)
        assert status == 400 and body["error"] == "bad_request", bad
    resp = await client.post("/api/ops/reload", data=b"{not json", headers=ADMIN_HEADERS)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_json"
    assert gateway_of(client).reloader.stats() == {"success": 0, "error": 0, "unchanged": 0}


async def test_reloading_an_unchanged_file_is_reported_and_swaps_nothing(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    client, _ = await make_gateway_file(policy(upstream, upstream_b), watch=False)
    runtime = gateway_of(client).current()
    events = reload_events(client)
    status, body = await reload_api(client)
    assert status == 200 and body["result"] == "unchanged"
    assert gateway_of(client).current() is runtime
    assert events.empty()
    assert client.app[RELOADER].stats() == {"success": 0, "error": 0, "unchanged": 1}


async def test_get_policy_shows_what_is_running(
    make_gateway_file: FileGatewayFactory, upstream: TestServer, upstream_b: TestServer
) -> None:
    text = policy(upstream, upstream_b)
    client, path = await make_gateway_file(text, watch=False)
    shown = await running(client)
    loaded = gateway_of(client).current().loaded
    assert shown["version"] == loaded.version and shown["source"] == str(path)
    assert shown["text"] == text and shown["last_error"] is None and shown["file_differs"] is False
    model = shown["policy"]
    assert isinstance(model, dict)
    assert model["routes"][0]["match"] == "* /{path:.*}" and model["upstreams"]["a"]["timeout"] == "2s"
    assert shown["loaded_at"] == iso(loaded.loaded_at)  # ISO 8601 like /api/ops/health and the audit trail
