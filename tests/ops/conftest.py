"""Helpers for the ops tests: a policy with an admin section, admin credentials, a client on 127.0.0.2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

TOKEN = "ops-test-token-0123456789abcdef"
TOKENS_ENV = "GW_OPS_TEST_ADMIN_TOKENS"
ADMIN_ID = "6f1c2b9e-0a4d-4c1e-9b7a-2d3e4f5a6b7c"
ADMIN = {"X-User-Id": ADMIN_ID}
BEARER = {"Authorization": f"Bearer {TOKEN}"}
REMOTE_ADDRESS = "127.0.0.2"  # Linux routes all of 127.0.0.0/8 to lo: a "remote" client outside 127.0.0.1/32

POLICY = """
version: 1
storage: {{redis_url: "{redis_url}", key_prefix: "{prefix}"}}
admin:
  user_ids: ["{admin_id}"]
  trusted_networks: [127.0.0.1/32]
  tokens_env: {tokens_env}
audit: {{queue_size: {queue_size}, dir: "{audit_dir}"}}
upstreams:
  app: {{url: "{url}", connect_timeout: 1s, timeout: 2s}}
routes:
  - {{name: default, match: "* /{{path:.*}}", upstream: app}}
"""

Client = TestClient[web.Request, web.Application]


def policy(
    url: str,
    *,
    redis_url: str = "",
    prefix: str = "gw",
    queue_size: int = 10_000,
    audit_dir: str = "data/audit",
    extra: str = "",
) -> str:
    """The ops test policy, already formatted: pass it to make_gateway without fields."""
    return (
        POLICY.format(
            url=url,
            redis_url=redis_url,
            prefix=prefix,
            admin_id=ADMIN_ID,
            tokens_env=TOKENS_ENV,
            queue_size=queue_size,
            audit_dir=audit_dir,
        )
        + extra
    )


@pytest.fixture(autouse=True)
def admin_tokens(monkeypatch: pytest.MonkeyPatch) -> str:
    """The bearer token the test gateways accept."""
    monkeypatch.setenv(TOKENS_ENV, f"short, {TOKEN}")
    return TOKEN


@pytest.fixture
async def remote_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections come from 127.0.0.2: outside the admin trusted network 127.0.0.1/32."""
    connector = aiohttp.TCPConnector(local_addr=(REMOTE_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def audit_of(client: Client) -> Any:
    """The running gateway's audit trail."""
    from gateway.app import GATEWAY

    return client.app[GATEWAY].audit  # type: ignore[index]
