"""Helpers shared by every ops handler: JSON answers and the admin gate (audited)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.ops.auth import AdminAuth

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ADMIN_AUTH = web.AppKey("admin_auth", AdminAuth)
PRINCIPAL = "gateway.principal"  # request key holding who the admin is


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer that is never cached."""
    return web.Response(
        status=status,
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def problem(status: int, error: str, detail: str | None = None, **fields: Any) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if detail is not None:
        body["detail"] = detail
    body.update(fields)
    return json_response(body, status)


async def read_json(request: web.Request, max_bytes: int = 1 << 20) -> Any:
    """The request's JSON body, or raise a 400/413 JSON answer with the reason."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(
            max_size=max_bytes, actual_size=request.content_length,
            text=orjson.dumps({"error": "body_too_large"}).decode(), content_type="application/json",
        )
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise web.HTTPRequestEntityTooLarge(
            max_size=max_bytes, actual_size=len(raw),
            text=orjson.dumps({"error": "body_too_large"}).decode(), content_type="application/json",
        )
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(
            text=orjson.dumps({"error": "invalid_json", "detail": str(exc)}).decode(),
            content_type="application/json",
        ) from None


def admin_only(handler: Handler) -> Handler:
    """Wrap an ops handler: 401/403/429 with a JSON reason unless the caller is an admin."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        auth = request.app[ADMIN_AUTH]
        verdict = auth.check(request.remote, request.headers.get("Authorization"), request.headers.get("X-User-Id"))
        if verdict.status != 200:
            headers = {"WWW-Authenticate": 'Bearer realm="gateway-ops"'} if verdict.status == 401 else {}
            return json_response({"error": "unauthorized" if verdict.status == 401 else "forbidden",
                                  "detail": verdict.reason}, verdict.status, headers)
        request[PRINCIPAL] = verdict.principal
        return await handler(request)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped
