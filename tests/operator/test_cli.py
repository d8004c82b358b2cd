"""`graven operator`: the subcommand exists, documents itself and rejects bad input."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.operator.apiclient import wait_for
from tests.operator.harness import EXAMPLES, NAMESPACE, ROOT, Cluster

GRAVEN = Path(sys.executable).with_name("graven")
CRDS = ROOT / "crds"


def graven(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GRAVEN), *args], capture_output=True, text=True, timeout=60)


def test_help_lists_the_options() -> None:
    done = graven("operator", "--help")
    assert done.returncode == 0, done.stderr
    for option in (
        *("--namespace", "--all-namespaces", "--liveness", "--peering", "--standalone"),
        *("--metrics-port", "--metrics-address", "--ca-rotation-settle", "--carry-batch"),
        "--operator-namespace",
    ):
        assert option in done.stdout


def test_operator_is_a_graven_subcommand() -> None:
    assert "operator" in graven("--help").stdout


@pytest.mark.parametrize("option", ["--health-interval", "--ca-rotation-settle"])
def test_bad_interval_is_a_usage_error(option: str) -> None:
    done = graven("operator", option, "0")
    assert done.returncode == 2
    assert "graven operator: error:" in done.stderr and option in done.stderr
    assert "Traceback" not in done.stderr


def test_the_cli_default_settle_is_the_operators() -> None:
    from graven.operator import cli, pki

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["operator"])
    assert args.ca_rotation_settle == pki.DEFAULT_SETTLE.total_seconds()


def test_a_busy_metrics_port_is_a_usage_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        done = graven("operator", "--metrics-address", "127.0.0.1", "--metrics-port", port)
    assert done.returncode == 2, done.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_carry_batch_out_of_range_is_a_usage_error() -> None:
    for bad in ("0", "1001"):
        done = graven("operator", "--carry-batch", bad)
        assert done.returncode == 2, done.stderr
        assert "--carry-batch must be between 1 and 1000" in done.stderr
        assert "Traceback" not in done.stderr


def test_metrics_port_out_of_range_is_a_usage_error() -> None:
    done = graven("operator", "--metrics-port", "70000")
    assert done.returncode == 2
    assert "--metrics-port" in done.stderr


def test_namespace_and_all_namespaces_exclude_each_other() -> None:
    done = graven("operator", "--namespace", "a", "--all-namespaces")
    assert done.returncode == 2
    assert "not allowed with" in done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as rsp:
            return rsp.read().decode()
    except OSError:  # not listening yet
        return ""


def test_the_command_runs_the_operator(apiserver: Cluster, crd: dict) -> None:
    """The real process: kubeconfig login, handlers registered, metrics served on the port the
    chart passes, graceful stop on SIGTERM."""
    env = {**os.environ, "KUBECONFIG": str(apiserver.kubeconfig)}
    port = free_port()
    proc = subprocess.Popen(
        [
            *(str(GRAVEN), "operator", "--all-namespaces", "--health-interval", "1"),
            *("--metrics-address", "127.0.0.1", f"--metrics-port={port}"),
        ],
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
        # No pods run here: the cluster is reported, and reported not available.
        series = f'graven_cluster_available{{cluster="demo",namespace="{NAMESPACE}"}} 0.0'
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: series in metrics_text(url), timeout=30, what=series)
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


def test_two_replicas_without_a_priority_do_not_tie(apiserver: Cluster, crd: dict) -> None:
    """Two replicas of one Deployment get the same arguments. With one fixed default priority
    kopf paused both ("Possibly conflicting operators with the same priority") and nothing was
    ever reconciled; each now draws its own, so one works and the other waits."""
    api = apiserver.api
    for doc in yaml.safe_load_all((CRDS / "kopf-peering.yaml").read_text()):
        api.create(doc)
    api.request(
        "POST",
        "/apis/kopf.dev/v1/clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "graven"}},
    )
    procs = [
        subprocess.Popen(
            [str(GRAVEN), "operator", "--peering", "graven"],
            env={**os.environ, "KUBECONFIG": str(apiserver.kubeconfig), "POD_ID": pod},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pod in ("operator-a", "operator-b")
    ]
    outputs = []
    try:
        peers = wait_for(
            lambda: (
                (
                    api.request("GET", "/apis/kopf.dev/v1/clusterkopfpeerings/graven").get("status")
                    or {}
                ).keys()
                >= {"operator-a", "operator-b"}
                and api.request("GET", "/apis/kopf.dev/v1/clusterkopfpeerings/graven")["status"]
            ),
            timeout=30,
            what="both replicas in the peering object",
        )
        assert peers["operator-a"]["priority"] != peers["operator-b"]["priority"]
        doc = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())
        doc["metadata"]["namespace"] = NAMESPACE
        api.create(doc)
        wait_for(
            lambda: api.get("StatefulSet", NAMESPACE, "demo"),
            timeout=30,
            what="the active replica created the StatefulSet",
        )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=30)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert not any("Possibly conflicting operators" in out for out in outputs), outputs
    # Which one waits for the other is shown on the real cluster (tests/kube/).
