"""Render functions: every object is valid Kubernetes, and says what the cluster needs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from graven.node.cluster import config as clusterconfig
from graven.node.cluster.spec import parse
from graven.operator import names, render
from graven.operator.layout import check_layout
from graven.operator.render import Capabilities
from tests.operator.harness import EXAMPLES

K8S = "1.33.0"
ALL_CAPS = Capabilities(service_monitor=True, prometheus_rule=True)
CUSTOM = {
    "replicas": 5,
    "image": "registry.example/graven@sha256:" + "a" * 64,
    "imagePullPolicy": "Always",
    "imagePullSecrets": [{"name": "regcred"}],
    "quorums": {"preset": "flexible", "q1": 4, "q2": 2},
    "storage": {
        "size": "10Gi",
        "storageClassName": "fast-ssd",
        "retention": {"whenDeleted": "Delete"},
    },
    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}
                ]
            }
        }
    },
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "graven", "effect": "NoSchedule"}
    ],
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "custom"}},
        }
    ],
    "monitoring": {"serviceMonitor": True, "prometheusRule": True},
    "limits": {"maxValueBytes": 4096},
}


def _example(path: Path) -> tuple[str, dict]:
    doc = yaml.safe_load(path.read_text())
    return doc["metadata"]["name"], doc["spec"]


SPECS = [
    *(_example(p) for p in sorted(EXAMPLES.glob("*.yaml"))),
    ("custom", CUSTOM),
    ("single", {"replicas": 1}),
    ("defaults", {}),
]


def rendered(name: str, raw: dict, namespace: str = "team-a", caps: Capabilities = ALL_CAPS):
    spec = parse(raw)
    verdict = check_layout(spec.quorums, spec.replicas)
    assert verdict.ok, verdict.message
    return spec, verdict, render.render_all(name, namespace, spec, verdict.tolerates or 0, caps)


def by_kind(objs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for obj in objs:
        out.setdefault(obj["kind"], []).append(obj)
    return out


@pytest.mark.parametrize(("name", "raw"), SPECS, ids=[s[0] for s in SPECS])
def test_every_builtin_object_is_valid_kubernetes(name: str, raw: dict) -> None:
    _, _, objs = rendered(name, raw)
    builtin = [o for o in objs if not o["apiVersion"].startswith("monitoring.coreos.com")]
    assert {o["kind"] for o in builtin} == {
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    for obj in builtin:
        kubernetes_validate.validate(obj, K8S, strict=True)


def test_validation_can_fail() -> None:
    """Guard against a validator that accepts anything: a typo'd field must be refused."""
    _, _, objs = rendered("demo", {})
    sts = copy.deepcopy(by_kind(objs)["StatefulSet"][0])
    sts["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S, strict=True)


@pytest.mark.parametrize(("name", "raw"), SPECS, ids=[s[0] for s in SPECS])
def test_config_map_is_a_cluster_config_the_node_accepts(name: str, raw: dict) -> None:
    spec, _, objs = rendered(name, raw)
    cm = by_kind(objs)["ConfigMap"][0]
    assert cm["metadata"]["name"] == f"{name}-config"
    cfg = clusterconfig.parse(yaml.safe_load(cm["data"]["cluster.yaml"]))
    assert cfg.cluster == name
    assert cfg.epoch == 0
    assert [m.name for m in cfg.members] == [f"{name}-{i}" for i in range(spec.replicas)]
    assert cfg.members[0].url == f"https://{name}-0.{name}-peers.team-a.svc:7100"  # TLS on
    assert cfg.layout.n == spec.replicas
    assert cfg.limits.max_value_bytes == spec.limits.get("maxValueBytes", 1 << 20)


def test_statefulset_runs_graven_node_securely() -> None:
    _, _, objs = rendered("demo", {})
    sts = by_kind(objs)["StatefulSet"][0]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == [
        "graven",
        "node",
        "--id",
        "$(POD_NAME)",
        "--listen",
        "0.0.0.0:7100",
        "--data-dir",
        "/data",
        "--config",
        "/etc/graven/cluster.yaml",
        "--tls-ca",
        "/etc/graven-ca/ca.crt",
        "--tls-cert",
        "/etc/graven-tls/$(POD_NAME).crt",
        "--tls-key",
        "/etc/graven-tls/$(POD_NAME).key",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/graven"]["readOnly"] is True
    assert mounts["/data"]["name"] == "data"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == "demo-peers"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert all(c["labelSelector"]["matchLabels"] == names.selector("demo") for c in spread)


def test_custom_spec_is_passed_through() -> None:
    _, _, objs = rendered("custom", CUSTOM)
    sts = by_kind(objs)["StatefulSet"][0]
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == CUSTOM["image"]
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == CUSTOM["resources"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["affinity"] == CUSTOM["affinity"]
    assert pod["tolerations"] == CUSTOM["tolerations"]
    assert pod["topologySpreadConstraints"] == CUSTOM["topologySpreadConstraints"]
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast-ssd"
    assert claim["resources"]["requests"]["storage"] == "10Gi"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    # A digest is not a valid label value: no version label then.
    assert names.LABEL_VERSION not in sts["metadata"]["labels"]


@pytest.mark.parametrize(
    ("image", "label"),
    [
        ("graven:0.1.0", "0.1.0"),
        ("registry.example:5000/team/graven:v1.2.3-rc.1", "v1.2.3-rc.1"),
        ("registry.example:5000/graven", None),  # a port, not a tag
        # Valid image tags that are not label values (found on a real apiserver: 422).
        ("graven:_build", None),
        ("graven:1.0-", None),
        ("graven:" + "a" * 64, None),
        ("graven:" + "a" * 63, "a" * 63),
    ],
)
def test_version_label_only_for_a_tag_that_is_a_label_value(image: str, label: str | None) -> None:
    _, _, objs = rendered("tagged", {"image": image})
    sts = by_kind(objs)["StatefulSet"][0]
    for labels in (sts["metadata"]["labels"], sts["spec"]["template"]["metadata"]["labels"]):
        assert labels.get(names.LABEL_VERSION) == label


def test_services_select_the_members() -> None:
    _, _, objs = rendered("demo", {})
    sts = by_kind(objs)["StatefulSet"][0]
    template_labels = sts["spec"]["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in by_kind(objs)["Service"]}
    peers, client = services["demo-peers"], services["demo"]
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    assert client["spec"]["type"] == "ClusterIP"
    assert "publishNotReadyAddresses" not in client["spec"]
    for svc in (peers, client):
        assert svc["spec"]["selector"].items() <= template_labels.items()
        assert svc["spec"]["ports"][0]["port"] == 7100
    assert sts["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


@pytest.mark.parametrize(("name", "raw"), SPECS, ids=[s[0] for s in SPECS])
def test_app_kubernetes_io_labels_everywhere(name: str, raw: dict) -> None:
    _, _, objs = rendered(name, raw)
    for obj in objs:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "graven"
        assert labels["app.kubernetes.io/instance"] == name
        assert labels["app.kubernetes.io/managed-by"] == "graven-operator"
        assert labels["app.kubernetes.io/part-of"] == "graven"
        assert labels["app.kubernetes.io/component"]
        assert obj["metadata"]["namespace"] == "team-a"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, 1),
        ({"replicas": 5}, 2),
        ({"replicas": 6, "quorums": {"preset": "flexible", "grid": "2x3"}}, 1),
        ({"replicas": 5, "quorums": {"preset": "fast"}}, 2),
    ],
)
def test_disruption_budget_follows_the_checker(raw: dict, expected: int) -> None:
    _, verdict, objs = rendered("demo", raw)
    assert verdict.tolerates == expected
    pdb = by_kind(objs)["PodDisruptionBudget"][0]
    assert pdb["spec"]["maxUnavailable"] == expected
    assert pdb["spec"]["selector"]["matchLabels"] == names.selector("demo")
    assert names.ANNOTATION_PDB_REASON not in pdb["metadata"]["annotations"]


def test_no_failure_margin_blocks_evictions_and_says_why() -> None:
    _, verdict, objs = rendered("solo", {"replicas": 1})
    assert verdict.tolerates == 0
    pdb = by_kind(objs)["PodDisruptionBudget"][0]
    assert pdb["spec"]["maxUnavailable"] == 0
    assert (
        "tolerates no member failure" in pdb["metadata"]["annotations"][names.ANNOTATION_PDB_REASON]
    )


@pytest.mark.parametrize(
    ("monitoring", "caps", "kinds"),
    [
        ({"serviceMonitor": True, "prometheusRule": True}, Capabilities(), set()),
        ({}, ALL_CAPS, set()),
        ({"serviceMonitor": True}, ALL_CAPS, {"ServiceMonitor"}),
        (
            {"serviceMonitor": True, "prometheusRule": True},
            Capabilities(service_monitor=True),
            {"ServiceMonitor"},
        ),
        (
            {"serviceMonitor": True, "prometheusRule": True},
            ALL_CAPS,
            {"ServiceMonitor", "PrometheusRule"},
        ),
    ],
)
def test_monitoring_only_when_asked_and_available(
    monitoring: dict, caps: Capabilities, kinds: set[str]
) -> None:
    _, _, objs = rendered("demo", {"monitoring": monitoring}, caps=caps)
    monitoring_kinds = {o["kind"] for o in objs if o["apiVersion"].startswith("monitoring.")}
    assert monitoring_kinds == kinds


def test_monitoring_objects_point_at_the_members() -> None:
    _, _, objs = rendered("fast-5", {"replicas": 5, "quorums": {"preset": "fast"}})
    found = by_kind(objs)
    monitor = found["ServiceMonitor"][0] if "ServiceMonitor" in found else None
    assert monitor is None  # not asked for
    _, _, objs = rendered(
        "fast-5", {"replicas": 5, "monitoring": {"serviceMonitor": True, "prometheusRule": True}}
    )
    found = by_kind(objs)
    peers = next(s for s in found["Service"] if s["metadata"]["name"] == "fast-5-peers")
    selector = found["ServiceMonitor"][0]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= peers["metadata"]["labels"].items()
    client = next(s for s in found["Service"] if s["metadata"]["name"] == "fast-5")
    assert not selector.items() <= client["metadata"]["labels"].items()  # scraped once
    groups = found["PrometheusRule"][0]["spec"]["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert {"GravenQuorumLost", "GravenMemberDown", "GravenMembersAbsent"} <= set(rules)
    for rule in rules.values():  # the shared alerts, limited to this cluster
        assert (
            rule["expr"]
            .rstrip()
            .endswith(
                'label_replace(label_replace(vector(1), "namespace", "team-a", "", ""), '
                '"cluster", "fast-5", "", "")'
            )
        )
        assert rule["annotations"]["runbook_url"].startswith("docs/runbook.md#")


def test_render_is_deterministic_and_namespace_aware() -> None:
    a = rendered("demo", CUSTOM)[2]
    b = rendered("demo", copy.deepcopy(CUSTOM))[2]
    assert a == b
    other = rendered("demo", CUSTOM, namespace="team-b")[2]
    cm_a = by_kind(a)["ConfigMap"][0]["data"]["cluster.yaml"]
    cm_b = by_kind(other)["ConfigMap"][0]["data"]["cluster.yaml"]
    assert "team-a.svc" in cm_a and "team-b.svc" in cm_b


def test_only_what_members_cannot_install_live_rolls_the_pods() -> None:
    def pod_hash(raw: dict[str, Any]) -> str:
        sts = by_kind(rendered("demo", raw)[2])["StatefulSet"][0]
        return sts["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH]

    assert pod_hash({}) == pod_hash({"image": "graven:0.2.0"})
    assert pod_hash({}) != pod_hash({"limits": {"maxValueBytes": 2048}})
    # members and layout are installed live by the reconfiguration: no rolling restart
    assert pod_hash({}) == pod_hash({"replicas": 5, "quorums": {"preset": "fast"}})
