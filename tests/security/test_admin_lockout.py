"""Item 11: the failure throttle of the ops API cannot deny valid credentials. Before the fix, ten bad bearer
tokens from an address made even a valid token (or the runbook's X-User-Id admin) from that address get 429
for a minute; behind a local ingress every client shares that address, so anyone could lock the admins out."""

from __future__ import annotations

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.ops.auth import MAX_FAILURES
from tests.conftest import GatewayFactory
from tests.ops.conftest import ADMIN, BEARER, policy


async def test_bad_tokens_are_throttled_but_a_valid_token_still_gets_in(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(policy(str(upstream.make_url("")).rstrip("/")))
    url = f"http://127.0.0.1:{gw.port}/api/ops/breakers"  # a real socket from 127.0.0.1
    wrong = {"Authorization": "Bearer not-the-token-not-the-token"}
    async with aiohttp.ClientSession() as session:

        async def call(headers: dict[str, str]) -> tuple[int, str | None, dict[str, str]]:
            async with session.get(url, headers=headers) as resp:
                return resp.status, resp.headers.get("Retry-After"), await resp.json()

        statuses = [(await call(wrong))[0] for _ in range(MAX_FAILURES + 2)]
        assert statuses == [403] * MAX_FAILURES + [429, 429]
        status, retry_after, body = await call(wrong)
        assert status == 429 and retry_after is not None and int(retry_after) >= 1
        assert body["error"] == "too_many_attempts"
        assert (await call({}))[0] == 429  # no credentials at all: a failure, throttled as well
        # The same address with valid credentials: admitted, whatever the guesses before.
        assert (await call(BEARER))[0] == 200
        assert (await call(ADMIN))[0] == 200  # the runbook's X-User-Id admin from a trusted network
        # ...and admitting them did not lift the throttle for the guesser.
        assert (await call(wrong))[0] == 429
