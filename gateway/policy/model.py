"""The policy model: a frozen, validated picture of policies.yaml. Pure: no I/O.

The request path reads one `Policy` through one reference; live reload builds a new one and swaps it whole.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from gateway.policy.units import Duration, Network, Percent, Size

LOOPBACK: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME)]
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]*(?:\{[^{}]*\}[^{}]*)*))?\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


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

    redis_url: str | None = None
    cluster: bool = False  # redis_url names one node of a Redis Cluster; the client discovers the rest
    on_redis_error: Literal["local", "allow", "deny"] = "local"
    timeout: Duration = 0.05
    retry_interval: Duration = 1.0  # after a Redis failure, how long requests skip Redis before one probe
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_:.\-]{1,32}$")] = "gw"
    local_max_keys: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000
    override_refresh: Duration = 1.0  # how often each replica re-reads the shared overrides from Redis

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


class Identity(Strict):
    """Who the caller is. The user header is a claim, believed only from `user_networks` (the peers that set
    it after authenticating: a local auth proxy, an ingress); from anyone else it is ignored for limits and
    removed before the upstream sees it, and user-keyed limits fall back to the client IP."""

    user_header: Annotated[str, Field(pattern=_HEADER_NAME.pattern)] = "X-User-Id"
    user_networks: tuple[Network, ...] = LOOPBACK
    trusted_proxies: tuple[Network, ...] = ()


class Admin(Strict):
    """Who may call the ops API: bearer tokens from anywhere, `user_ids` only from `trusted_networks`."""

    user_ids: tuple[Annotated[str, Field(min_length=1, max_length=128)], ...] = ()
    trusted_networks: tuple[Network, ...] = LOOPBACK  # where the X-User-Id admin ids are believed
    tokens_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "GATEWAY_ADMIN_TOKENS"
    tokens_file: str | None = None  # one token per line; lines starting with # are comments
    metrics_networks: tuple[Network, ...] = LOOPBACK
    listen: Annotated[str, Field(pattern=r"^[^\s:]+:\d{1,5}$")] | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        # Refused rather than ignored: whoever sets it believes the main listener no longer serves ops.
        if value is not None:
            raise ValueError("a separate admin listener is not supported yet; remove admin.listen")
        return value


class SloSettings(Strict):
    """How SLOs are measured: the sliding window of percentiles and error rates, and what is an error."""

    window: Duration = 300.0  # kept in 10 s steps; burn rates always use 5m/30m/1h/6h
    count_429_as_error: bool = False  # by default only 5xx are errors and 429s are counted apart
    buckets: Annotated[tuple[Duration, ...], Field(min_length=1, max_length=40)] | None = (
        None  # histogram bounds
    )

    @field_validator("window")
    @classmethod
    def _window(cls, value: float) -> float:
        if not 30.0 <= value <= 6 * 3600.0:
            raise ValueError("slo.window must be between 30s and 6h")
        return value


class Audit(Strict):
    """The audit trail: a Redis Stream when storage.redis_url is set, else JSON-lines files under `dir`."""

    dir: Annotated[str, Field(min_length=1)] = "data/audit"  # relative to the policy file's directory
    max_events: Annotated[int, Field(ge=100)] = 100_000  # Redis Stream cap (MAXLEN ~)
    max_age: Duration = 7 * 86400.0  # older events are trimmed (Redis MINID) or their files deleted
    queue_size: Annotated[int, Field(ge=10, le=10_000_000)] = (
        10_000  # events waiting to be written; more drop
    )
    max_file_size: Annotated[Size, Field(ge=4096)] = 64 * 2**20  # a JSON-lines file rotates past this size


class Alerts(Strict):
    webhook_url: Annotated[str, Field(pattern=r"^https?://")] | None = None


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-]+(:\d{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


class Cors(Strict):
    """CORS for the proxied routes (never the ops API); preflights are answered by the gateway."""

    origins: tuple[str, ...] = ()  # exact origins such as https://app.example.com, or "*"
    methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    headers: tuple[str, ...] = ("*",)
    expose_headers: tuple[str, ...] = ("X-Request-Id", "RateLimit", "RateLimit-Policy", "Retry-After")
    credentials: bool = False
    max_age: Duration | None = None

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


class Server(Strict):
    max_body: Size = 10 * 2**20
    max_field_size: Annotated[int, Field(ge=1024, le=65536)] = 8190
    max_headers: Annotated[int, Field(ge=16, le=1000)] = 128
    header_timeout: Duration = 10.0
    idle_timeout: Duration = 75.0
    # A client that reads nothing of its answer for this long is cut off (NGINX's send_timeout): it would
    # otherwise hold an upstream connection, and a few of them starve the pool for everyone.
    write_timeout: Duration = 30.0
    max_connections: Annotated[int, Field(ge=1)] = 4096
    drain_timeout: Duration = 30.0
    # `/api%2Forders` routes as one segment here, but many upstreams (WSGI, PHP) decode it to `/api/orders`:
    # it would dodge that route's limits. reject: 400 (Envoy's REJECT_REQUEST); keep: forwarded as sent.
    escaped_slashes: Literal["reject", "keep"] = "reject"


# What a breaker counts as a failure: a class, or one exact status (e.g. 500, 502, 504 without 503 so that
# a 503 an upstream relays from another open breaker does not count against it).
FailureOn = Literal["5xx", "timeout", "connect_error", "429"] | Annotated[int, Field(ge=400, le=599)]


class Breaker(Strict):
    consecutive_failures: Annotated[int, Field(ge=1)] | None = 5
    failure_rate: Percent | None = 0.5
    window: Annotated[int, Field(ge=1, le=10_000)] | Duration = 20  # an int counts calls, a duration is time
    min_calls: Annotated[int, Field(ge=1)] = 10
    slow_call: Duration | None = None
    slow_call_rate: Percent | None = None
    reset_timeout: Duration = 60.0
    half_open_requests: Annotated[int, Field(ge=1, le=1000)] = 1
    failure_on: Annotated[tuple[FailureOn, ...], Field(min_length=1)] = ("5xx", "timeout", "connect_error")

    @field_validator("window", mode="before")
    @classmethod
    def _window_kind(cls, value: Any) -> Any:
        # A digit string such as "20" would otherwise fail both branches with a confusing double message.
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Breaker:
        if self.consecutive_failures is None and self.failure_rate is None and self.slow_call_rate is None:
            raise ValueError(
                "a breaker needs at least one of consecutive_failures, failure_rate, slow_call_rate"
            )
        if (self.slow_call is None) != (self.slow_call_rate is None):
            raise ValueError("slow_call and slow_call_rate go together: set both or neither")
        if isinstance(self.window, int) and self.min_calls > self.window:
            raise ValueError(f"min_calls ({self.min_calls}) cannot exceed a window of {self.window} calls")
        return self


class RateLimit(Strict):
    """A named token bucket: `rate` requests per `per`, bursts up to `burst`, one bucket per `key` value."""

    rate: Annotated[int, Field(gt=0, le=1_000_000_000)]
    per: Duration
    burst: Annotated[int, Field(gt=0, le=1_000_000_000)] | None = None
    key: str = "user"
    shadow: bool = False
    on_redis_error: Literal["local", "allow", "deny"] | None = None

    @model_validator(mode="after")
    def _interval(self) -> RateLimit:
        # Buckets count in whole microseconds: one token must take at least that long to refill.
        if self.per / self.rate < 1e-6:
            raise ValueError(f"rate {self.rate} per {self.per:g}s is faster than one request per microsecond")
        # ...and an empty bucket must refill within a year, which keeps Lua's doubles exact.
        if self.capacity * self.per / self.rate > 366 * 86400:
            raise ValueError("burst / rate * per must not exceed 366d (time for an empty bucket to refill)")
        return self

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if value in ("user", "ip", "route", "global"):
            return value
        if value.startswith("header:") and _HEADER_NAME.match(value[7:]):
            return value
        raise ValueError(f"unknown key {value!r} (known: user, ip, route, global, header:NAME)")

    @property
    def capacity(self) -> int:
        """Bucket size: `burst`, which defaults to `rate`."""
        return self.burst if self.burst is not None else self.rate


RetryOn = Literal["connect_error", "timeout", "reset", "502", "503", "504"]


class Retries(Strict):
    attempts: Annotated[int, Field(ge=1, le=10)] = 2
    backoff: Duration = 0.05
    on: tuple[RetryOn, ...] = ("connect_error", "502", "503", "504")

    @field_validator("on", mode="before")
    @classmethod
    def _codes_as_text(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
        return value


class Slo(Strict):
    p50: Duration | None = None
    p95: Duration | None = None
    p99: Duration | None = None
    error_rate: Percent | None = None
    alias: Name | None = (
        None  # extra short key in /api/ops/metrics: p95_<alias> (e.g. the runbook's horoscopes)
    )

    @field_validator("error_rate")
    @classmethod
    def _budget(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError("error_rate must be above 0% and below 100% (it is the error budget)")
        return value

    @model_validator(mode="after")
    def _something(self) -> Slo:
        if self.p50 is None and self.p95 is None and self.p99 is None and self.error_rate is None:
            raise ValueError("an slo needs at least one of p50, p95, p99, error_rate")
        return self

    def thresholds(self) -> Iterator[float]:
        """Every latency target, in seconds (histogram buckets must include them)."""
        for value in (self.p50, self.p95, self.p99):
            if value is not None:
                yield value


class Match(Strict):
    """A parsed `match:` string: `METHOD[|METHOD] /path/{param}/{rest:.*}` or `* /path`."""

    methods: frozenset[str] | None  # None: any method
    template: str
    regex: str | None  # None: an exact path

    def __str__(self) -> str:
        methods = "|".join(sorted(self.methods)) if self.methods else "*"
        return f"{methods} {self.template}"

    @property
    def literal_prefix(self) -> str:
        """The path up to the first parameter: what the router indexes on."""
        return self.template.split("{", 1)[0]


def parse_match(text: str) -> Match:
    """Parse and check a route's `match:` value; raises ValueError with the reason."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"match must be 'METHOD /path', got {text!r}")
    method_text, template = parts
    methods: frozenset[str] | None = None
    if method_text != "*":
        methods = frozenset(m.upper() for m in method_text.split("|"))
        unknown = sorted(methods - HTTP_METHODS)
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r} in match {text!r}")
    if not template.startswith("/"):
        raise ValueError(f"match path must start with '/', got {template!r}")
    if "{" not in template:
        if "}" in template:
            raise ValueError(f"unbalanced '}}' in match path {template!r}")
        return Match(methods=methods, template=template, regex=None)
    pattern, pos, names = [], 0, set()
    for param in _PARAM.finditer(template):
        literal = template[pos : param.start()]
        if "{" in literal or "}" in literal:
            raise ValueError(f"unbalanced braces in match path {template!r}")
        pattern.append(re.escape(literal))
        name, expr = param.group(1), param.group(2)
        if name in names:
            raise ValueError(f"parameter {name!r} appears twice in {template!r}")
        names.add(name)
        expr = "[^/]+" if expr is None else expr
        try:
            if re.compile(expr).groups:
                raise ValueError(f"parameter {name!r} regex must not contain capturing groups")
        except re.error as exc:
            raise ValueError(f"bad regex for parameter {name!r}: {exc}") from None
        pattern.append(f"(?P<{name}>{expr})")
        pos = param.end()
    tail = template[pos:]
    if "{" in tail or "}" in tail:
        raise ValueError(f"unbalanced braces in match path {template!r}")
    pattern.append(re.escape(tail))
    return Match(methods=methods, template=template, regex="".join(pattern))


MatchField = Annotated[
    Match,
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {"type": "string", "examples": ["GET /api/horoscopes/daily", "* /egress/payments/{path:.*}"]}
    ),
]


class Route(Strict):
    name: Name
    match: MatchField
    upstream: str
    strip_prefix: Annotated[str, Field(pattern=r"^/")] | None = None
    slo: Slo | None = None
    rate_limits: tuple[str, ...] = ()
    breaker: str | None = None
    timeout: Duration | None = None
    connect_timeout: Duration | None = None
    max_body: Size | None = None
    retries: Retries | None = None

    @field_validator("match", mode="before")
    @classmethod
    def _parse_match(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_match(value)
        raise ValueError(f"match must be a string such as 'GET /api/orders', got {value!r}")


class Upstream(Strict):
    url: Annotated[str, Field(pattern=r"^https?://[^/\s?#]+(/[^\s?#]*)?$")]
    connect_timeout: Duration = 1.0
    timeout: Duration = 15.0
    breaker: str | None = None
    preserve_host: bool = False
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = 256
    max_requests: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    retry_budget: Percent = 0.2

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        """A readable reason instead of the pattern's, and the port checked here, not at the first call."""
        if not isinstance(value, str):
            return value  # the type check reports it
        shown = _masked(value)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or "?" in value or "#" in value:
            raise ValueError(
                f"url must be http(s)://host[:port][/path], without query or fragment, got {shown!r}"
            )
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"url {shown!r} carries credentials: the gateway would never send them")
        _check_port(parts, f"url {shown!r}")
        if not parts.hostname:
            raise ValueError(f"url {shown!r} names no host")
        return value


class Policy(Strict):
    version: Literal[1]
    storage: Storage = Storage()
    identity: Identity = Identity()
    admin: Admin = Admin()
    slo: SloSettings = SloSettings()
    audit: Audit = Audit()
    alerts: Alerts = Alerts()
    cors: Cors | None = None
    server: Server = Server()
    upstreams: Annotated[dict[Name, Upstream], Field(min_length=1)]
    breakers: dict[Name, Breaker] = {}
    rate_limits: dict[Name, RateLimit] = {}
    routes: Annotated[tuple[Route, ...], Field(min_length=1)]

    def reference_errors(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Cross-references a schema cannot check: (key path, message) for each problem."""
        errors: list[tuple[tuple[str | int, ...], str]] = []

        def known(names: Any) -> str:
            return ", ".join(sorted(names)) or "none declared"

        for name, upstream in self.upstreams.items():
            if upstream.breaker is not None and upstream.breaker not in self.breakers:
                errors.append(
                    (
                        ("upstreams", name, "breaker"),
                        f"unknown breaker {upstream.breaker!r} (known: {known(self.breakers)})",
                    )
                )
        seen_names: dict[str, int] = {}
        seen_matches: dict[tuple[frozenset[str] | None, str], int] = {}
        for i, route in enumerate(self.routes):
            if route.name in seen_names:
                errors.append(
                    (
                        ("routes", i, "name"),
                        f"duplicate route name {route.name!r} (first at routes[{seen_names[route.name]}])",
                    )
                )
            seen_names.setdefault(route.name, i)
            if route.upstream not in self.upstreams:
                errors.append(
                    (
                        ("routes", i, "upstream"),
                        f"unknown upstream {route.upstream!r} (known: {known(self.upstreams)})",
                    )
                )
            if route.breaker is not None and route.breaker not in self.breakers:
                errors.append(
                    (
                        ("routes", i, "breaker"),
                        f"unknown breaker {route.breaker!r} (known: {known(self.breakers)})",
                    )
                )
            for j, limit in enumerate(route.rate_limits):
                if limit not in self.rate_limits:
                    errors.append(
                        (
                            ("routes", i, "rate_limits", j),
                            f"unknown limit {limit!r} (known: {known(self.rate_limits)})",
                        )
                    )
            key = (route.match.methods, route.match.template)
            if key in seen_matches:
                errors.append(
                    (
                        ("routes", i, "match"),
                        f"route overlaps routes[{seen_matches[key]}] (same method and path)",
                    )
                )
            seen_matches.setdefault(key, i)
            if route.strip_prefix is not None and not route.match.template.startswith(route.strip_prefix):
                errors.append(
                    (
                        ("routes", i, "strip_prefix"),
                        f"strip_prefix {route.strip_prefix!r} is not a prefix of {route.match.template!r}",
                    )
                )
        aliases: dict[str, int] = {}
        for i, route in enumerate(self.routes):
            alias = route.slo.alias if route.slo else None
            if alias is None:
                continue
            if alias in aliases or (alias in seen_names and alias != route.name):
                errors.append(
                    (("routes", i, "slo", "alias"), f"alias {alias!r} is already a route name or alias")
                )
            aliases.setdefault(alias, i)
        return errors

    def slo_thresholds(self) -> tuple[float, ...]:
        """Every latency target in the policy, sorted, in seconds."""
        return tuple(sorted({t for r in self.routes if r.slo for t in r.slo.thresholds()}))
