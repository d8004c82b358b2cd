"""The `graven` command: one entry point, each subcommand in its own module.

Subcommand modules are imported lazily so `graven layout check` does not pay for aiohttp/kopf.
Every subcommand registers itself through ``add_parser(subparsers)`` and runs via ``run(args)``
returning an exit status. Bad input is reported as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UsageError

__all__ = ["UsageError", "build_parser", "main"]

# subcommand name -> module implementing add_parser()/run()
SUBCOMMANDS: dict[str, str] = {
    "layout": "graven.node.cli.layout",
    "simulate": "graven.node.cli.simulate",
    "node": "graven.node.cli.node",
    "operator": "graven.operator.cli",
    "up": "graven.node.cli.up",
    "propose": "graven.node.cli.client",
    "get": "graven.node.cli.client",
    "status": "graven.node.cli.client",
    "bench": "graven.node.cli.bench",
    "token": "graven.node.cli.token",
    "cert": "graven.node.cli.cert",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graven", description="Consensus over write-once registers."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UsageError as exc:
        print(f"graven {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
