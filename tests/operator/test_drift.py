"""Drift: apiserver defaults are not drift, hand edits are, immutable fields are only reported."""

from __future__ import annotations

import copy

import pytest

from graven.node.cluster.spec import parse
from graven.operator import drift, render


def rendered(raw: dict | None = None) -> dict[str, dict]:
    objs = render.render_all("demo", "ns", parse(raw or {}), 1)
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objs}


def as_served(obj: dict) -> dict:
    """What the apiserver returns: server metadata, defaults, canonical quantities."""
    live = copy.deepcopy(obj)
    live["metadata"].update(uid="u", resourceVersion="7", generation=1)
    live["metadata"]["labels"]["extra"] = "someone else's label"
    if live["kind"] == "Service":
        live["spec"].setdefault("clusterIP", "10.0.0.7")
        live["spec"]["sessionAffinity"] = "None"
    if live["kind"] == "StatefulSet":
        pod = live["spec"]["template"]["spec"]
        pod["dnsPolicy"] = "ClusterFirst"
        container = pod["containers"][0]
        container["terminationMessagePath"] = "/dev/termination-log"
        container["imagePullPolicy"] = "IfNotPresent"
        container["resources"] = {"requests": {"cpu": "0.1", "memory": "131072Ki"}}
        live["spec"]["revisionHistoryLimit"] = 10
        live["status"] = {"replicas": 3}
    return live


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1Gi", 2**30), ("1024Mi", 2**30), ("100m", 0.1), ("0.1", 0.1), ("1e3", 1000), (3, 3)],
)
def test_quantities(value: object, expected: float) -> None:
    assert float(drift.quantity(value) or 0) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["lots", "", None, True, "1Gb"])
def test_not_quantities(value: object) -> None:
    assert drift.quantity(value) is None


def test_defaults_and_canonical_quantities_are_not_drift() -> None:
    desired = rendered({"resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}})
    for obj in desired.values():
        plan = drift.plan(obj, as_served(obj))
        assert plan.patch is None, (obj["kind"], plan.drifted)
        assert plan.immutable == []


def test_hand_edited_image_is_drift_and_patched_back() -> None:
    sts = rendered()["StatefulSet/demo"]
    live = as_served(sts)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    plan = drift.plan(sts, live)
    assert plan.drifted == ["spec.template.spec.containers[0].image"]
    assert plan.patch is not None
    container = plan.patch["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "graven:0.1.0"


def test_removed_tolerations_are_removed_from_the_pods() -> None:
    with_tolerations = {"tolerations": [{"key": "k", "operator": "Exists"}]}
    live = as_served(rendered(with_tolerations)["StatefulSet/demo"])
    plan = drift.plan(rendered()["StatefulSet/demo"], live)
    assert "spec.template.spec.tolerations" in plan.drifted
    assert plan.patch is not None
    assert plan.patch["spec"]["template"]["spec"]["tolerations"] is None  # merge patch: delete


def test_label_removed_by_hand_is_restored_others_kept() -> None:
    cm = rendered()["ConfigMap/demo-config"]
    live = as_served(cm)
    del live["metadata"]["labels"]["app.kubernetes.io/instance"]
    plan = drift.plan(cm, live)
    assert plan.drifted == ["metadata.labels.app.kubernetes.io/instance"]
    assert plan.patch == {"metadata": {"labels": cm["metadata"]["labels"]}}


def test_edited_configuration_is_drift() -> None:
    cm = rendered()["ConfigMap/demo-config"]
    live = as_served(cm)
    live["data"]["cluster.yaml"] += "# edited\n"
    assert drift.plan(cm, live).patch == {"data": cm["data"]}


def test_storage_change_is_reported_not_patched() -> None:
    desired = rendered({"storage": {"size": "5Gi"}})["StatefulSet/demo"]
    live = as_served(rendered()["StatefulSet/demo"])
    plan = drift.plan(desired, live)
    assert plan.immutable == ["spec.volumeClaimTemplates[0].spec.resources.requests.storage"]
    assert plan.patch is None


def test_list_length_change_is_drift() -> None:
    svc = rendered()["Service/demo"]
    live = as_served(svc)
    live["spec"]["ports"].append({"name": "extra", "port": 1, "protocol": "TCP"})
    assert drift.plan(svc, live).drifted == ["spec.ports"]
