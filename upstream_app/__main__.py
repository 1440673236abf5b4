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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run until SIGINT/SIGTERM; run_app handles both and runs the cleanup contexts."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    app = build_app(args.db, args.payment_provider_url)
    logging.getLogger("upstream_app").info(
        "upstream_app listening on http://%s:%d db=%s provider=%s",
        args.host,
        args.port,
        args.db,
        args.payment_provider_url,
    )
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
