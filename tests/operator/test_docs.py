"""docs/operator.md: its manifests are valid, and its ClusterRole allows every request the
operator actually makes (RBAC is not enforced by the test apiserver, so check it here)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import kubernetes_validate
import pytest
import yaml

from tests.operator.apiclient import wait_for
from tests.operator.harness import NAMESPACE, ROOT, Cluster, OperatorRunner, demo, monitoring_crd
from tests.operator.kubelet import FakeKubelet

DOC = ROOT / "docs" / "operator.md"
TOKEN = "test-token"  # what the operator authenticates with (the fixture's kubeconfig)


def manifests() -> Iterator[dict]:
    for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S):
        for doc in yaml.safe_load_all(block):
            if isinstance(doc, dict) and "kind" in doc:
                yield doc


def cluster_role() -> dict:
    return next(d for d in manifests() if d["kind"] == "ClusterRole")


def test_builtin_manifests_in_the_docs_are_valid() -> None:
    docs = [d for d in manifests() if "." not in d["apiVersion"].split("/")[0]]
    docs += [d for d in manifests() if d["apiVersion"].startswith("rbac.")]
    assert {d["kind"] for d in docs} >= {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)


def rbac_attributes(method: str, path: str, query: dict[str, str]) -> tuple[str, str, str] | None:
    """(apiGroup, resource[/subresource], verb) as the authorizer sees a request; None for
    discovery and other non-resource URLs (allowed to every authenticated user)."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) > 2:
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    if method == "GET":
        verb = "watch" if query.get("watch") in ("true", "1") else ("get" if named else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method, "")
        verb = verb or ("delete" if named else "deletecollection")
    return group, resource, verb


def allowed(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in rules
    )


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (("GET", "/apis", {}), None),
        (("GET", "/api/v1/namespaces/ns/pods", {}), ("", "pods", "list")),
        (("GET", "/api/v1/pods", {"watch": "true"}), ("", "pods", "watch")),
        (
            ("PATCH", "/apis/graven.dev/v1alpha1/namespaces/ns/consensusclusters/x/status", {}),
            ("graven.dev", "consensusclusters/status", "patch"),
        ),
        (("GET", "/api/v1/namespaces", {}), ("", "namespaces", "list")),
    ],
)
def test_rbac_attributes(request_: tuple, expected: tuple | None) -> None:
    assert rbac_attributes(*request_) == expected


def test_documented_cluster_role_covers_every_operator_request(
    apiserver: Cluster, crd: dict
) -> None:
    api = apiserver.api
    api.create(monitoring_crd("ServiceMonitor", "servicemonitors"))
    api.create(monitoring_crd("PrometheusRule", "prometheusrules"))
    for doc in yaml.safe_load_all((ROOT / "crds" / "kopf-peering.yaml").read_text()):
        api.create(doc)
    api.request(
        "POST",
        "/apis/kopf.dev/v1/clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "graven"}},
    )
    runner = OperatorRunner(peering="graven").start()
    try:
        api.create(
            demo(
                monitoring={"serviceMonitor": True, "prometheusRule": True},
                storage={"retention": {"whenDeleted": "Delete"}},
            )
        )
        wait_for(lambda: api.get("StatefulSet", NAMESPACE, "demo"), what="StatefulSet")
        FakeKubelet(api, NAMESPACE, "demo").run()
        api.patch("ConsensusCluster", NAMESPACE, "demo", {"spec": {"image": "graven:0.2.0"}})
        api.patch(
            "ConsensusCluster",
            NAMESPACE,
            "demo",
            {"spec": {"monitoring": {"prometheusRule": False}}},
        )
        runner.wait_reconciles(2)
        api.delete("Service", NAMESPACE, "demo")  # drift repair recreates it
        wait_for(lambda: api.get("Service", NAMESPACE, "demo"), what="drift repaired")
        api.delete("ConsensusCluster", NAMESPACE, "demo")
        wait_for(lambda: api.get("ConsensusCluster", NAMESPACE, "demo") is None, what="deleted")
    finally:
        runner.stop()

    rules = cluster_role()["rules"]
    used = {a for r in apiserver.server.requests_by(TOKEN) if (a := rbac_attributes(*r))}
    assert ("apps", "statefulsets", "create") in used  # the filter did find the operator
    assert ("", "persistentvolumeclaims", "delete") in used
    assert ("kopf.dev", "clusterkopfpeerings", "patch") in used
    denied = sorted(a for a in used if not allowed(rules, *a))
    assert denied == []
