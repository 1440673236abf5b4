"""The proxy's catch-all route, and CORS for it; the ops API is never CORS-enabled.

A real preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered here from the policy
and never reaches the upstream; every other request, a plain OPTIONS included, goes to the pipeline, and its
answer gets the CORS response headers when its Origin is allowed. When the gateway owns CORS, an upstream's
own Access-Control-* response headers are dropped so the policy is the single source of truth. (Why this is
not aiohttp-cors: docs/design-notes.md.)

The settings are read when the application is built: a change to `cors:` takes effect on restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import hdrs, web

from gateway.ops.http import add_ops_fallback, problem
from gateway.policy.model import Cors
from gateway.server import NOT_A_PATH, SERVER_NAME, defer_continue

ProxyHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CATCH_ALL = r"/{tail:[\s\S]*}"
_ANSWERED_HERE = web.RequestKey(
    "cors_preflight", bool
)  # the gateway's own preflight answer: keep its headers
_UPSTREAM_CORS = tuple(
    h.lower()
    for h in (
        hdrs.ACCESS_CONTROL_ALLOW_ORIGIN,
        hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS,
        hdrs.ACCESS_CONTROL_EXPOSE_HEADERS,
        hdrs.ACCESS_CONTROL_ALLOW_METHODS,
        hdrs.ACCESS_CONTROL_ALLOW_HEADERS,
        hdrs.ACCESS_CONTROL_MAX_AGE,
    )
)
# CORS-safelisted response headers: a browser shows them to scripts without being told to.
_SAFELISTED = frozenset(
    {"cache-control", "content-language", "content-type", "expires", "last-modified", "pragma"}
)


@dataclass(frozen=True, slots=True)
class CorsRules:
    """The policy's `cors:` compiled once: sets for the per-request checks, header values pre-rendered."""

    any_origin: bool
    origins: frozenset[str]
    methods: frozenset[str]  # upper case
    headers: frozenset[str] | None  # upper case; None: any header
    expose: str | None  # the Access-Control-Expose-Headers value; None: nothing exposed
    expose_all: bool  # "*": every header the answer carries, bar the safelisted ones
    credentials: bool
    max_age: str | None

    @classmethod
    def compile(cls, cors: Cors) -> CorsRules:
        expose_all = "*" in cors.expose_headers
        return cls(
            any_origin="*" in cors.origins,
            origins=frozenset(cors.origins),
            methods=frozenset(m.upper() for m in cors.methods),
            headers=None if "*" in cors.headers else frozenset(h.upper() for h in cors.headers),
            expose=None if expose_all or not cors.expose_headers else ",".join(cors.expose_headers),
            expose_all=expose_all,
            credentials=cors.credentials,
            max_age=str(int(cors.max_age)) if cors.max_age is not None else None,
        )

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    def preflight(self, request: web.Request) -> web.Response:
        """The answer to a preflight: 200 with the grant, or a 403 JSON problem saying what was refused."""
        origin = request.headers[hdrs.ORIGIN]
        method = request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD]
        if method.upper() not in self.methods:
            return _refused(f"request method {method!r} is not allowed for {origin!r} origin")
        if not self.allows(origin):
            return _refused(f"origin '{origin}' is not allowed")
        asked = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
        wanted = sorted({h.strip(" \t").upper() for h in asked.split(",")} - {""})
        if self.headers is not None:
            refused = [h for h in wanted if h not in self.headers]
            if refused:
                return _refused(f"headers are not allowed: {', '.join(refused)}")
        response = web.Response(headers={"Server": SERVER_NAME})  # no versions (aiohttp's default names them)
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        if self.credentials:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
        if self.max_age is not None:
            response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = self.max_age
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = method
        if wanted:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ",".join(wanted)
        return response

    def grant(self, origin: str, response: web.StreamResponse) -> None:
        """The CORS headers of an actual (not preflight) answer to an allowed origin."""
        headers = response.headers
        if self.expose_all:
            names = {n.lower(): n for n in headers if n.lower() not in _SAFELISTED}
            headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = ",".join(names.values())
        elif self.expose is not None:
            headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = self.expose
        headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        if self.credentials:
            headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"


def _refused(reason: str) -> web.Response:
    return problem(403, "cors_preflight_rejected", f"CORS preflight request failed: {reason}")


def _is_preflight(request: web.BaseRequest) -> bool:
    headers = request.headers
    return (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ORIGIN in headers
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in headers
    )


def add_proxy_route(app: web.Application, handler: ProxyHandler, cors: Cors | None) -> web.AbstractRoute:
    """Register the catch-all proxy route (last), with CORS when the policy has `cors:` with origins.

    The ops namespace fallback goes in just before it: every ops route registered earlier stays reachable and
    no /api/ops/ path falls through to the upstream.
    """
    add_ops_fallback(app)
    app[NOT_A_PATH] = handler  # `OPTIONS *`, `CONNECT host:443`: no route takes them; the pipeline answers
    if cors is None or not cors.origins:
        return app.router.add_route("*", CATCH_ALL, handler, expect_handler=defer_continue)
    rules = CorsRules.compile(cors)

    async def proxy_with_cors(request: web.Request) -> web.StreamResponse:
        if _is_preflight(request):
            request[_ANSWERED_HERE] = True
            return rules.preflight(request)
        return await handler(request)

    route = app.router.add_route("*", CATCH_ALL, proxy_with_cors, expect_handler=defer_continue)

    async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
        if request.match_info.route is not route:
            return
        if not request.get(_ANSWERED_HERE):
            for name in _UPSTREAM_CORS:
                response.headers.popall(name, None)
            origin = request.headers.get(hdrs.ORIGIN)
            if origin is not None and rules.allows(origin):
                rules.grant(origin, response)
        # The answer names one origin of several: a shared cache must not hand it to another origin.
        allowed = response.headers.get(hdrs.ACCESS_CONTROL_ALLOW_ORIGIN)
        if allowed not in (None, "*"):
            varies = ",".join(response.headers.getall(hdrs.VARY, ()))
            if "origin" not in varies.lower() and varies.strip() != "*":
                response.headers.add(hdrs.VARY, hdrs.ORIGIN)

    app.on_response_prepare.append(cors_headers)
    return route
