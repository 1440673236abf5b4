"""What crosses the upstream seam: the request body the pools stream out, and the reply they hand back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from multidict import CIMultiDictProxy


class StreamedBody(Protocol):
    """A request body streamed to the upstream as it arrives (gateway.proxy.BodyStream).

    Its flags say whose fault a failed exchange was: `too_large` once it passed its cap, `client_failed` once
    reading the client raised, `waiting` while the client still owes bytes.
    """

    @property
    def too_large(self) -> bool: ...

    @property
    def client_failed(self) -> bool: ...

    @property
    def waiting(self) -> bool: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class UpstreamReply(Protocol):
    """A response head plus a body still streaming: what the relay reads, whichever pool answered."""

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content_length(self) -> int | None: ...

    def whole_body(self) -> bytes | None:
        """The entire body when it has already arrived (then sent with the head in one write), else None."""
        ...

    def iter_any(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; raises when the upstream cuts the body short or the deadline passes."""
        ...

    def release(self) -> None:
        """Give the connection back (reused only when the exchange ended cleanly). Safe to call twice."""
        ...
