"""Who is calling: the client IP (X-Forwarded-For believed only from trusted proxies) and the user id."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from multidict import CIMultiDictProxy

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

    def __init__(self, trusted: Sequence[Network], user_networks: Sequence[Network] = ()) -> None:
        self._trusted = tuple(trusted)
        self._is_trusted = lru_cache(maxsize=4096)(self._check)
        self._user_networks = tuple(user_networks)
        self.user_trusted = lru_cache(maxsize=4096)(self._check_user)

    def _check(self, address: str) -> bool:
        return _in(address, self._trusted)

    def _check_user(self, peer: str | None) -> bool:
        """Whether `peer` may assert the user header (it is in identity.user_networks)."""
        return peer is not None and _in(peer, self._user_networks)

    def proxy_trusted(self, peer: str | None) -> bool:
        """Whether `peer` is one of identity.trusted_proxies (its X-Forwarded-* are believed)."""
        return bool(self._trusted) and peer is not None and self._is_trusted(peer)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str:
        """The peer address; when the peer is a trusted proxy, the rightmost untrusted X-Forwarded-For hop.

        A hop may carry a port (`10.9.9.9:1234`, `[2001:db8::1]:443`, as some proxies write it) or brackets
        alone (`[2001:db8::1]`): each is read as its address, so that clients behind one proxy keep their own
        per-IP buckets instead of all collapsing onto the proxy's address.
        """
        peer = peer or "unknown"
        if not self._trusted or not forwarded_for or not self._is_trusted(peer):
            return peer
        first: str | None = None
        for hop in reversed(forwarded_for.split(",")):
            hop = hop.strip()
            if not hop:
                continue
            address = hop_address(hop)
            if address is None:
                return peer  # garbage in the header: fall back to what we know
            if not self._is_trusted(address):
                return address
            first = address
        return first or peer  # every hop is a trusted proxy: the leftmost one is the best we know


@lru_cache(maxsize=4096)
def hop_address(hop: str) -> str | None:
    """The address of one X-Forwarded-For hop, in canonical form, or None when it is not an IP address.

    Accepted: `1.2.3.4`, `1.2.3.4:port`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:port`.
    """
    host = hop
    if hop.startswith("["):
        end = hop.find("]")
        if end < 0 or (end + 1 < len(hop) and not _is_port(hop[end + 1 :])):
            return None
        host = hop[1:end]
    elif hop.count(":") == 1:  # IPv4 with a port (a bare IPv6 address has at least two colons)
        host, _, port = hop.partition(":")
        if not _is_port(":" + port):
            return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _is_port(suffix: str) -> bool:
    return suffix.startswith(":") and suffix[1:].isdigit() and len(suffix) <= 6 and int(suffix[1:]) <= 65535


def _in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in networks)


def forwarded_for(headers: CIMultiDictProxy[str]) -> str | None:
    """Every X-Forwarded-For line as one list. Repeated lines are one comma-joined field (RFC 9110 5.3), and
    proxies that add their own line rather than extend the client's put the hop that counts in a later one:
    reading only the first would let a client's forged line win."""
    values = headers.getall("X-Forwarded-For", ())
    if not values:
        return None
    return values[0] if len(values) == 1 else ", ".join(values)


def user_id(value: str | None) -> str | None:
    """The caller's user id from the identity header, or None when absent or unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_USER_ID:
        return None
    return value
