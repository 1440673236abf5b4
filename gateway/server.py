"""The HTTP server around the application: connection limits, a header deadline, JSON parser errors,
and graceful shutdown.

aiohttp by itself lets a connection that never completes its first request live until the keep-alive timer,
answers parser errors in plain text with a logged traceback, and has no cap on connections. The classes here
add those protections without touching the request path.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.compat import HandlerRunner, handler_task, requests_parsed
from gateway.logs import flush_access_log, get_logger
from gateway.policy.model import Server as ServerSettings
from gateway.tls import Certificate

log = get_logger("gateway.server")

# The Server header of every answer the gateway writes itself: no product versions (aiohttp's default is
# `Python/3.11 aiohttp/3.x`, a free hint for anyone matching a CVE list). Relayed answers follow
# server.upstream_server_header.
SERVER_NAME = "gateway"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int
    header_timeout: float
    write_timeout: float = 30.0

    @classmethod
    def from_policy(cls, server: ServerSettings) -> ConnectionLimits:
        return cls(
            max_connections=server.max_connections,
            header_timeout=server.header_timeout,
            write_timeout=server.write_timeout,
        )


@dataclass
class ServerStats:
    """Connections the server ended on its own, by reason (read by the metrics collector at scrape time).

    Counted, not logged one line each: a slowloris or a flood of stalled readers would flood the log.
    """

    refused: int = 0  # over max_connections
    header_timeouts: int = 0  # no complete request head within header_timeout
    write_stalls: int = 0  # the client read nothing of its answer for write_timeout


SERVER_STATS = web.AppKey("server_stats", ServerStats)
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
ProxyHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NOT_A_PATH: web.AppKey[ProxyHandler] = web.AppKey("not_a_path")  # the pipeline: targets that are not a path
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def defer_continue(request: web.Request) -> web.StreamResponse | None:
    """A route's expect_handler: `100 Continue` waits for the decision (aiohttp's own sends it before the
    handler has looked at the request, then 413, 401 or 429 follows). Any other expectation: 417."""
    if request.headers.get("Expect", "").lower() == "100-continue":
        return None  # `send_continue` answers it once the request is admitted
    body = orjson.dumps({"error": "expectation_failed", "detail": "only Expect: 100-continue is supported"})
    return web.Response(status=417, body=body, content_type="application/json",
                        headers={"Server": SERVER_NAME})


async def send_continue(request: web.BaseRequest) -> None:
    """Tell a client waiting on `Expect: 100-continue` to send its body: call once it is admitted."""
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        writer = request.writer
        if writer.output_size == 0:  # not twice, and never after a response has started
            await writer.write(_CONTINUE)
            writer.output_size = 0


def _busy_response() -> bytes:
    body = orjson.dumps({"error": "too_many_connections", "detail": "the gateway is at its connection limit"})
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\nServer: {SERVER_NAME}\r\nContent-Type: application/json\r\n"
        "Retry-After: 1\r\n"
        f"Cache-Control: no-store\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_BUSY = _busy_response()


class GatewayRequestHandler(RequestHandler):
    """aiohttp's connection handler with a connection cap, a first-request header deadline and JSON errors."""

    def __init__(
        self, manager: web.Server, *, limits: ConnectionLimits, stats: ServerStats, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._limits = limits
        self._stats = stats
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self.stalled = False  # set when the write deadline cut the connection: the client's fault
        self.data_at = 0.0  # perf_counter() when bytes last came in: a request's clock starts at its head

    def data_received(self, data: bytes) -> None:
        self.data_at = time.perf_counter()
        super().data_received(data)

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 (aiohttp's signature)
        """Drain: the handler still running at `timeout` is cancelled then. (aiohttp waits `timeout`, then
        cancels only the request's body and waits `timeout` again: a handler reading no body, a tunnel or a
        slow upstream call, got twice server.drain_timeout, past a supervisor's kill deadline.)"""
        cutoff = None
        if timeout is not None:
            cutoff = asyncio.get_running_loop().call_later(timeout, self._cancel_handler)
        try:
            await super().shutdown(timeout)
        finally:
            if cutoff is not None:
                cutoff.cancel()

    def _cancel_handler(self) -> None:
        task = handler_task(self)
        if task is not None and not task.done():
            task.cancel()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self._server.connections) >= self._limits.max_connections:
            self._refused = True
            self._stats.refused += 1
            transport.write(_BUSY)  # type: ignore[attr-defined]
            transport.close()
            return
        super().connection_made(transport)
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._limits.header_timeout, self._header_deadline)

    def _header_deadline(self) -> None:
        self._header_timer = None
        transport = self.transport
        if requests_parsed(self) == 0 and transport is not None:
            # No complete request head within the deadline: a slow or idle client holding a slot.
            self._stats.header_timeouts += 1
            self.force_close()  # (it drops self.transport)
            transport.close()

    # The transport pauses the protocol when the client has left more than the high-water mark of our
    # answer unread. The write deadline runs only while paused: nothing is armed per write on the hot path.
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            loop = asyncio.get_running_loop()
            self._write_timer = loop.call_later(self._limits.write_timeout, self._write_deadline)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_deadline(self) -> None:
        self._write_timer = None
        transport = self.transport
        if transport is not None:
            self.stalled = True
            self._stats.write_stalls += 1
            transport.abort()  # not close(): that would wait to flush what the client does not read

    def connection_lost(self, exc: BaseException | None) -> None:
        for timer in (self._header_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._write_timer = None
        if self._refused:
            return  # refused at connection_made: aiohttp never knew this connection
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Parser errors as JSON with a reason; 431 for oversized headers; one log line, no traceback."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        error, detail = "bad_request", "malformed HTTP request"
        if isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)
        ):
            status, error, detail = 431, "headers_too_large", "request header fields too large"
        elif isinstance(exc, BadHttpMessage):
            detail = (exc.message or "malformed HTTP request").splitlines()[0].rstrip(":")
        elif status >= 500:
            error, detail = "gateway_error", "the gateway failed to handle the request"
        log.warning(
            "bad_request",
            status=status,
            peer=request.remote,
            detail=detail,
            exc=exc.__class__.__name__ if exc else None,
        )
        response = web.Response(
            status=status,
            body=orjson.dumps({"error": error, "detail": detail}),
            content_type="application/json",
            headers={"Server": SERVER_NAME},
        )
        response.force_close()
        return response


def _every_target(not_a_path: ProxyHandler | None) -> Callable[[Handler], Handler] | None:
    """Around the application: a request whose target is not a path (`OPTIONS *`, `CONNECT host:443`) goes
    straight to the pipeline, which answers it (JSON, request id, log line, SLO record); aiohttp's router
    would answer a plain-text 404 of its own. One string test per request."""
    if not_a_path is None:
        return None

    def wrap(app_handler: Handler) -> Handler:
        async def every_target(request: web.BaseRequest) -> web.StreamResponse:
            if request.raw_path[:1] != "/" and isinstance(request, web.Request):
                return await not_a_path(request)
            return await app_handler(request)

        return every_target

    return wrap


class GatewayRunner(HandlerRunner):
    """An AppRunner whose server uses GatewayRequestHandler; the CLI and the tests both run through it."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        stats = app.get(SERVER_STATS) or ServerStats()  # build_app puts one in; a bare app gets its own
        handler = functools.partial(GatewayRequestHandler, limits=limits, stats=stats)
        super().__init__(app, make_handler=handler, wrap=_every_target(app.get(NOT_A_PATH)), **kwargs)


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    limits: ConnectionLimits,
    drain_timeout: float,
    runner_kwargs: dict[str, Any],
    on_draining: Callable[[], None] = lambda: None,
    reuse_port: bool = False,
    certificate: Certificate | None = None,
    plain_port: int | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then drain: health turns 503 at once (`on_draining`), the listener stops
    accepting, in-flight requests get `drain_timeout` to finish, cleanup hooks flush buffers. A second
    signal exits at once. `sock`: a listening socket to serve on instead of binding host:port (a worker of
    `serve --workers N` inherits its supervisor's)."""
    loop = asyncio.get_running_loop()
    runner = GatewayRunner(app, limits=limits, shutdown_timeout=drain_timeout, **runner_kwargs)
    await runner.setup()
    tls_listener: asyncio.Server | None = None
    if sock is not None:  # a worker of `serve --workers N`: the supervisor's listener
        reuse_port = True  # the plain port, if any, is bound by every worker: shared with SO_REUSEPORT
    if certificate is None:
        if sock is not None:
            await web.SockSite(runner, sock, backlog=1024).start()
        else:
            await web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=1024).start()
    else:
        # Not a TCPSite: it takes no handshake deadline, and asyncio's default lets a client that never
        # finishes its TLS handshake hold a socket for 60 s, unseen by the header deadline and max_connections
        # (the connection handler only hears of a connection once its handshake is done).
        assert runner.server is not None
        context, handshake = certificate.context, limits.header_timeout
        if sock is not None:
            tls_listener = await loop.create_server(
                runner.server, sock=sock, ssl=context, ssl_handshake_timeout=handshake, backlog=1024
            )
        else:
            tls_listener = await loop.create_server(
                runner.server, host, port, ssl=context, ssl_handshake_timeout=handshake,
                reuse_port=reuse_port, backlog=1024,
            )
    if sock is not None:
        host, port = sock.getsockname()[:2]
    log.info("listening", host=host, port=port, tls=certificate is not None)
    watch: asyncio.Task[None] | None = None
    if certificate is not None:
        watch = loop.create_task(certificate.watch(), name="tls-certificate-watch")
    if plain_port is not None:
        await web.TCPSite(runner, host, plain_port, reuse_port=reuse_port, backlog=1024).start()
        log.info("listening", host=host, port=plain_port, tls=False)
    stop = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second_signal_exit_now")
            os._exit(1)
        log.info("draining", signal=signal.Signals(signum).name, drain_timeout=drain_timeout)
        on_draining()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await stop.wait()
    finally:
        # Stop accepting, wait for in-flight handlers up to shutdown_timeout, then run the cleanup hooks
        # (audit flush, pool close). The signal handlers stay: a second signal exits at once.
        if watch is not None:
            watch.cancel()
        if tls_listener is not None:
            tls_listener.close()  # (runner.cleanup stops its own sites; this one is ours)
        await runner.cleanup()
        flush_access_log()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("stopped")
