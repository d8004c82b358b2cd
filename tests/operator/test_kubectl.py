"""A user's session with the real kubectl against the test apiserver and the real operator."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.operator.apiclient import wait_for
from tests.operator.harness import CRD_PATH, EXAMPLES, NAMESPACE, Cluster, OperatorRunner
from tests.operator.kubelet import FakeKubelet

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


class Kubectl:
    def __init__(self, cluster: Cluster, cache: Path) -> None:
        self.base = [
            str(KUBECTL),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--cache-dir",
            str(cache),
        ]

    def __call__(
        self, *args: str, ok: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=60, input=stdin
        )
        if ok:
            assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done


@pytest.fixture
def kubectl(apiserver: Cluster, tmp_path: Path) -> Kubectl:
    return Kubectl(apiserver, tmp_path / "kube-cache")


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_apply_get_and_wait(apiserver: Cluster, kubectl: Kubectl) -> None:
    assert "created" in kubectl("apply", "-f", str(CRD_PATH)).stdout
    runner = OperatorRunner().start()
    try:
        out = kubectl("apply", "-f", str(EXAMPLES / "cluster.yaml")).stdout
        assert "consensuscluster.graven.dev/demo created" in out
        wait_for(lambda: apiserver.api.get("StatefulSet", NAMESPACE, "demo"), what="members")

        # Nothing is ready yet: waiting for Available must time out, not succeed.
        early = kubectl("wait", "--for=condition=Available", "gcc/demo", "--timeout=1s", ok=False)
        assert early.returncode != 0

        FakeKubelet(apiserver.api, NAMESPACE, "demo").run()
        kubectl("wait", "--for=condition=Available", "gcc/demo", "--timeout=30s")
        kubectl(
            "wait", "--for=jsonpath={.status.phase}=Ready", "consensuscluster/demo", "--timeout=30s"
        )

        rows = table(kubectl("get", "gcc").stdout)
        assert rows[0] == ["NAME", "PHASE", "READY", "LAYOUT", "EPOCH", "TOLERATES", "AGE"]
        assert rows[1][:6] == ["demo", "Ready", "3/3", "paxos", "0", "1"]

        described = kubectl(
            "get",
            "gcc",
            "demo",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='LayoutValid')].status}",
        )
        assert described.stdout == "True"

        # Re-applying the same manifest changes nothing.
        assert "unchanged" in kubectl("apply", "-f", str(EXAMPLES / "cluster.yaml")).stdout
    finally:
        runner.stop()


def test_schema_errors_reach_the_user(apiserver: Cluster, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(CRD_PATH))
    bad = (EXAMPLES / "cluster.yaml").read_text().replace("replicas: 3", "replicas: 40")
    done = kubectl("apply", "-f", "-", stdin=bad, ok=False)
    assert done.returncode != 0
    assert "replicas" in done.stderr
    assert apiserver.api.get("ConsensusCluster", NAMESPACE, "demo") is None


def test_all_examples_apply(apiserver: Cluster, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(CRD_PATH))
    out = kubectl("apply", "-f", str(EXAMPLES)).stdout
    assert out.count("created") == len(list(EXAMPLES.glob("*.yaml")))
    names = kubectl("get", "consensusclusters", "-o", "name").stdout.split()
    expected = [
        "consensuscluster.graven.dev/" + yaml.safe_load(p.read_text())["metadata"]["name"]
        for p in EXAMPLES.glob("*.yaml")
    ]
    assert sorted(names) == sorted(expected)
