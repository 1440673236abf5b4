"""Forwarding over one shared ClientSession per upstream: streaming both ways, hop-by-hop stripping, timeouts.

Knows nothing of policies: the pipeline hands it an `UpstreamClient`, the headers to send and a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.upstream_client import UpstreamPool, UpstreamResponse

# RFC 9110 7.6.1, plus the RFC 7230 extras that are hop-by-hop in practice.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
# What open_upstream returns: the lean client's response (http://) or aiohttp's (https://).
UpstreamReply = aiohttp.ClientResponse | UpstreamResponse
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
_RESPONSE_SKIP = HOP_BY_HOP | {"content-length"}


class UpstreamError(Exception):
    """The upstream failed before a response could be relayed. `kind` feeds breakers, retries and metrics."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # connect_error | timeout | reset | protocol
        self.detail = detail

    @property
    def status(self) -> int:
        return _STATUS_OF_KIND.get(self.kind, 502)

    @property
    def clients_fault(self) -> bool:
        """The client's body failed, not the upstream: no breaker verdict, no retry."""
        return self.kind in ("client_timeout", "client_body")


# 408/400: the client stalled or broke its own body; counted against the upstream, a handful of stalled
# uploads would open its breaker for everyone.
_STATUS_OF_KIND = {"timeout": 504, "client_timeout": 408, "client_body": 400}


class BodyTooLarge(Exception):
    """The client's body passed the route's cap while streaming."""


@dataclass
class UpstreamClient:
    """One upstream: its base URL and the connection pool (keep-alive) used for it.

    Plain http:// upstreams get the lean client of gateway/upstream_client.py (measured: a third less gateway
    CPU per request than aiohttp's ClientSession); https:// keeps aiohttp's session, whose TLS handling (SNI,
    certificate checks) is not worth re-implementing for a sidecar that mostly talks plain http on loopback.
    `session` is then the lean pool, which answers `closed` and `connector._acquired` as aiohttp's does.
    """

    name: str
    base: str  # scheme://host[:port][/base-path] without a trailing slash
    host: str  # Host header value sent unless the route keeps the client's
    session: aiohttp.ClientSession | UpstreamPool
    origin_length: int = 0  # len("http://host:port"): what open_upstream cuts off a URL to get the target
    max_requests: int = 1 << 30  # in-flight cap (Envoy's max_requests): beyond it the gateway answers 503
    in_flight: int = 0

    def admit(self) -> bool:
        """Count one more request in flight, unless the upstream is at its cap."""
        if self.in_flight >= self.max_requests:
            return False
        self.in_flight += 1
        return True

    def done(self) -> None:
        self.in_flight -= 1

    @classmethod
    def create(
        cls, name: str, url: str, *, max_connections: int, max_requests: int = 1 << 30
    ) -> UpstreamClient:
        parsed = URL(url)
        if parsed.scheme == "http" and parsed.host is not None:
            pool = UpstreamPool(parsed.host, parsed.port or 80, max_connections)
            base = str(parsed).rstrip("/")
            return cls(
                name=name,
                base=base,
                host=parsed.raw_authority,
                session=pool,
                origin_length=len(base) - len(parsed.raw_path.rstrip("/")),
                max_requests=max_requests,
            )
        connector = aiohttp.TCPConnector(
            limit=max_connections, limit_per_host=max_connections, ttl_dns_cache=60
        )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bodies pass untouched
            cookie_jar=aiohttp.DummyCookieJar(),  # never mix one client's cookies into another's request
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return cls(
            name=name,
            base=str(parsed).rstrip("/"),
            host=parsed.raw_authority,
            session=session,
            max_requests=max_requests,
        )

    async def close(self) -> None:
        await self.session.close()


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
) -> CIMultiDict[str]:
    """Headers for the upstream request.

    Headers in `protected` (identity, X-Forwarded-*, X-Request-Id) cannot be stripped by naming them in
    Connection: that trick would let a client erase its identity. From a peer that is not a trusted proxy,
    every client claim about addresses (X-Forwarded-*, Forwarded, X-Real-IP) is dropped; `drop_user_header`
    (lower case) names a user header the gateway did not believe, removed so the upstream cannot believe it.
    """
    nominated = connection_tokens(request.headers) - protected if "Connection" in request.headers else ()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = name.lower()
        if "_" in lower and _managed(lower.replace("_", "-"), protected):
            # CGI, WSGI, PHP and Rack read `X_User_Id` as `X-User-Id` (both become HTTP_X_USER_ID): an
            # underscore spelling of a header the gateway manages would forge it past every rule below.
            continue
        if lower in _NOT_FORWARDED or lower in nominated or lower in _SET_BY_GATEWAY:
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


def _blame(exc: BaseException, body: BodyStream | bytes | None) -> Exception:
    """What a failed exchange means, once the client's own part in it is ruled in or out."""
    if isinstance(body, BodyStream):
        if body.too_large:
            return BodyTooLarge("request body too large")
        if body.client_failed:
            return UpstreamError("client_body", "the request body could not be read from the client")
        if body.waiting and isinstance(exc, TimeoutError):
            return UpstreamError("client_timeout", "the client did not send its request body in time")
    return classify(exc)


def classify(exc: BaseException) -> UpstreamError:
    """Map a client-side exception to the kind of upstream failure it means."""
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


async def open_upstream(
    client: UpstreamClient,
    method: str,
    url: str,
    headers: CIMultiDict[str],
    body: BodyStream | bytes | None,
    *,
    deadline: aiohttp.ClientTimeout,
) -> UpstreamReply:
    """Send the request and wait for the response head. Raises UpstreamError or BodyTooLarge."""
    session = client.session
    if isinstance(session, UpstreamPool):
        try:
            return await session.request(
                method,
                url[client.origin_length :] or "/",
                headers,
                body,
                connect_timeout=deadline.sock_connect,
                total_timeout=deadline.total,
            )
        except (TimeoutError, UpstreamError, OSError) as exc:
            raise _blame(exc, body) from None
    try:
        return await session.request(
            method,
            URL(url, encoded=True),
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=deadline,
            compress=False,
        )
    except BodyTooLarge:
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise _blame(exc, body) from None


def response_headers(upstream: UpstreamReply, extra: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Upstream response headers minus hop-by-hop ones (and those its Connection names); repeats kept."""
    nominated = connection_tokens(upstream.headers) if "Connection" in upstream.headers else set()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        lower = name.lower()
        if lower in _RESPONSE_SKIP or lower in nominated:
            continue
        out.add(name, value)
    for name, value in extra:
        out[name] = value
    return out


class OneWriteResponse(web.StreamResponse):
    """A response whose body is already complete: its head waits to go out in one write with the body.

    (web.Response does the same for its body; a streamed body keeps StreamResponse's head-first behaviour,
    so a slow or endless body, server-sent events say, still gets its head at once.)
    """

    _send_headers_immediately = False


async def relay(
    request: web.BaseRequest, upstream: UpstreamReply, extra: Iterable[tuple[str, str]]
) -> tuple[web.StreamResponse, int]:
    """Stream the upstream response to the client. Returns the response and the body bytes written.

    Once the head is sent a failure can only cut the connection: the exception propagates to the caller.
    """
    whole = upstream.whole_body() if isinstance(upstream, UpstreamResponse) else None
    response = (web.StreamResponse if whole is None else OneWriteResponse)(
        status=upstream.status, reason=upstream.reason
    )
    response.headers.extend(response_headers(upstream, extra))
    if upstream.content_length is not None and "Transfer-Encoding" not in upstream.headers:
        response.content_length = upstream.content_length
    if request.version < (1, 1) and response.content_length is None:
        response.force_close()  # HTTP/1.0 has no chunked encoding: only the close can end the body
    await response.prepare(request)
    if whole is not None:
        await response.write_eof(whole)  # head, body and end in one write
        return response, len(whole)
    written = 0
    async for chunk in upstream.content.iter_any():
        written += len(chunk)
        await response.write(chunk)
    await response.write_eof()
    return response, written
