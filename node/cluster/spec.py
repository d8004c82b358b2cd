"""The ConsensusCluster manifest as a typed value, with the CRD's defaults applied.

The one parser of the resource: the operator reads it from the apiserver, ``graven up`` and the
tests from a YAML file (``load_manifest``), so the same YAML runs locally and on Kubernetes.

The apiserver applies the CRD's defaults before the operator sees an object, but the operator
applies them again: it must not depend on defaulting having happened (objects created before a
CRD upgrade, or an apiserver emulator without defaulting). tests/operator checks that these
defaults and the CRD's agree.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..protocol.layout import LayoutError
from .layoutfile import read_documents

API_VERSION = "graven.dev/v1alpha1"
KIND = "ConsensusCluster"

DEFAULT_REPLICAS = 3
MAX_REPLICAS = 16
DEFAULT_IMAGE = "graven:0.1.0"
DEFAULT_STORAGE_SIZE = "1Gi"
DEFAULT_QUORUMS: dict[str, Any] = {"preset": "paxos"}
RETENTION_POLICIES = ("Retain", "Delete")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

# StatefulSet pods are named NAME-<ordinal>, and `controller-revision-hash` labels carry
# NAME-<10 chars>: the cluster name must leave room for both and for the "-peers" service.
MAX_NAME_LENGTH = 45

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class SpecError(ValueError):
    """A spec the operator cannot act on (beyond what the CRD schema already rejects)."""


@dataclass(frozen=True)
class Retention:
    when_deleted: str = "Retain"
    when_scaled: str = "Retain"


@dataclass(frozen=True)
class Storage:
    size: str = DEFAULT_STORAGE_SIZE
    storage_class: str | None = None
    retention: Retention = field(default_factory=Retention)


@dataclass(frozen=True)
class Monitoring:
    service_monitor: bool = False
    prometheus_rule: bool = False


@dataclass(frozen=True)
class IssuerRef:
    """``spec.security.certManager.issuerRef``: the cert-manager issuer of the certificates."""

    name: str
    kind: str = "Issuer"  # Issuer (in the cluster's namespace) | ClusterIssuer
    group: str = "cert-manager.io"


ISSUER_KINDS = ("Issuer", "ClusterIssuer")


@dataclass(frozen=True)
class Security:
    """``spec.security``: TLS and client access (secure unless switched off)."""

    tls: bool = True  # members and clients over mutual TLS with the operator's CA
    # None: the operator's own CA (Secrets NAME-ca, NAME-tls); else cert-manager Certificates
    cert_manager: IssuerRef | None = None
    client_tokens_secret: str | None = None  # Secret with key tokens.yaml (hashed tokens)
    network_policy: bool = True
    # NetworkPolicyPeers allowed to reach the client API; None: pods of the cluster's namespace
    clients: tuple[Mapping[str, Any], ...] | None = None
    metrics_namespace: str = "monitoring"  # where Prometheus scrapes from


@dataclass(frozen=True)
class ClusterSpec:
    replicas: int = DEFAULT_REPLICAS
    image: str = DEFAULT_IMAGE
    image_pull_policy: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    quorums: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_QUORUMS))
    storage: Storage = field(default_factory=Storage)
    resources: Mapping[str, Any] = field(default_factory=dict)
    affinity: Mapping[str, Any] | None = None
    tolerations: tuple[Mapping[str, Any], ...] = ()
    topology_spread: tuple[Mapping[str, Any], ...] | None = None
    monitoring: Monitoring = field(default_factory=Monitoring)
    limits: Mapping[str, int] = field(default_factory=dict)
    paused: bool = False
    security: Security = field(default_factory=Security)

    @property
    def quorums_key(self) -> str:
        """Canonical text of the layout block: two blocks are the same layout iff equal."""
        return canonical_quorums(self.quorums)


def canonical_quorums(block: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(block or DEFAULT_QUORUMS), sort_keys=True, separators=(",", ":"))


def check_name(name: str) -> None:
    if not _DNS_LABEL.match(name) or len(name) > MAX_NAME_LENGTH:
        raise SpecError(
            f"metadata.name {name!r} must be a DNS label of at most {MAX_NAME_LENGTH} "
            "characters: it becomes pod host names and service names"
        )


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} must be an object, got {value!r}")
    return value


def _choice(value: Any, allowed: tuple[str, ...], where: str, default: str | None) -> str | None:
    if value is None:
        return default
    if value not in allowed:
        raise SpecError(f"{where} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _int(value: Any, lo: int, hi: int, where: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(f"{where} must be an integer between {lo} and {hi}, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SpecError(f"{where} must be true or false, got {value!r}")
    return value


def _objects(value: Any, where: str) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise SpecError(f"{where} must be a list of objects")
    return tuple(copy.deepcopy(v) for v in value)


def parse(spec: Mapping[str, Any] | None) -> ClusterSpec:
    """Typed spec with defaults; raises SpecError on values the schema should have refused."""
    spec = _mapping(spec, "spec")
    image = spec.get("image") or DEFAULT_IMAGE
    if not isinstance(image, str):
        raise SpecError(f"spec.image must be a string, got {image!r}")
    secrets = []
    for item in _objects(spec.get("imagePullSecrets"), "spec.imagePullSecrets"):
        if not isinstance(item.get("name"), str) or not item["name"]:
            raise SpecError("spec.imagePullSecrets items need a name")
        secrets.append(item["name"])

    quorums = spec.get("quorums")
    quorums = copy.deepcopy(dict(_mapping(quorums, "spec.quorums"))) or dict(DEFAULT_QUORUMS)

    storage = _mapping(spec.get("storage"), "spec.storage")
    retention = _mapping(storage.get("retention"), "spec.storage.retention")
    size = storage.get("size", DEFAULT_STORAGE_SIZE)
    if isinstance(size, bool) or not isinstance(size, str | int):
        raise SpecError(f"spec.storage.size must be a quantity such as 1Gi, got {size!r}")
    storage_class = storage.get("storageClassName")
    if storage_class is not None and not isinstance(storage_class, str):
        raise SpecError("spec.storage.storageClassName must be a string")

    monitoring = _mapping(spec.get("monitoring"), "spec.monitoring")
    spread = spec.get("topologySpreadConstraints")
    limits = _mapping(spec.get("limits"), "spec.limits")
    for key, value in limits.items():
        _int(value, 1, 1 << 30, f"spec.limits.{key}", 1)

    return ClusterSpec(
        replicas=_int(spec.get("replicas"), 1, MAX_REPLICAS, "spec.replicas", DEFAULT_REPLICAS),
        image=image,
        image_pull_policy=_choice(
            spec.get("imagePullPolicy"), PULL_POLICIES, "spec.imagePullPolicy", None
        ),
        image_pull_secrets=tuple(secrets),
        quorums=quorums,
        storage=Storage(
            size=str(size),
            storage_class=storage_class,
            retention=Retention(
                when_deleted=_choice(
                    retention.get("whenDeleted"),
                    RETENTION_POLICIES,
                    "spec.storage.retention.whenDeleted",
                    "Retain",
                )
                or "Retain",
                when_scaled=_choice(
                    retention.get("whenScaled"),
                    RETENTION_POLICIES,
                    "spec.storage.retention.whenScaled",
                    "Retain",
                )
                or "Retain",
            ),
        ),
        resources=copy.deepcopy(dict(_mapping(spec.get("resources"), "spec.resources"))),
        affinity=copy.deepcopy(dict(_mapping(spec["affinity"], "spec.affinity")))
        if spec.get("affinity")
        else None,
        tolerations=_objects(spec.get("tolerations"), "spec.tolerations"),
        topology_spread=None
        if spread is None
        else _objects(spread, "spec.topologySpreadConstraints"),
        monitoring=Monitoring(
            service_monitor=_bool(monitoring.get("serviceMonitor"), "spec.monitoring"),
            prometheus_rule=_bool(monitoring.get("prometheusRule"), "spec.monitoring"),
        ),
        limits=dict(limits),
        paused=_bool(spec.get("paused"), "spec.paused"),
        security=_security(_mapping(spec.get("security"), "spec.security")),
    )


def _security(block: Mapping[str, Any]) -> Security:
    tls = block.get("tls", True)
    if not isinstance(tls, bool):
        raise SpecError(f"spec.security.tls must be true or false, got {tls!r}")
    tokens = block.get("clientTokensSecret")
    if tokens is not None and (not isinstance(tokens, str) or not _DNS_SUBDOMAIN.match(tokens)):
        raise SpecError(f"spec.security.clientTokensSecret must be a Secret name, got {tokens!r}")
    if tokens is not None and not tls:
        raise SpecError("spec.security.clientTokensSecret needs spec.security.tls: true")
    policy = _mapping(block.get("networkPolicy"), "spec.security.networkPolicy")
    enabled = policy.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SpecError("spec.security.networkPolicy.enabled must be true or false")
    clients = policy.get("clients")
    metrics_ns = policy.get("metricsNamespace", "monitoring")
    if not isinstance(metrics_ns, str) or not _DNS_LABEL.match(metrics_ns):
        raise SpecError(f"spec.security.networkPolicy.metricsNamespace: bad name {metrics_ns!r}")
    return Security(
        tls=tls,
        client_tokens_secret=tokens,
        network_policy=enabled,
        clients=None
        if clients is None
        else _objects(clients, "spec.security.networkPolicy.clients"),
        metrics_namespace=metrics_ns,
        cert_manager=_cert_manager(block.get("certManager"), tls),
    )


def _cert_manager(block: Any, tls: bool) -> IssuerRef | None:
    where = "spec.security.certManager"
    if block is None:
        return None
    block = _mapping(block, where)
    ref = _mapping(block.get("issuerRef"), f"{where}.issuerRef")
    name, kind = ref.get("name"), ref.get("kind", "Issuer")
    group = ref.get("group", "cert-manager.io")
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name):
        raise SpecError(
            f"{where}.issuerRef.name must name an Issuer or ClusterIssuer, got {name!r}"
        )
    if kind not in ISSUER_KINDS:
        raise SpecError(f"{where}.issuerRef.kind must be Issuer or ClusterIssuer, got {kind!r}")
    if not isinstance(group, str) or not _DNS_SUBDOMAIN.match(group):
        raise SpecError(f"{where}.issuerRef.group must be an API group, got {group!r}")
    if not tls:
        raise SpecError(f"{where} needs spec.security.tls: true")
    return IssuerRef(name, kind, group)


@dataclass(frozen=True)
class Manifest:
    """A ConsensusCluster read from a file: its name and its typed spec."""

    name: str
    spec: ClusterSpec


def load_manifest(path: str | Path) -> Manifest:
    """The one ConsensusCluster in a YAML file; SpecError (naming the file) when there is none
    or it is not usable."""
    path = Path(path)
    try:
        docs = read_documents(path)
    except LayoutError as exc:
        raise SpecError(str(exc)) from None
    manifests = [d for d in docs if isinstance(d, Mapping) and d.get("kind") == KIND]
    if len(manifests) != 1:
        raise SpecError(f"{path}: expected a {KIND} manifest (apiVersion {API_VERSION})")
    doc = manifests[0]
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        raise SpecError(f"{path}: metadata.name is required (it names the cluster)")
    try:
        check_name(name)
        return Manifest(name, parse(doc.get("spec")))
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
