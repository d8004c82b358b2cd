"""`graven node`: run one member's register service (what every pod runs).

Contract: ``graven node --id ID --listen HOST:PORT --data-dir DIR --config FILE`` (optional:
``--attempt-timeout S``, ``--request-deadline S`` for the proposer gateway; ``--tls-ca FILE
--tls-cert FILE --tls-key FILE`` to serve and call peers over mutual TLS, with the access rules
of ``security.access``; ``--tokens FILE`` for clients' bearer tokens). Prints
``graven node NAME listening on http(s)://HOST:PORT`` once serving; SIGTERM/SIGINT finish
in-flight requests, close the store and exit 0; unusable input exits 2 with one line on stderr.
A data directory whose registers belong to another cluster incarnation, or that has served a
newer epoch or another configuration under the same epoch, exits 3 (``REFUSED_EXIT``) with one
line ``graven node: refused: ...`` on stderr, having changed nothing: the operator and
`graven up` report it as a refusal, not a crash. A configuration installed live
(``POST /v1/admin/config``) is kept in the data directory; at start the member serves the newer
of it and ``--config`` (``cluster.order``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import ssl
import sys

from ..cluster.config import ClusterConfig, ConfigError, load, parse
from ..cluster.order import newer_of
from ..gateway import routes as decisions
from ..proposer.options import GatewayOptions
from ..security.node import NodeSecurity, node_security
from ..server.main import ListenError, run_node, serve
from ..storage import IdentityRefused, RegisterStore, StoreError, configdoc

REFUSED_EXIT = 3  # the data belongs to another incarnation or a newer configuration
REFUSED_PREFIX = "graven node: refused: "


class _Refused(Exception):
    """Start-up refused for a reason the user can fix: one line, exit status 2."""


class _NotThisData(Exception):
    """The configuration may not serve this data directory: one line, REFUSED_EXIT."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "node",
        help="run one member's register service",
        description="Run one member's register service (acceptor), as every pod does.",
    )
    parser.add_argument("--id", required=True, help="this member's name in the configuration")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to serve")
    parser.add_argument("--data-dir", required=True, metavar="DIR", help="register storage")
    parser.add_argument("--config", required=True, metavar="FILE", help="ClusterConfig YAML/JSON")
    defaults = GatewayOptions()
    parser.add_argument(
        "--attempt-timeout",
        type=float,
        default=defaults.attempt_timeout,
        metavar="S",
        help=f"seconds before a proposal attempt moves on (default {defaults.attempt_timeout:g})",
    )
    parser.add_argument(
        "--request-deadline",
        type=float,
        default=defaults.request_deadline,
        metavar="S",
        help=f"seconds a client request may take, then 504 (default {defaults.request_deadline:g})",
    )
    tls = parser.add_argument_group(
        "security", "mutual TLS between members and authenticated clients (all three or none)"
    )
    tls.add_argument("--tls-ca", metavar="FILE", help="trust bundle: the cluster's CA(s), PEM")
    tls.add_argument("--tls-cert", metavar="FILE", help="this member's certificate, PEM")
    tls.add_argument("--tls-key", metavar="FILE", help="this member's private key, PEM")
    tls.add_argument("--tokens", metavar="FILE", help="clients' bearer tokens, hashed (needs TLS)")
    parser.set_defaults(run=run)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")  # [::1]:7101
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _Refused(f"--listen must be HOST:PORT (e.g. 127.0.0.1:7101), got {text!r}")
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    # This module reports its own errors (rather than raising cli.UsageError): under
    # `python -m graven.node.cli` that class exists twice (__main__ and graven.node.cli).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        _run(args)
    except _Refused as exc:
        print(f"graven node: error: {exc}", file=sys.stderr)
        return 2
    except _NotThisData as exc:
        print(f"{REFUSED_PREFIX}{exc}", file=sys.stderr, flush=True)
        return REFUSED_EXIT
    return 0


def _run(args: argparse.Namespace) -> None:
    host, port = parse_listen(args.listen)
    try:
        options = GatewayOptions(
            attempt_timeout=args.attempt_timeout, request_deadline=args.request_deadline
        )
    except ValueError as exc:
        raise _Refused(str(exc)) from None
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        raise _Refused(str(exc)) from None
    cfg = _installed_or(cfg, args.data_dir)
    if cfg.view().index(args.id) is None:  # a member of any live epoch (older ones included)
        names = ", ".join(m.name for m in cfg.live_members())
        raise _Refused(f"--id {args.id!r} is not a member of cluster {cfg.cluster} ({names})")
    security = _security(args, cfg.cluster, frozenset(m.name for m in cfg.live_members()))
    if security is not None:
        options = dataclasses.replace(options, tls=security.client.current)
    elif any(m.url.startswith("https:") for m in cfg.members):
        raise _Refused("the configuration has https members: give --tls-ca/--tls-cert/--tls-key")
    try:
        store = RegisterStore.open(
            args.data_dir, cluster=cfg.cluster, node=args.id, wanted=cfg.identity()
        )
    except IdentityRefused as exc:
        raise _NotThisData(str(exc)) from None
    except StoreError as exc:
        raise _Refused(str(exc)) from None
    try:
        extensions = (decisions.extension(options),)
        run_node(serve(cfg, args.id, store, host, port, extensions, security=security))
    except ListenError as exc:
        raise _Refused(str(exc)) from None
    finally:
        store.close()  # commits anything still queued, releases the data directory lock


def _installed_or(cfg: ClusterConfig, data_dir: str) -> ClusterConfig:
    """The newer of ``--config`` and the document last installed live (see ``server.live``):
    a member restarted with an older file or ConfigMap serves what it had installed."""
    try:
        doc = configdoc.load(data_dir)
    except ValueError as exc:
        raise _Refused(str(exc)) from None
    if doc is None:
        return cfg
    try:
        installed = parse(doc)
    except ConfigError as exc:
        raise _Refused(f"{configdoc.path(data_dir)}: {exc}") from None
    return newer_of(cfg, installed)


def _security(
    args: argparse.Namespace, cluster: str, members: frozenset[str]
) -> NodeSecurity | None:
    files = (args.tls_ca, args.tls_cert, args.tls_key)
    if not any(files):
        if args.tokens:
            raise _Refused("--tokens needs TLS (--tls-ca/--tls-cert/--tls-key): no tokens in clear")
        return None
    if not all(files):
        raise _Refused("--tls-ca, --tls-cert and --tls-key go together")
    try:
        # the members of every live epoch (older ones too, while a reconfiguration runs)
        return node_security(
            cluster, members, args.tls_ca, args.tls_cert, args.tls_key, args.tokens
        )
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise _Refused(f"unusable TLS or token files: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m graven.node.cli.node``), same as ``graven node``."""
    parser = argparse.ArgumentParser(prog="graven")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["node", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
