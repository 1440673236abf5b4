"""A short real attack against a loopback server: the pace is kept and the results are vegeta's JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.cli import main
from perf.attacker import Attack, Attacker
from perf.results import Result, ResultsWriter, decode
from perf.targets import Target

ARRIVALS = web.AppKey("arrivals", list)


async def ok(request: web.Request) -> web.Response:
    request.app[ARRIVALS].append(time.monotonic())
    await request.read()
    return web.Response(text="hello")


async def limited(request: web.Request) -> web.Response:
    request.app[ARRIVALS].append(time.monotonic())
    return web.json_response({"error": "rate_limited"}, status=429, headers={"Retry-After": "7"})


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(0.1)  # the server under test is slow: that is the fault being exercised
    return web.Response(text="late")


async def chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Connection": "close"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for part in (b"abc", b"defgh", b"ij"):
        await response.write(part)
    await response.write_eof()
    return response


async def loopback_server() -> TestServer:
    app = web.Application()
    app[ARRIVALS] = []
    app.router.add_get("/ok", ok)
    app.router.add_post("/ok", ok)
    app.router.add_get("/limited", limited)
    app.router.add_get("/slow", slow)
    app.router.add_get("/chunked", chunked)
    server = TestServer(app)
    await server.start_server()
    return server


async def test_fifty_a_second_for_one_second_is_paced_and_recorded() -> None:
    server = await loopback_server()
    base = str(server.make_url(""))
    targets = [
        Target("GET", f"{base}/ok", (("X-User-Id", "u1"),)),
        Target("POST", f"{base}/ok", (("Content-Type", "application/json"),), b'{"a": 1}'),
        Target("GET", f"{base}/limited"),
    ]
    out = io.BytesIO()
    writer = ResultsWriter(out)
    progress = io.StringIO()
    try:
        (stats,) = await Attacker(writer.write, progress=progress).run([Attack("fifty", targets, 50, 1.0)])
    finally:
        await server.close()

    assert (stats.sent, stats.completed, stats.unsent, stats.fell_behind) == (50, 50, 0, False)
    arrivals = sorted(server.app[ARRIVALS])
    assert len(arrivals) == 50
    # Paced, not a burst: 50 requests due 20 ms apart arrive over about 0.98 s.
    assert 0.85 < arrivals[-1] - arrivals[0] < 1.3
    assert "asked 50.0/s" in progress.getvalue() and "generator kept the rate" in progress.getvalue()

    lines = out.getvalue().splitlines()
    assert len(lines) == 50 and writer.written == 50
    results = sorted((decode(line) for line in lines), key=lambda r: r.seq)
    assert [r.seq for r in results] == list(range(50))
    assert {r.attack for r in results} == {"fifty"}
    gaps = {results[i + 1].timestamp - results[i].timestamp for i in range(49)}
    assert all(abs(gap - 20_000_000) <= 1 for gap in gaps)  # timestamps are the due times
    by_kind = {(r.method, r.url.rsplit("/", 1)[1]): r for r in results}
    get_ok, post_ok, too_many = by_kind["GET", "ok"], by_kind["POST", "ok"], by_kind["GET", "limited"]
    assert (get_ok.code, get_ok.error, get_ok.body) == (200, "", b"hello")
    assert (get_ok.bytes_in, get_ok.bytes_out) == (5, 0)
    assert (post_ok.code, post_ok.bytes_out) == (200, len(b'{"a": 1}'))
    assert too_many.code == 429 and too_many.error == "429 Too Many Requests"
    assert too_many.header("Retry-After") == "7"
    assert all(0 < r.latency < 500_000_000 for r in results)
    for line in lines:  # every line carries every vegeta field
        assert set(json.loads(line)) == {"attack", "seq", "code", "timestamp", "latency", "bytes_out",
                                         "bytes_in", "error", "body", "method", "url", "headers"}


async def test_a_generator_out_of_workers_falls_behind_and_says_so() -> None:
    server = await loopback_server()
    collected: list[Result] = []
    try:
        attack = Attack("starved", [Target("GET", str(server.make_url("/slow")))], 50, 0.4, max_workers=1)
        (stats,) = await Attacker(collected.append).run([attack])
    finally:
        await server.close()
    assert stats.expected == 20
    assert stats.sent < 10 and stats.unsent == stats.expected - stats.sent and stats.fell_behind
    # Latency counts from the due time: a request that waited for the one worker carries the wait.
    last = max(collected, key=lambda r: r.seq)
    assert last.latency >= int((stats.lags[-1] + 0.09) * 1e9)
    assert stats.as_dict()["fell_behind"] is True


async def test_transport_errors_are_results_with_code_zero() -> None:
    server = await loopback_server()
    url = str(server.make_url("/ok"))
    await server.close()  # nothing listens any more
    collected: list[Result] = []
    (stats,) = await Attacker(collected.append).run([Attack("dead", [Target("GET", url)], 20, 0.2)])
    assert stats.errors == stats.sent == len(collected) > 0
    assert all(r.code == 0 and r.error.startswith(f"GET {url}: ") for r in collected)


def test_verdict_command_exit_codes(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text('version: 1\nupstreams: {app: {url: "http://127.0.0.1:1"}}\n'
                      'routes: [{name: r, match: "GET /r", upstream: app, slo: {p95: 50ms}}]\n')
    for name, latency_ms, expected in (("good", 10, 0), ("bad", 80, 1)):
        results = tmp_path / f"{name}.json"
        with open(results, "wb") as fp:
            ResultsWriter(fp).write_all(
                Result("a", i, 200, 1_700_000_000 * 10**9 + i * 10**8, latency_ms * 10**6, method="GET",
                       url="http://127.0.0.1:8000/r") for i in range(20))
        assert main(["perf", "verdict", str(results), "--policy", str(policy), "--rate", "10/1s"]) == expected
        status = "PASS" if expected == 0 else "FAIL"
        assert (tmp_path / "summary.txt").read_text().startswith(f"verdict: {status}")
    missing = str(tmp_path / "none.yaml")
    assert main(["perf", "verdict", str(tmp_path / "good.json"), "--policy", missing]) == 2


async def test_chunked_bodies_and_closed_connections_are_read_whole() -> None:
    server = await loopback_server()
    collected: list[Result] = []
    try:
        attack = Attack("chunks", [Target("GET", str(server.make_url("/chunked")))], 20, 0.25, max_body=4)
        (stats,) = await Attacker(collected.append).run([attack])
    finally:
        await server.close()
    assert stats.errors == 0 and len(collected) == stats.sent == 5
    assert {(r.code, r.bytes_in, r.body) for r in collected} == {(200, 10, b"abcd")}


def test_the_attacker_runs_on_uvloop_as_the_commands_do() -> None:
    import uvloop

    async def attack() -> tuple[list[Result], int]:
        server = await loopback_server()
        collected: list[Result] = []
        try:
            target = Target("GET", str(server.make_url("/ok")))
            (stats,) = await Attacker(collected.append).run([Attack("uv", [target], 40, 0.25)])
        finally:
            await server.close()
        return collected, stats.errors

    collected, errors = uvloop.run(attack())
    assert errors == 0 and len(collected) == 10 and {r.code for r in collected} == {200}
