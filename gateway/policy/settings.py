"""The policy's settings sections (storage, fleet, identity, admin, SLO, audit, alerts, CORS, TLS, server):
pure models, no I/O. `gateway.policy.model` assembles them with the routes, upstreams, limits and breakers."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.policy.units import Duration, Network, Size

LOOPBACK: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOST_NAME = r"^(\*|[A-Za-z0-9_][A-Za-z0-9_.\-]{0,252}|\[?[0-9A-Fa-f:.]{2,45}\]?)$"  # no port


class Strict(BaseModel):
    """Unknown keys are errors; a loaded policy is never mutated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _masked(url: str) -> str:
    """A URL for an error message: its credentials masked (errors reach logs, reload answers, the audit)."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def _check_port(parts: SplitResult, what: str) -> None:
    """Raise a readable ValueError for a port that is not a number in 0..65535."""
    try:
        parts.port  # noqa: B018 - the property raises
    except ValueError as exc:
        raise ValueError(f"{what}: {str(exc).lower()}") from None


class Storage(Strict):
    """Where rate-limit buckets and overrides live: Redis (shared by replicas) or in-process (one gateway)."""

    redis_url: str | None = Field(
        None,
        description="`redis://`, `rediss://` or `unix://` URL of the Redis shared by every replica (usually"
        " `${REDIS_URL}`). Unset or empty: in-process buckets (one instance). Checked at load; shown with its"
        " password masked.",
    )
    cluster: bool = Field(
        False,
        description="`true`: `redis_url` names one node of a Redis Cluster; the client discovers the rest."
        " Limits keyed by the same value share a hash tag (one slot, one atomic call).",
    )
    on_redis_error: Literal["local", "allow", "deny"] = Field(
        "local",
        description="What a limit that does not say does when Redis is down or slow: `local` uses in-process"
        " buckets, `allow` lets the request through, `deny` answers 503 `rate_limit_unavailable` with"
        " `Retry-After`.",
    )
    timeout: Duration = Field(0.05, description="Deadline of one rate-limit check against Redis.")
    retry_interval: Duration = Field(
        1.0,
        description="After a Redis failure, requests skip Redis this long, then one request probes it; the"
        " first success brings it back.",
    )
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_:.\-]{1,32}$")] = Field(
        "gw",
        description="Prefix of every Redis key: buckets `{prefix}:rl:{<hash>}:<limit>`, overrides"
        " `{prefix}:rl:overrides`, the audit stream `<prefix>:audit`.",
    )
    local_max_keys: Annotated[int, Field(ge=100, le=10_000_000)] = Field(
        100_000, description="In-process buckets kept at most (idle ones are dropped first)."
    )
    override_refresh: Duration = Field(
        1.0, description="How often each replica re-reads the runtime rate-limit overrides from Redis."
    )

    @field_validator("redis_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        """Checked here so that `gateway check` and a reload catch it, not the first Redis call; the URL is
        shown with its credentials masked (errors reach logs, the reload answer and the audit trail)."""
        if value is None or value.strip() == "":
            return None
        shown = _masked(value)
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix://, got {shown!r}")
        parts = urlsplit(value)
        _check_port(parts, f"redis_url {shown!r}")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"redis_url {shown!r} names no socket path")
        elif not parts.hostname:
            raise ValueError(f"redis_url {shown!r} names no host")
        elif parts.path.strip("/") and not parts.path.strip("/").isdigit():
            raise ValueError(f"redis_url {shown!r}: the database must be a number, got {parts.path!r}")
        return value


class Fleet(Strict):
    """What the gateway's processes (workers of one host, replicas on many) share through Redis."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")] = Field(
        "gateway",
        description="The fleet's name: processes with the same name and Redis merge their SLO windows into"
        " one view (`GET /api/ops/metrics`). Keys: `{prefix}:fleet:{name}:...`. Give each gateway deployment"
        " its own name when several share one Redis.",
    )
    publish_interval: Annotated[Duration, Field(ge=0.1, le=60.0)] = Field(
        1.0,
        description="How often each process publishes its SLO window counts to Redis (off the request path)."
        " A process's data expires after three intervals (at least 3 s): a dead process drops out of the"
        " fleet view by then.",
    )


class Identity(Strict):
    """Who the caller is. The user header is a claim, believed only from `user_networks` (the peers that set
    it after authenticating: a local auth proxy, an ingress); from anyone else it is ignored for limits and
    removed before the upstream sees it, and user-keyed limits fall back to the client IP."""

    user_header: Annotated[str, Field(pattern=_HEADER_NAME.pattern)] = Field(
        "X-User-Id",
        description="The header naming the user: the key of `user` limits and the runbook's admin id.",
    )
    user_networks: tuple[Network, ...] = Field(
        LOOPBACK,
        description="Peers whose user header is believed (a local auth proxy, an ingress, `make run`'s"
        " clients). From anyone else it is ignored and removed before the upstream sees it.",
    )
    trusted_proxies: tuple[Network, ...] = Field(
        (),
        description="Proxies whose `X-Forwarded-*` claims are kept and extended; the client IP is then the"
        " right-most untrusted `X-Forwarded-For` hop. From any other peer every address claim is dropped.",
    )


class Admin(Strict):
    """Who may call the ops API: bearer tokens from anywhere, `user_ids` only from `trusted_networks`."""

    user_ids: tuple[Annotated[str, Field(min_length=1, max_length=128)], ...] = Field(
        (), description="Admin ids, sent in `identity.user_header` (the runbook's `X-User-Id: <admin-uuid>`)."
    )
    trusted_networks: tuple[Network, ...] = Field(
        LOOPBACK,
        description="Where the admin ids of `user_ids` are believed. Behind a proxy in"
        " `identity.trusted_proxies` the client is the address the proxy forwarded for.",
    )
    tokens_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = Field(
        "GATEWAY_ADMIN_TOKENS",
        description="Environment variable holding comma-separated bearer tokens (16 characters or more;"
        " shorter ones are ignored with a warning), accepted from any network.",
    )
    tokens_file: str | None = Field(
        None, description="A file of bearer tokens: one per line, lines starting with `#` are comments."
    )
    metrics_networks: tuple[Network, ...] = Field(
        LOOPBACK,
        description="Peers allowed to scrape `GET /metrics` (anything else gets 403; `X-Forwarded-For` is not"
        " believed).",
    )
    hosts: Annotated[tuple[Annotated[str, Field(pattern=_HOST_NAME)], ...], Field(min_length=1)] = Field(
        ("localhost", "127.0.0.1", "::1"),
        description="Host names or addresses (no port) the ops API and `/metrics` answer to, with any port;"
        " the address the client connected to is always accepted, `*` turns the check off. Anything else"
        " gets 421: a page whose name is rebound to 127.0.0.1 (DNS rebinding) still sends its own name.",
    )
    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if ":" in host:
                try:
                    ipaddress.IPv6Address(host.strip("[]"))
                except ValueError:
                    raise ValueError(f"admin.hosts takes names or addresses without a port, got {host!r}"
                                     ) from None
        return value


class SloSettings(Strict):
    """How SLOs are measured: the sliding window of percentiles and error rates, and what is an error."""

    window: Duration = Field(
        300.0,
        description="Window of the p50/p95/p99 and error rates, 30s to 6h, kept in 10 s steps; burn rates"
        " always use 5m/30m/1h/6h.",
    )
    count_429_as_error: bool = Field(
        False, description="By default only 5xx are errors and 429s are counted apart (`throttled`)."
    )
    buckets: Annotated[tuple[Duration, ...], Field(min_length=1, max_length=40)] | None = Field(
        None,
        description="Latency histogram bounds of `/metrics`; every SLO target is always added as a bound.",
    )

    @field_validator("window")
    @classmethod
    def _window(cls, value: float) -> float:
        if not 30.0 <= value <= 6 * 3600.0:
            raise ValueError("slo.window must be between 30s and 6h")
        return value


class Audit(Strict):
    """The audit trail: a Redis Stream when storage.redis_url is set, else JSON-lines files under `dir`."""

    dir: Annotated[str, Field(min_length=1)] = Field(
        "data/audit",
        description="File backend only: directory of the JSON-lines files; a relative one is relative to"
        " `$GATEWAY_DATA_DIR` when set (the image: /var/lib/gateway), else to the policy file's directory.",
    )
    max_events: Annotated[int, Field(ge=100)] = Field(
        100_000, description="Redis backend: cap of each audit stream (`MAXLEN ~`): the main one and those of"
        " the flood kinds (`:rate_limit_hit`, `:auth_failed`), so a flood trims only its own."
    )
    max_age: Duration = Field(
        7 * 86400.0, description="Older events are trimmed (Redis `MINID`) or their files deleted."
    )
    queue_size: Annotated[int, Field(ge=10, le=10_000_000)] = Field(
        10_000,
        description="Events waiting to be written; when the queue is full an event is dropped and counted"
        " (`dropped` in `/api/ops/health`). The flood kinds may fill only nine tenths of it.",
    )
    max_file_size: Annotated[Size, Field(ge=4096)] = Field(
        64 * 2**20, description="File backend: a JSON-lines file rotates past this size (or past a sixteenth"
        " of `max_total_bytes`, if smaller)."
    )
    max_total_bytes: Annotated[Size, Field(ge=65536)] = Field(
        256 * 2**20,
        description="File backend: the audit directory never holds more; past it the oldest files are"
        " deleted, those of the flood kinds (`rate_limit_hit`, failed admin logins) before any other, and"
        " each record deleted is counted (`gateway_audit_dropped_total{reason=\"cap\"}`).",
    )


class Alerts(Strict):
    """Where breaker alerts are pushed, besides the Prometheus rules rendered by `gateway alerts`."""

    webhook_url: Annotated[str, Field(pattern=r"^https?://")] | None = Field(
        None,
        description="An Alertmanager-compatible webhook: each breaker opening POSTs `CircuitBreakerOpen`"
        " (resolved when it closes), from a bounded queue with retries; the request path never waits.",
    )


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-]+(:\d{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


class Cors(Strict):
    """CORS for the proxied routes (never the ops API); preflights are answered by the gateway."""

    origins: tuple[str, ...] = Field(
        (),
        description="Exact origins such as `https://app.example.com` (scheme://host[:port], no path), or"
        ' `"*"` (not with `credentials`: refused at load).',
    )
    methods: tuple[str, ...] = Field(
        ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"), description="Methods a preflight may ask for."
    )
    headers: tuple[str, ...] = Field(("*",), description="Request headers a preflight may ask for.")
    expose_headers: tuple[str, ...] = Field(
        ("X-Request-Id", "RateLimit", "RateLimit-Policy", "Retry-After"),
        description="Response headers a browser script may read (`Access-Control-Expose-Headers`).",
    )
    credentials: bool = Field(False, description="Send `Access-Control-Allow-Credentials: true`.")
    max_age: Duration | None = Field(
        None, description="How long a browser may cache a preflight answer (`Access-Control-Max-Age`)."
    )

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(f"origin must be '*' or scheme://host[:port] without a path, got {origin!r}")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        upper = tuple(m.upper() for m in value)
        unknown = sorted(set(upper) - HTTP_METHODS)
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}")
        return upper

    @field_validator("headers", "expose_headers")
    @classmethod
    def _headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name != "*" and not _HEADER_NAME.match(name):
                raise ValueError(f"bad header name {name!r}")
        return value

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> Cors:
        # Echoing any origin while allowing credentials lets every site read a user's authenticated answers.
        if self.credentials and "*" in self.origins:
            raise ValueError("credentials: true cannot be combined with the '*' origin; list the origins")
        return self


class Tls(Strict):
    """The listener speaks TLS (HTTP/1.1 over TLS; for HTTP/2 put a proxy that speaks it in front)."""

    cert_file: str = Field(
        description="PEM certificate chain (relative paths: to the policy file's directory). Re-read within a"
        " second when the file changes: no restart, no dropped connection."
    )
    key_file: str = Field(description="PEM private key of the certificate.")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Oldest TLS version accepted.")


class Server(Strict):
    """The listener's limits, read at startup: a reload that changes them lists `server` in
    `restart_required`. `max_body` is the exception: it is every route's default, applied with the reloaded
    policy."""

    max_body: Size = Field(10 * 2**20, description="Default request body cap (-> 413), per route `max_body`.")
    max_field_size: Annotated[int, Field(ge=1024, le=65536)] = Field(
        8190, description="Largest header line in bytes (-> 431)."
    )
    max_headers: Annotated[int, Field(ge=16, le=1000)] = Field(
        128, description="Most headers in one request (-> 431)."
    )
    header_timeout: Duration = Field(
        10.0,
        description="A new connection must complete its first request head within this (slowloris); aiohttp"
        " alone would wait until the keep-alive timer. With `server.tls`, its TLS handshake too.",
    )
    idle_timeout: Duration = Field(75.0, description="Idle keep-alive connections are closed after this.")
    write_timeout: Duration = Field(
        30.0,
        description="A client that reads nothing of its answer for this long is cut off (NGINX's"
        " `send_timeout`): counted as the client's fault (499 `client_stalled`), never a breaker failure nor"
        " in the route's SLO, and its upstream connection is retired. Without it a few stalled readers hold"
        " every pooled upstream connection.",
    )
    max_connections: Annotated[int, Field(ge=1)] = Field(
        4096, description="Connections beyond this get a 503 and are closed."
    )
    drain_timeout: Duration = Field(
        30.0, description="On SIGTERM, how long in-flight requests get to finish."
    )
    # `/api%2Forders` routes as one segment here, but many upstreams (WSGI, PHP) decode it to `/api/orders`:
    # it would dodge that route's limits. reject: 400 (Envoy's REJECT_REQUEST); keep: forwarded as sent.
    escaped_slashes: Literal["reject", "keep"] = Field(
        "reject",
        description="`reject`: a path with `%2F` or `%5C` is a 400 (`/api%2Forders` would miss the `orders`"
        " route here, yet WSGI or PHP upstreams decode it to `/api/orders`); `keep`: forwarded as sent, for"
        " APIs that put encoded slashes in ids.",
    )
    tunnel_idle_timeout: Duration = Field(
        300.0,
        description="An upgraded connection (WebSocket) with no byte either way for this long is closed.",
    )
    tunnel_max_duration: Duration = Field(
        86400.0, description="An upgraded connection is closed after this long, busy or not."
    )
    tls: Tls | None = Field(
        None,
        description="With it, the `--port` listener speaks TLS; the upstream is told"
        " `X-Forwarded-Proto: https`.",
    )
    plain_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        None,
        description="A second, plain-HTTP listener on the same host (e.g. a sidecar's port for a local"
        " ingress that terminates TLS itself), beside the TLS one.",
    )
    upstream_server_header: Literal["overwrite", "keep"] = Field(
        "overwrite",
        description="The gateway's own answers say `Server: gateway` (never aiohttp's Python and aiohttp"
        " versions). `overwrite`: relayed answers say it too, replacing the upstream's (Envoy's default);"
        " `keep`: the upstream's Server is relayed when it sends one. Applies at restart.",
    )
