"""The request path: snapshot -> route -> identity -> limits -> breaker -> proxy -> outcome -> observers.

One function, read top to bottom. Each stage may answer early (404, 413, 429, 503); every answer, early or
not, produces exactly one `Outcome` for the observers (SLO recorder, access log).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.admission import PRIORITY_NAMES, Admission
from gateway.breaker import Breaker
from gateway.exchange import Exchange
from gateway.identity import Identity, forwarded_for, user_id
from gateway.logs import access_log, get_logger
from gateway.outcome import Outcome
from gateway.proxy import BodyStream, forward_headers, relay, response_headers
from gateway.retry import BreakerOpened, send_with_retries
from gateway.routing import normalize_path
from gateway.runtime import CompiledRoute, Runtime
from gateway.server import SERVER_NAME, GatewayRequestHandler, send_continue
from gateway.tunnel import HandshakeError, Tunnel, TunnelStats, handshake
from gateway.upstream.client import open_upstream
from gateway.upstream.errors import BodyTooLarge, UpstreamError, classify
from gateway.upstream.reply import UpstreamReply

log = get_logger("gateway.request")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_ESCAPED_SLASH = re.compile(r"%(?:2F|5C)")  # normalize_path has upper-cased every escape
Observer = Callable[[Exchange], None]
_clock = time.perf_counter  # uvloop's loop.time() only has millisecond resolution
# RFC 9110 7.6.3: each proxy adds itself to Via. The received-by name is random per process, so that two
# gateways in a chain (one service's sidecar calling another's) never take each other for a loop.
_VIA_TOKEN = f"gw-{random.getrandbits(48):012x}"
_VIA = f"1.1 {_VIA_TOKEN}"


def json_error(
    status: int, error: str, request_id: str, headers: Iterable[tuple[str, str]] = (), **fields: Any
) -> web.Response:
    """The gateway's own answers: a JSON reason, never a traceback, never cached."""
    body = {"error": error, **fields, "request_id": request_id}
    response = web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
    response.headers.extend(headers)
    response.headers["X-Request-Id"] = request_id
    response.headers["Cache-Control"] = "no-store"
    response.headers["Server"] = SERVER_NAME
    return response


def request_id_of(request: web.BaseRequest) -> str:
    """The client's X-Request-Id when it is a sane token, else a fresh one (32 hex digits)."""
    given = request.headers.get("X-Request-Id")
    if given is not None and _REQUEST_ID.match(given):
        return given
    # 128 random bits from the Mersenne Twister: no getrandom() system call per request, and unlike a
    # counter the id tells a client nothing about which process served it or how busy it is.
    return f"{random.getrandbits(128):032x}"


def upstream_path(path: str, route: CompiledRoute) -> str:
    if route.strip_prefix and path.startswith(route.strip_prefix):
        path = path[len(route.strip_prefix) :] or "/"
        if not path.startswith("/"):
            path = "/" + path
    return path


def _upgrade_token(request: web.BaseRequest) -> str | None:
    """The requested protocol when the request asks to upgrade (Upgrade named in Connection), else None."""
    connection = ",".join(request.headers.getall("Connection", ())).lower()
    if "upgrade" not in (t.strip() for t in connection.split(",")):
        return None
    return request.headers["Upgrade"].split(",")[0].strip().lower() or None


def _client_left(request: web.BaseRequest) -> str:
    """Why a client is gone: cut off by the write deadline (it read nothing for server.write_timeout), or
    it closed the connection itself."""
    protocol = request.protocol
    return "client_stalled" if isinstance(protocol, GatewayRequestHandler) and protocol.stalled else (
        "client_closed"
    )


class Pipeline:
    """The catch-all handler. Reads the current runtime once per request through `current()`."""

    def __init__(
        self,
        current: Callable[[], Runtime],
        observers: list[Observer],
        *,
        reject_escaped_slashes: bool = True,
        tunnels: TunnelStats | None = None,
        keep_upstream_server: bool = False,
    ) -> None:
        self._tunnels = tunnels if tunnels is not None else TunnelStats()
        self._current = current
        self._observers = observers
        self._reject_escaped_slashes = reject_escaped_slashes  # server.escaped_slashes (a restart setting)
        self._keep_upstream_server = keep_upstream_server  # server.upstream_server_header: keep

    def _finish(self, exchange: Exchange) -> None:
        """The last stage: the outcome into the SLO recorder of the request's own snapshot, the observers and
        the access log."""
        outcome = exchange.outcome
        if outcome.error != "client_stalled":  # the client's doing: never against the route's SLO
            exchange.runtime.slo.observe(outcome)
        for observer in self._observers:
            try:
                observer(exchange)
            except Exception:  # an observer's bug must not turn into a client error
                log.exception("observer_failed", observer=getattr(observer, "__name__", repr(observer)))
        access = access_log()
        if access is not None:  # skip building the line when access logs are off
            request = exchange.request
            access.info(
                "request",
                request_id=exchange.request_id,
                route=outcome.route,
                method=request.method,
                path=request.path,
                status=outcome.status,
                upstream_status=outcome.upstream_status,
                duration_ms=round(outcome.duration * 1000, 3),
                upstream_duration_ms=(
                    round(outcome.upstream_duration * 1000, 3)
                    if outcome.upstream_duration is not None
                    else None
                ),
                client_ip=exchange.identity.ip,
                error=outcome.error,
                **(exchange.tunnel or {}),
            )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # The clock starts when the request's head came in (the connection's last bytes before the handler),
        # not at the handler: the parse and the router are part of what the client waits for.
        protocol = request.protocol
        arrived = protocol.data_at if isinstance(protocol, GatewayRequestHandler) else 0.0
        started = arrived or _clock()
        runtime = self._current()  # one snapshot for the whole request, even across a reload
        peer = request.remote
        headers = request.headers
        resolver = runtime.resolver
        xff = forwarded_for(headers)
        # The user header is a claim: believed only from identity.user_networks, else the IP stands in.
        claims = headers.getall(runtime.user_header, ()) if resolver.user_trusted(peer) else ()
        user = user_id(claims[0]) if len(claims) == 1 else None
        exchange = Exchange(
            request=request,
            runtime=runtime,
            request_id=request_id_of(request),
            identity=Identity(ip=resolver.client_ip(peer, xff), user=user),
            forwarded_for=xff,
            outcome=Outcome(route="unmatched", method=request.method, status=0, duration=0.0),
            started=started,
        )
        outcome = exchange.outcome
        try:
            if len(claims) > 1:
                # Keyed on one and forwarded as two, the upstream might believe the other: refused instead.
                return self._refuse(exchange, 400, "duplicate_user_header",
                                    detail=f"more than one {runtime.user_header} header")
            response = await self._serve(exchange)
            outcome.status = outcome.status or response.status
            return response
        except asyncio.CancelledError:
            if exchange.handshake_done is None:  # (a tunnel's end says nothing of its handshake: 101 stays)
                outcome.status = 499  # the client went away; the upstream call was cancelled with us
                outcome.error = outcome.error or _client_left(request)
            else:
                outcome.status = 101
            raise
        except Exception:
            log.exception("gateway_error", request_id=exchange.request_id, route=outcome.route)
            outcome.status = 502
            outcome.error = "gateway_error"
            return json_error(502, "gateway_error", exchange.request_id, route=outcome.route)
        finally:
            outcome.duration = (exchange.handshake_done or _clock()) - started
            self._finish(exchange)

    def _refuse(self, exchange: Exchange, status: int, error: str, *, headers: Iterable[tuple[str, str]] = (),
                reason: str | None = None, **fields: Any) -> web.Response:
        """An early answer of the gateway's own: the outcome's error and a JSON body."""
        exchange.outcome.error = error
        return json_error(status, reason or error, exchange.request_id, headers, **fields)

    async def _serve(self, exchange: Exchange) -> web.StreamResponse:
        request = exchange.request
        raw = request.raw_path
        cut = raw.find("?")
        raw_path, exchange.query = (raw, "") if cut < 0 else (raw[:cut], raw[cut:])
        # A fragment never belongs in a request target (RFC 9112 3.2): `/api/orders#x` would miss the
        # `orders` route here yet reach its handler upstream, which drops the fragment. Envoy refuses it too.
        path = normalize_path(raw_path) if "#" not in raw else None
        if path is not None and "%" in path and self._reject_escaped_slashes and _ESCAPED_SLASH.search(path):
            path = None  # server.escaped_slashes: reject (a decoding upstream would see another route)
        if path is None:
            return self._refuse(
                exchange, 400, "bad_path", detail="the request path is not a valid absolute path"
            )
        exchange.path = path
        if path == "/api/ops" or path.startswith("/api/ops/"):
            # Only a spelling the ops router did not take (`//api/ops/reload`, `/api/./ops/...`) gets here:
            # the ops namespace is the gateway's own and is never proxied.
            return self._refuse(exchange, 404, "no_route", reason="not_found",
                                detail=f"no ops endpoint {request.method} {path}")
        via = exchange.via = request.headers.getall("Via", [])
        if via and _VIA_TOKEN in ",".join(via):
            # Our own token: this request already passed through this gateway. An upstream that points back at
            # the gateway (a typo away) would otherwise recurse until something runs out.
            return self._refuse(exchange, 508, "loop_detected",
                                detail="the request already passed through this gateway (Via)")
        route = exchange.route = exchange.runtime.router.match(request.method, path)
        if route is None:
            return self._refuse(exchange, 404, "no_route", detail=f"no route matches {request.method} {path}")
        exchange.outcome.route = route.name
        if route.allow_from and not route.allows(exchange.identity.ip):
            return self._refuse(exchange, 403, "forbidden_source", route=route.name,
                                detail="this route only serves the networks in its allow_from")
        if "Upgrade" in request.headers:
            token = _upgrade_token(request)
            if token is not None and token in route.upgrade:
                exchange.upgrade = token
            elif token is not None and token != "h2c":  # (h2c is ignored: the request goes on as HTTP/1.1)
                return self._refuse(exchange, 400, "upgrade_not_allowed", route=route.name, upgrade=token,
                                    detail="this route does not let this upgrade through (routes[].upgrade)")

        length = request.content_length
        if length is not None and length > route.max_body:
            return self._refuse(exchange, 413, "body_too_large", route=route.name, limit=route.max_body)
        exchange.response_headers.append(("X-Request-Id", exchange.request_id))

        # -- stage: rate limits (gateway/ratelimit) --
        if route.limits is not None:
            decision = await exchange.runtime.limiter.check(route.limits, exchange.identity, request.headers)
            if decision.status:
                return self._refuse(exchange, decision.status, decision.error or "rate_limited",
                                    headers=decision.headers, **decision.fields)
            exchange.response_headers.extend(decision.headers)

        # -- stage: circuit breaker (gateway/breaker.py) --
        if route.breaker is not None:
            exchange.permit = route.breaker.acquire()
            if exchange.permit is None:
                return self._breaker_open(exchange, route.breaker)
        # -- stage: adaptive concurrency (gateway/admission.py): under the learned limit, or queue, or shed --
        # (not for an upgrade: a tunnel's lifetime says nothing of how many requests the upstream serves)
        admission = route.admission
        if admission is not None and exchange.upgrade is None:
            exchange.runtime.burn.tick()
            if not admission.enter(route.name, route.priority):
                reason = await admission.wait(route.priority)
                if reason is not None:
                    return self._shed(exchange, route, admission, reason)
            try:
                return await self._capped(exchange, route)
            finally:
                admission.leave(route.name, exchange.upstream_head)
        return await self._capped(exchange, route)

    async def _capped(self, exchange: Exchange, route: CompiledRoute) -> web.StreamResponse:
        # -- stage: overload: a slow upstream must not gather every request (and all memory) --
        client = route.client
        if not client.admit():
            if exchange.permit is not None:
                exchange.permit.release()
            return self._refuse(exchange, 503, "upstream_overloaded", headers=(("Retry-After", "1"),),
                                route=route.name, upstream=client.name,
                                detail=f"{client.max_requests} requests already in flight")
        try:
            if exchange.upgrade is not None:
                return await self._tunnel(exchange, route)
            return await self._proxy(exchange, route)
        finally:
            if exchange.handshake_done is None:  # (a tunnel gave its slot back once upgraded)
                client.done()
            if exchange.permit is not None:
                exchange.permit.release()  # no-op once recorded; frees a probe slot when no verdict came

    def _shed(
        self, exchange: Exchange, route: CompiledRoute, admission: Admission, reason: str
    ) -> web.Response:
        """A request admission control refused: 503 `shed`, never an upstream error or a breaker verdict."""
        if exchange.permit is not None:
            exchange.permit.release()  # no verdict: the upstream was never asked
        admission.count_shed(route.name, route.priority, reason)
        retry_after = admission.spec.retry_after
        exchange.outcome.error = "shed"
        return json_error(503, "shed", exchange.request_id, (("Retry-After", str(retry_after)),),
                          route=route.name, upstream=admission.upstream,
                          priority=PRIORITY_NAMES[route.priority], reason=reason, retry_after=retry_after)

    def _breaker_open(self, exchange: Exchange, breaker: Breaker) -> web.Response:
        """The fast-fail answer of an open breaker: 503, Retry-After until HALF_OPEN, the breaker named."""
        retry_after = breaker.retry_after()
        return self._refuse(exchange, 503, "breaker_open", headers=[("Retry-After", str(retry_after))],
                            route=exchange.outcome.route, breaker=breaker.name, retry_after=retry_after)

    def _upstream_headers(self, exchange: Exchange, route: CompiledRoute) -> CIMultiDict[str]:
        """The request's headers for the upstream (gateway/proxy.py's rules), with this gateway in Via."""
        request = exchange.request
        runtime = exchange.runtime
        client = route.client
        peer = request.remote or "unknown"
        trusted_peer = runtime.resolver.proxy_trusted(peer)
        prior_xff = exchange.forwarded_for
        headers = forward_headers(
            request,
            protected=runtime.protected_headers,
            trusted_peer=trusted_peer,
            drop_user_header=None if exchange.identity.user is not None else runtime.user_header.lower(),
            host=request.host if route.preserve_host else client.host,
            forwarded_for=f"{prior_xff}, {peer}" if trusted_peer and prior_xff else peer,
            forwarded_proto=(
                request.headers.get("X-Forwarded-Proto", request.scheme) if trusted_peer else request.scheme
            ),
            forwarded_host=(
                request.headers.get("X-Forwarded-Host", request.host) if trusted_peer else request.host
            ),
            request_id=exchange.request_id,
            method_override=route.route.allow_method_override,
        )
        headers["Via"] = ", ".join((*exchange.via, _VIA)) if exchange.via else _VIA
        return headers

    async def _proxy(self, exchange: Exchange, route: CompiledRoute) -> web.StreamResponse:
        # -- stage: proxy --
        request = exchange.request
        outcome = exchange.outcome
        permit = exchange.permit
        length = request.content_length
        client = route.client
        url = client.base + upstream_path(exchange.path, route) + exchange.query
        send_headers = self._upstream_headers(exchange, route)
        retry = route.retries
        attempts = 1
        body: BodyStream | bytes | None = None
        # A probe is never retried: HALF_OPEN admits exactly `half_open_requests` calls to the upstream.
        if (
            retry is not None
            and not (permit is not None and permit.probe)
            and retry.replayable(request.method, request.headers, request.body_exists, length)
        ):
            attempts = retry.attempts
            if request.body_exists:
                await send_continue(request)
                try:  # known length <= MAX_REPLAY_BODY: buffered to be sent again, within the route's timeout
                    async with asyncio.timeout(route.timeout):  # (a body never sent held a slot for ever)
                        body = await request.read()
                except TimeoutError:
                    refused = self._refuse(exchange, 408, "client_timeout", route=route.name,
                                           detail="the client did not send its request body in time")
                    refused.force_close()
                    return refused
        if request.body_exists:
            await send_continue(request)  # admitted: only now may a client waiting on 100-continue send
            if body is None:
                body = BodyStream(request, route.max_body)
            if length is not None:
                send_headers["Content-Length"] = str(length)

        sent_at = attempt_at = _clock()

        async def send() -> UpstreamReply:
            nonlocal attempt_at
            attempt_at = _clock()
            return await open_upstream(
                client, request.method, url, send_headers, body, deadline=route.client_timeout
            )

        try:
            if retry is None and route.retry_budget is None:  # the common case: one attempt, no wrapping
                upstream = await open_upstream(
                    client, request.method, url, send_headers, body, deadline=route.client_timeout
                )
            else:
                upstream = await send_with_retries(
                    send, retry, attempts, breaker=route.breaker, budget=route.retry_budget
                )
            exchange.upstream_head = _clock() - attempt_at
        except BreakerOpened:
            assert route.breaker is not None
            return self._breaker_open(exchange, route.breaker)  # it opened during the backoff
        except BodyTooLarge:
            return self._refuse(exchange, 413, "body_too_large", route=route.name, limit=route.max_body)
        except UpstreamError as exc:
            outcome.upstream_duration = _clock() - sent_at
            if exc.kind == "timeout":  # no answer in time says the upstream is slow: the limiter must know
                exchange.upstream_head = _clock() - attempt_at
            if permit is not None and not exc.clients_fault:  # a stalled upload says nothing of it
                permit.record_outcome(None, exc.kind, _clock() - attempt_at)  # the final outcome only
            return self._refuse(exchange, exc.status, exc.kind, route=route.name, upstream=client.name,
                                detail=exc.detail)
        outcome.upstream_status = upstream.status
        if not self._keep_upstream_server or "Server" not in upstream.headers:
            # Replaces the upstream's: relay's extra headers win over the upstream's own.
            exchange.response_headers.append(("Server", SERVER_NAME))
        outcome.bytes_in = body.sent if isinstance(body, BodyStream) else len(body or b"")
        try:
            response, written = await relay(request, upstream, exchange.response_headers)
            outcome.bytes_out = written
            if permit is not None:  # the verdict once the body is through: a mid-body failure is a failure
                permit.record_outcome(upstream.status, None, _clock() - attempt_at)
            return response
        except Exception as exc:
            # The head is gone: all that is left is to cut the connection so the client sees a truncated body.
            transport = request.transport
            client_gone = transport is None or transport.is_closing()
            outcome.status, outcome.error = (
                (499, _client_left(request)) if client_gone else (502, "upstream_midbody")
            )
            if permit is not None and not client_gone:  # a client that left says nothing of the upstream
                permit.record_outcome(None, classify(exc).kind, _clock() - attempt_at)
            log.warning("relay_aborted", request_id=exchange.request_id, route=route.name,
                        error=exc.__class__.__name__)
            if transport is not None:
                transport.close()
            return web.Response(status=outcome.status)  # never written: the connection is closed
        finally:
            outcome.upstream_duration = _clock() - sent_at
            upstream.release()

    async def _tunnel(self, exchange: Exchange, route: CompiledRoute) -> web.StreamResponse:
        """An upgrade the route lets through: the handshake upstream, then bytes both ways."""
        request = exchange.request
        outcome = exchange.outcome
        permit = exchange.permit
        client = route.client
        headers = self._upstream_headers(exchange, route)  # (Connection and Upgrade are hop-by-hop: dropped)
        headers["Connection"] = "Upgrade"
        # The one protocol the route allows, not the client's whole list: offered `websocket, h2c`, an
        # upstream that speaks h2c could pick it, and every request inside that HTTP/2 connection would
        # bypass the gateway (h2c smuggling).
        headers["Upgrade"] = request.headers["Upgrade"].split(",")[0].strip()
        base_path = URL(client.base).raw_path.rstrip("/")
        target = base_path + upstream_path(exchange.path, route) + exchange.query
        sent_at = _clock()
        try:
            shake = await handshake(client.base, request.method, target, headers, route.timeout)
        except HandshakeError as exc:
            outcome.upstream_duration = _clock() - sent_at
            if permit is not None:
                permit.record_outcome(None, exc.kind, _clock() - sent_at)
            return self._refuse(exchange, 504 if exc.kind == "timeout" else 502, exc.kind, route=route.name,
                                upstream=client.name, detail=exc.detail)
        outcome.upstream_status = shake.status
        outcome.upstream_duration = _clock() - sent_at
        if shake.status == 101 and shake.headers.get("Upgrade", "").strip().lower() != exchange.upgrade:
            shake.writer.close()
            if permit is not None:
                permit.record_outcome(None, "protocol", _clock() - sent_at)
            return self._refuse(exchange, 502, "protocol", route=route.name, upstream=client.name,
                                detail="the upstream switched to a protocol that was not asked for")
        if permit is not None:  # the handshake is the call the breaker judges, not the tunnel's lifetime
            permit.record_outcome(shake.status, None, _clock() - sent_at)
        answer = response_headers(shake.headers, exchange.response_headers)
        if not self._keep_upstream_server or "Server" not in answer:
            answer["Server"] = SERVER_NAME  # server.upstream_server_header, as for relayed answers
        if shake.status != 101:  # refused upstream: relayed as an ordinary answer
            return web.Response(status=shake.status, reason=shake.reason, headers=answer, body=shake.body)
        answer["Connection"] = "Upgrade"
        answer["Upgrade"] = shake.headers["Upgrade"]
        response = web.StreamResponse(status=101, reason=shake.reason, headers=answer)
        response.force_close()  # after the tunnel, the connection is done
        await response.prepare(request)
        exchange.handshake_done = _clock()
        client.done()  # upgraded: no longer a request in flight (max_requests); open tunnels held every slot
        settings = exchange.runtime.policy.server
        tunnel = Tunnel(request, shake, self._tunnels, idle=settings.tunnel_idle_timeout,
                        longest=settings.tunnel_max_duration)
        try:
            await tunnel.run()
        finally:  # also when the handler is cancelled (the client went, or shutdown after the drain timeout)
            exchange.tunnel = {
                "tunnel_ms": round((time.monotonic() - tunnel.started) * 1000, 3),
                "tunnel_end": tunnel.ended,
                "bytes_to_upstream": tunnel.to_upstream,
                "bytes_to_client": tunnel.to_client,
            }
        return response
