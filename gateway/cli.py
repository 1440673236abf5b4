"""Command line: `gateway serve`, `check`, `schema [--markdown]`, `alerts`, `perf`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.policy.loader import LoadedPolicy, PolicyError, load_policy
from gateway.policy.model import Policy


def load_or_report(path: str) -> LoadedPolicy | None:
    """The policy at `path`, or None after printing every problem as FILE:LINE key.path: message."""
    try:
        return load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.file)
    if loaded is None:
        return 1
    policy = loaded.policy
    print(
        f"{args.file}: ok (version {loaded.version}: {len(policy.routes)} routes,"
        f" {len(policy.upstreams)} upstreams,"
        f" {len(policy.rate_limits)} rate limits, {len(policy.breakers)} breakers)"
    )
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    if args.markdown:
        from gateway.policy.reference import render_markdown

        sys.stdout.write(render_markdown())
    else:
        print(json.dumps(Policy.model_json_schema(mode="validation"), indent=2))
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """Prometheus alert rules (or, with --grafana, the Grafana dashboard) for a policy, on stdout."""
    from gateway.alert_rules import render_yaml
    from gateway.dashboard import render_json

    loaded = load_or_report(args.file)
    if loaded is None:
        return 1
    sys.stdout.write(render_json(loaded.policy) if args.grafana else render_yaml(loaded.policy))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.compat import c_parser_in_use

    if not c_parser_in_use():
        print(
            "gateway: refusing to start: aiohttp's C HTTP parser is not in use (AIOHTTP_NO_EXTENSIONS is set"
            " or the extension failed to build); the pure-Python parser has a history of request smuggling.",
            file=sys.stderr,
        )
        return 2
    loaded = load_or_report(args.policy)
    if loaded is None:
        return 1
    from gateway.fleet.instance import check_instance_id
    from gateway.fleet.supervisor import worker_count

    try:
        workers = worker_count(args.workers)
        instance = check_instance_id(args.instance_id) if args.instance_id else None
    except ValueError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if workers > 1 and args.listen_fd is None:
        return supervise(args, loaded, workers, instance)
    from gateway import heap
    from gateway.app import GATEWAY, RUNNER_KWARGS, build_app
    from gateway.logs import configure
    from gateway.server import ConnectionLimits, serve

    configure(args.log_level)
    worker = None
    sock = None
    if args.listen_fd is not None:
        import socket

        from gateway.fleet.workers import WorkerLink

        sock = socket.socket(fileno=args.listen_fd)
        worker = WorkerLink(Path(args.worker_dir), args.supervisor_pid, args.worker_index)
    settings = loaded.policy.server
    certificate = None
    if settings.tls is not None:
        from gateway.tls import Certificate, TlsError

        try:
            certificate = Certificate(settings.tls, Path(loaded.source).resolve().parent)
        except TlsError as exc:
            print(f"gateway: refusing to start: {exc}", file=sys.stderr)
            return 2
    app = build_app(loaded, watch=args.watch, instance=instance, worker=worker)

    def draining() -> None:
        app[GATEWAY].draining = True

    main = serve(
        app,
        host=args.host,
        port=args.port,
        limits=ConnectionLimits.from_policy(settings),
        drain_timeout=settings.drain_timeout,
        runner_kwargs=RUNNER_KWARGS,
        on_draining=draining,
        certificate=certificate,
        plain_port=settings.plain_port,
        sock=sock,
    )
    heap.enable()  # this process is the gateway's: long-lived objects are frozen out of full collections
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it exists
        asyncio.run(main)
    else:
        uvloop.run(main)
    return 0


def supervise(args: argparse.Namespace, loaded: LoadedPolicy, workers: int, instance: str | None) -> int:
    """Run `workers` worker processes under a supervisor (gateway/fleet/supervisor.py)."""
    from gateway.fleet.supervisor import Supervisor
    from gateway.logs import configure

    if not loaded.policy.storage.redis_url:
        print(
            f"gateway: refusing --workers {workers} without storage.redis_url: rate limits, overrides and the"
            " SLO view would each be per worker (a limit of 100/s would admit 100/s per worker). Set"
            " storage.redis_url (REDIS_URL), or run one worker per host.",
            file=sys.stderr,
        )
        return 2
    configure(args.log_level)
    worker_argv = ["--policy", args.policy, "--log-level", args.log_level, "--workers", "1"]
    if not args.watch:
        worker_argv.append("--no-watch")
    return Supervisor(worker_argv, workers, args.host, args.port, instance).run()


PERF_MISSING = (
    "gateway perf: the load tooling (the `perf` package) is not installed; it is an optional extra of a"
    " source checkout: pip install -e '.[perf]' (or make perf SCENARIO=NAME), run from the repository root"
)


def cmd_perf(args: argparse.Namespace) -> int:
    """Hand over to the optional load tooling, found by its entry point: gateway never imports perf."""
    from importlib.metadata import entry_points

    try:
        perf_main: Callable[[list[str]], int] = next(
            iter(entry_points(group="gateway.commands", name="perf"))
        ).load()
    except (StopIteration, ModuleNotFoundError) as exc:  # the Docker image, a wheel built without perf/
        missing = f" (no module named {exc.name!r})" if isinstance(exc, ModuleNotFoundError) else ""
        print(PERF_MISSING + missing, file=sys.stderr)
        return 2
    return perf_main(args.perf_args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Resilience gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--policy", default="policies.yaml")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="no reload on policy file change (SIGHUP and POST /api/ops/reload still work)",
    )
    serve.add_argument(
        "--workers",
        default="1",
        help="worker processes (a number, or auto: one per CPU); more than 1 needs storage.redis_url",
    )
    serve.add_argument(
        "--instance-id",
        default=os.environ.get("GATEWAY_INSTANCE_ID") or None,
        help="this process's id in health, audit events and the fleet view (default host:pid;"
        " env GATEWAY_INSTANCE_ID); workers get <id>-w<index>",
    )
    # Set by the supervisor for its workers (gateway/fleet/supervisor.py), not for people.
    serve.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-dir", default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--supervisor-pid", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate a policy file (exit 1 with FILE:LINE key.path: message)")
    check.add_argument("file")
    check.set_defaults(func=cmd_check)
    schema = sub.add_parser("schema", help="print the policy JSON Schema (--markdown: the policy reference)")
    schema.add_argument(
        "--markdown", action="store_true", help="print docs/policy-reference.md, generated from the schema"
    )
    schema.set_defaults(func=cmd_schema)
    alerts = sub.add_parser("alerts", help="print Prometheus alert rules for a policy (--grafana: dashboard)")
    alerts.add_argument("file")
    alerts.add_argument("--grafana", action="store_true", help="print the Grafana dashboard JSON instead")
    alerts.set_defaults(func=cmd_alerts)
    # Load runs (the optional `perf` package): everything after `perf` is that package's own command line.
    perf = sub.add_parser(
        "perf",
        help="load runs judged against the SLOs: perf run|verdict|attack",
        add_help=False,
        prefix_chars="\0",
    )  # every option (-h too) goes to perf.cli
    perf.add_argument("perf_args", nargs=argparse.REMAINDER)
    perf.set_defaults(func=cmd_perf)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
