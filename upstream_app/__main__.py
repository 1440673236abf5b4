"""``python -m upstream_app``: run the demo business service."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from .app import build_app, default_payment_provider_url

DEFAULT_DB = "./data/upstream.sqlite3"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults come from ``UPSTREAM_DB`` / ``PAYMENT_PROVIDER_URL``."""
    parser = argparse.ArgumentParser(prog="python -m upstream_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--db", default=os.environ.get("UPSTREAM_DB") or DEFAULT_DB, help="SQLite file path")
    parser.add_argument(
        "--payment-provider-url",
        default=default_payment_provider_url(),
        help="base URL of the payment provider (default: the gateway egress route)",
    )
    parser.add_argument(
        "--capacity",
        type=int,
        default=int(os.environ["UPSTREAM_CAPACITY"]) if os.environ.get("UPSTREAM_CAPACITY") else None,
        help="serve at most N requests at once, the rest queue (default: UPSTREAM_CAPACITY, else unlimited)",
    )
    parser.add_argument(
        "--service-time",
        type=float,
        default=float(os.environ.get("UPSTREAM_SERVICE_TIME") or 0.0),
        help="seconds each request holds its capacity slot (default: UPSTREAM_SERVICE_TIME, else 0)",
    )
    args = parser.parse_args(argv)
    if args.capacity is not None and args.capacity < 1:
        parser.error("--capacity must be at least 1")
    if args.service_time < 0:
        parser.error("--service-time must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run until SIGINT/SIGTERM; run_app handles both and runs the cleanup contexts."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    app = build_app(
        args.db, args.payment_provider_url, capacity=args.capacity, service_time=args.service_time
    )
    logging.getLogger("upstream_app").info(
        "upstream_app listening on http://%s:%d db=%s provider=%s capacity=%s service_time=%gs",
        args.host,
        args.port,
        args.db,
        args.payment_provider_url,
        args.capacity or "unlimited",
        args.service_time,
    )
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
