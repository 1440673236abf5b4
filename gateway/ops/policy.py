"""Ops endpoints for the running policy: `POST /api/ops/reload` and `GET /api/ops/policy` (admin only)."""

from __future__ import annotations

from aiohttp import web

from gateway.audit import iso
from gateway.ops.http import admin_only, json_response, problem, read_json, record_action
from gateway.reload import RELOADER, ReloadResult, RollbackUnavailable
from gateway.server import defer_continue


@admin_only
async def post_reload(request: web.Request) -> web.StreamResponse:
    """Reload the policy file, or `{"rollback": true}` to return to the previous policy held in memory.

    200 with the diff when applied (or "unchanged"); 400 listing every problem when the file is invalid (the
    running policy keeps serving); 409 when there is nothing to roll back to.
    """
    body = await read_json(request, max_bytes=4096)
    if not isinstance(body, dict):
        return problem(400, "bad_request", 'the body must be a JSON object: {} or {"rollback": true}')
    unknown = sorted(set(body) - {"rollback"})
    if unknown:
        return problem(400, "bad_request", f"unknown field {unknown[0]!r} (known: rollback)")
    rollback = body.get("rollback", False)
    if not isinstance(rollback, bool):
        return problem(400, "bad_request", "rollback must be true or false")
    reloader = request.app[RELOADER]
    before = reloader.running.version
    try:
        result: ReloadResult = await (reloader.rollback() if rollback else reloader.reload("api"))
    except RollbackUnavailable as exc:
        return problem(409, "no_previous_policy", str(exc), version=before)
    # admin_only audits the call as one admin_action event; this names it and the versions it moved between.
    action = "policy.rollback" if rollback else "policy.reload"
    record_action(request, action, before=before, after=result.version)
    answer = result.as_dict()
    if result.result == "error":
        return json_response({"error": "invalid_policy", **answer}, 400)
    answer["file_differs"] = reloader.file_differs
    return json_response(answer)


@admin_only
async def get_policy(request: web.Request) -> web.StreamResponse:
    """The policy the gateway is running: version, loaded_at, source, text, the validated model, history.

    Times are ISO 8601 UTC, as in /api/ops/health and the audit trail.
    """
    body = request.app[RELOADER].describe()
    body["loaded_at"] = iso(body["loaded_at"])
    body["history"] = [{**entry, "loaded_at": iso(entry["loaded_at"])} for entry in body["history"]]
    if body["last_error"] is not None:
        body["last_error"] = {**body["last_error"], "time": iso(body["last_error"]["time"])}
    return json_response(body)


def add_routes(app: web.Application) -> None:
    """Register the policy ops endpoints (before the catch-all proxy route)."""
    app.router.add_post("/api/ops/reload", post_reload, expect_handler=defer_continue)
    app.router.add_get("/api/ops/policy", get_policy)
