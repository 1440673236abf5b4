"""A slowloris against a real `gateway serve`: each silent connection is closed at server.header_timeout,
counted once, and nothing (no traceback, no line per connection) reaches the gateway's output."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from perf.local import free_port
from tests.support.process import ROOT
from tests.support.raw import raw_request

POLICY = """
version: 1
server: {header_timeout: 300ms}
upstreams: {app: {url: "http://127.0.0.1:9"}}
routes: [{name: d, match: "GET /{p:.*}", upstream: app}]
"""
SILENT = 20


async def test_silent_connections_close_at_the_header_deadline_without_a_traceback(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    output = tmp_path / "gateway.log"
    port = free_port()
    with output.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port", str(port),
            "--no-watch", stdout=sink, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": ROOT},
        )
        try:
            for _ in range(200):
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(SILENT)]
            # Each is closed by the gateway (EOF), well before a test deadline that is 10x the header timeout.
            for reader, writer in connections:
                assert await asyncio.wait_for(reader.read(), 3.0) == b""
                writer.close()
            status, _, body = await raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert status == 200
            # + the readiness probe above, which closed without a request (it is a silent client too).
            counted = [float(x.split()[-1]) for x in body.decode().splitlines()
                       if x.startswith('gateway_connections_dropped_total{reason="header_timeout"}')]
            assert counted and counted[0] >= SILENT, counted
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
    text = output.read_text()
    assert "Traceback" not in text and "AttributeError" not in text, text
    assert text.count("\n") < SILENT, text  # not a line per connection
