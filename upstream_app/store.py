"""SQLite persistence for orders and payment intents (one connection per app)."""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    service TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    notes TEXT,
    created_at TEXT NOT NULL,
    idempotency_key TEXT
);
-- Keys are scoped per user so two callers can never collide on (or probe) each other's keys.
CREATE UNIQUE INDEX IF NOT EXISTS orders_user_idempotency ON orders(user_id, idempotency_key);
CREATE INDEX IF NOT EXISTS orders_user_created ON orders(user_id, created_at);
CREATE TABLE IF NOT EXISTS payment_intents (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders(id),
    user_id TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Order:
    """A persisted order row."""

    id: str
    user_id: str
    service: str
    quantity: int
    notes: str | None
    created_at: str

    def to_json(self) -> dict[str, Any]:
        """Public JSON shape of the order."""
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Store:
    """Thin synchronous wrapper; queries are tiny, so blocking the loop briefly is acceptable here."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, db_path: str) -> Store:
        """Open (creating if needed) the database and apply pragmas and schema."""
        if db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(db_path, timeout=2.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        with conn:
            conn.executescript(_SCHEMA)
        return cls(conn)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def ping(self) -> None:
        """Raise if the database is unusable."""
        self._conn.execute("SELECT 1").fetchone()

    def create_order(
        self,
        user_id: str,
        service: str,
        quantity: int,
        notes: str | None,
        idempotency_key: str | None,
    ) -> tuple[Order, bool]:
        """Insert an order; with a known idempotency key return the existing one and ``False``."""
        if idempotency_key is not None:
            existing = self.order_by_idempotency_key(user_id, idempotency_key)
            if existing is not None:
                return existing, False
        order = Order(str(uuid.uuid4()), user_id, service, quantity, notes, _now())
        try:
            with self._conn:
                self._conn.execute(
                    "INSERT INTO orders (id, user_id, service, quantity, notes, created_at, idempotency_key)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (order.id, user_id, service, quantity, notes, order.created_at, idempotency_key),
                )
        except sqlite3.IntegrityError:
            # Another writer (e.g. a second process on the same file) won the race for this key.
            if idempotency_key is None:
                raise
            existing = self.order_by_idempotency_key(user_id, idempotency_key)
            if existing is None:
                raise
            return existing, False
        return order, True

    def order_by_idempotency_key(self, user_id: str, key: str) -> Order | None:
        """The caller's order created under ``key``, if any."""
        row = self._conn.execute(
            "SELECT id, user_id, service, quantity, notes, created_at FROM orders"
            " WHERE user_id = ? AND idempotency_key = ?",
            (user_id, key),
        ).fetchone()
        return None if row is None else Order(**dict(row))

    def get_order(self, order_id: str) -> Order | None:
        """Order by id regardless of owner (callers enforce ownership)."""
        row = self._conn.execute(
            "SELECT id, user_id, service, quantity, notes, created_at FROM orders WHERE id = ?",
            (order_id,),
        ).fetchone()
        return None if row is None else Order(**dict(row))

    def list_orders(self, user_id: str, limit: int = 50) -> list[Order]:
        """The caller's most recent orders, newest first."""
        rows = self._conn.execute(
            "SELECT id, user_id, service, quantity, notes, created_at FROM orders WHERE user_id = ?"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (user_id, limit),
        ).fetchall()
        return [Order(**dict(row)) for row in rows]

    def add_payment_intent(
        self, intent_id: str, order_id: str, user_id: str, amount_cents: int, currency: str
    ) -> str:
        """Record a provider intent (the client secret is deliberately not stored); returns created_at."""
        created_at = _now()
        with self._conn:
            self._conn.execute(
                "INSERT INTO payment_intents (id, order_id, user_id, amount_cents, currency, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (intent_id, order_id, user_id, amount_cents, currency, created_at),
            )
        return created_at
