"""One structured JSON line per request, with the fields operators search by."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator

import pytest
from aiohttp.test_utils import TestServer

from gateway.logs import configure, flush_access_log
from tests.conftest import GatewayFactory
from tests.support.upstream import base_url


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    out = io.BytesIO()

    class Stdout:
        buffer = out

    monkeypatch.setattr(sys, "stdout", Stdout())
    configure("info")
    yield out
    flush_access_log()
    monkeypatch.undo()
    configure("warning")


async def test_one_json_line_per_request_with_the_documented_fields(
    captured: io.BytesIO, make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(
        'version: 1\nupstreams: {{app: {{url: "{url}"}}}}\n'
        'routes: [{{name: echo, match: "* /{{p:.*}}", upstream: app}}]\n',
        url=base_url(upstream),
    )
    for i in range(3):
        resp = await gw.get(f"/echo?i={i}", headers={"X-Request-Id": f"req-{i}"})
        assert resp.status == 200
    flush_access_log()
    lines = [json.loads(line) for line in captured.getvalue().splitlines() if b'"event":"request"' in line]
    assert [line["request_id"] for line in lines] == ["req-0", "req-1", "req-2"]
    for line in lines:
        assert line["route"] == "echo" and line["method"] == "GET" and line["path"] == "/echo"
        assert line["status"] == 200 and line["upstream_status"] == 200
        assert line["duration_ms"] >= line["upstream_duration_ms"] > 0
        assert line["client_ip"] == "127.0.0.1"
        assert line["time"].endswith("Z") and "T" in line["time"]
