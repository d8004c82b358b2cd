"""`graven propose`, `graven get`, `graven status`: talk to a running cluster.

    graven propose KEY VALUE [--json]
    graven get KEY [--wait S] [--json]          exit 0 decided, 3 nothing decided
    graven status [--json]

Endpoints: ``--endpoint URL`` (repeatable), else the members in ``DIR/discovery.json`` written
by ``graven up`` (``--data-dir DIR``, default ./.graven). Credentials: ``--ca FILE``,
``--cert FILE --key FILE``, ``--token T`` or ``--token-file FILE``; without any of them, the
local cluster's (named in its discovery file), so a `graven up` cluster needs no flags.
Errors are one line on stderr; exit 2 for bad input (or a 4xx reply), 1 when the cluster
cannot be reached or answers 503/504.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..client.core import DEFAULT_TIMEOUT, ClientError, parse_endpoint
from ..client.credentials import Credentials, CredentialsError
from ..client.probe import MemberState, probe_all
from ..client.sync import Client
from ..cluster.describe import describe_layout, table
from ..local import cluster as lc

EXIT_UNREACHABLE = 1
EXIT_USAGE = 2
EXIT_NOT_DECIDED = 3
SHOWN_VALUE_CHARS = 200  # human output abbreviates longer values (get prints them whole)


class Failure(Exception):
    """One line for stderr and the exit status that goes with it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# -- parsers ------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    # The registry lists this module once per command it serves; register each only once.
    if "propose" in subparsers.choices:
        return
    propose = subparsers.add_parser(
        "propose",
        help="propose a value for a key; prints what was decided",
        description="Propose VALUE for KEY. The decided value may be another proposer's.",
    )
    propose.add_argument("key", metavar="KEY")
    propose.add_argument("value", metavar="VALUE")
    add_connection_arguments(propose)
    propose.set_defaults(run=_guarded("propose", run_propose))

    get = subparsers.add_parser(
        "get",
        help="read the value decided for a key",
        description="Print the value decided for KEY. Exit status 0 decided, 3 nothing decided.",
    )
    get.add_argument("key", metavar="KEY")
    get.add_argument("--wait", type=_seconds, metavar="S", help="wait up to S seconds")
    add_connection_arguments(get)
    get.set_defaults(run=_guarded("get", run_get))

    status = subparsers.add_parser(
        "status",
        help="members, readiness, layout and decisions of a cluster",
        description="Show every member's readiness and /readyz round trip, the layout and epoch.",
    )
    add_connection_arguments(status)
    status.set_defaults(run=_guarded("status", run_status))


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint",
        action="append",
        metavar="URL",
        help="a member's URL (repeatable); default: the local cluster's discovery file",
    )
    parser.add_argument(
        "--data-dir",
        default=lc.DEFAULT_DATA_DIR,
        metavar="DIR",
        help=f"local cluster directory of `graven up` (default: ./{lc.DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds per request (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    auth = parser.add_argument_group("credentials (default: the local cluster's)")
    auth.add_argument("--ca", metavar="FILE", help="trust bundle (PEM) for https members")
    auth.add_argument(
        "--cert", dest="cert_file", metavar="FILE", help="client certificate (PEM), with --key"
    )
    # dest: ``key`` is the positional KEY of propose/get
    auth.add_argument("--key", dest="key_file", metavar="FILE", help="the certificate's key")
    auth.add_argument("--token", metavar="TOKEN", help="bearer token (shows in ps: prefer a file)")
    auth.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"seconds must be between 0 and 86400, got {text}")
    return value


def _guarded(name: str, body: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """Every failure becomes one line on stderr: never a traceback for a user mistake."""

    def run(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except Failure as exc:
            print(f"graven {name}: error: {exc}", file=sys.stderr)
            return exc.status
        except ClientError as exc:
            print(f"graven {name}: error: {exc}", file=sys.stderr)
            return exit_status(exc)

    return run


def exit_status(exc: ClientError) -> int:
    if exc.status is not None and 400 <= exc.status < 500:
        return EXIT_USAGE
    return EXIT_UNREACHABLE


# -- endpoints ----------------------------------------------------------------------------------


def endpoints(args: argparse.Namespace) -> list[str]:
    if args.endpoint:
        for url in args.endpoint:
            try:
                parse_endpoint(url)
            except ValueError as exc:
                raise Failure(f"--endpoint: {exc}", EXIT_USAGE) from None
        return list(args.endpoint)
    return [m["url"] for m in discovery(args)["members"]]


def discovery(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir)
    try:
        doc = lc.read_discovery(data_dir)
    except lc.LocalClusterError as exc:
        raise Failure(str(exc), EXIT_UNREACHABLE) from None
    if doc is None:
        raise Failure(
            f"no local cluster is running in {data_dir} (no {lc.DISCOVERY_FILE}); "
            "start one with `graven up`, or pass --endpoint URL",
            EXIT_UNREACHABLE,
        )
    if not lc.live_pids(doc):
        raise Failure(
            f"the cluster in {data_dir} is not running (its graven up is gone); "
            "start it again with `graven up`",
            EXIT_UNREACHABLE,
        )
    return doc


def credentials(args: argparse.Namespace) -> Credentials:
    """The flags' credentials; without any, those of the local cluster in --data-dir."""
    if (args.cert_file is None) != (args.key_file is None):
        raise Failure("--cert and --key go together", EXIT_USAGE)
    if args.token and args.token_file:
        raise Failure("give --token or --token-file, not both", EXIT_USAGE)
    token = args.token
    try:
        if args.token_file:
            token = Credentials.read_token(args.token_file)
    except CredentialsError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    given = Credentials(ca=args.ca, cert=args.cert_file, key=args.key_file, token=token)
    if not given.empty:
        if given.ca is None and not args.endpoint:
            # e.g. only a token for the local cluster: its CA still comes from discovery
            local = _local_credentials(args)
            return Credentials(local.ca, given.cert, given.key, given.token)
        return given
    return _local_credentials(args)


def _local_credentials(args: argparse.Namespace) -> Credentials:
    try:
        doc = lc.read_discovery(Path(args.data_dir))
    except lc.LocalClusterError:
        doc = None
    return Credentials.from_discovery(doc)


def client(args: argparse.Namespace) -> Client:
    return Client(endpoints(args), timeout=args.timeout, credentials=_checked(args))


def _checked(args: argparse.Namespace) -> Credentials:
    creds = credentials(args)
    try:
        creds.tls()  # unreadable files: one line now, not a failure per member later
    except CredentialsError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    return creds


def emit_json(doc: Any) -> None:
    print(json.dumps(doc, ensure_ascii=False))


def shown(value: str) -> str:
    if len(value) <= SHOWN_VALUE_CHARS:
        return value
    return f"{value[:SHOWN_VALUE_CHARS]}… ({len(value.encode())} bytes)"


# -- commands -----------------------------------------------------------------------------------


def run_propose(args: argparse.Namespace) -> int:
    with client(args) as c:
        decision = c.propose(args.key, args.value)
    if args.json:
        emit_json({"key": decision.key, "value": decision.value, "won": decision.won})
    elif decision.won:
        print(f"decided {decision.key} = {shown(decision.value)}  (your proposal won)")
    else:
        print(
            f"decided {decision.key} = {shown(decision.value)}  "
            "(another proposal was decided first; yours was not)"
        )
    return 0


def run_get(args: argparse.Namespace) -> int:
    with client(args) as c:
        value = c.get(args.key, wait=args.wait)
    if args.json:
        emit_json({"key": args.key, "value": value})
    elif value is not None:
        print(value)
    else:
        within = f" within {args.wait:g} s" if args.wait else ""
        print(f"graven get: nothing decided for {args.key}{within}", file=sys.stderr)
    return 0 if value is not None else EXIT_NOT_DECIDED


def run_status(args: argparse.Namespace) -> int:
    urls = endpoints(args)
    creds = _checked(args)
    info: dict[str, Any] | None = None
    problem: str | None = None
    with Client(urls, timeout=args.timeout, route=False, credentials=creds) as c:
        try:
            info = c.cluster()
        except ClientError as exc:
            problem = str(exc)
    if info is not None:
        members = live_members(info)
    elif args.endpoint:
        members = [(url, url) for url in urls]
    else:
        members = [(str(m.get("name")), m["url"]) for m in discovery(args)["members"]]
    states = probe_all(members, creds)
    report = status_report(info, states, problem)
    if args.json:
        emit_json(report)
    else:
        print(render_status(report, states))
    return 0 if report["members_up"] else EXIT_UNREACHABLE


def live_members(info: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, URL) of every member of a live epoch: the newest epoch's, then the older epochs'
    that are not in it (they serve until retired, so ``graven status`` probes them too)."""
    members = [(str(m.get("name")), str(m.get("url"))) for m in info.get("members", [])]
    for past in info.get("previous") or ():
        for m in past.get("members", []):
            if str(m.get("name")) not in {name for name, _ in members}:
                members.append((str(m.get("name")), str(m.get("url"))))
    return members


def status_report(
    info: dict[str, Any] | None, states: list[MemberState], problem: str | None
) -> dict[str, Any]:
    counts = [s.decisions for s in states if s.decisions is not None]
    return {
        "cluster": info.get("cluster") if info else None,
        "epoch": info.get("epoch") if info else None,
        # every epoch still live: more than one while a reconfiguration is under way
        "live_epochs": info.get("liveEpochs", [info.get("epoch")]) if info else None,
        "layout": info.get("layout") if info else None,
        "members": [s.to_dict() for s in states],
        "members_up": sum(s.up for s in states),
        "decisions": sum(counts) if counts else None,
        "error": problem,
    }


def render_status(report: dict[str, Any], states: list[MemberState]) -> str:
    lines = []
    if report["cluster"] is not None:
        lines.append(
            f"cluster {report['cluster']}  epoch {report['epoch']}  "
            f"layout {describe_layout(report['layout'])}  "
            f"members {len(states)} ({report['members_up']} up)"
        )
        live = report.get("live_epochs") or []
        if len(live) > 1:
            lines.append(
                f"reconfiguring: live epochs {', '.join(map(str, live))} (proposals read every "
                f"live epoch; no fast path until epoch {live[0]} is retired)"
            )
    else:
        lines.append(f"cluster unreachable: {report['error']}")
    rows = [
        (
            s.name,
            s.url,
            s.state,
            None if s.latency_ms is None else f"{s.latency_ms:.2f} ms",
            s.decisions,
            s.error or "",
        )
        for s in states
    ]
    lines.append(table(("MEMBER", "URL", "STATE", "READYZ RTT", "DECISIONS", "NOTE"), rows))
    if report["decisions"] is not None:
        lines.append(f"decisions: {report['decisions']} (graven_decisions_total, all members)")
    return "\n".join(lines)
