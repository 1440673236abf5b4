"""Admin authentication for the ops API.

A header a client sets is not authentication. Two ways in:
- `Authorization: Bearer <token>`, tokens from the env var named by `admin.tokens_env` (comma-separated) or
  the file `admin.tokens_file` (one per line), compared in constant time; accepted from any network.
- the runbook's `X-User-Id: <admin-uuid>` (the policy's `identity.user_header`), believed only when the client
  is in `admin.trusted_networks`. The client is the TCP peer, or, when the peer is one of
  `identity.trusted_proxies`, the address that proxy forwarded for: a proxy on loopback must not turn every
  remote caller into a loopback one.
Everything else is 401 (no credentials) or 403 (credentials, but not an admin). Failed attempts are throttled
per client address (429 with Retry-After once over the budget), but valid credentials are checked first and
never refused by the throttle: behind a local ingress all callers share one address, and a lockout of valid
credentials would be a denial of service anyone could cause. Guessing is defeated by the tokens' length
(at least 16 characters; 32 random bytes recommended), not by the throttle.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.identity import ClientResolver
from gateway.logs import get_logger
from gateway.policy.model import Admin, Identity

log = get_logger("gateway.ops.auth")

MAX_FAILURES = 10  # per client address per window
FAILURE_WINDOW = 60.0
MIN_TOKEN_LENGTH = 16
_TRACKED_CLIENTS = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    status: int  # 200 when admitted, else 401 / 403 / 429
    principal: str | None  # "token:<fingerprint>" or "user:<id>" when admitted
    reason: str
    client: str = "unknown"  # the address the decision was made for
    retry_after: int | None = None  # seconds, with 429


def _digest(value: str) -> bytes:
    # Comparing fixed-length digests keeps compare_digest from leaking the length of the secret.
    return hashlib.sha256(value.encode()).digest()


def load_tokens(admin: Admin) -> tuple[str, ...]:
    """Bearer tokens from the environment variable and the secret file the policy names."""
    tokens: list[str] = []
    raw = os.environ.get(admin.tokens_env, "")
    tokens.extend(t.strip() for t in raw.split(","))
    if admin.tokens_file:
        try:
            tokens.extend(line.strip() for line in Path(admin.tokens_file).read_text().splitlines())
        except OSError as exc:
            log.warning("admin_tokens_file_unreadable", path=admin.tokens_file, error=str(exc))
    usable = tuple(t for t in tokens if len(t) >= MIN_TOKEN_LENGTH and not t.startswith("#"))
    short = sum(1 for t in tokens if t and not t.startswith("#") and len(t) < MIN_TOKEN_LENGTH)
    if short:  # short tokens are guessable: ignored, loudly
        log.warning("admin_tokens_ignored", count=short, reason=f"shorter than {MIN_TOKEN_LENGTH} characters")
    return usable


def canonical_address(address: str) -> str:
    """An IP address in one spelling (IPv4-mapped IPv6 as IPv4); anything else unchanged."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def host_name(host: str) -> str:
    """The name in a Host value, without port or brackets, lower case, without a trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return canonical_address(host[1:end]) if end > 0 else host
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return canonical_address(host.rstrip("."))


def fingerprint(token: str) -> str:
    """A short, stable, non-reversible name for a token: what the audit trail records as the principal."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class AdminAuth:
    """Decides whether a request to the ops API comes from an admin. Built once per policy."""

    def __init__(
        self, admin: Admin, identity: Identity | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._tokens = tuple((_digest(t), f"token:{fingerprint(t)}") for t in load_tokens(admin))
        self._user_ids = tuple((_digest(u), u) for u in admin.user_ids)
        self._networks = admin.trusted_networks
        self._any_host = "*" in admin.hosts
        self._hosts = frozenset(host_name(h) for h in admin.hosts)  # built once: a set lookup per ops call
        self._proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        self._resolver = ClientResolver(())
        self.user_header = "X-User-Id"
        if identity is not None:
            self.follow(identity)
        self._clock = clock
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def host_allowed(self, hosts: list[str], local: str | None) -> bool:
        """Whether a request's Host names this gateway (admin.hosts, or `local`, the address the client
        connected to). Against DNS rebinding: a browser sends the attacker's name, whatever it resolves to.
        No Host at all (HTTP/1.0) is no browser: allowed. Two Host lines are refused."""
        if len(hosts) > 1:
            return False
        if self._any_host or not hosts:
            return True
        name = host_name(hosts[0])
        return name in self._hosts or (local is not None and name == canonical_address(local))

    def follow(self, identity: Identity) -> None:
        """Take a reloaded policy's identity section (trusted proxies, user header). The admin section itself
        needs a restart; who is a proxy must not lag behind the request path's view of it."""
        self._proxies = tuple(identity.trusted_proxies)
        self._resolver = ClientResolver(self._proxies)
        self.user_header = identity.user_header

    def _in(self, address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in networks)

    def client_of(self, peer: str | None, forwarded_for: str | None) -> tuple[str, bool]:
        """(client address, whether X-User-Id may be believed from it)."""
        peer = peer or "unknown"
        client = self._resolver.client_ip(peer, forwarded_for)
        if client == peer and self._proxies and self._in(peer, self._proxies):
            return client, False  # a proxy that did not say whom it forwards for: the caller is unknown
        return client, self._in(client, self._networks)

    def _retry_after(self, client: str) -> int | None:
        entry = self._failures.get(client)
        if entry is None:
            return None
        elapsed = self._clock() - entry[0]
        if elapsed < FAILURE_WINDOW and entry[1] >= MAX_FAILURES:
            return max(1, int(FAILURE_WINDOW - elapsed + 0.999))
        return None

    def _fail(self, client: str, status: int, reason: str) -> Verdict:
        now = self._clock()
        start, count = self._failures.get(client, (now, 0))
        if now - start >= FAILURE_WINDOW:
            start, count = now, 0
        self._failures[client] = (start, count + 1)
        self._failures.move_to_end(client)
        while len(self._failures) > _TRACKED_CLIENTS:  # bounded memory under a spray of addresses
            self._failures.popitem(last=False)
        return Verdict(status, None, reason, client)

    def _token_principal(self, token: str) -> str | None:
        given = _digest(token)
        principal = None
        for known, name in self._tokens:  # no early exit: the time taken does not say which token matched
            if hmac.compare_digest(given, known):
                principal = name
        return principal

    def _admin_user(self, user_id: str) -> str | None:
        given = _digest(user_id)
        matched = None
        for known, name in self._user_ids:
            if hmac.compare_digest(given, known):
                matched = name
        return matched

    def check(
        self,
        peer: str | None,
        authorization: str | None,
        user_id: str | None,
        forwarded_for: str | None = None,
    ) -> Verdict:
        """Admit or refuse one ops request from `peer` with the given credentials.

        Valid credentials are checked first and always admitted: the failure throttle refuses failures only.
        Behind a local ingress every caller shares one address, and a lockout that also refused valid
        credentials would let anyone lock the admins out with ten bad guesses a minute.
        """
        client, trusted = self.client_of(peer, forwarded_for)
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return self._refuse(client, 401, "Authorization must be 'Bearer <token>'")
            principal = self._token_principal(token.strip())
            if principal is not None:
                return Verdict(200, principal, "bearer token", client)
            return self._refuse(client, 403, "unknown bearer token")
        if user_id and user_id.strip():
            if not trusted:
                return self._refuse(client, 403, "X-User-Id is only accepted as admin from"
                                    " admin.trusted_networks; use Authorization: Bearer <token>")
            matched = self._admin_user(user_id.strip())
            if matched is not None:
                return Verdict(200, f"user:{matched}", "admin user id from a trusted network", client)
            return self._refuse(client, 403, "not an admin")
        return self._refuse(client, 401, "admin credentials required (Authorization: Bearer <token>)")

    def _refuse(self, client: str, status: int, reason: str) -> Verdict:
        """A failed attempt: 429 while `client` is over its failure budget, else counted and refused."""
        retry_after = self._retry_after(client)
        if retry_after is not None:
            return Verdict(429, None, "too many failed admin attempts; try again later", client, retry_after)
        return self._fail(client, status, reason)
