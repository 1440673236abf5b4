"""The `server:` limits a policy sets reach the real listener: header field size and count (431 with a JSON
reason, before the upstream sees a byte) and the idle keep-alive timeout."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import Client, GatewayFactory
from tests.support.raw import raw_request, read_response
from tests.support.upstream import RECORDER, base_url

MAX_FIELD_SIZE = 2048  # the defaults (8190 bytes, 128 headers, 75 s) would let every request here through
MAX_HEADERS = 20
POLICY = """
version: 1
upstreams: {{app: {{url: "{url}"}}}}
server: {{max_field_size: {field}, max_headers: {count}, idle_timeout: 300ms, header_timeout: 10s}}
routes: [{{name: d, match: "* /{{p:.*}}", upstream: app}}]
"""


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: TestServer) -> Client:
    url = base_url(upstream)
    return await make_gateway(POLICY, url=url, field=MAX_FIELD_SIZE, count=MAX_HEADERS)


def with_line(length: int) -> bytes:
    """A GET with an `X-Big: aaa...` header line of `length` bytes."""
    return b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (length - len("X-Big: ")) + b"\r\n\r\n"


def with_headers(count: int) -> bytes:
    """A GET with `count` header lines, Host included."""
    extra = b"".join(b"X-%d: 1\r\n" % i for i in range(count - 1))
    return b"GET /echo HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


def assert_431(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 431
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"] == "headers_too_large"


def sent_to_upstream(body: bytes) -> dict[str, str]:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


async def test_a_header_line_longer_than_max_field_size_is_431_and_a_shorter_one_passes(
    gw: Client, upstream: TestServer
) -> None:
    # Its value alone is longer than max_field_size (aiohttp's parser bounds the name and the value).
    over = with_line(len("X-Big: ") + MAX_FIELD_SIZE + 1)
    assert_431(*await raw_request(gw.port, over))  # type: ignore[arg-type]
    assert upstream.app[RECORDER].requests == []
    status, _, body = await raw_request(gw.port, with_line(MAX_FIELD_SIZE))  # type: ignore[arg-type]
    assert status == 200
    assert len(sent_to_upstream(body)["x-big"]) == MAX_FIELD_SIZE - len("X-Big: ")


async def test_more_header_lines_than_max_headers_is_431_and_max_headers_pass(
    gw: Client, upstream: TestServer
) -> None:
    assert_431(*await raw_request(gw.port, with_headers(MAX_HEADERS + 1)))  # type: ignore[arg-type]
    assert upstream.app[RECORDER].requests == []
    status, _, body = await raw_request(gw.port, with_headers(MAX_HEADERS))  # type: ignore[arg-type]
    assert status == 200
    assert sent_to_upstream(body)[f"x-{MAX_HEADERS - 2}"] == "1"


async def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(gw: Client) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers.get("connection", "").lower() != "close"  # kept alive
        idle_since = time.monotonic()
        # The gateway closes it: EOF, well before header_timeout (10 s) and the default idle timeout (75 s).
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert time.monotonic() - idle_since >= 0.25  # after the 300 ms idle timeout, not at once
    finally:
        writer.close()
