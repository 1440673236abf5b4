"""Every private name of a third-party library the gateway relies on, in one place.

aiohttp offers no public hook for these; each is small, and each has a test in tests/test_compat.py that
fails loudly (not quietly slower or unprotected) when a release renames or changes it. pyproject.toml caps
aiohttp below the next minor release, so an upgrade is a deliberate step: run tests/test_compat.py first.

Each use, why, and what to do when it breaks:

- `StreamResponse._send_headers_immediately` (`OneWriteResponse`): a body already complete goes out with its
  head in one write, as web.Response does. If it breaks: do what web.Response then does; failing that, drop
  the class (relay writes head and body apart: correct, one more system call per response).
- `web.Server._loop`, `web.Server._kwargs` (`HandlerRunner`): a server whose connection handler is the
  gateway's subclass, built with the settings aiohttp would have given its own. If it breaks: pass what the
  new `Server.__call__` passes to `RequestHandler`.
- `AppRunner._make_server` (`HandlerRunner`): the one place an AppRunner builds its server. If it breaks:
  override whatever builds `runner.server` now.
- `RequestHandler._request_count` (`requests_parsed`): the header deadline closes a connection that never
  completed a request head. If it breaks: wrap the server's public `request_factory` (called once per request)
  and count there.

- `RequestHandler._task_handler` (`handler_task`): at shutdown the handler still running is cancelled at the
  drain timeout (aiohttp waits the timeout twice over). If it breaks: cancel the handler's task from the
  request handler itself (`asyncio.current_task()` kept per connection).

- `aiohttp._http_parser` (`c_parser_in_use`): `gateway serve` refuses to run on the pure-Python HTTP parser
  (most past request-smuggling advisories were in it). If it breaks (the C parser module renamed), serve
  refuses to start, loudly: find the new module name of the C `HttpRequestParser`.

aiohttp-cors is not used (docs/design-notes.md, "Why no aiohttp-cors"): it needed two more private overrides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler


class OneWriteResponse(web.StreamResponse):
    """A response whose body is already complete: its head waits to go out in one write with the body.

    (web.Response does the same for its body; a streamed body keeps StreamResponse's head-first behaviour,
    so a slow or endless body, server-sent events say, still gets its head at once.)
    """

    _send_headers_immediately = False


# Makes one connection handler: called with the server, then aiohttp's own keyword arguments (loop=...,
# keepalive_timeout=..., access_log_class=..., and the rest of what the runner was given).
MakeHandler = Callable[..., RequestHandler]
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class _HandlerServer(web.Server):
    """aiohttp's server, rebuilt with the same settings, making connection handlers with `make_handler`."""

    def __init__(
        self, base: web.Server, make_handler: MakeHandler, wrap: Callable[[Handler], Handler] | None
    ) -> None:
        super().__init__(
            wrap(base.request_handler) if wrap is not None else base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self._make_handler = make_handler

    def __call__(self) -> RequestHandler:
        return self._make_handler(self, loop=self._loop, **self._kwargs)


class HandlerRunner(web.AppRunner):
    """An AppRunner whose connections are handled by `make_handler` (a RequestHandler subclass, say)."""

    def __init__(
        self,
        app: web.Application,
        *,
        make_handler: MakeHandler,
        wrap: Callable[[Handler], Handler] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._gateway_make_handler = make_handler
        self._gateway_wrap = wrap  # around the application's request handler (once per request)

    async def _make_server(self) -> web.Server:
        return _HandlerServer(await super()._make_server(), self._gateway_make_handler, self._gateway_wrap)


def requests_parsed(handler: RequestHandler) -> int:
    """Request heads parsed on this connection so far (a malformed one included)."""
    return handler._request_count


def handler_task(handler: RequestHandler) -> asyncio.Task[None] | None:
    """The task serving this connection's requests (None once it ended)."""
    return handler._task_handler


def c_parser_in_use() -> bool:
    """True when aiohttp's C HTTP parser is active (most past smuggling advisories were in the Python one)."""
    from aiohttp import http_parser

    return http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser"
