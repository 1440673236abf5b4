"""Upstream failures: one exception with a `kind` that breakers, retries, metrics and the answer read."""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.upstream.reply import StreamedBody

# 408/400: the client stalled or broke its own body; counted against the upstream, a handful of stalled
# uploads would open its breaker for everyone. 503 pool_timeout: no pooled connection came free in time;
# that says the pool is full (of slow readers, say), not that the upstream failed: no breaker verdict.
_STATUS_OF_KIND = {"timeout": 504, "client_timeout": 408, "client_body": 400, "pool_timeout": 503}


class UpstreamError(Exception):
    """The upstream failed before a response could be relayed. `kind` feeds breakers, retries and metrics."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # connect_error | timeout | reset | protocol | pool_timeout | client_timeout | ...
        self.detail = detail

    @property
    def status(self) -> int:
        return _STATUS_OF_KIND.get(self.kind, 502)

    @property
    def clients_fault(self) -> bool:
        """The client's body failed, not the upstream: no breaker verdict, no retry."""
        return self.kind in ("client_timeout", "client_body")


class BodyTooLarge(Exception):
    """The client's body passed the route's cap while streaming."""


def classify(exc: BaseException) -> UpstreamError:
    """Map a client-side exception (the lean pool's or aiohttp's) to the kind of upstream failure it means."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamError("timeout", "upstream timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError("connect_error", "cannot connect to upstream")
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return UpstreamError("protocol", f"malformed upstream response: {exc.__class__.__name__}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | ConnectionError):
        return UpstreamError("reset", "upstream closed the connection")
    return UpstreamError("protocol", f"upstream error: {exc.__class__.__name__}")


def blame(exc: BaseException, body: StreamedBody | bytes | None) -> Exception:
    """What a failed exchange means, once the client's own part in it is ruled in or out."""
    if body is not None and not isinstance(body, bytes):
        if body.too_large:
            return BodyTooLarge("request body too large")
        if body.client_failed:
            return UpstreamError("client_body", "the request body could not be read from the client")
        if body.waiting and isinstance(exc, TimeoutError):
            return UpstreamError("client_timeout", "the client did not send its request body in time")
    return classify(exc)
