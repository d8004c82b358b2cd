"""The operator's Prometheus metrics: one series per ConsensusCluster, named by its labels.

    graven_cluster_available{namespace, cluster}      1 while the Available condition is True
    graven_cluster_reconfiguring{namespace, cluster}  1 while the phase is Reconfiguring
    graven_cluster_members_ready{namespace, cluster}  status.readyReplicas
    graven_cluster_reconfiguration_step{namespace, cluster}         1..4 (publish..retire), 0
    graven_cluster_reconfiguration_keys_carried{namespace, cluster} status.reconfiguration
    graven_cluster_reconfiguration_keys_total{namespace, cluster}   (keysCarried, keysTotal)

The names and labels are a contract with monitoring/rules.yaml (GravenClusterNotAvailable,
GravenConfigChangeStuck) and the chart's ServiceMonitor (honorLabels keeps `namespace` as the
cluster's, not the operator pod's). The gauges follow the status the operator writes, so they
say exactly what `kubectl get consensuscluster` says. A registry per instance (not the
process-global one) keeps several operators in one test process apart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from . import status

log = logging.getLogger("graven.operator")
LABELS = ("namespace", "cluster")
STEPS = {"publish": 1, "fence": 2, "carry": 3, "retire": 4, "abandon": 5}  # reconfigure.STEP_NUMBER


class ClusterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.available = Gauge(
            "graven_cluster_available",
            "1 while the operator reports the ConsensusCluster Available (a quorum is ready).",
            LABELS,
            registry=self.registry,
        )
        self.reconfiguring = Gauge(
            "graven_cluster_reconfiguring",
            "1 while a configuration change (members or quorums) of the cluster is in progress.",
            LABELS,
            registry=self.registry,
        )
        self.step = Gauge(
            "graven_cluster_reconfiguration_step",
            "Step of the reconfiguration under way: 1 publish, 2 fence, 3 carry, 4 retire, "
            "5 abandon (a reverted change undone before it reached any member); "
            "0 when none.",
            LABELS,
            registry=self.registry,
        )
        self.keys_carried = Gauge(
            "graven_cluster_reconfiguration_keys_carried",
            "Keys carried over into the new epoch so far (kept across operator restarts).",
            LABELS,
            registry=self.registry,
        )
        self.keys_total = Gauge(
            "graven_cluster_reconfiguration_keys_total",
            "Keys the carry step carries over in all (0 before it has listed them).",
            LABELS,
            registry=self.registry,
        )
        self.members_ready = Gauge(
            "graven_cluster_members_ready",
            "Members the operator reports ready.",
            LABELS,
            registry=self.registry,
        )
        # Only the operator's event loop writes (no locking needed); the scrape thread reads,
        # and prometheus_client's metrics are thread-safe for that.
        self._gauges = (
            self.available,
            self.reconfiguring,
            self.step,
            self.keys_carried,
            self.keys_total,
            self.members_ready,
        )

    def record(self, namespace: str, name: str, st: Mapping[str, Any]) -> None:
        """Set the cluster's gauges from the status just computed for it."""
        conditions = list(st.get("conditions") or [])
        available = status.find(conditions, status.AVAILABLE) or {}
        self.available.labels(namespace, name).set(available.get("status") == "True")
        self.reconfiguring.labels(namespace, name).set(st.get("phase") == status.RECONFIGURING)
        self.members_ready.labels(namespace, name).set(int(st.get("readyReplicas") or 0))
        rec = st.get("reconfiguration") or {}
        self.step.labels(namespace, name).set(STEPS.get(rec.get("step", ""), 0))
        self.keys_carried.labels(namespace, name).set(int(rec.get("keysCarried") or 0))
        self.keys_total.labels(namespace, name).set(int(rec.get("keysTotal") or 0))

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted cluster's series: a stale 0 would keep GravenClusterNotAvailable
        firing for a cluster that no longer exists."""
        for gauge in self._gauges:
            # never recorded (deleted before any status): prometheus-client < 0.21 raises KeyError
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)


class MetricsServer:
    """/metrics of a ClusterMetrics on host:port, in a daemon thread (prometheus_client's
    WSGI server): scrapes never wait on the operator's event loop."""

    def __init__(self, metrics: ClusterMetrics, host: str, port: int) -> None:
        # Binds now, so a busy port fails the command at start instead of in the background.
        self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.host = host
        self.port = int(self._server.server_port)  # the real one when port 0 was asked for
        log.info("serving operator metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
