"""Who is calling: the client IP (X-Forwarded-For believed only from trusted proxies) and the user id."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_USER_ID = 128


@dataclass(frozen=True, slots=True)
class Identity:
    ip: str
    user: str | None

    @property
    def actor(self) -> str:
        """The user when known, else the IP: who a rate limit or an audit event is about."""
        return self.user if self.user is not None else self.ip


class ClientResolver:
    """Resolves the client IP for one policy's `trusted_proxies`; built once per policy."""

    def __init__(self, trusted: Sequence[Network]) -> None:
        self._trusted = tuple(trusted)
        self._is_trusted = lru_cache(maxsize=4096)(self._check)

    def _check(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str:
        """The peer address; when the peer is a trusted proxy, the rightmost untrusted X-Forwarded-For hop."""
        peer = peer or "unknown"
        if not self._trusted or not forwarded_for or not self._is_trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            if not self._is_trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop.strip("[]")))
                except ValueError:
                    return peer  # garbage in the header: fall back to what we know
        return hops[0] if hops and hops[0] else peer


def user_id(value: str | None) -> str | None:
    """The caller's user id from the identity header, or None when absent or unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_USER_ID:
        return None
    return value
