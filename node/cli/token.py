"""`graven token`: make a client's bearer token and the hashed entry a cluster stores for it.

    graven token --name alice --role write [--tokens FILE]

Prints the token (give it to the client; it is shown only once) on stdout. With ``--tokens``
the entry (name, role, SHA-256 of the token) is added to that token file, replacing an entry of
the same name; members re-read the file within a second. Without it, the entry is printed on
stderr as YAML for a Kubernetes Secret's ``tokens.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..security import tokens
from ..security.identity import ROLES


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "token",
        help="make a client bearer token (stored hashed)",
        description="Make a bearer token for a client; print it, store only its hash.",
    )
    parser.add_argument("--name", required=True, help="who the token is for (shown in logs)")
    parser.add_argument("--role", required=True, choices=ROLES, help="read, write or admin")
    parser.add_argument(
        "--tokens",
        metavar="FILE",
        help="token file to add the entry to (e.g. .graven/tls/tokens.yaml of graven up)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    token = tokens.new_token()
    entry = tokens.TokenEntry(args.name, args.role, tokens.digest(token))
    if args.tokens:
        path = Path(args.tokens)
        try:
            current = tokens.load(path) if path.exists() else {}
        except tokens.TokenFileError as exc:
            print(f"graven token: error: {exc}", file=sys.stderr)
            return 2
        entries = [e for e in current.values() if e.name != args.name] + [entry]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(tokens.dump(entries), encoding="utf-8")
        tmp.replace(path)  # atomic: members never read half a file
    else:
        print(tokens.dump([entry]), file=sys.stderr, end="")
    print(token)
    return 0
