"""Pure render functions: a ConsensusCluster's spec -> the Kubernetes objects that run it.

No I/O (beyond reading the packaged alert rules once), no clock, no randomness: the same
inputs always give the same objects, so the drift check can compare live children with a fresh
render, and tests can validate every object.
Owner references are added by the handlers (kopf.adopt), not here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from graven.node.cluster.config import dump, parse
from graven.node.cluster.render import member_config
from graven.node.cluster.spec import ClusterSpec

from . import alerts, identity, names, topology


@dataclass(frozen=True)
class Capabilities:
    """Optional APIs found on the cluster (prometheus-operator and cert-manager CRDs)."""

    service_monitor: bool = False
    prometheus_rule: bool = False
    certificates: bool = False  # cert-manager.io/v1 Certificate


def labels(name: str, component: str, spec: ClusterSpec | None = None) -> dict[str, str]:
    out = {
        **names.selector(name),
        names.LABEL_COMPONENT: component,
        names.LABEL_PART_OF: names.APP,
        names.LABEL_MANAGED_BY: names.MANAGER,
    }
    if spec is not None:
        tag = _image_tag(spec.image)
        if tag:
            out[names.LABEL_VERSION] = tag
    return out


# A label value: at most 63 characters, alphanumerics with - _ . inside.
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def _image_tag(image: str) -> str | None:
    """The image's tag as a label value, or None when it has none that is a valid one.

    "repo:tag" or "repo@sha256:..." — only a tag makes a meaningful label. Image tags allow
    128 characters and a leading "_", labels neither: a tag that cannot be a label value gives
    no version label rather than a StatefulSet the apiserver refuses."""
    if "@" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    tag = last.rsplit(":", 1)[1]
    return tag if _LABEL_VALUE.match(tag) else None


def _meta(
    obj_name: str, cluster: str, namespace: str, component: str, spec: ClusterSpec | None = None
) -> dict:
    return {"name": obj_name, "namespace": namespace, "labels": labels(cluster, component, spec)}


def cluster_config(
    name: str, namespace: str, spec: ClusterSpec, epoch: int = 0, incarnation: str | None = None
) -> dict:
    """The ClusterConfig document every member reads, with in-cluster member URLs."""
    scheme = "https" if spec.security.tls else "http"
    urls = [names.member_url(name, namespace, i, scheme) for i in range(spec.replicas)]
    return member_config(name, spec, urls, epoch, incarnation)


def config_text(
    name: str, namespace: str, spec: ClusterSpec, epoch: int = 0, incarnation: str | None = None
) -> str:
    # Canonical form (parse, dump): the same text a reconfiguration publishes for this
    # configuration, so finishing one restarts no member again.
    doc = dump(parse(cluster_config(name, namespace, spec, epoch, incarnation)))
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


# What a member can only take in by restarting: the rest of the document (epochs, members,
# layout) is installed live by the reconfiguration Driver (``POST /v1/admin/config``).
RESTART_FIELDS = ("cluster", "incarnation", "limits")


def config_hash(text: str) -> str:
    """The pod template's hash of the cluster document: it changes (and the StatefulSet rolls
    the pods) only for what members cannot install live; a reconfiguration rolls nothing."""
    doc = yaml.safe_load(text)
    kept = {k: doc.get(k) for k in RESTART_FIELDS} if isinstance(doc, dict) else text
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Served:
    """During a reconfiguration: the document the members serve and the pods to run, both
    from the transition's record rather than the spec (reconfigure.py)."""

    text: str
    replicas: int
    members: int  # topology annotations: the epoch that stays valid if the record is lost
    quorums: Mapping[str, Any]
    epoch: int


def config_map(
    name: str,
    namespace: str,
    spec: ClusterSpec,
    epoch: int = 0,
    incarnation: str | None = None,
    served: Served | None = None,
) -> dict:
    meta = _meta(names.config_map(name), name, namespace, "config")
    text = served.text if served else config_text(name, namespace, spec, epoch, incarnation)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {names.CONFIG_FILE: text},
    }


def _ports() -> list[dict]:
    return [
        {
            "name": names.PORT_NAME,
            "port": names.PORT,
            "targetPort": names.PORT_NAME,
            "protocol": "TCP",
        }
    ]


def peers_service(name: str, namespace: str) -> dict:
    """Headless: gives each member a stable DNS name, ready or not (members must find each
    other before any of them is ready, or a fresh cluster never forms a quorum)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.peers_service(name), name, namespace, "peers"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": names.selector(name),
            "ports": _ports(),
        },
    }


def client_service(name: str, namespace: str) -> dict:
    """What clients use: only ready members receive traffic."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, name, namespace, "client"),
        "spec": {"type": "ClusterIP", "selector": names.selector(name), "ports": _ports()},
    }


def _probe(path: str, period: int, timeout: int, failures: int, tls: bool) -> dict:
    # /healthz and /readyz stay open under TLS (the kubelet does not verify certificates)
    return {
        "httpGet": {"path": path, "port": names.PORT_NAME, "scheme": "HTTPS" if tls else "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def default_topology_spread(name: str) -> list[dict]:
    """Spread members over nodes and zones; ScheduleAnyway so a one-node test cluster works."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": names.selector(name)},
        }
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
    ]


def node_command(spec: ClusterSpec | None = None) -> list[str]:
    command = [
        "graven",
        "node",
        "--id",
        "$(POD_NAME)",
        "--listen",
        f"0.0.0.0:{names.PORT}",
        "--data-dir",
        names.DATA_DIR,
        "--config",
        f"{names.CONFIG_DIR}/{names.CONFIG_FILE}",
    ]
    security = spec.security if spec is not None else None
    if security is not None and security.tls:
        command += [
            "--tls-ca", f"{names.CA_DIR}/ca.crt",
            "--tls-cert", f"{names.TLS_DIR}/$(POD_NAME).crt",
            "--tls-key", f"{names.TLS_DIR}/$(POD_NAME).key",
        ]  # fmt: skip
        if security.client_tokens_secret:
            command += ["--tokens", f"{names.TOKENS_DIR}/{names.TOKENS_FILE}"]
    return command


def _container(spec: ClusterSpec) -> dict:
    container: dict[str, Any] = {
        "name": "graven",
        "image": spec.image,
        "command": node_command(spec),
        "env": [
            {
                "name": "POD_NAME",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
            },
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
            },
        ],
        "ports": [{"name": names.PORT_NAME, "containerPort": names.PORT, "protocol": "TCP"}],
        # A member that refuses its data (another incarnation, an older epoch) says why in one
        # line on stderr; this puts that line into the pod status, where the operator reads it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # Readiness is checked often: the operator's Available condition follows it.
        "readinessProbe": _probe("/readyz", 2, 1, 2, spec.security.tls),
        "livenessProbe": _probe("/healthz", 10, 2, 6, spec.security.tls),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": names.DATA_VOLUME, "mountPath": names.DATA_DIR},
            {"name": "config", "mountPath": names.CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *_security_mounts(spec),
        ],
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if spec.resources:
        container["resources"] = dict(spec.resources)
    return container


def _security_mounts(spec: ClusterSpec) -> list[dict]:
    if not spec.security.tls:
        return []
    mounts = [
        {"name": "ca", "mountPath": names.CA_DIR, "readOnly": True},
        {"name": "tls", "mountPath": names.TLS_DIR, "readOnly": True},
    ]
    if spec.security.client_tokens_secret:
        mounts.append({"name": "tokens", "mountPath": names.TOKENS_DIR, "readOnly": True})
    return mounts


def _member_certs(name: str, members: int) -> dict:
    """cert-manager mode: every member's Secret (NAME-i-cert) in one volume, as NAME-i.crt/.key
    (the paths of the self-managed NAME-tls Secret), so each pod finds its own by its name."""
    sources = [
        {
            "secret": {
                "name": names.member_cert(name, i),
                "items": [
                    {"key": "tls.crt", "path": f"{names.member(name, i)}.crt"},
                    {"key": "tls.key", "path": f"{names.member(name, i)}.key"},
                ],
            }
        }
        for i in range(members)
    ]
    return {"name": "tls", "projected": {"sources": sources, "defaultMode": 0o440}}


def _security_volumes(name: str, spec: ClusterSpec, members: int) -> list[dict]:
    """Secret volumes (the kubelet updates them in place; members reload within a second)."""
    if not spec.security.tls:
        return []
    tls: dict = {
        "name": "tls",
        "secret": {"secretName": names.tls_secret(name), "defaultMode": 0o440},
    }
    if spec.security.cert_manager is not None:
        tls = _member_certs(name, members)
    volumes: list[dict] = [
        # only the trust bundle: the CA's key never reaches a pod
        {
            "name": "ca",
            "secret": {
                "secretName": names.ca_secret(name),
                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                "defaultMode": 0o444,
            },
        },
        tls,
    ]
    if spec.security.client_tokens_secret:
        volumes.append(
            {
                "name": "tokens",
                "secret": {
                    "secretName": spec.security.client_tokens_secret,
                    "items": [{"key": names.TOKENS_FILE, "path": names.TOKENS_FILE}],
                    "defaultMode": 0o440,
                },
            }
        )
    return volumes


def _pod_spec(name: str, spec: ClusterSpec, members: int) -> dict:
    pod: dict[str, Any] = {
        # Members never talk to the Kubernetes API; no token means nothing to steal.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": names.RUN_AS_USER,
            "runAsGroup": names.RUN_AS_USER,
            "fsGroup": names.RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(spec)],
        "volumes": [
            {"name": "config", "configMap": {"name": names.config_map(name)}},
            {"name": "tmp", "emptyDir": {}},
            *_security_volumes(name, spec, members),
        ],
        "topologySpreadConstraints": [dict(c) for c in spec.topology_spread]
        if spec.topology_spread is not None
        else default_topology_spread(name),
    }
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in spec.image_pull_secrets]
    if spec.affinity:
        pod["affinity"] = dict(spec.affinity)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    return pod


def _claim_template(name: str, spec: ClusterSpec, epoch: int, incarnation: str | None) -> dict:
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    if spec.storage.storage_class:
        claim["storageClassName"] = spec.storage.storage_class
    claim_meta: dict[str, Any] = {"name": names.DATA_VOLUME, "labels": names.selector(name)}
    if incarnation is not None:
        # Whose registers a claim holds and under which members and layout they were written,
        # readable after the cluster is deleted (identity.py). Claims keep what they were
        # created with: a reconfiguration has to update them.
        claim_meta["labels"] = {**claim_meta["labels"], identity.LABEL_INCARNATION: incarnation}
        claim_meta["annotations"] = topology.annotations(spec.replicas, spec.quorums, epoch)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": claim_meta,
        "spec": claim,
    }


def statefulset(
    name: str,
    namespace: str,
    spec: ClusterSpec,
    cfg_hash: str,
    epoch: int = 0,
    incarnation: str | None = None,
    served: Served | None = None,
) -> dict:
    meta = _meta(name, name, namespace, "member", spec)
    # The running layout, readable even if the ConfigMap is lost (see topology.py).
    if served is None:
        meta["annotations"] = topology.annotations(spec.replicas, spec.quorums, epoch, incarnation)
    else:
        meta["annotations"] = topology.annotations(
            served.members, served.quorums, served.epoch, incarnation
        )
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "replicas": served.replicas if served else spec.replicas,
            "serviceName": names.peers_service(name),
            # Members of a consensus cluster have no start order; Parallel lets a fresh
            # cluster reach a quorum without waiting for member 0 to become ready.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": names.selector(name)},
            "updateStrategy": {"type": "RollingUpdate"},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": spec.storage.retention.when_deleted,
                "whenScaled": spec.storage.retention.when_scaled,
            },
            "template": {
                "metadata": {
                    "labels": labels(name, "member", spec),
                    # Members restart for what they cannot install live (config_hash)
                    "annotations": {names.ANNOTATION_CONFIG_HASH: cfg_hash},
                },
                "spec": _pod_spec(name, spec, served.replicas if served else spec.replicas),
            },
            "volumeClaimTemplates": [_claim_template(name, spec, epoch, incarnation)],
        },
    }


def pod_disruption_budget(name: str, namespace: str, tolerates: int) -> dict:
    allowed = max(0, tolerates)
    meta = _meta(name, name, namespace, "member")
    meta["annotations"] = {names.ANNOTATION_TOLERATES: str(tolerates)}
    if allowed == 0:
        meta["annotations"][names.ANNOTATION_PDB_REASON] = (
            "The quorum layout tolerates no member failure, so evicting any member would stop "
            "decisions: voluntary evictions are blocked. Drain such nodes by hand, or choose a "
            "layout that tolerates a failure."
        )
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta,
        "spec": {
            "maxUnavailable": allowed,
            "selector": {"matchLabels": names.selector(name)},
            # A member that is already not ready counts as unavailable: evicting it costs
            # nothing, and blocking it would wedge node drains behind a broken pod.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def service_monitor(name: str, namespace: str, spec: ClusterSpec | None = None) -> dict:
    endpoint: dict[str, Any] = {"port": names.PORT_NAME, "path": "/metrics", "interval": "30s"}
    if spec is not None and spec.security.tls:
        # Prometheus verifies the members with the cluster's CA and shows its own read-only
        # client certificate (issued by the operator into the cluster's TLS Secret).
        endpoint["scheme"] = "https"
        cert = (names.tls_secret(name), "metrics.crt", "metrics.key")
        if spec.security.cert_manager is not None:
            cert = (names.metrics_cert(name), "tls.crt", "tls.key")
        endpoint["tlsConfig"] = {
            "ca": {"secret": {"name": names.ca_secret(name), "key": "ca.crt"}},
            "cert": {"secret": {"name": cert[0], "key": cert[1]}},
            "keySecret": {"name": cert[0], "key": cert[2]},
            "serverName": f"{name}.{namespace}.svc",
        }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(name, name, namespace, "monitoring"),
        "spec": {
            # The peer service lists every member, ready or not: a member that is down must
            # show up as a failed scrape (up == 0), not vanish from the targets.
            "selector": {"matchLabels": {**names.selector(name), names.LABEL_COMPONENT: "peers"}},
            "namespaceSelector": {"matchNames": [namespace]},
            "endpoints": [endpoint],
        },
    }


def network_policy(
    name: str, namespace: str, spec: ClusterSpec, operator_namespace: str | None = None
) -> dict:
    """Who may open connections to the members (one port serves peers, clients and metrics,
    so the rules are by source): the cluster's own members, the clients ``spec`` allows
    (default: pods of this namespace), Prometheus' namespace, and the operator's pods when it
    runs in ``operator_namespace`` (it pushes configurations to the members). Nothing else."""
    members = {"podSelector": {"matchLabels": names.selector(name)}}
    clients = (
        [dict(c) for c in spec.security.clients]
        if spec.security.clients is not None
        else [{"podSelector": {}}]  # every pod of this namespace
    )
    monitoring = {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": spec.security.metrics_namespace}
        }
    }
    port = [{"protocol": "TCP", "port": names.PORT}]
    ingress = [
        {"from": [members], "ports": port},
        {"from": clients, "ports": port},
        {"from": [monitoring], "ports": port},
    ]
    if operator_namespace is not None:
        operator = {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": operator_namespace}
            },
            "podSelector": {"matchLabels": dict(names.OPERATOR_POD_LABELS)},
        }
        ingress.append({"from": [operator], "ports": port})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, name, namespace, "network-policy"),
        "spec": {
            "podSelector": {"matchLabels": names.selector(name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def prometheus_rule(name: str, namespace: str) -> dict:
    """The shared Graven alerts (monitoring/rules.yaml), limited to this cluster."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": _meta(name, name, namespace, "monitoring"),
        "spec": {"groups": alerts.cluster_groups(namespace, name)},
    }


def render_all(
    name: str,
    namespace: str,
    spec: ClusterSpec,
    tolerates: int,
    caps: Capabilities = Capabilities(),
    epoch: int = 0,
    incarnation: str | None = None,
    served: Served | None = None,
    operator_namespace: str | None = None,
) -> list[dict]:
    """Every child object, in apply order (configuration and services before the pods)."""
    cm = config_map(name, namespace, spec, epoch, incarnation, served)
    cfg_hash = config_hash(cm["data"][names.CONFIG_FILE])
    objs = [
        cm,
        peers_service(name, namespace),
        client_service(name, namespace),
        statefulset(name, namespace, spec, cfg_hash, epoch, incarnation, served),
        pod_disruption_budget(name, namespace, tolerates),
    ]
    if spec.security.network_policy:
        objs.append(network_policy(name, namespace, spec, operator_namespace))
    if spec.monitoring.service_monitor and caps.service_monitor:
        objs.append(service_monitor(name, namespace, spec))
    if spec.monitoring.prometheus_rule and caps.prometheus_rule:
        objs.append(prometheus_rule(name, namespace))
    return objs


def key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """(apiVersion, kind, name): identifies a child within one cluster's namespace."""
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]
