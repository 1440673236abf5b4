"""`GET /ops/`: the ops console, served by the gateway itself, and `GET /api/ops/openapi.yaml`.

The console is three static files shipped in the package (gateway/ops/static/console/: no CDN, no fonts, no
build step) and read once at start. The page holds no data: every number on it comes from the documented ops
API with the admin's credentials (a bearer token kept in the tab's sessionStorage and sent in the
Authorization header, never in a URL; or, from `admin.trusted_networks`, the runbook's admin id). So the
shell is served to anyone (asking AdminAuth here would count every page load without a token as a failed
attempt), and the admin rule is enforced where the data is, exactly as for curl.

Every console answer carries a Content-Security-Policy with no inline script or style and no other origin,
`frame-ancestors 'none'` and `X-Frame-Options: DENY`; the script renders every value with textContent.
State-changing calls pass the CSRF check of `gateway.ops.http.cross_site`.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from gateway.ops.http import admin_only, method_not_allowed

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
    " font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
PREFIX = "/ops/"


def _read(name: str) -> bytes:
    return (resources.files("gateway.ops") / "static" / "console" / name).read_bytes()


def openapi_text() -> bytes:
    """The ops API's OpenAPI 3.1 document, as shipped in the package."""
    return (resources.files("gateway.ops") / "openapi.yaml").read_bytes()


def add_routes(app: web.Application) -> None:
    """Register /ops (redirect), /ops/ and its two assets, and /api/ops/openapi.yaml (admin)."""
    bodies = {name: _read(name) for name in FILES}  # read once: a few tens of KiB
    document = openapi_text()

    def serve(name: str) -> web.StreamResponse:
        headers = {**SECURITY_HEADERS, "Content-Type": FILES[name]}
        return web.Response(body=bodies[name], headers=headers)

    async def index(_: web.Request) -> web.StreamResponse:
        return serve("index.html")

    async def script(_: web.Request) -> web.StreamResponse:
        return serve("app.js")

    async def style(_: web.Request) -> web.StreamResponse:
        return serve("app.css")

    async def to_index(_: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect(PREFIX, headers=SECURITY_HEADERS)

    @admin_only
    async def openapi(_: web.Request) -> web.StreamResponse:
        """The OpenAPI document of the ops API (admin, like everything it describes)."""
        return web.Response(body=document, headers={"Content-Type": "application/yaml; charset=utf-8",
                                                    "Cache-Control": "no-store"})

    refuse = method_not_allowed("GET")
    for path, handler in (("/ops", to_index), (PREFIX, index), (PREFIX + "app.js", script),
                          (PREFIX + "app.css", style)):
        app.router.add_get(path, handler)
        app.router.add_route("*", path, refuse)  # the gateway's paths: other methods never reach the upstream
    app.router.add_get("/api/ops/openapi.yaml", openapi)
