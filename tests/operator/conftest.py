"""Fixtures: a test apiserver on 127.0.0.1, the CRD, and the real kopf operator in a thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# The helpers next to this file are plain modules (a package named "operator" would shadow
# the standard library's), so make them importable by name.
from tests.operator.apiclient import Api
from tests.operator.emulator import Running
from tests.operator.harness import KUBECONFIG, NAMESPACE, Cluster, OperatorRunner, load_crd


@pytest.fixture
def apiserver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    import kubernetes.config.kube_config

    server = Running().start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.format(url=server.url, namespace=NAMESPACE))
    # The kubernetes client read $KUBECONFIG when it was imported; kopf's login uses it.
    monkeypatch.setattr(
        kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig)
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield Cluster(server, Api(server.url), kubeconfig)
    finally:
        server.stop()


@pytest.fixture
def crd(apiserver: Cluster) -> dict:
    return apiserver.api.create(load_crd())


@pytest.fixture
def operator(apiserver: Cluster, crd: dict) -> Iterator[OperatorRunner]:
    runner = OperatorRunner().start()
    try:
        yield runner
    finally:
        runner.stop()
