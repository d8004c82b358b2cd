"""docs/operator.md: its manifests are valid, and its ClusterRole allows every request the
operator actually makes (RBAC is not enforced by the test apiserver, so check it here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator

import kubernetes_validate
import pytest
import yaml

from tests.operator.apiclient import wait_for
from tests.operator.harness import NAMESPACE, ROOT, Cluster, OperatorRunner, demo, monitoring_crd
from tests.operator.kubelet import FakeKubelet
from tests.operator.test_certmanager import certificate_crd

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


# Grants no recorded run can exercise, each with its reason. Everything else the docs and
# the chart grant must have been used by the operator in the scenario below, and everything it
# used must be granted.
UNRECORDED = {
    # blockOwnerDeletion in ownerReferences needs it where OwnerReferencesPermissionEnforcement
    # is on (the emulator has no admission plugins)
    ("graven.dev", "consensusclusters/finalizers", "update"),
    # after a reconfiguration, claims are annotated with the members and layout that now
    # write them (needs real members: tests/operator/test_e2e_reconfigure.py)
    ("", "persistentvolumeclaims", "patch"),
    # Certificates are read by one list per cluster; get only re-reads one after losing a
    # create race (409), as for every other child
    ("cert-manager.io", "certificates", "get"),
}


def recorded_run(apiserver: Cluster) -> set[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) the real operator uses in a scenario that touches each
    of its code paths: create, health, update, drift repair of every kind, monitoring on and
    off, certificate rotation, cert-manager Certificates, deletion with volumes, peering."""
    api = apiserver.api
    api.create(certificate_crd())
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
        # cert-manager mode: Certificates created, a hand edit repaired, deleted with the cluster
        cm = demo(security={"certManager": {"issuerRef": {"name": "ca"}}})
        cm["metadata"]["name"] = "cm"
        api.create(cm)
        wait_for(lambda: api.get("Certificate", NAMESPACE, "cm-0-cert"), what="Certificate")
        api.patch("Certificate", NAMESPACE, "cm-0-cert", {"spec": {"duration": "1h"}})
        wait_for(
            lambda: api.get("Certificate", NAMESPACE, "cm-0-cert")["spec"]["duration"] != "1h",
            what="Certificate repaired",
        )
        api.delete("ConsensusCluster", NAMESPACE, "cm")
        wait_for(lambda: api.get("Certificate", NAMESPACE, "cm-0-cert") is None, what="deleted")
        api.patch("ConsensusCluster", NAMESPACE, "demo", {"spec": {"image": "graven:0.2.0"}})
        # hand edits of every kind: drift repair patches each back
        hand = {"metadata": {"labels": {"app.kubernetes.io/part-of": "someone-else"}}}
        for kind, name in (
            ("ConfigMap", "demo-config"),
            ("Service", "demo"),
            ("PodDisruptionBudget", "demo"),
            ("NetworkPolicy", "demo"),
            ("ServiceMonitor", "demo"),
            ("PrometheusRule", "demo"),
        ):
            api.patch(kind, NAMESPACE, name, hand)
        # a CA rotation request: the CA and member Secrets are patched
        api.patch(
            "ConsensusCluster",
            NAMESPACE,
            "demo",
            {"metadata": {"annotations": {"graven.dev/rotate-ca": "now"}}},
        )
        wait_for(
            lambda: (
                (api.get("Secret", NAMESPACE, "demo-ca") or {})
                .get("metadata", {})
                .get("annotations", {})
                .get("graven.dev/ca-rotation-step")
            ),
            what="CA rotation started",
        )
        runner.wait_reconciles(2)
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
        wait_for(
            lambda: api.get("ConsensusCluster", NAMESPACE, "demo") is None,
            timeout=60,
            what="deleted",
        )
    finally:
        runner.stop()
    return {a for r in apiserver.server.requests_by(TOKEN) if (a := rbac_attributes(*r))}


def granted(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def helm_template(values: dict) -> list[dict]:
    """The chart rendered by the pinned helm binary (tools/fetch-helm.sh)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "fetch-helm.sh")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    helm = proc.stdout.strip().splitlines()[-1]
    out = subprocess.run(
        [helm, "template", "g", str(ROOT / "charts" / "graven-operator"), "-n", "graven-system",
         "--set-json", f"watchNamespaces={json.dumps(values.get('watchNamespaces', []))}"],
        capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "KUBECONFIG": "/nonexistent", "HELM_CACHE_HOME": "/tmp/graven-helm"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_rbac_grants_exactly_what_the_operator_uses(apiserver: Cluster, crd: dict) -> None:
    """The docs' ClusterRole and the chart's roles grant exactly the verbs the operator's API
    calls need: a missing one breaks it, an extra one is privilege nobody needs."""
    used = recorded_run(apiserver)
    assert ("apps", "statefulsets", "create") in used  # the filter did find the operator
    assert ("", "secrets", "patch") in used and ("", "configmaps", "patch") in used
    needed = used | UNRECORDED
    docs = granted(cluster_role()["rules"])
    assert sorted(needed - docs) == [], "docs/operator.md grants too little"
    assert sorted(docs - needed) == [], "docs/operator.md grants more than is used"

    rendered = helm_template({})  # watching every namespace
    chart = set().union(*(granted(d["rules"]) for d in rendered if d["kind"].endswith("Role")))
    assert sorted(needed - chart) == [], "the chart grants too little"
    assert sorted(chart - needed) == [], "the chart grants more than is used"

    # watching one namespace: the same verbs, the namespaced ones only in a Role there, and
    # the namespaced flavour of kopf's peering
    rendered = helm_template({"watchNamespaces": ["team-a"]})
    cluster = set().union(*(granted(d["rules"]) for d in rendered if d["kind"] == "ClusterRole"))
    role = set().union(*(granted(d["rules"]) for d in rendered if d["kind"] == "Role"))
    peering = {a for a in needed if a[1] == "clusterkopfpeerings"}
    namespaced = {a for a in needed - peering if a[1] not in CLUSTER_SCOPED}
    assert cluster == needed - peering - namespaced
    assert role == namespaced | {(g, "kopfpeerings", v) for g, _, v in peering}


CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}
