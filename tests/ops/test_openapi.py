"""gateway/ops/openapi.yaml (served at /api/ops/openapi.yaml) is valid OpenAPI 3.1 and describes every ops
endpoint the gateway registers."""

from __future__ import annotations

from pathlib import Path

import yaml
from aiohttp.test_utils import TestServer
from openapi_spec_validator import validate

from tests.conftest import GatewayFactory
from tests.ops.conftest import policy

SPEC = Path(__file__).resolve().parents[2] / "gateway" / "ops" / "openapi.yaml"


def test_the_document_is_valid_openapi_3_1() -> None:
    document = yaml.safe_load(SPEC.read_text())
    assert document["openapi"].startswith("3.1")
    validate(document)


async def test_every_registered_ops_route_is_documented_and_nothing_else(
    make_gateway: GatewayFactory, upstream: TestServer
) -> None:
    gw = await make_gateway(policy(str(upstream.make_url("")).rstrip("/")))
    registered = set()
    for route in gw.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if (path.startswith("/api/ops/") or path == "/metrics") and route.method != "*":
            if route.method != "HEAD":  # answered with GET
                registered.add((path, route.method.lower()))
    documented = {
        (path, method)
        for path, item in yaml.safe_load(SPEC.read_text())["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert registered == documented
