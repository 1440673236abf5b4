"""Everything built from one policy snapshot: compiled routes, upstream clients, identity rules.

A `Runtime` is built completely before it is used and then never changes; reload builds a new one and swaps
the single reference the request path reads. Upstream clients (connection pools) are carried over from the
previous runtime when their settings did not change.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from gateway.admission import PRIORITIES, Admission
from gateway.breaker import Breaker, build_breakers, transition_listener
from gateway.burnwatch import BurnWatch
from gateway.events import Events
from gateway.identity import ClientResolver, Network
from gateway.policy.loader import LoadedPolicy
from gateway.policy.model import Policy, Route, Upstream
from gateway.ratelimit.limiter import Limiter, RouteLimits, route_limits
from gateway.retry import RetryBudget, RetryPolicy, build_retry_budgets
from gateway.routing import Router
from gateway.slo import SloRecorder
from gateway.upstream.client import UpstreamClient


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route with everything the request path needs resolved at load time."""

    name: str
    route: Route
    client: UpstreamClient
    strip_prefix: str | None
    max_body: int
    timeout: float  # the whole-response deadline (reload's grace period reads it)
    client_timeout: aiohttp.ClientTimeout  # built once: the per-request deadlines the client enforces
    preserve_host: bool
    retries: RetryPolicy | None  # None: the route never retries
    breaker: Breaker | None  # the route's own breaker, else its upstream's, shared by the upstream's routes
    retry_budget: RetryBudget | None  # the upstream's, shared with its other routes
    limits: RouteLimits | None = None  # the route's rate limits, checked by `Runtime.limiter`
    allow_from: tuple[Network, ...] = ()  # empty: every client
    upgrade: frozenset[str] = frozenset()  # lower-case Upgrade tokens the route lets through
    priority: int = PRIORITIES["normal"]  # gateway.admission.SHEDDABLE / NORMAL / CRITICAL
    admission: Admission | None = None  # the upstream's adaptive concurrency, when it has one

    def allows(self, ip: str) -> bool:
        """Whether a client at `ip` may use the route (`allow_from`)."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False  # "unknown" (no peer address) is no source network
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d
        return any(address in net for net in self.allow_from)


class Resource(Protocol):
    """A part of a runtime that holds connections or tasks: closed when no runtime uses it any more."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Runtime:
    """The typed contract every reader of the running gateway uses (pipeline, ops, metrics, reload).

    Parts with a lifecycle: the upstream clients (connection pools) and the limiter (Redis connection,
    override refresh). `start` readies them, `retired_by` names the ones a successor no longer shares.
    """

    loaded: LoadedPolicy
    router: Router[CompiledRoute]
    clients: dict[str, UpstreamClient]
    upstream_specs: dict[str, Upstream]
    resolver: ClientResolver
    user_header: str
    protected_headers: frozenset[str]
    routes: dict[str, CompiledRoute]
    breakers: dict[str, Breaker]
    retry_budgets: dict[str, RetryBudget]  # per upstream with a retrying route
    slo: SloRecorder  # per route+method SLO windows; carried over from the previous runtime
    limiter: Limiter  # rate limits; buckets, Redis connection and overrides carried over
    admissions: dict[str, Admission]  # per upstream with adaptive concurrency; learned limits carried over
    burn: BurnWatch  # critical routes' fast burn -> tighter admission on their upstream

    @property
    def policy(self) -> Policy:
        return self.loaded.policy

    async def start(self) -> None:
        """Ready the parts that need the running loop (idempotent: state shared with a predecessor is
        already started). Upstream pools connect lazily and need nothing."""
        await self.limiter.start()

    def resources(self) -> list[Resource]:
        """Every part of this runtime with something to close."""
        return [*self.clients.values(), self.limiter]

    def retired_by(self, successor: Runtime | None) -> list[Resource]:
        """The parts of this runtime that `successor` does not share (all of them when it is None)."""
        kept = {id(r) for r in successor.resources()} if successor is not None else set()
        return [r for r in self.resources() if id(r) not in kept]

    def breaker_snapshots(self) -> dict[str, dict[str, Any]]:
        """Each breaker's state and counters by name (sorted): how ops, health and metrics read them."""
        return {name: self.breakers[name].snapshot() for name in sorted(self.breakers)}


def compile_route(
    route: Route,
    policy: Policy,
    clients: dict[str, UpstreamClient],
    breakers: dict[str, Breaker] | None = None,
    budgets: dict[str, RetryBudget] | None = None,
    admissions: dict[str, Admission] | None = None,
) -> CompiledRoute:
    upstream = policy.upstreams[route.upstream]
    breaker_name = route.breaker or upstream.breaker
    return CompiledRoute(
        name=route.name,
        route=route,
        client=clients[route.upstream],
        strip_prefix=route.strip_prefix.rstrip("/") if route.strip_prefix else None,
        max_body=route.max_body if route.max_body is not None else policy.server.max_body,
        timeout=route.timeout or upstream.timeout,
        client_timeout=aiohttp.ClientTimeout(
            total=route.timeout or upstream.timeout,
            sock_connect=route.connect_timeout or upstream.connect_timeout,
        ),
        preserve_host=upstream.preserve_host,
        retries=RetryPolicy.compile(route.retries) if route.retries is not None else None,
        breaker=(breakers or {}).get(breaker_name) if breaker_name is not None else None,
        # Every route of the upstream counts toward its budget, so retries are a share of all its traffic.
        retry_budget=(budgets or {}).get(route.upstream),
        limits=route_limits(route),
        allow_from=route.allow_from,
        upgrade=frozenset(token.lower() for token in route.upgrade),
        priority=PRIORITIES[route.priority],
        admission=(admissions or {}).get(route.upstream),
    )


def build_runtime(
    loaded: LoadedPolicy,
    previous: Runtime | None = None,
    *,
    events: Events | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Runtime:
    """Build the runtime for a validated policy, reusing the previous runtime's unchanged upstream clients.

    `clock` is the monotonic clock breakers and retry budgets read (tests move it instead of sleeping).
    """
    policy = loaded.policy
    events = events if events is not None else Events()
    clients: dict[str, UpstreamClient] = {}
    for name, spec in policy.upstreams.items():
        if previous is not None and previous.upstream_specs.get(name) == spec:
            clients[name] = previous.clients[name]
        else:
            clients[name] = UpstreamClient.create(
                name, spec.url, max_connections=spec.max_connections, max_requests=spec.max_requests
            )
    breakers = build_breakers(
        policy, previous.breakers if previous is not None else {}, transition_listener(events.emit), clock
    )
    budgets = build_retry_budgets(policy, previous.retry_budgets if previous is not None else {}, clock)
    admissions = build_admissions(policy, previous, clock)
    compiled = {
        route.name: compile_route(route, policy, clients, breakers, budgets, admissions)
        for route in policy.routes
    }
    router = Router([(route.match, compiled[route.name]) for route in policy.routes])
    user_header = policy.identity.user_header
    protected = frozenset(
        {
            user_header.lower(),
            "x-request-id",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-real-ip",
            "forwarded",
        }
    )
    slo = SloRecorder(policy, previous.slo if previous is not None else None, clock=clock)
    critical = {
        name: tuple(r.name for r in policy.routes if r.upstream == name and r.priority == "critical")
        for name in admissions
    }
    return Runtime(
        loaded=loaded,
        router=router,
        clients=clients,
        upstream_specs=dict(policy.upstreams),
        resolver=ClientResolver(policy.identity.trusted_proxies, policy.identity.user_networks),
        user_header=user_header,
        protected_headers=protected,
        routes=compiled,
        breakers=breakers,
        retry_budgets=budgets,
        slo=slo,
        limiter=Limiter(
            policy, previous.limiter if previous is not None else None, events=events, clock=clock
        ),
        admissions=admissions,
        burn=BurnWatch(slo, admissions, critical, events, slo.clock),
    )


def build_admissions(
    policy: Policy, previous: Runtime | None, clock: Callable[[], float]
) -> dict[str, Admission]:
    """One `Admission` per upstream with adaptive concurrency. An unchanged upstream keeps its object (the
    learned limit, the in-flight count and the queue); one whose concurrency settings changed but whose URL
    did not starts from the learned limit and no-load latency (in-flight requests finish on the old one)."""
    admissions: dict[str, Admission] = {}
    for name, spec in policy.upstreams.items():
        if not spec.concurrency.adaptive:
            continue
        old = previous.admissions.get(name) if previous is not None else None
        same_url = old is not None and previous is not None and previous.upstream_specs[name].url == spec.url
        if old is not None and same_url and old.spec == spec.concurrency:
            admissions[name] = old
        else:
            learned = old if same_url else None
            admissions[name] = Admission(name, spec.concurrency, clock=clock, learned=learned)
    return admissions
