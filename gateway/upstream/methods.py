"""Request methods by what the gateway may do with them: one rule for every part that resends a request."""

from __future__ import annotations

# RFC 9110 9.2.2: the methods whose intended effect is the same however many times they are sent. TRACE is
# among them (and safe, 9.2.1); sending it twice is harmless. Both the pool's resend after a keep-alive race
# (gateway/upstream/pool.py) and the route retries (gateway/retry.py) read this one set.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

# Methods a request without a body is normal for: no `Content-Length: 0` is added for them.
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
