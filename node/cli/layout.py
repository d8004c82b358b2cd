"""`graven layout check`: prove a quorum layout safe or show which quorums fail to intersect.

    graven layout check --preset NAME --members N [layout flags] [--json]
    graven layout check FILE.yaml [--json]

Exit status: 0 safe, 1 unsafe, 2 bad input. Imports stay light (no aiohttp, no kopf).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..cluster.layoutfile import load_layout_file
from ..protocol.checker import LayoutReport, check
from ..protocol.layout import LayoutError
from ..protocol.presets import COMMON_KEYS, PRESET_KEYS, build
from .errors import UsageError

# flag destination -> key of the layout block (config.py schema)
FLAG_KEYS = {
    "q1": "q1",
    "q2": "q2",
    "grid": "grid",
    "phase1": "phase1",
    "fast_quorum": "fastQuorum",
    "classic_quorum": "classicQuorum",
    "all_sets": "allSets",
    "proposers": "proposers",
}


def add_parser(subparsers: Any) -> None:
    layout = subparsers.add_parser(
        "layout", help="check quorum layouts", description="Work with quorum layouts."
    )
    actions = layout.add_subparsers(dest="layout_command", metavar="ACTION")
    actions.required = True
    check_parser = actions.add_parser(
        "check",
        help="check a layout against C1-C3 and print its fault tolerance",
        description=(
            "Check a quorum layout against the safety conditions C1-C3 and print the failures "
            "it tolerates. Give either a YAML FILE (layout block, {members, quorums} wrapper or "
            "ConsensusCluster manifest) or --preset and --members. "
            "Exit status: 0 safe, 1 unsafe, 2 bad input."
        ),
    )
    _add_arguments(check_parser)
    check_parser.set_defaults(run=run)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", metavar="FILE", help="layout or manifest YAML file")
    parser.add_argument("--preset", help="paxos, flexible, fast, colocated or fixed-majority")
    parser.add_argument("--members", type=int, help="number of members (1-16)")
    parser.add_argument("--q1", type=int, metavar="K", help="flexible: phase-1 quorum size")
    parser.add_argument("--q2", type=int, metavar="K", help="flexible: phase-2 quorum size")
    parser.add_argument("--grid", metavar="RxC", help="flexible: grid quorums, e.g. 2x3")
    parser.add_argument(
        "--phase1", choices=("rows", "columns"), help="flexible grid: phase-1 quorums"
    )
    parser.add_argument("--fast-quorum", type=int, metavar="K", help="fast: fast quorum size")
    parser.add_argument("--classic-quorum", type=int, metavar="K", help="fast: classic quorum size")
    parser.add_argument(
        "--all-sets", type=int, metavar="K", help="colocated: leading sets using all members"
    )
    parser.add_argument("--proposers", type=int, metavar="P", help="proposer slots")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    report = check_layout(args)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.render())
    return 0 if report.safe else 1


def check_layout(args: argparse.Namespace) -> LayoutReport:
    block, members = _layout_from_file(args) if args.file else _layout_from_flags(args)
    try:
        return check(build(block, members))
    except LayoutError as exc:
        raise UsageError(str(exc)) from None


def _layout_from_file(args: argparse.Namespace) -> tuple[dict | None, int]:
    given = _given_flags(args)
    if args.preset is not None or args.members is not None:
        given = ["--preset" if args.preset is not None else "--members", *given]
    if given:
        # The file is the whole layout; silently merging flags into it would hide mistakes.
        raise UsageError(f"a layout FILE cannot be combined with {', '.join(given)}")
    try:
        return load_layout_file(args.file)
    except LayoutError as exc:
        raise UsageError(str(exc)) from None


def _layout_from_flags(args: argparse.Namespace) -> tuple[dict, int]:
    if args.preset is None or args.members is None:
        raise UsageError("give a layout FILE, or both --preset and --members")
    block: dict[str, Any] = {"preset": args.preset}
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest)
        if value is not None:
            block[key] = value
    _reject_foreign_flags(args.preset, block)
    return block, args.members


def _reject_foreign_flags(preset: str, block: dict[str, Any]) -> None:
    """Name the flag, not the layout key, when it does not belong to the preset."""
    allowed = PRESET_KEYS.get(preset)
    if allowed is None:
        return  # unknown preset: config.build says which presets exist
    flag_of = {key: "--" + dest.replace("_", "-") for dest, key in FLAG_KEYS.items()}
    foreign = [flag_of[k] for k in block if k not in allowed | COMMON_KEYS]
    if foreign:
        takes = sorted(flag_of[k] for k in allowed) or ["no layout flags"]
        raise UsageError(
            f"preset {preset} does not take {', '.join(foreign)} (it takes {', '.join(takes)})"
        )


def _given_flags(args: argparse.Namespace) -> list[str]:
    return ["--" + dest.replace("_", "-") for dest in FLAG_KEYS if getattr(args, dest) is not None]
