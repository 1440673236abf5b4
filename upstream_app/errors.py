"""JSON error shape shared by every endpoint, plus strict request-body helpers."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any, TypeGuard

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("upstream_app")

_USER_ID_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


class ApiError(Exception):
    """An expected client-facing failure rendered as ``{"error": ..., "detail": ...}``."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: Any = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def error_response(
    status: int,
    error: str,
    detail: Any = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    """Build the canonical JSON error response; ``extra`` adds top-level fields."""
    body = {"error": error, "detail": detail, **(extra or {})}
    return web.json_response(body, status=status, headers=headers)


def _slug(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "error"


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn ApiError, aiohttp HTTP errors (404/405/413...) and crashes into JSON bodies."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.error, exc.detail, exc.headers, exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Keep headers such as Allow on 405; drop the text/plain content type aiohttp set.
        headers = {
            k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
        }
        return error_response(exc.status, _slug(exc.reason), None, headers)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """Parse the body as a JSON object: syntax errors -> 400, a non-object document -> 422."""
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, bad UTF-8 and oversized integer literals.
        raise ApiError(400, "invalid_json", "request body must be valid JSON") from exc
    if not isinstance(data, dict):
        raise ApiError(422, "validation_error", {"body": "must be a JSON object"})
    return data


def reject_unknown(data: Mapping[str, Any], allowed: set[str]) -> None:
    """Strict schemas: any field we don't know is a client bug worth surfacing (422)."""
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(422, "validation_error", {name: "unknown field" for name in unknown})


def require_user(request: web.Request) -> str:
    """Return the caller id from ``X-User-Id``: missing -> 401, malformed -> 400."""
    user_id = request.headers.get("X-User-Id")
    if user_id is None or user_id.strip() == "":
        raise ApiError(401, "unauthenticated", "X-User-Id header is required")
    if not _USER_ID_RE.fullmatch(user_id):
        raise ApiError(400, "invalid_user_id", "X-User-Id must be 1-128 chars of [A-Za-z0-9._:@-]")
    return user_id


def is_int(value: object) -> TypeGuard[int]:
    """True for real JSON integers; bool is an int subclass in Python but not in JSON."""
    return isinstance(value, int) and not isinstance(value, bool)
