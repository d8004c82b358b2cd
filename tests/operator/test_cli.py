"""`graven operator`: the subcommand exists, documents itself and rejects bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from apiclient import wait_for
from harness import EXAMPLES, NAMESPACE, ROOT, Cluster

GRAVEN = Path(sys.executable).with_name("graven")
CRDS = ROOT / "crds"


def graven(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GRAVEN), *args], capture_output=True, text=True, timeout=60)


def test_help_lists_the_options() -> None:
    done = graven("operator", "--help")
    assert done.returncode == 0, done.stderr
    for option in ("--namespace", "--all-namespaces", "--liveness", "--peering", "--standalone"):
        assert option in done.stdout


def test_operator_is_a_graven_subcommand() -> None:
    assert "operator" in graven("--help").stdout


def test_bad_interval_is_a_usage_error() -> None:
    done = graven("operator", "--health-interval", "0")
    assert done.returncode == 2
    assert "graven operator: error:" in done.stderr
    assert "Traceback" not in done.stderr


def test_namespace_and_all_namespaces_exclude_each_other() -> None:
    done = graven("operator", "--namespace", "a", "--all-namespaces")
    assert done.returncode == 2
    assert "not allowed with" in done.stderr


def test_the_command_runs_the_operator(apiserver: Cluster, crd: dict) -> None:
    """The real process: kubeconfig login, handlers registered, graceful stop on SIGTERM."""
    env = {**os.environ, "KUBECONFIG": str(apiserver.kubeconfig)}
    proc = subprocess.Popen(
        [str(GRAVEN), "operator", "--all-namespaces", "--health-interval", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        doc = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())
        doc["metadata"]["namespace"] = NAMESPACE
        apiserver.api.create(doc)
        wait_for(
            lambda: apiserver.api.get("StatefulSet", NAMESPACE, "demo"),
            timeout=30,
            what="the operator process created the StatefulSet",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "Traceback" not in output


def test_replicas_register_in_the_peering_object(apiserver: Cluster, crd: dict) -> None:
    """Leader election as documented: peering CRDs + a ClusterKopfPeering named "graven"."""
    api = apiserver.api
    for doc in yaml.safe_load_all((CRDS / "kopf-peering.yaml").read_text()):
        api.create(doc)
    api.request(
        "POST",
        "/apis/kopf.dev/v1/clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "graven"}},
    )
    env = {**os.environ, "KUBECONFIG": str(apiserver.kubeconfig), "POD_ID": "operator-a"}
    proc = subprocess.Popen(
        [str(GRAVEN), "operator", "--peering", "graven", "--priority", "7"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        peers = wait_for(
            lambda: api.request("GET", "/apis/kopf.dev/v1/clusterkopfpeerings/graven").get(
                "status"
            ),
            timeout=30,
            what="the operator in the peering object",
        )
        assert peers["operator-a"]["priority"] == 7
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
