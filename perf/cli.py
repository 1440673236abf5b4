"""`gateway perf run|verdict|attack`: load runs from the command line (`gateway perf -h`)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import orjson


def _duration(text: str) -> float:
    from gateway.policy.units import parse_duration

    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    """`40`, `40/s` or `40/1s` (vegeta's spelling) -> requests per second."""
    number, _, per = text.partition("/")
    try:
        value = float(number)
        seconds = _duration(per if per[:1].isdigit() else f"1{per}") if per else 1.0
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"bad rate {text!r} (e.g. 50 or 50/1s)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("rate must be positive")
    return value / seconds


def cmd_run(args: argparse.Namespace) -> int:
    from perf.run import run_scenario

    try:
        return run_scenario(
            args.scenario,
            scenarios_file=Path(args.scenarios),
            out=args.out,
            builtin=args.builtin,
            duration=args.duration,
            rate_scale=args.rate_scale,
        )
    except (KeyError, ValueError, RuntimeError) as exc:
        print(f"perf run: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2


def cmd_verdict(args: argparse.Namespace) -> int:
    from gateway.policy.loader import PolicyError
    from perf.run import meta_path, write_verdict

    results = Path(args.results)
    meta: dict[str, Any] = {}
    meta_file = Path(args.meta) if args.meta else meta_path(results)
    if meta_file.exists():
        meta = orjson.loads(meta_file.read_bytes())
    if args.rate is not None:  # a vegeta run made by hand: one attack, its asked rate given here
        from perf.results import read_results

        names = sorted({r.attack for r in read_results(results)})
        meta["attacks"] = [{"name": name, "rate": args.rate} for name in names]
    try:
        return write_verdict(results, Path(args.policy), meta, Path(args.out) if args.out else results.parent)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"perf verdict: {exc}", file=sys.stderr)
        return 2


def cmd_attack(args: argparse.Namespace) -> int:
    from perf.attacker import Attack, run_attacks
    from perf.results import ResultsWriter
    from perf.run import meta_path
    from perf.targets import TargetError, load_targets

    try:
        targets = load_targets(args.targets)
    except TargetError as exc:
        print(exc, file=sys.stderr)
        return 2
    attack = Attack(
        args.name,
        targets,
        args.rate,
        args.duration,
        max_workers=args.max_workers,
        timeout=args.timeout,
        max_body=args.max_body,
    )
    out = open(args.output, "wb") if args.output != "-" else sys.stdout.buffer  # noqa: SIM115
    try:
        writer = ResultsWriter(out)
        stats = run_attacks([attack], writer.write)
        writer.flush()
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    if args.output != "-":
        meta = {"generator": "builtin", "attacks": [s.as_dict() for s in stats]}
        meta_path(Path(args.output)).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return 1 if any(s.fell_behind for s in stats) else 0


def main(argv: list[str]) -> int:
    """Entry point of `gateway perf ...`."""
    parser = argparse.ArgumentParser(
        prog="gateway perf", description="load runs judged against the policy's SLOs"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the stack, attack, judge (vegeta when on PATH, else built in)")
    run.add_argument("scenario")
    run.add_argument("--scenarios", default="perf/scenarios.yaml")
    run.add_argument("--out", type=Path, default=None, help="run directory (default perf/results/NAME-TIME)")
    run.add_argument(
        "--builtin", action="store_true", help="use the built-in attacker even if vegeta is installed"
    )
    run.add_argument("--duration", type=_duration, default=None, help="override the scenario's duration")
    run.add_argument("--rate-scale", type=float, default=1.0, help="multiply every attack's rate")
    run.set_defaults(func=cmd_run)

    verdict = sub.add_parser("verdict", help="judge vegeta JSON-lines results against the policy's SLOs")
    verdict.add_argument("results")
    verdict.add_argument("--policy", default="policies.yaml")
    verdict.add_argument("--meta", default=None, help="run metadata (default RESULTS.meta.json when present)")
    verdict.add_argument("--rate", type=_rate, default=None, help="the rate asked of vegeta (e.g. 50/1s)")
    verdict.add_argument("--out", default=None, help="where summary.txt and report.html go (default: beside)")
    verdict.set_defaults(func=cmd_verdict)

    attack = sub.add_parser("attack", help="the built-in constant-rate attacker (vegeta attack | encode)")
    attack.add_argument("--targets", required=True)
    attack.add_argument("--rate", type=_rate, required=True, help="e.g. 50 or 50/1s")
    attack.add_argument("--duration", type=_duration, required=True, help="e.g. 10s")
    attack.add_argument("--name", default="")
    attack.add_argument("--max-workers", type=int, default=256)
    attack.add_argument("--timeout", type=_duration, default=30.0)
    attack.add_argument("--max-body", type=int, default=256)
    attack.add_argument("--output", default="-", help="results file (default stdout)")
    attack.set_defaults(func=cmd_attack)

    args = parser.parse_args(argv)
    if args.command == "run" and args.builtin is False and shutil.which("vegeta") is None:
        args.builtin = True
    result: int = args.func(args)
    return result
