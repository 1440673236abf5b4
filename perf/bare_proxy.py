"""The fair reference for the gateway's overhead: the least an aiohttp reverse proxy can do.

One shared ClientSession (pooled keep-alive connections), uvloop, no access log, bodies streamed both ways,
hop-by-hop headers dropped. No routing, no limits, no breaker, no metrics, no logs: whatever the gateway costs
beyond this is the price of its policies.

    python perf/bare_proxy.py --upstream http://127.0.0.1:8001 --port 8100
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def build_app(upstream: str) -> web.Application:
    """A pass-through to `upstream` for every method and path."""
    base = upstream.rstrip("/")
    app = web.Application()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, limit_per_host=256),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        yield
        await app[SESSION].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        data = request.content if request.body_exists else None
        async with request.app[SESSION].request(
            request.method,
            URL(base + request.raw_path, encoded=True),
            headers=headers,
            data=data,
            allow_redirects=False,
        ) as upstream_response:
            response = web.StreamResponse(status=upstream_response.status, reason=upstream_response.reason)
            for name, value in upstream_response.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            if upstream_response.content_length is not None:
                response.content_length = upstream_response.content_length
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    import uvloop

    loop = uvloop.new_event_loop()
    web.run_app(
        build_app(args.upstream), host=args.host, port=args.port, access_log=None, print=None, loop=loop
    )


if __name__ == "__main__":
    main()
