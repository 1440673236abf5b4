"""Ops endpoints for circuit breakers: list their state; close, open or reset one by hand (admin, audited).

`POST /api/ops/breakers/{name}` with `{"action": "close" | "open" | "reset"}` is the runbook's answer to
"Circuit Breaker Stuck OPEN". A manual open holds until an operator closes or resets the breaker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web

from gateway.breaker import Breaker
from gateway.ops.http import admin_only, json_response, problem, read_json, record_action
from gateway.server import defer_continue

ACTIONS = ("close", "open", "reset")
# The current runtime's breakers (app.py sets it): read per call, so a reload is seen at once.
BREAKERS: web.AppKey[Callable[[], Mapping[str, Breaker]]] = web.AppKey("breakers")


@admin_only
async def list_breakers(request: web.Request) -> web.StreamResponse:
    """Every breaker's state and counters."""
    breakers = request.app[BREAKERS]()
    return json_response({"breakers": [b.snapshot() for b in breakers.values()]})


def _named(request: web.Request) -> Breaker | web.Response:
    """The breaker the path names, or the 404 to answer."""
    name = request.match_info["name"]
    breaker = request.app[BREAKERS]().get(name)
    return breaker if breaker is not None else problem(404, "unknown_breaker", f"no breaker named {name!r}")


@admin_only
async def show_breaker(request: web.Request) -> web.StreamResponse:
    """One breaker's state and counters."""
    breaker = _named(request)
    if isinstance(breaker, web.Response):
        return breaker
    return json_response(breaker.snapshot())


@admin_only
async def control_breaker(request: web.Request) -> web.StreamResponse:
    """Apply a manual action to one breaker; `admin_only` audits it as an `admin_action` event."""
    breaker = _named(request)
    if isinstance(breaker, web.Response):
        return breaker
    data = await read_json(request, max_bytes=4096)
    action = data.get("action") if isinstance(data, dict) else None
    if action not in ACTIONS or (isinstance(data, dict) and set(data) - {"action"}):
        return problem(400, "bad_action", 'the body must be {"action": "close" | "open" | "reset"}',
                       allowed=list(ACTIONS))
    before = breaker.state.value
    if action == "close":
        breaker.force_close()
    elif action == "open":
        breaker.force_open()
    else:
        breaker.reset()
    snapshot = breaker.snapshot()
    record_action(request, f"breaker.{action}", before={"breaker": breaker.name, "state": before},
                  after={"breaker": breaker.name, "state": snapshot["state"]})
    return json_response(snapshot)


def add_routes(app: web.Application) -> None:
    """Register the breaker ops endpoints (before the proxy's catch-all)."""
    app.router.add_get("/api/ops/breakers", list_breakers)
    app.router.add_get("/api/ops/breakers/{name}", show_breaker)
    app.router.add_post("/api/ops/breakers/{name}", control_breaker, expect_handler=defer_continue)
