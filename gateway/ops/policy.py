"""Ops endpoints for the policy (admin only): `POST /api/ops/reload`, `GET /api/ops/policy`, and
`POST /api/ops/policy/validate` (the checks of `gateway check` on pasted text, nothing applied)."""

from __future__ import annotations

import asyncio
import hashlib
import re

from aiohttp import web

from gateway.audit import iso
from gateway.ops.http import admin_only, json_response, problem, read_json, record_action
from gateway.policy.loader import MAX_BYTES, PolicyError, parse_policy
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


_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


@admin_only
async def validate_policy(request: web.Request) -> web.StreamResponse:
    """Validate a candidate policy without applying it: `{"text": "<YAML>", "name"?: "candidate.yaml"}`.

    The same checks as `gateway check` (and a reload): 200 `{"valid": true, "version", "summary"}` or 200
    `{"valid": false, "problems": ["NAME:LINE key.path: message", ...]}`; 400 for a body that is not that.
    Nothing is written to disk and the running policy is not touched.
    """
    body = await read_json(request, max_bytes=2 * MAX_BYTES)
    if not isinstance(body, dict) or not isinstance(body.get("text"), str) or set(body) - {"text", "name"}:
        return problem(400, "bad_request",
                       'the body must be {"text": "<policy YAML>", "name"?: "<file name>"}')
    name = body.get("name", "candidate.yaml")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return problem(400, "bad_request", "name must be 1-100 characters of letters, digits, . _ -")
    text: str = body["text"]
    record_action(request, "policy.validate")
    try:
        # Off the event loop: a large policy takes a while to validate and proxied requests must not wait.
        policy = await asyncio.to_thread(parse_policy, text, name)
    except PolicyError as exc:
        return json_response({"valid": False, "problems": [str(p) for p in exc.problems]})
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    summary = (f"{name}: ok (version {version}: {len(policy.routes)} routes,"
               f" {len(policy.upstreams)} upstreams,"
               f" {len(policy.rate_limits)} rate limits, {len(policy.breakers)} breakers)")
    return json_response({"valid": True, "version": version, "summary": summary, "problems": []})


def add_routes(app: web.Application) -> None:
    """Register the policy ops endpoints (before the catch-all proxy route)."""
    app.router.add_post("/api/ops/reload", post_reload, expect_handler=defer_continue)
    app.router.add_get("/api/ops/policy", get_policy)
    app.router.add_post("/api/ops/policy/validate", validate_policy)
