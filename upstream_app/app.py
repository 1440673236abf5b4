"""HTTP surface of the demo horoscope/tarot service.

Business logic only: rate limits, breakers and retries belong to the gateway sidecar in front of it
(and, for egress, between this service and the payment provider).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
from aiohttp import web

from .errors import ApiError, is_int, json_errors, read_json_object, reject_unknown, require_user
from .horoscopes import SIGNS, daily_horoscopes
from .store import Store

DEFAULT_PAYMENT_PROVIDER_URL = "http://127.0.0.1:8000/egress/payments"
SERVICES = ("tarot_reading", "horoscope_report", "birth_chart")

STORE_KEY = web.AppKey("store", Store)
HTTP_KEY = web.AppKey("http", aiohttp.ClientSession)
PROVIDER_URL_KEY = web.AppKey("provider_url", str)

_E164_RE = re.compile(r"\+[1-9][0-9]{1,14}")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
# Headers worth propagating to the provider so one request can be traced through both hops.
_FORWARDED_HEADERS = ("X-Request-Id", "traceparent")


def default_payment_provider_url() -> str:
    """``PAYMENT_PROVIDER_URL`` from the environment, else the gateway's egress route."""
    return os.environ.get("PAYMENT_PROVIDER_URL") or DEFAULT_PAYMENT_PROVIDER_URL


# --- horoscopes, health, echo -------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness plus a trivial database round-trip."""
    request.app[STORE_KEY].ping()
    return web.json_response({"status": "ok"})


async def get_daily_horoscopes(request: web.Request) -> web.Response:
    """Today's (UTC) reading for all 12 signs, or just ``?sign=``."""
    sign: str | None = None
    if "sign" in request.query:
        sign = request.query["sign"].strip().lower()
        if sign not in SIGNS:
            raise ApiError(400, "unknown_sign", {"allowed": list(SIGNS)})
    today = datetime.now(UTC).date()
    return web.json_response({"date": today.isoformat(), "horoscopes": daily_horoscopes(today, sign)})


async def echo(request: web.Request) -> web.Response:
    """Reflect what actually arrived, so proxy tests can check header/query/body forwarding."""
    body = await request.read()
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        # Repeated headers are folded as RFC 9110 allows; raw_headers keeps the exact list.
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return web.json_response(
        {
            "method": request.method,
            # Raw (still percent-encoded) forms, so a proxy that re-encodes or decodes is caught.
            "path": request.rel_url.raw_path,
            "query": request.rel_url.raw_query_string,
            "headers": headers,
            "raw_headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "body": body.decode("utf-8", errors="replace"),
            "body_length": len(body),
        }
    )


# --- orders -------------------------------------------------------------------------------------


def _validate_order(data: dict[str, Any]) -> tuple[str, int, str | None]:
    reject_unknown(data, {"service", "quantity", "notes"})
    problems: dict[str, str] = {}
    service = data.get("service")
    if service not in SERVICES:
        problems["service"] = f"must be one of {', '.join(SERVICES)}"
    quantity = data.get("quantity")
    if not (is_int(quantity) and 1 <= quantity <= 10):
        problems["quantity"] = "must be an integer between 1 and 10"
    notes = data.get("notes")
    if notes is not None and (not isinstance(notes, str) or len(notes) > 500):
        problems["notes"] = "must be a string of at most 500 characters"
    if problems:
        raise ApiError(422, "validation_error", problems)
    # Types were checked above; cast only tells mypy what the checks already proved.
    return cast(str, service), cast(int, quantity), cast("str | None", notes)


async def create_order(request: web.Request) -> web.Response:
    """Create an order; an ``Idempotency-Key`` replay returns the original order with 200."""
    user_id = require_user(request)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise ApiError(400, "invalid_idempotency_key", "must be 1-255 visible ASCII characters")
    service, quantity, notes = _validate_order(await read_json_object(request))
    order, created = request.app[STORE_KEY].create_order(user_id, service, quantity, notes, key)
    if not created and (order.service, order.quantity, order.notes) != (service, quantity, notes):
        # Silently returning a different order than the one described would hide a client bug.
        raise ApiError(409, "idempotency_key_reused", "key was already used with a different request body")
    return web.json_response(
        {**order.to_json(), "status": "created"},
        status=201 if created else 200,
        headers={"Idempotent-Replayed": "false" if created else "true"},
    )


async def list_orders(request: web.Request) -> web.Response:
    """The caller's 50 most recent orders, newest first."""
    user_id = require_user(request)
    orders = request.app[STORE_KEY].list_orders(user_id, limit=50)
    return web.json_response({"orders": [o.to_json() for o in orders]})


# --- payments -----------------------------------------------------------------------------------


def _validate_intent(data: dict[str, Any]) -> tuple[str, int, str]:
    reject_unknown(data, {"order_id", "amount_cents", "currency"})
    problems: dict[str, str] = {}
    order_id = data.get("order_id")
    if not isinstance(order_id, str) or not 1 <= len(order_id) <= 64:
        problems["order_id"] = "must be a non-empty string"
    amount = data.get("amount_cents")
    if not (is_int(amount) and 0 < amount <= 100_000_000):
        problems["amount_cents"] = "must be an integer between 1 and 100000000"
    currency = data.get("currency")
    if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
        problems["currency"] = "must be a 3-letter upper-case ISO 4217 code"
    if problems:
        raise ApiError(422, "validation_error", problems)
    return cast(str, order_id), cast(int, amount), cast(str, currency)


async def _call_provider(request: web.Request, payload: dict[str, Any]) -> dict[str, Any]:
    """POST to the provider; map transport failures and non-2xx answers to honest 5xx ApiErrors."""
    url = request.app[PROVIDER_URL_KEY] + "/v1/intents"
    headers = {h: request.headers[h] for h in _FORWARDED_HEADERS if h in request.headers}
    try:
        async with request.app[HTTP_KEY].post(url, json=payload, headers=headers) as resp:
            status = resp.status
            retry_after = resp.headers.get("Retry-After")
            raw = await resp.read()
    except TimeoutError as exc:  # also covers aiohttp's ServerTimeoutError
        raise ApiError(
            504, "payment_provider_timeout", "no answer from the payment provider in time"
        ) from exc
    except aiohttp.ClientError as exc:
        raise ApiError(502, "payment_provider_unreachable", type(exc).__name__) from exc
    if status == 503:
        # Typically the gateway's open breaker: tell our caller when it is worth trying again.
        reply_headers = {"Retry-After": retry_after} if retry_after else None
        raise ApiError(503, "payment_provider_unavailable", None, reply_headers, {"provider_status": status})
    if not 200 <= status < 300:
        raise ApiError(502, "payment_provider_error", None, extra={"provider_status": status})
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if not isinstance(body, dict) or not all(isinstance(body.get(f), str) for f in ("id", "client_secret")):
        raise ApiError(502, "payment_provider_error", "malformed response", extra={"provider_status": status})
    return body


async def create_payment_intent(request: web.Request) -> web.Response:
    """Create a provider payment intent for one of the caller's orders."""
    user_id = require_user(request)
    order_id, amount, currency = _validate_intent(await read_json_object(request))
    store = request.app[STORE_KEY]
    order = store.get_order(order_id)
    if order is None or order.user_id != user_id:
        # Same answer for "absent" and "someone else's" so ids can't be probed.
        raise ApiError(404, "order_not_found", {"order_id": order_id})
    payload = {"amount_cents": amount, "currency": currency, "metadata": {"order_id": order_id}}
    body = await _call_provider(request, payload)
    intent_id: str = body["id"]
    try:
        created_at = store.add_payment_intent(intent_id, order_id, user_id, amount, currency)
    except sqlite3.IntegrityError as exc:
        raise ApiError(502, "payment_provider_error", "duplicate intent id") from exc
    return web.json_response(
        {
            "id": intent_id,
            "client_secret": body["client_secret"],
            "order_id": order_id,
            "amount_cents": amount,
            "currency": currency,
            "status": "created",
            "created_at": created_at,
        },
        status=201,
    )


# --- phone verification and drafting assistant --------------------------------------------------


async def verify_phone(request: web.Request) -> web.Response:
    """Pretend to send an SMS verification code to an E.164 number."""
    require_user(request)
    data = await read_json_object(request)
    reject_unknown(data, {"phone"})
    phone = data.get("phone")
    if not isinstance(phone, str) or not _E164_RE.fullmatch(phone):
        raise ApiError(422, "validation_error", {"phone": "must be an E.164 number such as +14155550100"})
    return web.json_response({"status": "code_sent"}, status=202)


_DRAFT_TEMPLATES = (
    "The cards suggest approaching “{topic}” with an open mind; the answer is closer than it seems.",
    "On “{topic}”: the Wheel of Fortune is turning, so prepare now and act when the moment is clear.",
    "Regarding “{topic}”, the Star card points to patience rewarded and a hopeful outcome.",
)


async def draft(request: web.Request) -> web.Response:
    """Return a deterministic canned draft for a prompt (a stand-in for a costly AI call)."""
    require_user(request)
    data = await read_json_object(request)
    reject_unknown(data, {"prompt"})
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 2000:
        raise ApiError(422, "validation_error", {"prompt": "must be a non-blank string of 1-2000 characters"})
    topic = " ".join(prompt.split())
    topic = topic if len(topic) <= 60 else topic[:57] + "..."
    pick = hashlib.sha256(prompt.encode()).digest()[0] % len(_DRAFT_TEMPLATES)
    return web.json_response({"draft": _DRAFT_TEMPLATES[pick].format(topic=topic)})


# --- wiring -------------------------------------------------------------------------------------


def capacity_limit(capacity: int, service_time: float) -> Any:
    """A middleware that makes the service a machine of fixed capacity: at most ``capacity`` requests are
    served at once, each holding its place for ``service_time`` seconds before the handler runs; the rest
    wait their turn (first come, first served), so latency grows with the queue, as on a real overloaded
    server. ``/healthz`` skips the line."""
    if capacity < 1 or service_time < 0:
        raise ValueError("capacity must be >= 1 and service_time >= 0")
    slots = asyncio.Semaphore(capacity)

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/healthz":
            return cast(web.StreamResponse, await handler(request))
        async with slots:
            if service_time:
                await asyncio.sleep(service_time)
            return cast(web.StreamResponse, await handler(request))

    return middleware


def build_app(
    db_path: str,
    payment_provider_url: str,
    *,
    provider_timeout: float = 10.0,
    capacity: int | None = None,
    service_time: float = 0.0,
) -> web.Application:
    """Create the service application backed by the SQLite file at ``db_path``.

    ``payment_provider_url`` is the base URL; ``/v1/intents`` is appended. ``provider_timeout`` is the
    total per-call client timeout (seconds) for the provider. ``capacity``: serve at most that many requests
    at once, each taking at least ``service_time`` seconds (None: unlimited, as fast as the code runs).
    """
    middlewares: list[Any] = [json_errors]
    if capacity is not None:
        middlewares.insert(0, capacity_limit(capacity, service_time))
    app = web.Application(middlewares=middlewares)
    app[PROVIDER_URL_KEY] = payment_provider_url.rstrip("/")

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        app[STORE_KEY] = Store.open(db_path)
        try:
            yield
        finally:
            app[STORE_KEY].close()

    async def http_ctx(app: web.Application) -> AsyncIterator[None]:
        # One pooled session for the app's lifetime; a plain timeout, no retries (the gateway owns those).
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=provider_timeout)) as session:
            app[HTTP_KEY] = session
            yield

    app.cleanup_ctx.extend([store_ctx, http_ctx])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/horoscopes/daily", get_daily_horoscopes)
    app.router.add_post("/api/orders", create_order)
    app.router.add_get("/api/orders", list_orders)
    app.router.add_post("/api/payments/intent", create_payment_intent)
    app.router.add_post("/api/phone/verify", verify_phone)
    app.router.add_post("/api/assist/draft", draft)
    app.router.add_get("/api/echo", echo)
    app.router.add_post("/api/echo", echo)
    return app
