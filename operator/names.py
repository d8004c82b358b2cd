"""Names shared by the CRD, the render functions and the handlers (one place to change them)."""

from __future__ import annotations

from graven.node.cluster.render import member_name as member
from graven.node.cluster.spec import MAX_NAME_LENGTH

GROUP = "graven.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ConsensusCluster"
PLURAL = "consensusclusters"

# The port every member listens on (peer traffic, client API, probes and metrics share it).
PORT = 7100
PORT_NAME = "http"
CONFIG_FILE = "cluster.yaml"
CONFIG_DIR = "/etc/graven"
DATA_DIR = "/data"
DATA_VOLUME = "data"
CA_DIR = "/etc/graven-ca"  # not under CONFIG_DIR: no mount points inside a read-only volume
TLS_DIR = "/etc/graven-tls"
TOKENS_DIR = "/etc/graven-tokens"
TOKENS_FILE = "tokens.yaml"

# Pods run as this non-root uid/gid; fsGroup makes the PVC writable for it.
RUN_AS_USER = 10001

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_VERSION = "app.kubernetes.io/version"
APP = "graven"
MANAGER = "graven-operator"
# Labels every operator pod of the chart carries (charts/graven-operator, "labels"): a
# cluster's NetworkPolicy admits pods with them from the operator's namespace.
OPERATOR_POD_LABELS = {LABEL_COMPONENT: "operator", LABEL_PART_OF: APP}

ANNOTATION_CONFIG_HASH = f"{GROUP}/config-hash"
ANNOTATION_PDB_REASON = f"{GROUP}/pdb-reason"
ANNOTATION_TOLERATES = f"{GROUP}/tolerates"

FINALIZER = f"{GROUP}/cleanup"


# the name limit and the member names live with the spec parser and the renderer
__all__ = ["MAX_NAME_LENGTH", "member"]


def peers_service(name: str) -> str:
    return f"{name}-peers"


def config_map(name: str) -> str:
    return f"{name}-config"


def member_url(name: str, namespace: str, index: int, scheme: str = "http") -> str:
    """A member's stable address: the pod's record under the headless peer service."""
    return f"{scheme}://{member(name, index)}.{peers_service(name)}.{namespace}.svc:{PORT}"


def record_config_map(name: str) -> str:
    """The configuration master's record of a reconfiguration (see reconfigure.py)."""
    return f"{name}-reconfiguration"


def ca_secret(name: str) -> str:
    """The cluster's CA (``tls.crt``/``tls.key``) and trust bundle (``ca.crt``)."""
    return f"{name}-ca"


def tls_secret(name: str) -> str:
    """Every member's certificate and key, and Prometheus' read-only client certificate."""
    return f"{name}-tls"


def member_cert(name: str, index: int) -> str:
    """cert-manager mode: a member's Certificate and the Secret it writes (tls.crt, tls.key,
    ca.crt). The ``-cert`` suffix keeps them apart from the self-managed Secrets."""
    return f"{member(name, index)}-cert"


def operator_cert(name: str) -> str:
    """cert-manager mode: the operator's admin client Certificate and Secret."""
    return f"{name}-operator-cert"


def metrics_cert(name: str) -> str:
    """cert-manager mode: Prometheus' read-only client Certificate and Secret."""
    return f"{name}-metrics-cert"


def selector(name: str) -> dict[str, str]:
    """Labels that select a cluster's pods; never changes over the cluster's life."""
    return {LABEL_NAME: APP, LABEL_INSTANCE: name}
