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


def test_a_label_the_render_no_longer_has_is_removed() -> None:
    # Found on a real cluster: spec.image from a tag to a digest left `version: 0.1.0` on the
    # StatefulSet and its pods, because a merge patch keeps every key it does not mention.
    live = as_served(rendered({"image": "graven:0.1.0"})["StatefulSet/demo"])
    live["spec"]["template"]["metadata"]["labels"]["team"] = "someone else's"
    desired = rendered({"image": "graven@sha256:" + "a" * 64})["StatefulSet/demo"]
    plan = drift.plan(desired, live)
    version = "app.kubernetes.io/version"
    assert f"metadata.labels.{version}" in plan.drifted
    assert f"spec.template.metadata.labels.{version}" in plan.drifted
    assert plan.patch is not None
    assert plan.patch["metadata"]["labels"][version] is None
    template_labels = plan.patch["spec"]["template"]["metadata"]["labels"]
    assert template_labels[version] is None
    assert "team" not in template_labels  # not ours: left alone
    assert "extra" not in plan.patch["metadata"]["labels"]


def apply_merge_patch(target: dict, patch: dict) -> dict:
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply_merge_patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def test_after_the_patch_the_plan_is_empty() -> None:
    live = as_served(
        rendered({"image": "graven:0.1.0", "tolerations": [{"operator": "Exists"}]})[
            "StatefulSet/demo"
        ]
    )
    desired = rendered({"image": "graven@sha256:" + "a" * 64})["StatefulSet/demo"]
    plan = drift.plan(desired, live)
    assert plan.patch is not None
    assert drift.plan(desired, apply_merge_patch(live, plan.patch)).patch is None


def test_a_field_the_apiserver_drops_is_learnt_not_patched_forever() -> None:
    # Found on a real cluster: an unknown field inside spec.affinity is dropped by the
    # apiserver (a warning, not an error); the drift timer patched it back every 30 s.
    affinity = {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": []}, "bogusField": 1}
            ]
        }
    }
    desired = rendered({"affinity": affinity})["StatefulSet/demo"]
    stored = as_served(desired)
    term = stored["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    del term["preferredDuringSchedulingIgnoredDuringExecution"][0]["bogusField"]
    path = (
        "spec.template.spec.affinity.nodeAffinity."
        "preferredDuringSchedulingIgnoredDuringExecution[0].bogusField"
    )
    assert drift.plan(desired, stored).drifted == [path]  # what the timer saw, forever
    ignore = drift.dropped(desired, stored)
    assert ignore == {path}
    assert drift.plan(desired, stored, ignore).patch is None
    # Other drift is still repaired.
    stored["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    assert drift.plan(desired, stored, ignore).drifted == ["spec.template.spec.containers[0].image"]


def test_a_changed_network_policy_spec_is_patched() -> None:
    """spec.security.networkPolicy changed on a running cluster: the live policy follows (it
    was never patched before: the real cluster's enforcement test found it)."""
    live = as_served(rendered()["NetworkPolicy/demo"])
    clients = [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]
    want = rendered({"security": {"networkPolicy": {"clients": clients}}})["NetworkPolicy/demo"]
    plan = drift.plan(want, live)
    assert plan.patch == {"spec": want["spec"]}, plan.patch
    assert plan.immutable == []


@pytest.mark.parametrize(
    "widen",
    [
        # a namespaceSelector beside the namespace's podSelector: every pod of every namespace
        lambda spec: spec["ingress"][1]["from"][0].update(namespaceSelector={}),
        lambda spec: spec.update(egress=[{}]),
        lambda spec: spec["ingress"].append({"from": [{"namespaceSelector": {}}]}),
    ],
)
def test_a_widened_network_policy_is_drift_and_patched_back(widen) -> None:
    want = rendered()["NetworkPolicy/demo"]
    live = as_served(want)
    assert drift.plan(want, live).patch is None
    widen(live["spec"])
    plan = drift.plan(want, live)
    assert plan.patch is not None and plan.drifted
    # the merge patch, applied as the apiserver does, gives back exactly the render
    patched = {**live["spec"], **plan.patch["spec"]}
    assert {k: v for k, v in patched.items() if v is not None} == want["spec"]
