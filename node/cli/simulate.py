"""`graven simulate`: hammer a layout in the deterministic simulator.

    graven simulate --preset NAME --members N [layout flags] [--proposers P] [--keys K]
                    [--seeds S | --seed X] [--steps T] [--allow-unsafe] [--plant NAME]
                    [--reconfigure STEPS]

``--reconfigure "4,3:fast,3:flexible q1=2 q2=2"``: during every run, move the cluster through
these configurations one after the other (members[:preset [key=value ...]]), with the real
orchestrator (publish, fence, carry-over, retire) crashing and resuming among the other faults.

Exit status: 0 every run passed, 1 a violation (the seed and a trace are printed), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from typing import Any

from ..protocol.checker import check
from ..protocol.layout import LayoutError
from ..protocol.presets import build
from ..sim.plants import PLANTS, RECONFIG_PLANTS
from ..sim.reconfigure import parse_steps
from ..sim.world import Stats, World
from . import layout as cli_layout
from .errors import UsageError

DEFAULT_SEEDS = 500
DEFAULT_STEPS = 3000


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a layout in the deterministic fault-injecting simulator",
        description=(
            "Run proposers and acceptors of a layout over a seeded simulated network with loss, "
            "reordering, duplication, partitions and crashes; check agreement, non-triviality, "
            "write-once and progress on every run. Exit status: 0 all passed, 1 violation, "
            "2 bad input."
        ),
    )
    cli_layout._add_arguments(parser)
    parser.add_argument("--keys", type=int, default=8, help="keys per run (default 8)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="runs, seeds 0..S-1")
    seeds.add_argument("--seed", type=int, help="one run with this seed (prints its trace)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="faulty events per run")
    parser.add_argument("--allow-unsafe", action="store_true", help="run layouts that fail C1-C3")
    parser.add_argument("--plant", choices=PLANTS, help="plant a known bug (the runs must fail)")
    parser.add_argument(
        "--reconfigure",
        metavar="STEPS",
        help='reconfigure during every run, e.g. "4,3:fast,3" (members[:preset [k=v ...]]); '
        "the reconfiguration plants default to 4,3:fast,3",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.file:
        block, members = cli_layout._layout_from_file(args)
    else:
        block, members = cli_layout._layout_from_flags(args)
    try:
        config = build(block, members)
    except LayoutError as exc:
        raise UsageError(str(exc)) from None
    for name, value in (("--keys", args.keys), ("--steps", args.steps)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1")
    text = args.reconfigure
    if text is None and args.plant in RECONFIG_PLANTS:
        text = "4,3:fast,3"
    try:
        steps = parse_steps(text or "")
        for step in steps:
            build(step.block, step.members)
    except (ValueError, LayoutError) as exc:
        raise UsageError(f"--reconfigure: {exc}") from None
    # --proposers sets both the layout's proposer slots and how many proposers run.
    proposers = args.proposers if args.proposers is not None else min(3, config.proposers)
    if steps:
        proposers = min(proposers, *(step.members for step in steps))
    report = check(config)
    if not report.safe and not args.allow_unsafe:
        print(report.render())
        raise UsageError("the layout is unsafe; pass --allow-unsafe to simulate it anyway")

    seeds = [args.seed] if args.seed is not None else range(args.seeds)
    total = Stats()
    started, cpu_started = time.perf_counter(), time.process_time()
    runs = 0
    for seed in seeds:
        world = World(config, seed, proposers, args.keys, plant=args.plant, reconfigs=steps)
        violation = world.run(args.steps)
        runs += 1
        for field in total.__dataclass_fields__:
            setattr(total, field, getattr(total, field) + getattr(world.stats, field))
        if violation is not None:
            print(
                f"VIOLATION ({violation.kind}) in run {runs} with seed {seed}: {violation.detail}"
            )
            print(f"reproduce: {_reproduce_command(seed)}")
            print("last events before the violation:")
            print("\n".join("  " + line for line in world.trace))
            return 1
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    summary = {
        "layout": config.name,
        "members": config.n,
        "runs": runs,
        "decisions": total.decisions,
        "messages_sent": total.sent,
        "deliveries": total.delivered,
        "lost": total.lost,
        "duplicated": total.duplicated,
        "crashes": total.crashes,
        "partitions": total.partitions,
        "reconfigurations": total.reconfigurations,
        "carried": total.carried,
        "seconds": round(elapsed, 2),
        "cpu_seconds": round(cpu, 2),
        # Per CPU second: wall time on a shared machine says more about the neighbours.
        "deliveries_per_cpu_second": int(total.delivered / cpu) if cpu else 0,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"OK: {runs} runs of {config.name} on {config.n} members, "
            f"{total.decisions} decisions, {total.sent} messages "
            f"({total.lost} lost, {total.duplicated} duplicated), {total.crashes} crashes, "
            f"{total.partitions} partitions"
            + (
                f", {total.reconfigurations} reconfigurations ({total.carried} keys carried)"
                if steps
                else ""
            )
            + "; agreement, non-triviality, write-once and progress held in every run "
            f"({summary['deliveries_per_cpu_second']} deliveries per CPU second)"
        )
    return 0


def _reproduce_command(seed: int) -> str:
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("--seed", "--seeds"):
            skip = True
            continue
        if arg.startswith(("--seed=", "--seeds=")):
            continue
        argv.append(arg)
    return shlex.join(["graven", *argv, "--seed", str(seed)])
