"""Operator metrics: the gauges follow the status the operator writes, vanish with the cluster,
and are served over HTTP the way `graven operator --metrics-port` serves them."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Mapping
from typing import Any

import pytest

from graven.operator import names, status
from graven.operator.kube import path
from graven.operator.metrics import ClusterMetrics, MetricsServer
from graven.operator.reconcile import Operator
from tests.operator.test_status import observe

T0, T1, T2 = "2030-01-01T00:00:00Z", "2030-01-01T00:01:00Z", "2030-01-01T00:02:00Z"
PAXOS = {"preset": "paxos"}


def sample(metrics: ClusterMetrics, name: str, ns: str = "ns", cluster: str = "c") -> float | None:
    return metrics.registry.get_sample_value(name, {"namespace": ns, "cluster": cluster})


def gauges(metrics: ClusterMetrics, ns: str = "ns", cluster: str = "c") -> tuple:
    return tuple(
        sample(metrics, f"graven_cluster_{g}", ns, cluster)
        for g in ("available", "reconfiguring", "members_ready")
    )


def test_gauges_follow_the_status_through_a_quorum_loss() -> None:
    m = ClusterMetrics()
    st = status.build({}, observe(PAXOS, 3, set()), None, T0)
    m.record("ns", "c", st)
    assert gauges(m) == (0.0, 0.0, 0.0)

    st = status.build(st, observe(PAXOS, 3, {0, 1, 2}), None, T1)
    m.record("ns", "c", st)
    assert gauges(m) == (1.0, 0.0, 3.0)

    st = status.build(st, observe(PAXOS, 3, {0}), None, T2)
    assert status.find(st["conditions"], status.AVAILABLE)["reason"] == status.QUORUM_LOST
    m.record("ns", "c", st)
    assert gauges(m) == (0.0, 0.0, 1.0)


def test_reconfiguring_follows_the_phase() -> None:
    m = ClusterMetrics()
    st = status.build({}, observe(PAXOS, 3, {0, 1, 2}), None, T0)
    m.record("ns", "c", {**st, "phase": status.RECONFIGURING})
    assert sample(m, "graven_cluster_reconfiguring") == 1.0
    m.record("ns", "c", st)
    assert sample(m, "graven_cluster_reconfiguring") == 0.0


def test_clusters_are_kept_apart_and_forgotten_one_by_one() -> None:
    m = ClusterMetrics()
    ready = status.build({}, observe(PAXOS, 3, {0, 1, 2}), None, T0)
    m.record("ns", "c", ready)
    m.record("other", "c", status.build({}, observe(PAXOS, 3, set()), None, T0))
    assert gauges(m, "ns") == (1.0, 0.0, 3.0)
    assert gauges(m, "other") == (0.0, 0.0, 0.0)

    m.forget("ns", "c")
    assert gauges(m, "ns") == (None, None, None)
    assert gauges(m, "other") == (0.0, 0.0, 0.0)
    m.forget("ns", "never-recorded")  # a cluster deleted before its first status


class FakeKube:
    """Just enough of Kube for write_status: a stored cluster without children."""

    def __init__(self, objects: dict[str, dict]) -> None:
        self.objects = objects

    async def get(self, url: str) -> dict | None:
        return self.objects.get(url)

    async def list(self, url: str, labels: Mapping[str, str] | None = None) -> list[dict]:
        return []

    async def patch(self, url: str, patch: Mapping[str, Any]) -> dict:
        return {}


async def test_write_status_records_and_a_deleted_cluster_is_forgotten() -> None:
    url = path(names.KIND, "ns", "c")
    cr = {"metadata": {"name": "c", "namespace": "ns", "generation": 1}, "spec": {}}
    metrics = ClusterMetrics()
    op = Operator(kube=FakeKube({url: cr}), metrics=metrics)  # type: ignore[arg-type]

    written = await op.refresh("ns", "c")
    assert written is not None and written["phase"] == status.PENDING
    assert gauges(metrics) == (0.0, 0.0, 0.0)

    cr["metadata"]["deletionTimestamp"] = T0
    assert await op.refresh("ns", "c") is None
    assert gauges(metrics) == (None, None, None)


def test_the_server_serves_the_registry_and_frees_its_port() -> None:
    m = ClusterMetrics()
    m.record("ns", "c", status.build({}, observe(PAXOS, 3, {0, 1, 2}), None, T0))
    server = MetricsServer(m, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        server.close()
    assert 'graven_cluster_available{cluster="c",namespace="ns"} 1.0' in text
    assert 'graven_cluster_members_ready{cluster="c",namespace="ns"} 3.0' in text
    with socket.socket() as s:  # no listener left (TIME_WAIT of the scrape is fine)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))
        s.listen()


def test_a_busy_port_fails_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError):
            MetricsServer(ClusterMetrics(), "127.0.0.1", s.getsockname()[1])
