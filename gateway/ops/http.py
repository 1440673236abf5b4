"""Helpers shared by every ops handler: JSON answers, the JSON body reader and the admin gate (audited).

Every call that passes `admin_only` produces exactly one `admin_action` event when it finishes: principal,
action, status, and for state changes the before/after a handler records with `record_action` (a handler that
emits its own `admin_action` instead is noticed through `watch_admin_actions` and not audited twice). Refused
attempts (401/403) are audited as action "auth_failed"; 429s are not (they are the limiter doing its job, and
auditing them would let a flood of guesses flood the trail), nor are 421s for a Host outside admin.hosts
(a rebinding page can send them at will).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Protocol

import orjson
from aiohttp import web

from gateway.audit import AuditTrail
from gateway.events import Event, Events
from gateway.identity import forwarded_for
from gateway.logs import get_logger
from gateway.ops.auth import AdminAuth
from gateway.runtime import Runtime
from gateway.server import SERVER_NAME, defer_continue, send_continue

log = get_logger("gateway.ops")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GatewayView(Protocol):
    """What ops handlers read of the gateway (gateway.app.Gateway): its current runtime and audit trail."""

    runtime: Runtime | None
    draining: bool
    audit: AuditTrail | None

    @property
    def last_error(self) -> str | None: ...


GATEWAY_VIEW: web.AppKey[GatewayView] = web.AppKey("gateway_view")
ADMIN_AUTH = web.AppKey("admin_auth", AdminAuth)
EVENTS = web.AppKey("events", Events)  # the gateway's domain event bus, for the audit of admin calls
PRINCIPAL = web.RequestKey("principal", str)  # who the admin is: "token:<fingerprint>" or "user:<id>"
_ACTION = web.RequestKey("admin_action", tuple)  # (action, before, after) recorded by the handler
# Set while an admin call runs: [True] once the handler has emitted its own admin_action (seen by
# `watch_admin_actions`), so the gate does not audit the same call twice.
_AUDITED: ContextVar[list[bool] | None] = ContextVar("admin_call_audited", default=None)


def _dumps(data: Any) -> bytes:
    return orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer that is never cached."""
    return web.Response(
        status=status,
        body=_dumps(data),
        content_type="application/json",
        headers={"Cache-Control": "no-store", "Server": SERVER_NAME, **(headers or {})},
    )


def problem(status: int, error: str, detail: str | None = None, **fields: Any) -> web.Response:
    """A 4xx/5xx JSON answer: {"error": <code>, "detail": <reason>, ...}."""
    body: dict[str, Any] = {"error": error}
    if detail is not None:
        body["detail"] = detail
    body.update(fields)
    return json_response(body, status)


def _http_error(cls: type[web.HTTPError], error: str, detail: str, **kwargs: Any) -> web.HTTPError:
    return cls(text=_dumps({"error": error, "detail": detail}).decode(), content_type="application/json",
               headers={"Cache-Control": "no-store", "Server": SERVER_NAME}, **kwargs)


async def read_json(request: web.Request, max_bytes: int = 1 << 20) -> Any:
    """The request's JSON body, or raise a 400/413 JSON answer with the reason.

    The body is parsed as JSON whatever the Content-Type says: `curl -d '{...}'` sends
    application/x-www-form-urlencoded, and the runbook's commands must work as written.
    """
    if request.content_length is not None and request.content_length > max_bytes:
        raise _http_error(web.HTTPRequestEntityTooLarge, "body_too_large",
                          f"the body is over {max_bytes} bytes", max_size=max_bytes,
                          actual_size=request.content_length)
    await send_continue(request)  # admitted (the admin gate ran first): now the client may send its body
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise _http_error(web.HTTPRequestEntityTooLarge, "body_too_large",
                          f"the body is over {max_bytes} bytes", max_size=max_bytes, actual_size=len(raw))
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _http_error(web.HTTPBadRequest, "invalid_json", f"the body is not JSON: {exc}") from None


def record_action(request: web.Request, action: str, before: Any = None, after: Any = None) -> None:
    """Name what an admin handler did (e.g. "breaker.close") and the state before/after, for the audit."""
    request[_ACTION] = (action, before, after)


def _default_action(request: web.Request) -> str:
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    return f"{request.method} {path}"


def watch_admin_actions(event: Event) -> None:
    """Events subscriber: notes that the admin call in progress (same task context) audited itself."""
    if event.type == "admin_action":
        audited = _AUDITED.get()
        if audited is not None:
            audited[0] = True


def install(app: web.Application, events: Events) -> None:
    """Give the ops handlers the event bus `admin_only` audits to (call once per application)."""
    app[EVENTS] = events
    events.subscribe(watch_admin_actions)


def _emit(request: web.Request, **fields: Any) -> None:
    events = request.app.get(EVENTS)
    if events is not None:
        events.emit("admin_action", **fields)


def misdirected(request: web.Request) -> web.Response | None:
    """421 JSON when the request's Host is not one of admin.hosts (DNS rebinding), else None."""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    local = sockname[0] if isinstance(sockname, tuple) and sockname else None
    hosts = request.headers.getall("Host", [])
    if request.app[ADMIN_AUTH].host_allowed(hosts, local):
        return None
    shown = hosts[0][:100] if len(hosts) == 1 else f"{len(hosts)} Host lines"
    return problem(421, "misdirected_request",
                   f"the ops API does not answer to {shown!r}: not one of admin.hosts")


# The header the ops console sends with every state-changing call. A page on another origin can only add a
# custom header through a CORS preflight, which the ops API never grants.
CSRF_HEADER = "X-Requested-By"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The console polls every second; auditing each of those reads would push the events that matter out of the
# capped trail (two records a second per open tab). A successful read sent with this header is not audited:
# an admin can only leave their own reads out this way, never a change or a refusal.
POLL_HEADER = "X-Ops-Poll"
_READ_ONLY_POSTS = frozenset({"/api/ops/export", "/api/ops/policy/validate"})


def _unaudited_poll(request: web.Request, status: int) -> bool:
    if status >= 400 or request.headers.get(POLL_HEADER) != "1":
        return False
    if request.method in ("GET", "HEAD"):
        return True
    resource = request.match_info.route.resource
    return request.method == "POST" and resource is not None and resource.canonical in _READ_ONLY_POSTS
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _host_port(value: str, scheme: str) -> str:
    value = value.strip().lower()
    host, sep, port = value.rpartition(":")
    if sep and "]" not in port and port == _DEFAULT_PORTS.get(scheme):
        return host
    return value


def cross_site(request: web.Request) -> str | None:
    """Why a state-changing ops call from a browser must be refused (CSRF), or None.

    A bearer token in a header cannot be sent by another site, but an admin believed by address
    (`X-User-Id` from `admin.trusted_networks`, perhaps added by an SSO proxy) could be ridden by any page
    the admin visits: a cross-site form POST is a "simple" request, and the body is read as JSON whatever its
    Content-Type. So when the request comes from a browser (it carries `Origin` or `Sec-Fetch-Site`), the
    Origin must be the gateway's own and the custom header `X-Requested-By` must be present. curl and other
    programs send neither browser header and are not affected.
    """
    if request.method in _SAFE_METHODS:
        return None
    headers = request.headers
    origin = headers.get("Origin")
    fetch_site = headers.get("Sec-Fetch-Site")
    if origin is None and fetch_site is None:
        return None  # not a browser
    if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
        return f"a {fetch_site.strip()[:20]} request from a browser may not change state"
    if origin is not None:
        scheme, sep, rest = origin.strip().partition("://")
        if not sep or _host_port(rest, scheme.lower()) != _host_port(request.host, scheme.lower()):
            return "the Origin is not this gateway's: cross-site requests may not change state"
    if not headers.get(CSRF_HEADER, "").strip():
        return f"a state-changing call from a browser needs the {CSRF_HEADER} header"
    return None


def admin_only(handler: Handler) -> Handler:
    """Wrap an ops handler: 401/403/429 with a JSON reason unless the caller is an admin; audit the call.

    State-changing calls from a browser must also pass `cross_site` (403 `cross_origin`)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        wrong_host = misdirected(request)  # before any credential is looked at
        if wrong_host is not None:
            return wrong_host
        auth = request.app[ADMIN_AUTH]
        headers = request.headers
        refused = cross_site(request)
        if refused is not None:
            _emit(request, principal=None, action="auth_failed", before=None, after=None,
                  method=request.method, path=request.path, status=403, client=request.remote or "unknown",
                  reason=refused)
            return problem(403, "cross_origin", refused)
        verdict = auth.check(request.remote, headers.get("Authorization"), headers.get(auth.user_header),
                             forwarded_for(headers))
        if verdict.status != 200:
            extra: dict[str, str] = {}
            if verdict.status == 401:
                extra["WWW-Authenticate"] = 'Bearer realm="gateway-ops"'
            if verdict.retry_after is not None:
                extra["Retry-After"] = str(verdict.retry_after)
            if verdict.status != 429:
                _emit(request, principal=None, action="auth_failed", before=None, after=None,
                      method=request.method, path=request.path, status=verdict.status, client=verdict.client,
                      reason=verdict.reason)
            error = {401: "unauthorized", 403: "forbidden", 429: "too_many_attempts"}.get(verdict.status,
                                                                                          "denied")
            return json_response({"error": error, "detail": verdict.reason}, verdict.status, extra)
        request[PRINCIPAL] = verdict.principal or ""
        status = 500
        audited = [False]
        token = _AUDITED.set(audited)
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except Exception:
            # A handler's bug becomes a JSON reason, never a traceback (aiohttp's default is a text 500).
            log.exception("ops_handler_failed", handler=handler.__name__, path=request.path)
            return problem(500, "internal_error", "the ops handler failed; see the gateway log")
        finally:
            _AUDITED.reset(token)
            if not audited[0] and not _unaudited_poll(request, status):
                action, before, after = request.get(_ACTION) or (_default_action(request), None, None)
                _emit(request, principal=verdict.principal, action=action, before=before, after=after,
                      method=request.method, path=request.path, status=status, client=verdict.client)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    wrapped.__wrapped__ = handler  # type: ignore[attr-defined]
    return wrapped


OPS_PREFIX = "/api/ops"


def method_not_allowed(*allowed: str) -> Handler:
    """A handler for the other methods of a path the gateway owns: a JSON 405 with Allow, never proxied."""
    names = sorted({*allowed, "HEAD"} if "GET" in allowed else set(allowed))

    async def refuse(request: web.Request) -> web.StreamResponse:
        detail = f"{request.method} is not allowed here"
        return json_response({"error": "method_not_allowed", "detail": detail, "allowed": names}, 405,
                             {"Allow": ", ".join(names)})

    return refuse


async def _ops_not_found(request: web.Request) -> web.Response:
    """405 with Allow for a known ops path and another method, else 404: JSON either way, never proxied."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is request.match_info.route.resource or not resource.canonical.startswith(OPS_PREFIX):
            continue
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    if allowed:
        detail = f"{request.method} is not allowed here"
        return json_response({"error": "method_not_allowed", "detail": detail, "allowed": sorted(allowed)},
                             405, {"Allow": ", ".join(sorted(allowed))})
    return problem(404, "not_found", f"no ops endpoint at {request.path}")


def add_ops_fallback(app: web.Application) -> None:
    """After every ops route: the /api/ops/ namespace is the gateway's and never reaches the upstream."""
    app.router.add_route("*", OPS_PREFIX + r"/{tail:[\s\S]*}", _ops_not_found, expect_handler=defer_continue)
