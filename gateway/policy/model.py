"""The policy model: a frozen, validated picture of policies.yaml. Pure: no I/O.

The request path reads one `Policy` through one reference; live reload builds a new one and swaps it whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from gateway.policy.settings import (
    _HEADER_NAME,
    HTTP_METHODS,
    Admin,
    Alerts,
    Audit,
    Cors,
    Fleet,
    Identity,
    Server,
    SloSettings,
    Storage,
    Strict,
    Tls,
    _check_port,
    _masked,
)
from gateway.policy.units import Duration, Network, Percent, Size

# The sections live in gateway/policy/settings.py; their names are part of this module's interface.
__all__ = [
    "HTTP_METHODS", "Admin", "Alerts", "Audit", "Breaker", "Concurrency", "Cors", "Fleet", "Identity",
    "Match", "Policy", "RateLimit", "Retries", "Route", "Server", "Slo", "SloSettings", "Storage", "Strict",
    "Tls", "Upstream", "parse_match",
]

NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME)]
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]*(?:\{[^{}]*\}[^{}]*)*))?\}")


# What a breaker counts as a failure: a class, or one exact status (e.g. 500, 502, 504 without 503 so that
# a 503 an upstream relays from another open breaker does not count against it).
FailureOn = Literal["5xx", "timeout", "connect_error", "429"] | Annotated[int, Field(ge=400, le=599)]


class Breaker(Strict):
    """A circuit breaker: CLOSED counts calls, OPEN answers 503 at once, HALF_OPEN admits a few probes."""

    consecutive_failures: Annotated[int, Field(ge=1)] | None = Field(
        5, description="Open after this many failures in a row (`null`: off)."
    )
    failure_rate: Percent | None = Field(
        0.5, description="...or when at least this share of the last `window` calls failed (`null`: off)."
    )
    window: Annotated[int, Field(ge=1, le=10_000)] | Duration = Field(
        20, description="An integer counts calls; a duration such as `30s` is a time window."
    )
    min_calls: Annotated[int, Field(ge=1)] = Field(
        10, description="No rate verdict before this many calls in the window (at most a counted `window`)."
    )
    slow_call: Duration | None = Field(
        None,
        description="A call at least this slow (to the response head) is slow; set with `slow_call_rate`.",
    )
    slow_call_rate: Percent | None = Field(
        None, description="...and this share of slow calls in the window opens the breaker."
    )
    reset_timeout: Duration = Field(60.0, description="OPEN -> HALF_OPEN after this long.")
    half_open_requests: Annotated[int, Field(ge=1, le=1000)] = Field(
        1,
        description="Concurrent probes in HALF_OPEN (every other call gets 503 at once); when that many have"
        " succeeded the breaker closes, one failure reopens it.",
    )
    failure_on: Annotated[tuple[FailureOn, ...], Field(min_length=1)] = Field(
        ("5xx", "timeout", "connect_error"),
        description="What counts as a failure: `5xx` (upstream 5xx answers and dropped or garbled"
        " connections), `timeout`, `connect_error`, `429`, or exact statuses such as `500`, `502`.",
    )
    shared: bool = Field(
        False,
        description="`true` (needs `storage.redis_url`): the breaker's decisions are shared by every process"
        " of the fleet through Redis. Failures are judged where they are seen; an opening, a closing and a"
        " manual action reach every process within milliseconds (pub/sub, off the request path); the"
        " half-open probes are the fleet's, not each process's. Redis down: each process falls back to its"
        " own breaker at once and rejoins when Redis is back.",
    )

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

    rate: Annotated[int, Field(gt=0, le=1_000_000_000)] = Field(
        description="Requests allowed per `per` (the sustained rate); an ops override replaces it at runtime."
    )
    per: Duration = Field(description="The period of `rate`, such as `1s` or `1h`.")
    burst: Annotated[int, Field(gt=0, le=1_000_000_000)] | None = Field(
        None, description="Bucket size: requests allowed at once; defaults to `rate`."
    )
    key: str = Field(
        "user",
        description="One bucket per value of: `user` (the user header from `identity.user_networks`, else the"
        " client IP), `ip`, `route`, `global`, or `header:NAME` (the client IP when the header is absent).",
    )
    shadow: bool = Field(
        False,
        description="Evaluate and count (and audit `rate_limit_hit` with `shadow: true`) but never refuse and"
        " send no headers: a dry run before enforcing.",
    )
    on_redis_error: Literal["local", "allow", "deny"] | None = Field(
        None, description="This limit's answer when Redis is down or slow; default `storage.on_redis_error`."
    )

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
    """Retries of one route, only for requests safe to send twice (GET, HEAD, OPTIONS, TRACE, PUT, DELETE, or
    any method with an `Idempotency-Key`), within the upstream's `retry_budget`."""

    attempts: Annotated[int, Field(ge=1, le=10)] = Field(2, description="Every try, the first included.")
    backoff: Duration = Field(0.05, description="Base of the exponential backoff (with jitter).")
    on: tuple[RetryOn, ...] = Field(
        ("connect_error", "502", "503", "504"), description="The outcomes retried."
    )

    @field_validator("on", mode="before")
    @classmethod
    def _codes_as_text(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
        return value


class Slo(Strict):
    """A route's targets (at least one): each latency target is also a histogram bound and an alert."""

    p50: Duration | None = Field(None, description="Median latency target.")
    p95: Duration | None = Field(None, description="95th percentile latency target.")
    p99: Duration | None = Field(None, description="99th percentile latency target.")
    error_rate: Percent | None = Field(
        None, description="Allowed share of errors (5xx): the error budget, above 0% and below 100%."
    )
    alias: Name | None = Field(
        None,
        description="An extra short key in `/api/ops/metrics`: `p95_<alias>` (e.g. the runbook's"
        " `horoscopes`); must not be another route's name or alias.",
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
    """Which requests go where, under which limits. An exact path beats a pattern; among patterns the longest
    literal prefix wins, ties go to file order; within each, a route naming the method beats `*`."""

    name: Name = Field(description="The route's name: its label in metrics, logs and SLOs.")
    match: MatchField = Field(
        description='`"METHOD /path"`, `"GET|HEAD /path"`, `"* /path/{param}/{rest:.*}"`:'
        " `{name}` matches one path segment, `{name:regex}` the regex. A `GET` route also answers `HEAD`."
    )
    upstream: str = Field(description="The name of an upstream.")
    strip_prefix: Annotated[str, Field(pattern=r"^/")] | None = Field(
        None, description="Removed from the path before forwarding; must be a prefix of the match path."
    )
    slo: Slo | None = Field(None, description="The route's SLO targets.")
    rate_limits: tuple[str, ...] = Field(
        (), description="Names of limits in `rate_limits`, all decided together for each request."
    )
    breaker: str | None = Field(
        None, description="A breaker of the route's own; default the upstream's (shared by its routes)."
    )
    timeout: Duration | None = Field(None, description="Overrides the upstream's `timeout`.")
    connect_timeout: Duration | None = Field(None, description="Overrides the upstream's `connect_timeout`.")
    max_body: Size | None = Field(None, description="Request body cap (-> 413); default `server.max_body`.")
    retries: Retries | None = Field(None, description="Retries; off unless declared.")
    upgrade: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")], ...] = Field(
        (),
        description="`Upgrade` tokens the route lets through (e.g. `[websocket]`): the handshake goes through"
        " the whole pipeline, then bytes are relayed both ways (`server.tunnel_idle_timeout`,"
        " `server.tunnel_max_duration`). Any other upgrade is refused with 400 `upgrade_not_allowed`, except"
        " `h2c`, which is ignored (the request goes on as HTTP/1.1).",
    )
    allow_from: tuple[Network, ...] = Field(
        (),
        description="Source networks the route serves (the client address as `identity` resolves it); any"
        " other client gets 403 `forbidden_source`. Empty: every client. An egress route (the app's calls to"
        " a third party through the gateway) should name the app's own address: otherwise anyone can relay"
        " through it and trip its breaker for everyone.",
    )
    priority: Literal["critical", "normal", "sheddable"] = Field(
        "normal",
        description="Who is shed first when the upstream's adaptive concurrency (`concurrency`) is full:"
        " `sheddable`, then `normal`; `critical` last (docs/overload.md).",
    )
    allow_method_override: bool = Field(
        False,
        description="Forward `X-HTTP-Method-Override`, `X-HTTP-Method` and `X-Method-Override`. Off: they are"
        " dropped, since frameworks (Express, Rails, Symfony) run the method they name while the gateway"
        " routed and limited the request by its real method.",
    )

    @field_validator("match", mode="before")
    @classmethod
    def _parse_match(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_match(value)
        raise ValueError(f"match must be a string such as 'GET /api/orders', got {value!r}")


class Concurrency(Strict):
    """Adaptive concurrency of one upstream (gateway/admission.py, docs/overload.md): the gateway learns how
    many requests the upstream serves at once without queueing, keeps the requests in flight under that limit,
    queues a few briefly and sheds the rest by route `priority`. Off unless `adaptive: true`."""

    adaptive: bool = Field(False, description="Learn a concurrency limit for this upstream and enforce it.")
    shadow: bool = Field(
        False, description="Enforce nothing: count the requests that would have been shed (needs `adaptive`)."
    )
    min: Annotated[int, Field(ge=1, le=10_000)] = Field(
        4, description="Floor of the limit, and the limit while probing: what the upstream surely serves."
    )
    max: Annotated[int, Field(ge=1, le=100_000)] = Field(256, description="Ceiling of the limit.")
    queue: Annotated[int, Field(ge=0, le=10_000)] = Field(
        32, description="Requests waiting for a slot, at most (0: refuse at once when the limit is reached)."
    )
    queue_timeout: Duration = Field(
        0.1, description="How long a request waits in the queue before it is shed (503 `shed`)."
    )
    tolerance: Percent = Field(
        0.25, description="Latency above the no-load latency tolerated before the limit shrinks."
    )
    window: Duration = Field(0.25, description="The limit moves once per window of measured latencies.")
    probe_interval: Duration = Field(
        30.0, description="How often the no-load latency is re-learned (the limit drops to `min` meanwhile)."
    )
    probe_samples: Annotated[int, Field(ge=1, le=10_000)] = Field(
        20, description="Answers a probe needs to learn the no-load latency."
    )
    tighten_share: Percent = Field(
        0.5,
        description="Burn-rate coupling: the share of the limit left to the priority being tightened while a"
        " critical route of this upstream burns its error budget fast.",
    )
    tighten_hold: Duration = Field(
        30.0, description="Burn-rate coupling: how long a tightening level holds before the next step."
    )
    retry_after: Annotated[int, Field(ge=1, le=3600)] = Field(
        1, description="Seconds, in the `Retry-After` of a shed answer."
    )

    @model_validator(mode="after")
    def _coherent(self) -> Concurrency:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) cannot exceed max ({self.max})")
        if self.shadow and not self.adaptive:
            raise ValueError("shadow: true needs adaptive: true (there is nothing to shadow)")
        if not 0.001 <= self.window <= 60.0:
            raise ValueError("window must be between 1ms and 60s")
        if not 0.0 <= self.queue_timeout <= 60.0:
            raise ValueError("queue_timeout must be between 0s and 60s")
        if not 0.0 < self.tighten_share < 1.0:
            raise ValueError("tighten_share must be above 0% and below 100%")
        return self


class Upstream(Strict):
    """A service the gateway forwards to, with one pool of keep-alive connections."""

    url: Annotated[str, Field(pattern=r"^https?://[^/\s?#]+(/[^\s?#]*)?$")] = Field(
        description="`http(s)://host[:port][/base-path]`, without credentials, query or fragment."
    )
    connect_timeout: Duration = Field(1.0, description="Connect deadline (-> 502 `connect_error`).")
    timeout: Duration = Field(15.0, description="Whole-response deadline (-> 504 `timeout`).")
    breaker: str | None = Field(
        None, description="The name of a breaker, shared by every route of this upstream."
    )
    preserve_host: bool = Field(False, description="Send the client's `Host` instead of the upstream's.")
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = Field(256, description="Connection pool size.")
    max_requests: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        1024,
        description="Requests in flight to this upstream before the gateway answers 503 with `Retry-After`.",
    )
    retry_budget: Percent = Field(
        0.2,
        description="Retries may not exceed this share of the upstream's requests over the last 10 s (with a"
        " floor of 3 retries per second).",
    )
    concurrency: Concurrency = Field(
        Concurrency(),
        description="Adaptive concurrency: a learned limit on requests in flight, a short queue and shedding"
        " by route `priority` (docs/overload.md). Off unless `adaptive: true`.",
    )

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
    """The whole of policies.yaml."""

    version: Literal[1] = Field(description="The format's version: must be `1`.")
    storage: Storage = Field(Storage(), description="Where rate-limit buckets and overrides live.")
    identity: Identity = Field(Identity(), description="Who the caller is: user header, trusted proxies.")
    admin: Admin = Field(Admin(), description="Who may call the ops API and scrape `/metrics`.")
    slo: SloSettings = Field(SloSettings(), description="How SLOs are measured.")
    audit: Audit = Field(Audit(), description="The audit trail's backend and limits.")
    alerts: Alerts = Field(Alerts(), description="Alert delivery.")
    cors: Cors | None = Field(
        None,
        description="CORS for the proxied routes; without it the gateway adds nothing and preflights go to"
        " the upstream.",
    )
    server: Server = Field(Server(), description="The listener's limits.")
    fleet: Fleet = Field(
        Fleet(), description="The fleet view across processes sharing one Redis (SLO windows merged)."
    )
    upstreams: Annotated[dict[Name, Upstream], Field(min_length=1)] = Field(
        description="The services behind the gateway, by name."
    )
    breakers: dict[Name, Breaker] = Field({}, description="Circuit breakers, by name.")
    rate_limits: dict[Name, RateLimit] = Field({}, description="Token buckets, by name, attached to routes.")
    routes: Annotated[tuple[Route, ...], Field(min_length=1)] = Field(
        description="The routes, matched by specificity (exact paths first), not only by order."
    )

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
