"""The proxy's catch-all route, and CORS for it with aiohttp-cors; the ops API is never CORS-enabled.

The proxy is one catch-all route for every method, which aiohttp-cors accepts only as a class-based view. The
view answers a real preflight (OPTIONS with Origin and Access-Control-Request-Method) itself and hands every
other request, a plain OPTIONS included, to the pipeline. When the gateway owns CORS, an upstream's own
Access-Control-* response headers are dropped so the policy is the single source of truth (and aiohttp-cors
refuses to add headers that are already present).

The settings are read when the application is built: a change to `cors:` takes effect on restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp_cors
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from gateway.ops.http import add_ops_fallback, problem
from gateway.policy.model import Cors
from gateway.server import defer_continue

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


def cors_options(cors: Cors) -> dict[str, aiohttp_cors.ResourceOptions]:
    """aiohttp-cors options per allowed origin, built once from the policy."""
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=cors.credentials,
        expose_headers="*" if "*" in cors.expose_headers else cors.expose_headers,
        allow_headers="*" if "*" in cors.headers else cors.headers,
        max_age=int(cors.max_age) if cors.max_age is not None else None,
        allow_methods=cors.methods,
    )
    return {origin: options for origin in cors.origins}


def _every_target(pipeline: ProxyHandler) -> Middleware:
    """A request no route takes (`OPTIONS *`, `CONNECT host:443`: targets that are not a path) is still
    answered by the pipeline: JSON, a request id, an access log line and an SLO record, never aiohttp's
    plain-text 404. (Every path is taken by the catch-all route: its pattern matches line breaks too.)"""

    @web.middleware
    async def every_target(request: web.Request, handler: ProxyHandler) -> web.StreamResponse:
        if request.match_info.http_exception is not None:
            return await pipeline(request)
        return await handler(request)

    return every_target


def add_proxy_route(app: web.Application, handler: ProxyHandler, cors: Cors | None) -> web.AbstractRoute:
    """Register the catch-all proxy route (last), with CORS when the policy has `cors:` with origins.

    The ops namespace fallback goes in just before it: every ops route registered earlier stays reachable and
    no /api/ops/ path falls through to the upstream.
    """
    add_ops_fallback(app)
    app.middlewares.append(_every_target(handler))
    if cors is None or not cors.origins:
        return app.router.add_route("*", CATCH_ALL, handler, expect_handler=defer_continue)
    config = cors_options(cors)
    allowed_methods = frozenset(cors.methods)

    class ProxyView(web.View, aiohttp_cors.CorsViewMixin):
        """Every method goes to the pipeline except a CORS preflight, which the gateway answers."""

        @classmethod
        def get_request_config(cls, request: web.Request, request_method: str) -> Mapping[str, Any]:
            return config  # the same for every method: a preflight checks the method in _get_config

        async def _get_config(
            self, request: web.Request, origin: str, request_method: str
        ) -> Mapping[str, Any]:
            if request_method.upper() not in allowed_methods:
                raise KeyError(request_method)  # aiohttp-cors turns this into "method not allowed"
            return config

        async def _iter(self) -> web.StreamResponse:
            request = self.request
            headers = request.headers
            if (
                request.method == hdrs.METH_OPTIONS
                and hdrs.ORIGIN in headers
                and hdrs.ACCESS_CONTROL_REQUEST_METHOD in headers
            ):
                request[_ANSWERED_HERE] = True
                try:
                    response: web.StreamResponse = await self._preflight_handler(request)
                except web.HTTPForbidden as exc:
                    return problem(403, "cors_preflight_rejected", exc.text)
                return response
            return await handler(request)

    resource = app.router.add_resource(CATCH_ALL)
    route = resource.add_route("*", ProxyView, expect_handler=defer_continue)

    async def drop_upstream_cors(request: web.Request, response: web.StreamResponse) -> None:
        if request.match_info.route is route and not request.get(_ANSWERED_HERE):
            for name in _UPSTREAM_CORS:
                response.headers.popall(name, None)

    async def vary_on_origin(request: web.Request, response: web.StreamResponse) -> None:
        # The answer names one origin of several: a shared cache must not hand it to another origin.
        allowed = response.headers.get(hdrs.ACCESS_CONTROL_ALLOW_ORIGIN)
        if request.match_info.route is route and allowed not in (None, "*"):
            varies = ",".join(response.headers.getall(hdrs.VARY, ()))
            if "origin" not in varies.lower() and varies.strip() != "*":
                response.headers.add(hdrs.VARY, hdrs.ORIGIN)

    # Registered before aiohttp-cors's own hook (setup adds it), so it runs first.
    app.on_response_prepare.append(drop_upstream_cors)
    setup = aiohttp_cors.setup(app)
    setup.add(route)
    app.on_response_prepare.append(vary_on_origin)  # after aiohttp-cors has set Allow-Origin
    return route
