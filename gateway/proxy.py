"""Forwarding: the headers sent each way (hop-by-hop stripped, the gateway's own set), the client's body
streamed out under its cap, and the upstream's reply relayed back.

Knows nothing of policies, nor of connections: the pipeline hands it a request and an `UpstreamReply` from
gateway.upstream, which owns the pools.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.compat import OneWriteResponse
from gateway.upstream.errors import BodyTooLarge
from gateway.upstream.reply import UpstreamReply

# RFC 9110 7.6.1, plus the RFC 7230 extras that are hop-by-hop in practice.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
_RESPONSE_SKIP = HOP_BY_HOP | {"content-length"}


_PLAIN_CONNECTION = frozenset({"keep-alive", "close", "Keep-Alive", "Close", "upgrade"})


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Header names a Connection header nominates as hop-by-hop (none for a plain keep-alive/close)."""
    values = headers.getall("Connection", ())
    if len(values) == 1 and values[0] in _PLAIN_CONNECTION:
        return set()  # the common case, every response of a keep-alive upstream
    tokens: set[str] = set()
    for value in values:
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


_SET_BY_GATEWAY = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"})
# Headers that make a framework run another method than the one the gateway routed and limited by.
METHOD_OVERRIDE = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
_SKIP_KEEPING_OVERRIDE = _NOT_FORWARDED | _SET_BY_GATEWAY  # one set lookup per header on the hot path
_SKIP = _SKIP_KEEPING_OVERRIDE | METHOD_OVERRIDE
_CLIENT_ADDRESS_CLAIMS = frozenset({"forwarded", "x-real-ip"})


def _managed(lower: str, protected: frozenset[str]) -> bool:
    """Whether the gateway sets, strips or vouches for this header (lower-case name)."""
    return (
        lower in _NOT_FORWARDED
        or lower in _SET_BY_GATEWAY
        or lower in _CLIENT_ADDRESS_CLAIMS
        or lower in protected
        or lower.startswith("x-forwarded-")
    )


def forward_headers(
    request: web.BaseRequest,
    *,
    protected: frozenset[str],
    trusted_peer: bool,
    drop_user_header: str | None,
    host: str,
    forwarded_for: str,
    forwarded_proto: str,
    forwarded_host: str,
    request_id: str,
    method_override: bool = False,
) -> CIMultiDict[str]:
    """Headers for the upstream request.

    Headers in `protected` (identity, X-Forwarded-*, X-Request-Id) cannot be stripped by naming them in
    Connection: that trick would let a client erase its identity. From a peer that is not a trusted proxy,
    every client claim about addresses (X-Forwarded-*, Forwarded, X-Real-IP) is dropped; `drop_user_header`
    (lower case) names a user header the gateway did not believe, removed so the upstream cannot believe it.
    The METHOD_OVERRIDE headers are dropped unless `method_override` (routes[].allow_method_override).
    """
    nominated = connection_tokens(request.headers) - protected if "Connection" in request.headers else ()
    skip = _SKIP_KEEPING_OVERRIDE if method_override else _SKIP
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = name.lower()
        if "_" in lower:
            dashed = lower.replace("_", "-")
            if _managed(dashed, protected) or (not method_override and dashed in METHOD_OVERRIDE):
                # CGI, WSGI, PHP and Rack read `X_User_Id` as `X-User-Id` (both become HTTP_X_USER_ID): an
                # underscore spelling of a header the gateway manages would forge it past every rule below.
                continue
        if lower in skip or lower in nominated:
            continue
        if lower == drop_user_header:
            continue
        if not trusted_peer and (lower.startswith("x-forwarded-") or lower in _CLIENT_ADDRESS_CLAIMS):
            continue
        out.add(name, value)
    out["Host"] = host
    out["X-Forwarded-For"] = forwarded_for
    out["X-Forwarded-Proto"] = forwarded_proto
    out["X-Forwarded-Host"] = forwarded_host
    out["X-Request-Id"] = request_id
    return out


class BodyStream:
    """The client's body streamed upstream, counted against a cap as it goes (client_max_size: read()).

    It also tells whose fault a failed exchange was: `waiting` stays true while the client owes bytes (a
    deadline passing then is the client's), `client_failed` once reading the client's body raised.
    """

    def __init__(self, request: web.BaseRequest, limit: int) -> None:
        self._request = request
        self._limit = limit
        self.sent = 0
        self.too_large = False
        self.waiting = False
        self.client_failed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._request.content.iter_any().__aiter__()
        while True:
            self.waiting = True  # left true if the read is interrupted: the client still owed bytes
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                self.waiting = False
                return
            except Exception:
                self.client_failed = True  # a malformed chunk, a reset: the client's, not the upstream's
                raise
            self.waiting = False
            self.sent += len(chunk)
            if self.sent > self._limit:
                self.too_large = True
                raise BodyTooLarge(f"request body over {self._limit} bytes")
            yield chunk


def response_headers(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], extra: Iterable[tuple[str, str]]
) -> CIMultiDict[str]:
    """Upstream response headers minus hop-by-hop ones (and those its Connection names), repeats kept, with
    the gateway's `extra` ones set over them. For relayed answers and for a tunnel's handshake answer."""
    nominated = connection_tokens(headers) if "Connection" in headers else set()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in _RESPONSE_SKIP or lower in nominated:
            continue
        out.add(name, value)
    for name, value in extra:
        out[name] = value
    return out


async def relay(
    request: web.BaseRequest, upstream: UpstreamReply, extra: Iterable[tuple[str, str]]
) -> tuple[web.StreamResponse, int]:
    """Stream the upstream response to the client. Returns the response and the body bytes written.

    Once the head is sent a failure can only cut the connection: the exception propagates to the caller.
    """
    whole = upstream.whole_body()
    response = (web.StreamResponse if whole is None else OneWriteResponse)(
        status=upstream.status, reason=upstream.reason
    )
    response.headers.extend(response_headers(upstream.headers, extra))
    if upstream.content_length is not None and "Transfer-Encoding" not in upstream.headers:
        response.content_length = upstream.content_length
    if request.version < (1, 1) and response.content_length is None:
        response.force_close()  # HTTP/1.0 has no chunked encoding: only the close can end the body
    await response.prepare(request)
    if whole is not None:
        await response.write_eof(whole)  # head, body and end in one write
        return response, len(whole)
    written = 0
    async for chunk in upstream.iter_any():
        written += len(chunk)
        await response.write(chunk)
    await response.write_eof()
    return response, written
