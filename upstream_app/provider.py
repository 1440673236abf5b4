"""A fake payment provider with runtime fault knobs, for demonstrating the gateway's breakers.

Run it with ``python -m upstream_app.provider [--host 127.0.0.1] [--port 8002]``.
``GET /_faults`` shows the knobs and call counter; ``POST /_faults`` changes them (partial updates).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("upstream_app.provider")

_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_MAX_LATENCY_MS = 600_000
_KNOB_NAMES = frozenset({"failure_ratio", "latency_ms", "down", "status", "seed"})


@dataclass
class Faults:
    """Mutable fault configuration plus the count of ``/v1`` calls received."""

    failure_ratio: float = 0.0
    latency_ms: int = 0
    down: bool = False
    status: int = 503
    seed: int | None = None
    calls: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.seed is not None:
            self.rng.seed(self.seed)

    def to_json(self) -> dict[str, Any]:
        """Public view of the knobs."""
        return {
            "failure_ratio": self.failure_ratio,
            "latency_ms": self.latency_ms,
            "down": self.down,
            "status": self.status,
            "seed": self.seed,
            "calls": self.calls,
        }

    def should_fail(self) -> bool:
        """Draw once; random() is in [0, 1) so ratio 0.0 never fails and 1.0 always does."""
        return self.rng.random() < self.failure_ratio

    def update(self, changes: dict[str, Any]) -> None:
        """Validate every field first, then apply, so a bad request changes nothing."""
        problems = validate_fault_changes(changes)
        if problems:
            raise ValueError(problems)
        if "failure_ratio" in changes:
            self.failure_ratio = float(changes["failure_ratio"])
        if "latency_ms" in changes:
            self.latency_ms = changes["latency_ms"]
        if "down" in changes:
            self.down = changes["down"]
        if "status" in changes:
            self.status = changes["status"]
        if "seed" in changes:
            self.seed = changes["seed"]
            self.rng.seed(self.seed)


FAULTS_KEY = web.AppKey("faults", Faults)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_fault_changes(changes: dict[str, Any]) -> dict[str, str]:
    """Return ``{field: problem}`` for an invalid partial knob update (empty when valid)."""
    problems = {name: "unknown field" for name in changes if name not in _KNOB_NAMES}
    ratio = changes.get("failure_ratio", 0.0)
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio <= 1.0:
        problems["failure_ratio"] = "must be a number between 0.0 and 1.0"
    latency = changes.get("latency_ms", 0)
    if not (_is_int(latency) and 0 <= latency <= _MAX_LATENCY_MS):
        problems["latency_ms"] = f"must be an integer between 0 and {_MAX_LATENCY_MS}"
    if not isinstance(changes.get("down", False), bool):
        problems["down"] = "must be a boolean"
    status = changes.get("status", 503)
    if not (_is_int(status) and 400 <= status <= 599):
        problems["status"] = "must be an integer HTTP error status (400-599)"
    seed = changes.get("seed", 0)
    if seed is not None and not _is_int(seed):
        problems["seed"] = "must be an integer or null"
    return problems


def _error(status: int, error: str, detail: Any = None) -> web.Response:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


@web.middleware
async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply the knobs to ``/v1/*`` only, so ``/_faults`` and ``/healthz`` stay reachable."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    faults = request.app[FAULTS_KEY]
    faults.calls += 1
    if faults.latency_ms:
        await asyncio.sleep(faults.latency_ms / 1000)
    if faults.down:
        # Hard down: drop the connection with no HTTP response at all. aiohttp's attempt to write the
        # exception below hits a closing transport and is discarded quietly.
        if request.transport is not None:
            request.transport.close()
        raise web.HTTPServiceUnavailable()
    if faults.should_fail():
        return _error(faults.status, "injected_failure", {"status": faults.status})
    return await handler(request)


async def create_intent(request: web.Request) -> web.Response:
    """Create a (fake) payment intent."""
    try:
        data = json.loads(await request.read())
    except (ValueError, RecursionError):
        return _error(400, "invalid_json")
    if not isinstance(data, dict):
        return _error(400, "invalid_request", "body must be a JSON object")
    amount, currency = data.get("amount_cents"), data.get("currency")
    if not (_is_int(amount) and amount > 0):
        return _error(400, "invalid_request", {"amount_cents": "must be a positive integer"})
    if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
        return _error(400, "invalid_request", {"currency": "must be a 3-letter upper-case code"})
    intent_id = f"pi_{secrets.token_hex(12)}"
    body = {
        "id": intent_id,
        "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
        "amount_cents": amount,
        "currency": currency,
        "status": "requires_payment_method",
    }
    return web.json_response(body, status=201)


async def get_faults(request: web.Request) -> web.Response:
    """Current knobs and the ``/v1`` call counter."""
    return web.json_response(request.app[FAULTS_KEY].to_json())


async def set_faults(request: web.Request) -> web.Response:
    """Partially update the knobs; any invalid field rejects the whole update with 400."""
    try:
        changes = json.loads(await request.read())
    except (ValueError, RecursionError):
        return _error(400, "invalid_json")
    if not isinstance(changes, dict):
        return _error(400, "invalid_request", "body must be a JSON object")
    faults = request.app[FAULTS_KEY]
    try:
        faults.update(changes)
    except ValueError as exc:
        return _error(400, "invalid_faults", exc.args[0])
    log.info("faults updated: %s", faults.to_json())
    return web.json_response(faults.to_json())


async def healthz(request: web.Request) -> web.Response:
    """Liveness of the fake provider itself (not affected by the knobs)."""
    return web.json_response({"status": "ok"})


def build_provider_app(faults: Faults | None = None) -> web.Application:
    """Create the fake provider; pass ``faults`` to start with non-default knobs."""
    app = web.Application(middlewares=[inject_faults])
    app[FAULTS_KEY] = faults or Faults()
    app.router.add_post("/v1/intents", create_intent)
    app.router.add_get("/_faults", get_faults)
    app.router.add_post("/_faults", set_faults)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: knobs given as flags are applied before serving."""
    parser = argparse.ArgumentParser(prog="python -m upstream_app.provider", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--failure-ratio", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--down", action="store_true")
    parser.add_argument("--failure-status", type=int, default=503)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    faults = Faults()
    knobs = {
        "failure_ratio": args.failure_ratio,
        "latency_ms": args.latency_ms,
        "down": args.down,
        "status": args.failure_status,
    }
    if args.seed is not None:
        knobs["seed"] = args.seed
    try:
        faults.update(knobs)
    except ValueError as exc:
        parser.error(f"invalid fault flags: {exc.args[0]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log.info("fake payment provider on http://%s:%d faults=%s", args.host, args.port, faults.to_json())
    web.run_app(build_provider_app(faults), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
