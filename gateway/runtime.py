"""Everything built from one policy snapshot: compiled routes, upstream clients, identity rules.

A `Runtime` is built completely before it is used and then never changes; reload builds a new one and swaps
the single reference the request path reads. Upstream clients (connection pools) are carried over from the
previous runtime when their settings did not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.events import Events
from gateway.identity import ClientResolver
from gateway.policy.loader import LoadedPolicy
from gateway.policy.model import Policy, Retries, Route, Upstream
from gateway.proxy import UpstreamClient
from gateway.routing import Router


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route with everything the request path needs resolved at load time."""

    name: str
    route: Route
    client: UpstreamClient
    strip_prefix: str | None
    max_body: int
    connect_timeout: float
    timeout: float
    preserve_host: bool
    retries: Retries | None


@dataclass
class Runtime:
    loaded: LoadedPolicy
    router: Router[CompiledRoute]
    clients: dict[str, UpstreamClient]
    upstream_specs: dict[str, Upstream]
    resolver: ClientResolver
    user_header: str
    protected_headers: frozenset[str]
    routes: dict[str, CompiledRoute] = field(default_factory=dict)

    @property
    def policy(self) -> Policy:
        return self.loaded.policy


def compile_route(route: Route, policy: Policy, clients: dict[str, UpstreamClient]) -> CompiledRoute:
    upstream = policy.upstreams[route.upstream]
    return CompiledRoute(
        name=route.name,
        route=route,
        client=clients[route.upstream],
        strip_prefix=route.strip_prefix.rstrip("/") if route.strip_prefix else None,
        max_body=route.max_body if route.max_body is not None else policy.server.max_body,
        connect_timeout=route.connect_timeout or upstream.connect_timeout,
        timeout=route.timeout or upstream.timeout,
        preserve_host=upstream.preserve_host,
        retries=route.retries,
    )


def build_runtime(loaded: LoadedPolicy, previous: Runtime | None = None, *, events: Events | None = None) -> Runtime:
    """Build the runtime for a validated policy, reusing the previous runtime's unchanged upstream clients."""
    policy = loaded.policy
    events = events if events is not None else Events()
    clients: dict[str, UpstreamClient] = {}
    for name, spec in policy.upstreams.items():
        if previous is not None and previous.upstream_specs.get(name) == spec:
            clients[name] = previous.clients[name]
        else:
            clients[name] = UpstreamClient.create(name, spec.url, max_connections=spec.max_connections)
    compiled = {route.name: compile_route(route, policy, clients) for route in policy.routes}
    router = Router([(route.match, compiled[route.name]) for route in policy.routes])
    user_header = policy.identity.user_header
    protected = frozenset(
        {user_header.lower(), "x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
         "x-real-ip", "forwarded"}
    )
    return Runtime(
        loaded=loaded,
        router=router,
        clients=clients,
        upstream_specs=dict(policy.upstreams),
        resolver=ClientResolver(policy.identity.trusted_proxies),
        user_header=user_header,
        protected_headers=protected,
        routes=compiled,
    )


def retired_clients(old: Runtime, new: Runtime) -> list[UpstreamClient]:
    """Clients of `old` that `new` no longer uses: close them once in-flight requests have drained."""
    kept = {id(c) for c in new.clients.values()}
    return [c for c in old.clients.values() if id(c) not in kept]
