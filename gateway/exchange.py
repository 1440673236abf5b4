"""One request on its way through the pipeline: the record every stage reads and fills.

The pipeline creates one `Exchange` per request with the runtime snapshot it will use to the end (even across
a reload), the request id and the caller's identity; the stages add the route, the permit of the breaker and
the response headers they decided on, and the outcome ends up in the SLO recorder of that same snapshot and
in the observers (health, access log).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from gateway.breaker import Permit
from gateway.identity import Identity
from gateway.outcome import Outcome
from gateway.runtime import CompiledRoute, Runtime


@dataclass(slots=True)
class Exchange:
    request: web.Request
    runtime: Runtime  # one snapshot for the whole request
    request_id: str
    identity: Identity
    forwarded_for: str | None  # every X-Forwarded-For line, joined: parsed once per request
    outcome: Outcome
    started: float  # perf_counter() when the request's head came in
    via: list[str] = field(default_factory=list)  # the Via lines, read once: loop check and forwarding
    path: str = ""  # normalised request path (what routes match)
    query: str = ""  # the raw query string, with its "?"
    route: CompiledRoute | None = None
    permit: Permit | None = None  # the breaker's admission, when the route has a breaker
    response_headers: list[tuple[str, str]] = field(default_factory=list)  # added to the upstream's answer
    upgrade: str | None = None  # the Upgrade token of a handshake the route lets through (lower case)
    handshake_done: float | None = None  # perf_counter() at the 101: the SLO counts the handshake only
    tunnel: dict[str, object] | None = None  # how an upgraded connection ended: for the access log
    upstream_head: float | None = None  # seconds to the response head: the limiter's sample
