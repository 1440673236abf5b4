"""https:// upstreams over aiohttp's ClientSession.

TLS (SNI, certificate and hostname checks) is not worth re-implementing for a sidecar that mostly talks plain
http on loopback, so https:// upstreams keep aiohttp's client; plain http:// ones get the lean pool
(gateway/upstream/pool.py). `HttpsPool` gives the session the pool's interface, and `HttpsReply` gives
aiohttp's response the `UpstreamReply` one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.upstream.reply import StreamedBody


class HttpsReply:
    """aiohttp's ClientResponse as an `UpstreamReply`; releasing it frees the pool's in-use slot."""

    __slots__ = ("_response", "_pool", "_released")

    def __init__(self, response: aiohttp.ClientResponse, pool: HttpsPool) -> None:
        self._response = response
        self._pool = pool
        self._released = False

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def reason(self) -> str | None:
        return self._response.reason

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._response.headers

    @property
    def content_length(self) -> int | None:
        return self._response.content_length

    def whole_body(self) -> bytes | None:
        return None  # aiohttp does not say whether the body is all in: it is streamed

    async def iter_any(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.content.iter_any():
            yield chunk

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._in_use -= 1
            self._response.release()


class HttpsPool:
    """One ClientSession (its connector is the keep-alive pool) for one https:// upstream."""

    def __init__(self, origin: str, limit: int) -> None:
        self.origin = origin  # scheme://host[:port]: the request target is appended to it
        self._in_use = 0
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bodies pass untouched
            cookie_jar=aiohttp.DummyCookieJar(),  # never mix one client's cookies into another's request
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    @property
    def closed(self) -> bool:
        return self._session.closed

    @property
    def in_use(self) -> int:
        """Replies handed out and not yet released: the connections they hold."""
        return self._in_use

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | StreamedBody | None,
        *,
        connect_timeout: float | None,
        total_timeout: float | None,
    ) -> HttpsReply:
        """Send one request and return once its response head is in. Raises aiohttp's exceptions."""
        self._in_use += 1
        try:
            response = await self._session.request(
                method,
                URL(self.origin + target, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout),
                compress=False,
            )
        except BaseException:
            self._in_use -= 1
            raise
        return HttpsReply(response, self)

    async def close(self) -> None:
        await self._session.close()
