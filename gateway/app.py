"""The one place that wires the gateway together: policy -> runtime -> pipeline -> aiohttp application."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.events import Events
from gateway.logs import get_logger
from gateway.ops.auth import AdminAuth
from gateway.ops.http import ADMIN_AUTH
from gateway.pipeline import Pipeline
from gateway.policy.loader import LoadedPolicy
from gateway.runtime import Runtime, build_runtime

log = get_logger("gateway.app")


class Gateway:
    """Holds the current runtime: the single reference the request path reads.

    The runtime is built when the application starts (connection pools need the running loop).
    """

    def __init__(self, loaded: LoadedPolicy) -> None:
        self.loaded = loaded
        self.events = Events()
        self.runtime: Runtime | None = None
        self.draining = False  # set at the first shutdown signal: health answers 503 from then on

    def start(self) -> None:
        self.runtime = build_runtime(self.loaded, events=self.events)

    def current(self) -> Runtime:
        assert self.runtime is not None, "the gateway is not started"
        return self.runtime

    async def close(self) -> None:
        if self.runtime is not None:
            await asyncio.gather(*(client.close() for client in self.runtime.clients.values()))


GATEWAY = web.AppKey("gateway", Gateway)

# How the server runs the application: the CLI and the tests use the same settings.
RUNNER_KWARGS = {
    "access_log": None,  # the pipeline writes one structured line per request
    "handler_cancellation": True,  # a client that goes away cancels the upstream call
}


def build_app(loaded: LoadedPolicy) -> web.Application:
    """The gateway application for a validated policy: ops endpoints first, then the catch-all proxy."""
    server = loaded.policy.server
    app = web.Application(
        handler_args={
            "max_field_size": server.max_field_size,
            "max_headers": server.max_headers,
            "keepalive_timeout": server.idle_timeout,
        },
    )
    gateway = Gateway(loaded)
    app[GATEWAY] = gateway
    app[ADMIN_AUTH] = AdminAuth(loaded.policy.admin)
    pipeline = Pipeline(gateway.current, observers=[])

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        gateway.start()
        yield
        await gateway.close()

    app.cleanup_ctx.append(lifecycle)
    # Ops endpoints: each module adds its routes here, before the catch-all.
    app.router.add_route("*", "/{tail:.*}", pipeline.handle)
    return app
