"""`graven bench`: load a running cluster and report decisions/s and latency.

    graven bench [--concurrency C] [--seconds S] [--keys N] [--racers R] [--value-size B]
                 [--reads] [--smart] [--json] [--endpoint URL ...]

``--smart`` proposes through the in-process smart client (``graven.node.client.smart``): on a
layout with a fast first set it decides in one round trip from this process, without the
proposer gateway; elsewhere it behaves like the plain client.

Exit status: 0 done, 1 cluster unreachable, no operation succeeded or any disagreement,
2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..client.core import ClientError
from ..cluster.describe import describe_layout
from . import client as cli_client

if TYPE_CHECKING:
    from ..client.loadgen import LoadResult


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="load generator: decisions/s and latency of a running cluster",
        description=(
            "Propose (or read) as fast as C concurrent workers can for S seconds and report "
            "throughput, latency percentiles, errors and disagreements between proposers."
        ),
    )
    parser.add_argument("--concurrency", "-c", type=_count(1, 4096), default=16, metavar="C")
    parser.add_argument("--seconds", "-s", type=_duration, default=10.0, metavar="S")
    parser.add_argument(
        "--keys", type=_count(1, 10_000_000), metavar="N", help="a fixed key space of N keys"
    )
    parser.add_argument(
        "--racers",
        type=_count(1, 64),
        default=1,
        metavar="R",
        help="R concurrent proposals per key with different values, on different members",
    )
    parser.add_argument(
        "--value-size", type=_count(1, 1 << 20), default=64, metavar="B", help="bytes per value"
    )
    parser.add_argument(
        "--reads", action="store_true", help="benchmark GETs of keys decided beforehand"
    )
    parser.add_argument(
        "--smart",
        action="store_true",
        help="propose through the in-process smart client (fast layouts: one round trip)",
    )
    cli_client.add_connection_arguments(parser)
    parser.set_defaults(run=run)


def _count(lo: int, hi: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 3600 seconds, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    # aiohttp: imported only for the command that uses it
    from ..client.loadgen import GatewayTarget, SmartTarget, Workload, run_load
    from ..server.main import loop_factory

    if args.reads and args.racers > 1:
        print("graven bench: error: --reads and --racers do not combine", file=sys.stderr)
        return cli_client.EXIT_USAGE
    mode, shown = "unique", "unique"
    if args.reads:
        mode = shown = "reads"
    elif args.racers > 1:
        mode, shown = "contention", "racers"
    elif args.keys:
        mode = shown = "keys"
    work = Workload(
        mode=mode,
        # C workers, each racing R proposals at once: C * R requests in flight
        concurrency=args.concurrency * (args.racers if mode == "contention" else 1),
        seconds=args.seconds,
        value_size=args.value_size,
        racers=args.racers,
        keys=(args.keys or 0) if mode != "reads" else 0,
        read_keys=args.keys or 1000,
    )
    racing = mode == "contention"  # racers go to different members on purpose
    try:
        endpoints = cli_client.endpoints(args)
        creds = cli_client.credentials(args)
        target = (SmartTarget if args.smart else GatewayTarget)(args.timeout, racing, creds)
        # the node's event loop (uvloop when installed): less client CPU per request
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            loaded = runner.run(run_load(target, endpoints, work))
    except cli_client.Failure as exc:
        print(f"graven bench: error: {exc}", file=sys.stderr)
        return exc.status
    except ClientError as exc:
        print(f"graven bench: error: {exc}", file=sys.stderr)
        return cli_client.exit_status(exc)
    result = report(loaded, shown, args, target.info)
    if args.json:
        cli_client.emit_json(result)
    else:
        print(render(result))
    failed = result["disagreements"] or result["won_anomalies"] or (result["ops"] == 0)
    return 1 if failed else 0


def report(r: LoadResult, mode: str, args: argparse.Namespace, info: dict) -> dict[str, Any]:
    """The load generator's result as the user asked for it (``--json`` prints this)."""
    return {
        **r.summary(),
        "mode": mode,  # unique | keys | racers | reads
        "concurrency": args.concurrency,
        "racers": args.racers,
        "keys": args.keys,
        "cluster": info.get("cluster"),
        "layout": info.get("layout"),
        "members": len(info.get("members") or []),
        "client": "smart" if args.smart else "gateway",
        "fast_in_client": r.paths.get("fast", 0),  # smart: timed decisions in this process
    }


def render(doc: dict[str, Any]) -> str:
    r = SimpleNamespace(**doc)
    workload = {
        "unique": "a fresh key per decision",
        "keys": f"{r.keys} keys",
        "racers": f"{r.racers} racers per key" + (f" over {r.keys} keys" if r.keys else ""),
        "reads": f"reads of {r.keys or 'preloaded'} keys",
    }[r.mode]
    unit = "reads" if r.mode == "reads" else "decisions"
    lines = [
        f"graven bench: cluster {r.cluster} ({describe_layout(r.layout)}, {r.members} members), "
        f"{workload}, concurrency {r.concurrency}, values {r.value_size} B",
        f"  {unit:<14}{r.ops:,} in {r.seconds:.2f} s = {r.ops_per_s:,.1f}/s",
        f"  {'latency':<14}p50 {r.p50_ms:.2f} ms   p99 {r.p99_ms:.2f} ms   max {r.max_ms:.2f} ms",
        f"  {'errors':<14}{r.errors}",
        *(
            [f"  {'client':<14}smart: {r.fast_in_client:,} decided in this process (fast path)"]
            if r.client == "smart"
            else []
        ),
        f"  {'disagreements':<14}{r.disagreements}",
    ]
    if r.mode == "racers" and not r.keys:
        lines.append(f"  {'won anomalies':<14}{r.won_anomalies}")
    lines.extend(f"  error: {sample}" for sample in r.error_samples)
    return "\n".join(lines)
