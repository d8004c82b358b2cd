"""End to end: the operator's rendered pods run as real `graven node` processes.

The test is the kubelet: it starts each member from the StatefulSet's pod template (command,
env, mounts, the ConfigMap's configuration with member URLs moved to 127.0.0.1 ports) and
publishes readiness from the template's readiness probe. The operator also probes members
directly, so a killed member shows in the status before any kubelet notices.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.operator.apiclient import condition, wait_for
from tests.operator.harness import EXAMPLES, NAMESPACE, Cluster, OperatorRunner
from tests.operator.kubelet import ProcessKubelet

GRAVEN = Path(sys.executable).with_name("graven")


def _node_missing() -> str | None:
    try:
        done = subprocess.run(
            [str(GRAVEN), "node", "--help"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`graven node` cannot run: {exc}"
    if done.returncode != 0:
        return f"`graven node` is not available yet: {done.stderr.strip()[-200:]}"
    return None


MISSING = _node_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_real_members_make_the_cluster_available_and_failures_show(
    apiserver: Cluster, crd: dict, tmp_path: Path
) -> None:
    api = apiserver.api
    ports = free_ports(3)
    runner = OperatorRunner(
        probe_members=True,
        probe_url=lambda name, ns, member: f"https://127.0.0.1:{ports[member.index]}/readyz",
    ).start()
    kubelet = ProcessKubelet(api, NAMESPACE, "demo", tmp_path, ports)

    def cluster() -> dict:
        obj = api.get("ConsensusCluster", NAMESPACE, "demo")
        assert obj is not None
        return obj

    try:
        doc = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())
        doc["metadata"]["namespace"] = NAMESPACE
        api.create(doc)
        wait_for(lambda: api.get("StatefulSet", NAMESPACE, "demo"), what="StatefulSet")
        kubelet.run(ready=[])  # pods exist, nothing ready yet
        for i in range(3):
            kubelet.start(i)

        def all_ready() -> bool:
            kubelet.sync()
            return cluster().get("status", {}).get("phase") == "Ready"

        wait_for(all_ready, timeout=30, interval=0.2, what="real members ready")
        assert condition(cluster(), "Available")["status"] == "True"

        # Kill a member; the kubelet does not notice (no sync): the operator's probe does.
        kubelet.kill(2)
        obj = wait_for(
            lambda: (o := cluster())["status"]["phase"] == "Degraded" and o, what="degraded"
        )
        assert condition(obj, "Available")["status"] == "True"
        assert obj["status"]["members"][2] == {
            "name": "demo-2",
            "index": 2,
            "ready": False,
            "reason": "ProbeFailed",
        }

        kubelet.kill(1)
        wait_for(
            lambda: condition(cluster(), "Available").get("reason") == "QuorumLost",
            what="quorum lost",
        )

        kubelet.start(1)  # same data directory, same configuration
        wait_for(
            lambda: condition(cluster(), "Available").get("status") == "True",
            timeout=30,
            what="quorum back",
        )
        kubelet.sync()
        members = wait_for(
            lambda: (m := cluster()["status"]["members"])[2]["reason"] == "NotReady" and m,
            what="kubelet saw the dead member",
        )
        assert [m["ready"] for m in members] == [True, True, False]
    finally:
        kubelet.stop_all()
        runner.stop()
