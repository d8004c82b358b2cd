"""`graven operator`: run the ConsensusCluster operator (kopf) against the current cluster.

    graven operator [--namespace NS ... | --all-namespaces] [--liveness URL]
                    [--peering NAME | --standalone] [--priority N]
                    [--health-interval S] [--drift-interval S] [--probe-members]
                    [--carry-batch N]
                    [--metrics-port PORT [--metrics-address ADDR]]

Credentials: in a pod, the service account; elsewhere, the current kubeconfig context.
kopf is imported only when the command runs, so `graven --help` stays fast.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import re
import secrets
from typing import Any

DEFAULT_PEERING = "graven"
DEFAULT_CARRY_BATCH = 64  # node.protocol.reconfig.DEFAULT_BATCH (not imported: --help stays fast)
MAX_CARRY_BATCH = 1000
# kopf logs every successful handler run; the timers run every few seconds per cluster.
QUIET_TIMERS = re.compile(r"^Timer '(health|drift)' succeeded")


class _QuietTimers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not QUIET_TIMERS.match(record.getMessage())


def default_priority() -> int:
    """A random peering priority: two replicas of one Deployment get the same arguments, and
    kopf pauses *all* operators that share the highest priority (none would reconcile)."""
    return secrets.randbelow(2**31 - 1) + 1


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="run the Kubernetes operator for ConsensusCluster resources",
        description=(
            "Run the operator that turns ConsensusCluster resources into running Graven "
            "clusters (StatefulSet, services, configuration, disruption budget, monitoring)."
        ),
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeat for more; glob patterns such as 'team-*' work)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (the default when no --namespace is given)",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        help="serve a liveness endpoint for the kubelet, e.g. http://0.0.0.0:8080/healthz",
    )
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument(
        "--peering",
        metavar="NAME",
        help=(
            "kopf peering object that decides which operator replica is active; given "
            f"explicitly, it must exist (default: {DEFAULT_PEERING!r} if present)"
        ),
    )
    peering.add_argument(
        "--standalone", action="store_true", help="no peering: assume this is the only operator"
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help=(
            "peering priority; the live replica with the highest priority is the active one "
            "(default: a random one, so that replicas never tie: kopf pauses every replica "
            "of a tied priority)"
        ),
    )
    parser.add_argument(
        "--health-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between member readiness checks (default 5)",
    )
    parser.add_argument(
        "--drift-interval",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds between comparisons of live children with the spec (default 30)",
    )
    parser.add_argument(
        "--ca-rotation-settle",
        type=float,
        default=180.0,
        metavar="S",
        help=(
            "seconds between the steps of a CA rotation; must exceed the time the kubelet "
            "takes to update a mounted Secret (its syncFrequency, one minute by default) "
            "(default 180)"
        ),
    )
    parser.add_argument(
        "--probe-members",
        action="store_true",
        help="also GET each member's /readyz directly (needs pod network access)",
    )
    parser.add_argument(
        "--carry-batch",
        type=int,
        default=DEFAULT_CARRY_BATCH,
        metavar="N",
        help=(
            "keys carried over per member request while a reconfiguration runs "
            f"(default {DEFAULT_CARRY_BATCH}; smaller: shorter requests, more record updates)"
        ),
    )
    parser.add_argument(
        "--operator-namespace",
        default=os.environ.get("POD_NAMESPACE") or None,
        metavar="NS",
        help=(
            "the namespace this operator's pods run in; every cluster's NetworkPolicy admits "
            "them (default: $POD_NAMESPACE, which the chart sets; unset: no such rule)"
        ),
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help=(
            "serve Prometheus metrics (graven_cluster_available, graven_cluster_reconfiguring, "
            "graven_cluster_members_ready) at /metrics on this port (default: not served)"
        ),
    )
    parser.add_argument(
        "--metrics-address",
        default="0.0.0.0",
        metavar="ADDR",
        help="address the metrics server binds to (default 0.0.0.0)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from graven.node.cli.errors import UsageError

    if min(args.health_interval, args.drift_interval, args.ca_rotation_settle) <= 0:
        raise UsageError(
            "--health-interval, --drift-interval and --ca-rotation-settle must be positive"
        )
    if not 1 <= args.carry_batch <= MAX_CARRY_BATCH:
        raise UsageError(f"--carry-batch must be between 1 and {MAX_CARRY_BATCH}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise UsageError("--metrics-port must be between 0 and 65535")

    import kopf

    from .handlers import register
    from .metrics import ClusterMetrics, MetricsServer
    from .reconcile import Operator, Options

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietTimers())
    registry = kopf.OperatorRegistry()
    metrics = ClusterMetrics()
    operator = Operator(
        Options(
            health_interval=args.health_interval,
            drift_interval=args.drift_interval,
            probe_members=args.probe_members,
            ca_settle=datetime.timedelta(seconds=args.ca_rotation_settle),
            carry_batch=args.carry_batch,
            operator_namespace=args.operator_namespace,
        ),
        metrics=metrics,
    )
    register(registry, operator)
    settings = kopf.OperatorSettings()
    settings.peering.name = DEFAULT_PEERING
    server = None
    if args.metrics_port is not None:
        try:
            server = MetricsServer(metrics, args.metrics_address, args.metrics_port)
        except OSError as exc:  # busy port, unknown address: one line, not a traceback
            raise UsageError(
                f"cannot serve metrics on {args.metrics_address}:{args.metrics_port}: {exc}"
            ) from None
    priority = args.priority if args.priority is not None else default_priority()
    logging.getLogger("graven.operator").info("peering priority %d", priority)
    try:
        kopf.run(
            registry=registry,
            settings=settings,
            clusterwide=not args.namespaces,
            namespaces=args.namespaces or (),
            standalone=True if args.standalone else None,
            peering_name=args.peering,
            priority=priority,
            liveness_endpoint=args.liveness,
        )
    finally:
        if server is not None:
            server.close()
    return 0
