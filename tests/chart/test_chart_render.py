"""The Helm chart, rendered by the real helm binary: lint, Kubernetes schema validation, and what
an operator pod gets (hardening, RBAC scope, probes, monitoring objects)."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from graven.operator import names

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "graven-operator"
MONITORING = REPO / "monitoring"

K8S_VERSION = "1.33.0"
NAMESPACE = "graven-system"

VARIANTS: dict[str, dict] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "monitoring-on": {
        "metrics": {
            "enabled": True,
            "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
        },
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "kps"},
            "runbookBaseURL": "https://docs.example.org/graven/runbook.md",
        },
        "dashboard": {"namespace": "monitoring", "annotations": {"grafana_folder": "Graven"}},
    },
    "monitoring-off": {
        "metrics": {"enabled": False, "serviceMonitor": {"enabled": True}},
        "prometheusRule": {"enabled": False},
        "dashboard": {"enabled": False},
    },
    "customised": {
        "fullnameOverride": "consensus-operator",
        "watchNamespaces": ["prod"],
        "image": {
            "repository": "registry.example.org/graven",
            "digest": "sha256:" + "ab" * 32,
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"name": "graven-sa", "annotations": {"a": "b"}},
        "operator": {
            "healthPort": 8081,
            "extraArgs": ["--verbose"],
            "extraEnv": [{"name": "GRAVEN_DEBUG", "value": "1"}],
        },
        "metrics": {"enabled": True, "port": 9191},
        "resources": {"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"cpu": 1}},
        "podAnnotations": {"x": "y"},
        "podLabels": {"team": "storage"},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
                            ]
                        }
                    ]
                }
            }
        },
    },
}

PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
KOPF_KINDS = {"ClusterKopfPeering", "KopfPeering"}


def _only(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _deployment(docs):
    return _only(docs, "Deployment")


def _container(docs):
    (container,) = _deployment(docs)["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_strict(helm_chart, variant):
    proc = helm_chart.run(
        "lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=VARIANTS[variant]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_builtin_objects_validate_strictly(helm_chart, variant):
    docs = helm_chart.template(VARIANTS[variant], "--include-crds")
    assert docs, "nothing rendered"
    for doc in docs:
        if doc["kind"] in PROMETHEUS_OPERATOR_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        if doc["kind"] in KOPF_KINDS:  # custom resources of the chart's own crds/
            assert doc["apiVersion"] == "kopf.dev/v1"
            continue
        # Raises on unknown fields, wrong types or a kind that is not builtin.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_namespaced_objects_live_in_the_release_namespace(helm_chart, variant):
    values = VARIANTS[variant]
    docs = helm_chart.template(values)
    watched = set(values.get("watchNamespaces", []))
    dashboard_ns = values.get("dashboard", {}).get("namespace") or NAMESPACE
    for doc in docs:
        if doc["kind"] in {
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "ClusterKopfPeering",
        }:
            assert "namespace" not in doc["metadata"]
            continue
        ns = doc["metadata"].get("namespace")
        if doc["kind"] == "ConfigMap":
            assert ns == dashboard_ns
        elif doc["kind"] in {"Role", "RoleBinding", "KopfPeering"} and not doc["metadata"][
            "name"
        ].endswith("-leader-election"):
            assert ns in watched
        else:
            assert ns == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']} in {ns}"


# --- the operator Deployment ---------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_deployment_runs_one_hardened_operator(helm_chart, variant):
    docs = helm_chart.template(VARIANTS[variant])
    dep = _deployment(docs)
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    c = _container(docs)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    # readOnlyRootFilesystem needs somewhere to write temporary files.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts
    assert mounts["/tmp"] in {v["name"] for v in pod["volumes"]}
    # Selector selects the pod template.
    labels = spec["template"]["metadata"]["labels"]
    for k, v in spec["selector"]["matchLabels"].items():
        assert labels[k] == v
    # every cluster's NetworkPolicy admits pods with these labels from the operator's namespace
    for k, v in names.OPERATOR_POD_LABELS.items():
        assert labels[k] == v


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_probes_hit_the_kopf_liveness_endpoint_the_operator_is_told_to_serve(helm_chart, variant):
    c = _container(helm_chart.template(VARIANTS[variant]))
    args = c["args"]
    assert args[0] == "operator"
    assert "--peering=graven" in args  # the chart creates that peering object
    (liveness_arg,) = [a for a in args if a.startswith("--liveness=")]
    url = liveness_arg.removeprefix("--liveness=")
    assert url.startswith("http://0.0.0.0:")
    port = int(url.split(":")[2].split("/")[0])
    path = "/" + url.split("/", 3)[3]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports[get["port"]] == port, probe


def test_standby_replicas_share_one_peering_object(helm_chart):
    docs = helm_chart.template({"replicas": 2})
    spec = _deployment(docs)["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert "--priority" not in " ".join(_container(docs)["args"])  # each draws its own
    (peering,) = [d for d in docs if d["kind"] == "ClusterKopfPeering"]
    assert peering["metadata"]["name"] == "graven"
    docs = helm_chart.template(VARIANTS["namespaced"])
    peerings = sorted(
        (d["kind"], d["metadata"]["namespace"]) for d in docs if "Peering" in d["kind"]
    )
    assert peerings == [("KopfPeering", "team-a"), ("KopfPeering", "team-b")]


def test_watch_scope_arguments(helm_chart):
    args = _container(helm_chart.template({}))["args"]
    assert "--all-namespaces" in args
    assert not [a for a in args if a.startswith("--namespace")]

    args = _container(helm_chart.template(VARIANTS["namespaced"]))["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_image_reference(helm_chart):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    c = _container(helm_chart.template({}))
    assert c["image"] == f"graven:{chart['appVersion']}"
    env = {e["name"]: e for e in c["env"]}
    # kopf's peering identity: kopf reads POD_ID (an env var of another name was ignored).
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # the operator's namespace, which every cluster's NetworkPolicy admits its pods from
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"

    c = _container(helm_chart.template(VARIANTS["customised"]))
    assert c["image"] == "registry.example.org/graven@sha256:" + "ab" * 32
    assert c["imagePullPolicy"] == "Always"
    env = {e["name"]: e for e in c["env"]}
    assert env["GRAVEN_DEBUG"]["value"] == "1"
    assert c["args"][-1] == "--verbose"


def test_service_account_wiring(helm_chart):
    for variant in ("defaults", "customised"):
        docs = helm_chart.template(VARIANTS[variant])
        (sa,) = [d for d in docs if d["kind"] == "ServiceAccount"]
        pod = _deployment(docs)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == sa["metadata"]["name"]
        for binding in [d for d in docs if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}]:
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
            ]
    assert sa["metadata"]["name"] == "graven-sa"

    docs = helm_chart.template({"serviceAccount": {"create": False, "name": "existing"}})
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]
    assert _deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def test_service_account_name_required_when_not_created(helm_chart):
    proc = helm_chart.run("template", "g", str(CHART), values={"serviceAccount": {"create": False}})
    assert proc.returncode != 0
    assert "serviceAccount.name is required" in proc.stderr


# --- RBAC ----------------------------------------------------------------------------------
# Which verbs: exactly those the operator uses, checked against a recorded run of the real
# operator in tests/operator/test_docs.py (test_rbac_grants_exactly_what_the_operator_uses).
# Here: the shape (what is bound where, nothing cluster-wide in namespaced mode, no wildcards).

CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions")}
NEVER = {("rbac.authorization.k8s.io", "clusterroles"), ("", "nodes"), ("", "namespaces")}


def _grants(rules) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "*" not in rule["verbs"], rule
        assert "*" not in rule["resources"], rule
        assert "*" not in rule["apiGroups"], rule
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def test_clusterwide_rbac(helm_chart):
    docs = helm_chart.template({})
    (cr,) = [d for d in docs if d["kind"] == "ClusterRole"]
    granted = _grants(cr["rules"])
    assert ("kopf.dev", "clusterkopfpeerings") in granted
    assert not NEVER & granted.keys()
    assert granted[("", "secrets")] == {"get", "create", "patch"}  # never list, watch, delete
    (crb,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert crb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cr["metadata"]["name"],
    }
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]


def test_namespaced_rbac_grants_nothing_namespaced_cluster_wide(helm_chart):
    docs = helm_chart.template(VARIANTS["namespaced"])
    (cr,) = [d for d in docs if d["kind"] == "ClusterRole"]
    # The ClusterRole keeps only cluster-scoped reads.
    assert set(_grants(cr["rules"])) == CLUSTER_SCOPED
    roles = {r["metadata"]["namespace"]: r for r in docs if r["kind"] == "Role"}
    assert set(roles) == {"team-a", "team-b"}
    bindings = {b["metadata"]["namespace"]: b for b in docs if b["kind"] == "RoleBinding"}
    assert set(bindings) == {"team-a", "team-b"}
    for ns, role in roles.items():
        granted = _grants(role["rules"])
        assert ("kopf.dev", "kopfpeerings") in granted, ns
        assert ("kopf.dev", "clusterkopfpeerings") not in granted
        assert not NEVER & granted.keys()
        assert bindings[ns]["roleRef"]["kind"] == "Role"
        assert bindings[ns]["roleRef"]["name"] == role["metadata"]["name"]


def test_rbac_can_be_left_to_the_user(helm_chart):
    docs = helm_chart.template({"rbac": {"create": False}})
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


# --- metrics, ServiceMonitor, PrometheusRule, dashboard ------------------------------------


def test_monitoring_objects_off_by_default_except_dashboard(helm_chart):
    kinds = [d["kind"] for d in helm_chart.template({})]
    assert "ServiceMonitor" not in kinds
    assert "PrometheusRule" not in kinds
    assert kinds.count("ConfigMap") == 1


def test_operator_metrics_on_by_default(helm_chart):
    docs = helm_chart.template({})
    c = _container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert f"--metrics-port={ports['metrics']}" in c["args"]
    assert _only(docs, "Service")["spec"]["ports"][0]["targetPort"] == "metrics"


def test_metrics_off_removes_port_service_and_servicemonitor(helm_chart):
    docs = helm_chart.template(VARIANTS["monitoring-off"])
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Service", "ServiceMonitor", "PrometheusRule", "ConfigMap"}
    c = _container(docs)
    assert [p["name"] for p in c["ports"]] == ["health"]
    assert not [a for a in c["args"] if a.startswith("--metrics-port")]


@pytest.mark.parametrize("variant", ["monitoring-on", "customised"])
def test_servicemonitor_reaches_the_operator_metrics_port(helm_chart, variant):
    docs = helm_chart.template(VARIANTS[variant])
    c = _container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert f"--metrics-port={ports['metrics']}" in c["args"]
    svc = _only(docs, "Service")
    pod_labels = _deployment(docs)["spec"]["template"]["metadata"]["labels"]
    for k, v in svc["spec"]["selector"].items():
        assert pod_labels[k] == v
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["targetPort"] == "metrics"
    if variant != "monitoring-on":
        return
    sm = _only(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kps"
    for k, v in sm["spec"]["selector"]["matchLabels"].items():
        assert svc["metadata"]["labels"][k] == v
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == svc_port["name"]
    assert ep["path"] == "/metrics"
    # graven_cluster_*{namespace,cluster} name the ConsensusCluster, not the operator pod.
    assert ep["honorLabels"] is True


def test_prometheusrule_embeds_monitoring_rules(helm_chart):
    source = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    docs = helm_chart.template({"prometheusRule": {"enabled": True}})
    rule = _only(docs, "PrometheusRule")
    assert rule["spec"] == source

    docs = helm_chart.template(VARIANTS["monitoring-on"])
    rule = _only(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    base = VARIANTS["monitoring-on"]["prometheusRule"]["runbookBaseURL"]
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) == sum(1 for g in source["groups"] for r in g["rules"] if "alert" in r)
    for alert in alerts:
        assert alert["annotations"]["runbook_url"] == f"{base}#{alert['alert'].lower()}"
        rest = dict(alert, annotations=dict(alert["annotations"], runbook_url=None))
        by_name = {r.get("alert"): r for g in source["groups"] for r in g["rules"]}
        orig = by_name[alert["alert"]]
        assert rest == dict(orig, annotations=dict(orig["annotations"], runbook_url=None))


def test_dashboard_configmap_for_the_grafana_sidecar(helm_chart):
    source = json.loads((MONITORING / "dashboard.json").read_text())
    cm = _only(helm_chart.template({}), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = cm["data"]
    assert key.endswith(".json")
    assert json.loads(cm["data"][key]) == source

    cm = _only(helm_chart.template(VARIANTS["monitoring-on"]), "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Graven"}
    # ConfigMaps are capped at 1 MiB; stay far below.
    assert len(cm["data"]["graven.json"]) < 256 * 1024


def test_crds_are_installed_only_from_the_crds_directory(helm_chart):
    without = helm_chart.template({})
    assert not [d for d in without if d["kind"] == "CustomResourceDefinition"]
    with_crds = helm_chart.template({}, "--include-crds")
    crds = [d for d in with_crds if d["kind"] == "CustomResourceDefinition"]
    expected = [
        d
        for f in sorted((CHART / "crds").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(
        e["metadata"]["name"] for e in expected
    )


def test_notes_render(helm_chart):
    for values in ({}, VARIANTS["namespaced"]):
        proc = helm_chart.run("install", "g", str(CHART), "--dry-run=client", values=values)
        assert proc.returncode == 0, proc.stderr
        assert "kubectl get consensusclusters" in proc.stdout
    assert "team-a, team-b" in proc.stdout
