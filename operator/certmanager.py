"""cert-manager mode (``spec.security.certManager``): Certificates instead of the operator's CA.

Everything is owned by the ConsensusCluster:

- a ``Certificate`` per member, ``NAME-i-cert``, written by cert-manager into the Secret of the
  same name (``tls.crt``, ``tls.key``, ``ca.crt``): the same URI SAN (``graven://NAME/member/
  NAME-i``) and host names as a self-managed member certificate (``pki.member_hosts``), server
  and client auth, so the peer API's membership check reads it exactly as before;
- ``NAME-operator-cert``: the operator's ``admin`` client identity (``graven://NAME/client/
  admin/graven-operator``) for reconfiguration calls, so the operator never holds a CA key;
- ``NAME-metrics-cert``: Prometheus' ``read`` client certificate (the ServiceMonitor's);
- the Secret ``NAME-ca`` keeps only ``ca.crt``, the trust bundle members mount: the operator
  writes there the CA certificates the Secrets above carry.

Renewal is cert-manager's: it rewrites a Secret before expiry, the kubelet updates the mounted
files, members reload them (``security.tls``), as with self-managed renewal.

A CA rotation is a change of ``issuerRef`` (to an issuer with the new CA). ``plan`` takes it in
three steps, each once ``settle`` has passed since its condition held (the kubelet's Secret
sync and the members' reload, as in ``pki``):

- ``trust``: the operator's client Certificate moves to the new issuer first; its Secret's
  ``ca.crt`` is the new CA, which the bundle now trusts beside the old (until members have
  reloaded the bundle, the operator's own reconfiguration calls are refused and retried);
- ``reissue``: the members' Certificates move to the new issuer (cert-manager reissues them,
  its trigger sees the issuer change); every CA seen stays trusted;
- finish (once every member's Secret comes from the new issuer): the bundle holds only the CAs
  the Secrets now carry.

``plan`` is a pure function of the live Certificates' Secrets, the bundle Secret and the time.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from graven.node.cluster.spec import IssuerRef
from graven.node.security.identity import ADMIN, READ, client_uri, member_uri

from . import names, pki

GROUP = "cert-manager.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Certificate"
PLURAL = "certificates"
OPERATOR_CLIENT = "graven-operator"  # the name in the operator's client identity
DURATION = "8760h"  # a year, as self-managed leaves (pki.LEAF_DAYS)
RENEW_BEFORE = "720h"  # 30 days, as pki.LEAF_RENEW

# On the bundle Secret NAME-ca
MODE = f"{names.GROUP}/pki"  # "cert-manager" (absent: the operator's own CA)
ISSUER = f"{names.GROUP}/member-issuer"  # Kind/name/group the members' Certificates use
STEP, SINCE = pki.STEP, pki.SINCE
CERT_MANAGER = "cert-manager"
# Written by cert-manager on the Secrets it issues into
ISSUED_BY = (
    "cert-manager.io/issuer-kind",
    "cert-manager.io/issuer-name",
    "cert-manager.io/issuer-group",
)


def issuer_key(ref: IssuerRef) -> str:
    return f"{ref.kind}/{ref.name}/{ref.group}"


def _ref(key: str) -> dict[str, str]:
    kind, name, group = key.split("/", 2)
    return {"name": name, "kind": kind, "group": group}


def issued_by(secret: Mapping[str, Any] | None) -> str | None:
    """The issuer (as ``issuer_key``) cert-manager says issued a Secret's certificate."""
    notes = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    kind, name, group = (notes.get(k) for k in ISSUED_BY)
    if not kind or not name:
        return None
    return f"{kind}/{name}/{group or GROUP}"


def _labels(cluster: str, component: str) -> dict[str, str]:
    return {
        **names.selector(cluster),
        names.LABEL_COMPONENT: component,
        names.LABEL_PART_OF: names.APP,
        names.LABEL_MANAGED_BY: names.MANAGER,
    }


def certificate(
    cluster: str,
    namespace: str,
    name: str,
    issuer: str,
    uri: str,
    usages: list[str],
    hosts: list[str] = (),  # type: ignore[assignment]
) -> dict:
    spec: dict[str, Any] = {
        "secretName": name,
        # the Secret carries the cluster's labels too (kubectl get secret -l ...)
        "secretTemplate": {"labels": _labels(cluster, "tls")},
        "commonName": name.removesuffix("-cert"),
        "uris": [uri],
        "usages": usages,
        "duration": DURATION,
        "renewBefore": RENEW_BEFORE,
        # a fresh key at every renewal, as self-managed renewal does
        "privateKey": {
            "algorithm": "ECDSA",
            "size": 256,
            "encoding": "PKCS8",
            "rotationPolicy": "Always",
        },
        "issuerRef": _ref(issuer),
    }
    dns = [h for h in hosts if not _is_ip(h)]
    ips = [h for h in hosts if _is_ip(h)]
    if dns:
        spec["dnsNames"] = dns
    if ips:
        spec["ipAddresses"] = ips
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(cluster, "tls")},
        "spec": spec,
    }


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def member_certificate(cluster: str, namespace: str, index: int, issuer: str) -> dict:
    member = names.member(cluster, index)
    return certificate(
        cluster,
        namespace,
        names.member_cert(cluster, index),
        issuer,
        member_uri(cluster, member),
        ["digital signature", "server auth", "client auth"],
        pki.member_hosts(cluster, namespace, index),
    )


def client_certificate(
    cluster: str, namespace: str, name: str, issuer: str, role: str, who: str
) -> dict:
    return certificate(
        cluster,
        namespace,
        name,
        issuer,
        client_uri(cluster, role, who),
        ["digital signature", "client auth"],
    )


@dataclass
class Plan:
    certificates: list[dict]  # every Certificate wanted now (create or repair)
    bundle: bytes | None = None  # the new ca.crt of NAME-ca; None: leave it
    annotations: dict[str, str | None] = field(default_factory=dict)  # for NAME-ca
    events: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # Secrets cert-manager has not written


def secret_names(cluster: str, replicas: int) -> list[str]:
    return [
        *(names.member_cert(cluster, i) for i in range(replicas)),
        names.operator_cert(cluster),
        names.metrics_cert(cluster),
    ]


def _data(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}


def split_pem(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle, each normalised; unreadable parts are dropped."""
    out = []
    marker = b"-----END CERTIFICATE-----"
    for part in bundle.split(marker):
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start < 0:
            continue
        pem = part[start:] + marker + b"\n"
        try:
            x509.load_pem_x509_certificate(pem)
        except ValueError:
            continue
        out.append(pem)
    return out


def _join(cas: set[bytes]) -> bytes:
    return b"".join(sorted(cas))


def plan(
    cluster: str,
    namespace: str,
    replicas: int,
    issuer: IssuerRef,
    secrets: Mapping[str, Mapping[str, Any] | None],
    bundle_secret: Mapping[str, Any] | None,
    now: dt.datetime,
    settle: dt.timedelta = pki.DEFAULT_SETTLE,
) -> Plan:
    """What to write for ``replicas`` members; ``secrets`` maps ``secret_names`` to the live
    Secrets (None: not written yet)."""
    wanted = issuer_key(issuer)
    notes = dict(((bundle_secret or {}).get("metadata") or {}).get("annotations") or {})
    have = set(split_pem(_data(bundle_secret).get("ca.crt", b"")))
    members = notes.get(ISSUER) or wanted
    step = notes.get(STEP) or None
    since = pki._time(notes.get(SINCE))
    out = Plan([])
    marks: dict[str, str | None] = {}
    if notes.get(MODE) != CERT_MANAGER or not notes.get(ISSUER):
        marks.update({MODE: CERT_MANAGER, ISSUER: members})

    member_names = [names.member_cert(cluster, i) for i in range(replicas)]
    carried: dict[str, set[bytes]] = {}  # Secret -> the CAs its ca.crt holds
    for name, secret in secrets.items():
        data = _data(secret)
        if secret is None or not data.get("tls.crt"):
            out.waiting.append(name)
            continue
        carried[name] = set(split_pem(data.get("ca.crt", b"")))
    seen = set().union(*carried.values()) if carried else set()

    def settled() -> bool:
        return since is not None and now - since >= settle

    if step is None and members != wanted:
        step, since = "trust", None
        marks.update({STEP: step, SINCE: None})
        out.events.append(
            f"CA rotation (issuer {members} -> {wanted}): trusting the new issuer's CA first"
        )
    client_issuer = wanted if step is not None else members
    operator_secret = secrets.get(names.operator_cert(cluster))
    new_cas: set[bytes] = set()
    if step is not None and issued_by(operator_secret) == wanted:
        new_cas = carried.get(names.operator_cert(cluster), set())

    if step == "trust":
        if new_cas and new_cas <= have and since is None:
            since = now
            marks[SINCE] = pki._stamp(now)
        elif new_cas and new_cas <= have and settled():
            step, since, members = "reissue", None, wanted
            marks.update({STEP: step, SINCE: None, ISSUER: wanted})
            out.events.append(
                "CA rotation: reissuing the members' certificates from the new issuer"
            )
    elif step == "reissue":
        done = all(issued_by(secrets.get(n)) == wanted for n in member_names)
        if done and since is None:
            since = now
            marks[SINCE] = pki._stamp(now)
        elif done and settled():
            step = None
            marks.update({STEP: None, SINCE: None})
            out.events.append("CA rotation finished: only the new issuer's CA is trusted")

    # Mid-rotation every CA seen stays trusted; at rest, exactly the CAs the Secrets carry.
    trust = (have | seen) if step is not None else seen
    if trust and trust != have:
        out.bundle = _join(trust)
        added = len(trust - have)
        if added and have:
            out.events.append(f"trust bundle: {added} more CA certificate(s) trusted")
    elif not trust and not have and not out.waiting:
        out.events.append(
            "the issuer wrote no ca.crt into the certificate Secrets; members cannot verify "
            "each other (use a CA issuer, or one that returns its CA)"
        )
    out.annotations = marks
    out.certificates = [
        *(member_certificate(cluster, namespace, i, members) for i in range(replicas)),
        client_certificate(
            cluster, namespace, names.operator_cert(cluster), client_issuer, ADMIN, OPERATOR_CLIENT
        ),
        # Prometheus moves with the members: it must not show a certificate members (whose
        # bundles may lag) do not trust yet
        client_certificate(
            cluster, namespace, names.metrics_cert(cluster), members, READ, "prometheus"
        ),
    ]
    return out


def bundle_secret(
    cluster: str, namespace: str, bundle: bytes, notes: Mapping[str, str | None]
) -> dict:
    return pki.secret(names.ca_secret(cluster), namespace, cluster, {"ca.crt": bundle}, notes)


def mode(ca_secret: Mapping[str, Any] | None) -> str | None:
    """Which PKI a cluster's NAME-ca Secret belongs to: cert-manager, self, or None (none)."""
    if ca_secret is None:
        return None
    notes = (ca_secret.get("metadata") or {}).get("annotations") or {}
    if notes.get(MODE) == CERT_MANAGER:
        return CERT_MANAGER
    return "self" if "tls.key" in (ca_secret.get("data") or {}) else None
