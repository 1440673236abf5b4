"""`GET|POST /api/ops/rate_limits`: current rates and their source; runtime overrides on every replica.

POST `{"rate_orders_per_hour": 30, "per_ip": null}` sets (or, with null or the policy's own rate, removes)
overrides; `{"reset": true}` removes them all. With Redis the overrides live in a hash every replica re-reads
(within `storage.override_refresh`); without, in this process. The whole request is checked first: one unknown
name or bad rate answers 400 with every reason and changes nothing. Admin only; audited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.events import Events
from gateway.ops.http import PRINCIPAL, admin_only, json_response, problem, read_json
from gateway.ratelimit.limiter import Limiter
from gateway.ratelimit.redis import STORE_ERRORS
from gateway.server import defer_continue

MAX_RATE = 1_000_000_000
# The current limiter (None before start) and the event bus the changes are audited on.
RATE_LIMITS: web.AppKey[Callable[[], tuple[Limiter | None, Events]]] = web.AppKey("rate_limits")


def parse_overrides(body: Any, limiter: Limiter) -> tuple[dict[str, int | None] | None, list[str]]:
    """Validate a POST body: (rates by name, None meaning "reset everything") or the list of problems."""
    if not isinstance(body, dict) or not body:
        return None, ['expected a JSON object such as {"limit_name": 30} or {"reset": true}']
    if "reset" in body and isinstance(body["reset"], bool):
        if len(body) != 1 or body["reset"] is not True:
            return None, ['"reset" must be true and alone in the request']
        return None, []
    limits = limiter.limits
    rates: dict[str, int | None] = {}
    problems: list[str] = []
    for name, value in body.items():
        if name not in limits:
            known = ", ".join(sorted(limits)) or "none declared"
            problems.append(f"unknown limit {name!r} (known: {known})")
            continue
        if value is None:
            rates[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_RATE:
            problems.append(f"{name}: rate must be a whole number from 1 to {MAX_RATE}, got {value!r}")
            continue
        if limits[name].limit.per / value < 1e-6:
            problems.append(f"{name}: rate {value} is faster than one request per microsecond")
            continue
        rates[name] = value
    return rates, problems


def view(limiter: Limiter) -> dict[str, Any]:
    """The GET body."""
    stats = limiter.stats()
    return {
        "storage": "memory" if stats["redis"] is None else "redis",
        "redis_up": None if stats["redis"] is None else stats["redis"]["up"],
        "limits": limiter.describe(),
        "stats": stats,
    }


@admin_only
async def get_rate_limits(request: web.Request) -> web.StreamResponse:
    """Every limit: rate, per, burst, key, shadow, on_redis_error, source (policy/override), policy_rate."""
    limiter, _ = request.app[RATE_LIMITS]()
    if limiter is None:
        return problem(503, "not_ready", "the gateway is starting")
    return json_response(view(limiter))


@admin_only
async def post_rate_limits(request: web.Request) -> web.StreamResponse:
    """Set or reset overrides; 400 with every reason and nothing changed on bad input."""
    limiter, events = request.app[RATE_LIMITS]()
    if limiter is None:
        return problem(503, "not_ready", "the gateway is starting")
    body = await read_json(request, max_bytes=64 * 1024)
    rates, problems = parse_overrides(body, limiter)
    if problems:
        return problem(400, "invalid_overrides", "nothing was changed", problems=problems)
    try:
        changes = await (limiter.reset_overrides() if rates is None else limiter.set_overrides(rates))
    except STORE_ERRORS as exc:
        return problem(503, "store_unavailable", "the shared override store (Redis) did not take the change;"
                       " nothing was changed", cause=exc.__class__.__name__)
    principal = request.get(PRINCIPAL)
    for name, (before, after) in changes.items():
        events.emit("rate_limit_override", limit=name, before=before, after=after, principal=principal)
    if changes or rates is None:
        events.emit(
            "admin_action", principal=principal,
            action="rate_limits.reset" if rates is None else "rate_limits.set",
            before={name: before for name, (before, _) in changes.items()},
            after={name: after for name, (_, after) in changes.items()},
        )
    return json_response({**view(limiter), "changed": sorted(changes)})


def add_routes(app: web.Application) -> None:
    """Register the endpoints; `app[RATE_LIMITS]` must give the current limiter and the event bus."""
    app.router.add_get("/api/ops/rate_limits", get_rate_limits)
    app.router.add_post("/api/ops/rate_limits", post_rate_limits, expect_handler=defer_continue)
