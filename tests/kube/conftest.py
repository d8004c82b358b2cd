"""Fixtures for the end-to-end tests on the real Kubernetes that `make kube` starts (see
kubeenv.py). Outside `make test-kube` (GRAVEN_KUBE unset) every test here is skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from kubeenv import ENV, NS, OPERATOR_NS, RELEASE, REPO, Kubectl


@pytest.fixture(autouse=True, scope="session")
def _only_in_make_test_kube() -> None:
    if os.environ.get("GRAVEN_KUBE") != "1":
        pytest.skip("needs the cluster of `make kube`: run `make test-kube`")


@pytest.fixture(scope="session")
def kubectl() -> Kubectl:
    k = Kubectl(f"{ENV['KUBE_BIN']}/kubectl", ENV["KUBECONFIG_ADMIN"])
    ready = k("get", "--raw", "/readyz", check=False, timeout=20)
    if ready.returncode != 0:
        pytest.fail(
            "the cluster of `make kube` does not answer on 127.0.0.1:6443 "
            f"({ready.stderr.strip()}); run `make kube`, and these tests through "
            "`make test-kube` (it enters the cluster's network namespace)"
        )
    current = subprocess.run(
        ["bash", str(REPO / "tools/kube/images.sh"), "--check"], capture_output=True, text=True
    )
    if current.returncode != 0:  # the cluster would run yesterday's operator and members
        pytest.fail(current.stderr.strip())
    version = k.json("version")["serverVersion"]["gitVersion"]
    assert version == ENV["KUBE_VERSION"], version
    return k


@pytest.fixture(scope="session")
def helm() -> str:
    return subprocess.run(
        ["bash", str(REPO / "tools/fetch-helm.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()


OPERATOR_ARGS = ("--drift-interval=5", "--health-interval=2", "--ca-rotation-settle=40")


@pytest.fixture(scope="session")
def operator(kubectl: Kubectl, helm: str) -> Iterator[str]:
    """The chart, installed as a user would (default image graven:0.1.0, loaded by `make kube`),
    with two replicas (one active through kopf peering) and short timers so that drift repair
    is seen within seconds and a CA rotation within two minutes (the kubelet of `make kube`
    syncs Secret volumes every 10 s)."""
    base = [helm, "--kubeconfig", kubectl.kubeconfig]
    install = subprocess.run(
        [
            *base,
            *("upgrade", "--install", RELEASE, str(REPO / "charts/graven-operator")),
            *("--namespace", OPERATOR_NS, "--create-namespace", "--wait", "--timeout", "5m"),
            *("--set", "replicas=2"),
            *(
                "--set",
                "operator.extraArgs={--drift-interval=5,--health-interval=2,--ca-rotation-settle=40}",
            ),
        ],
        capture_output=True,
        text=True,
        timeout=330,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    kubectl("create", "namespace", NS, check=False)
    try:
        yield OPERATOR_NS
    finally:
        # Clusters first, while the operator still runs to remove its finalizer.
        kubectl("delete", "gcc", "--all", "-n", NS, "--wait=true", "--timeout=120s", check=False)
        kubectl("delete", "namespace", NS, "--wait=true", "--timeout=120s", check=False)
        subprocess.run(
            [*base, "uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait"],
            capture_output=True,
            timeout=180,
        )
        kubectl("delete", "namespace", OPERATOR_NS, "--wait=true", "--timeout=120s", check=False)
