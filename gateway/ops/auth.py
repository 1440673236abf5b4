"""Admin authentication for the ops API.

A header a client sets is not authentication. Two ways in:
- `Authorization: Bearer <token>`, tokens from the env var named by `admin.tokens_env` (comma-separated) or
  the file `admin.tokens_file` (one per line), compared in constant time; accepted from any network.
- the runbook's `X-User-Id: <admin-uuid>`, believed only when the peer is in `admin.trusted_networks`.
Everything else is 401 (no credentials) or 403 (credentials, but not an admin). Failed attempts are limited
per client address so tokens cannot be guessed at line rate.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.policy.model import Admin

MAX_FAILURES = 10  # per client address per window
FAILURE_WINDOW = 60.0
_TRACKED_CLIENTS = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    status: int  # 200 when admitted, else 401 / 403 / 429
    principal: str | None  # "token:<n>" or "user:<id>" when admitted
    reason: str


def load_tokens(admin: Admin) -> tuple[bytes, ...]:
    """Bearer tokens from the environment variable and the secret file the policy names."""
    tokens: list[str] = []
    raw = os.environ.get(admin.tokens_env, "")
    tokens.extend(t.strip() for t in raw.split(","))
    if admin.tokens_file:
        try:
            tokens.extend(line.strip() for line in Path(admin.tokens_file).read_text().splitlines())
        except OSError:
            pass  # reported by `check`? a missing secret file simply yields no tokens
    return tuple(t.encode() for t in tokens if len(t) >= 16)  # short tokens are guessable: ignored


class AdminAuth:
    """Decides whether a request to the ops API comes from an admin. Built once per policy."""

    def __init__(self, admin: Admin, clock: Callable[[], float] = time.monotonic) -> None:
        self._tokens = load_tokens(admin)
        self._user_ids = tuple(u.encode() for u in admin.user_ids)
        self._networks = admin.trusted_networks
        self._clock = clock
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def _trusted(self, peer: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(peer or "")
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def _limited(self, peer: str) -> bool:
        entry = self._failures.get(peer)
        return entry is not None and self._clock() - entry[0] < FAILURE_WINDOW and entry[1] >= MAX_FAILURES

    def _fail(self, peer: str, status: int, reason: str) -> Verdict:
        now = self._clock()
        start, count = self._failures.get(peer, (now, 0))
        if now - start >= FAILURE_WINDOW:
            start, count = now, 0
        self._failures[peer] = (start, count + 1)
        self._failures.move_to_end(peer)
        while len(self._failures) > _TRACKED_CLIENTS:
            self._failures.popitem(last=False)
        return Verdict(status, None, reason)

    def check(self, peer: str | None, authorization: str | None, user_id: str | None) -> Verdict:
        """Admit or refuse one ops request from `peer` with the given credentials."""
        key = peer or "unknown"
        if self._limited(key):
            return Verdict(429, None, "too many failed admin attempts; try again later")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return self._fail(key, 401, "Authorization must be 'Bearer <token>'")
            given = token.strip().encode()
            for i, known in enumerate(self._tokens):
                if hmac.compare_digest(given, known):
                    return Verdict(200, f"token:{i}", "bearer token")
            return self._fail(key, 403, "unknown bearer token")
        if user_id:
            if not self._trusted(peer):
                return self._fail(key, 403, "X-User-Id is only accepted as admin from admin.trusted_networks")
            given = user_id.strip().encode()
            if any(hmac.compare_digest(given, known) for known in self._user_ids):
                return Verdict(200, f"user:{user_id.strip()}", "admin user id from a trusted network")
            return self._fail(key, 403, "not an admin")
        return self._fail(key, 401, "admin credentials required (Authorization: Bearer <token>)")
