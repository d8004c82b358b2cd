"""The certificates of a cluster on Kubernetes: what the CA and member Secrets should hold now.

Two Secrets per ConsensusCluster, both owned by it:

- ``NAME-ca``: the signing CA (``tls.crt``, ``tls.key``) and the trust bundle ``ca.crt`` that
  members, clients and Prometheus verify with. Members mount only ``ca.crt``.
- ``NAME-tls``: every member's certificate and key (``NAME-i.crt``/``.key``; each pod uses its
  own, as Strimzi's broker Secret does) and ``metrics.crt``/``.key``, a ``read`` client
  certificate for Prometheus' ServiceMonitor.

``plan`` is a function of the live Secrets and the time (plus fresh keys from ``pki``), called on
every reconcile and drift pass. It:

- creates what is missing;
- renews a leaf that expires within ``LEAF_RENEW`` or is not signed by the signing CA;
- rotates the CA without downtime, in three steps each taken once ``settle`` has passed since
  the previous one (long enough for the kubelet to update the mounted files and the members to
  reload them, see ``security.tls``): ``trust`` (the bundle holds old + new), ``reissue``
  (every leaf from the new CA), finish (the bundle holds only the new CA). It starts when the
  CA expires within ``CA_RENEW``, or when the cluster's ``graven.dev/rotate-ca`` annotation
  changes.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from graven.node.security import pki
from graven.node.security.identity import READ

from . import names

CA_RENEW = dt.timedelta(days=180)
LEAF_RENEW = dt.timedelta(days=30)
DEFAULT_SETTLE = dt.timedelta(minutes=3)  # kubelet secret sync (~1 min) + reload, with margin

STEP = f"{names.GROUP}/ca-rotation-step"  # on the CA Secret: trust | reissue
SINCE = f"{names.GROUP}/ca-rotation-since"
ROTATED_FOR = f"{names.GROUP}/rotated-for"  # the cluster's rotate-ca value last acted on
ROTATE_REQUEST = f"{names.GROUP}/rotate-ca"  # on the ConsensusCluster: change it to rotate
METRICS = "metrics"


def member_hosts(cluster: str, namespace: str, index: int) -> list[str]:
    member = names.member(cluster, index)
    peers = names.peers_service(cluster)
    return [
        f"{member}.{peers}.{namespace}.svc",
        f"{member}.{peers}.{namespace}.svc.cluster.local",
        f"{member}.{peers}",
        f"{cluster}.{namespace}.svc",  # the client Service
        f"{cluster}.{namespace}.svc.cluster.local",
        f"{cluster}.{namespace}",
        cluster,
        "localhost",
        "127.0.0.1",
    ]


def _decode(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    data = (secret or {}).get("data") or {}
    return {k: base64.b64decode(v) for k, v in data.items()}


def encode(data: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in data.items()}


@dataclass
class Plan:
    """What to write: None leaves a Secret as it is."""

    ca: dict[str, bytes] | None = None
    ca_annotations: dict[str, str | None] = field(default_factory=dict)
    tls: dict[str, bytes] | None = None
    events: list[str] = field(default_factory=list)


def _cert(pem: bytes | None) -> x509.Certificate | None:
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def plan(
    cluster: str,
    namespace: str,
    replicas: int,
    ca_secret: Mapping[str, Any] | None,
    tls_secret: Mapping[str, Any] | None,
    now: dt.datetime,
    rotate_request: str | None = None,
    settle: dt.timedelta = DEFAULT_SETTLE,
) -> Plan:
    out = Plan()
    ca = _decode(ca_secret)
    notes = dict(((ca_secret or {}).get("metadata") or {}).get("annotations") or {})
    current = _cert(ca.get("tls.crt"))
    if current is None or not ca.get("tls.key"):
        fresh = pki.new_ca(cluster, now=now)
        ca = {"tls.crt": fresh.cert_pem, "tls.key": fresh.key_pem, "ca.crt": fresh.cert_pem}
        out.ca = dict(ca)
        out.ca_annotations = {ROTATED_FOR: rotate_request or ""}
        out.events.append(f"created the cluster CA (Secret {names.ca_secret(cluster)})")
        current = _cert(ca["tls.crt"])
        notes = dict(out.ca_annotations)
    assert current is not None

    step = notes.get(STEP)
    since = _time(notes.get(SINCE))
    settled = since is None or now - since >= settle
    requested = rotate_request is not None and rotate_request != notes.get(ROTATED_FOR, "")
    expiring = current.not_valid_after_utc - now < CA_RENEW
    if step is None and (requested or expiring):
        new = pki.new_ca(cluster, now=now)
        ca = {**ca, "next.crt": new.cert_pem, "next.key": new.key_pem}
        ca["ca.crt"] = ca["tls.crt"] + new.cert_pem
        out.ca = dict(ca)
        out.ca_annotations = {STEP: "trust", SINCE: _stamp(now), ROTATED_FOR: rotate_request or ""}
        why = "requested" if requested else "the CA expires soon"
        out.events.append(f"CA rotation ({why}): trusting the new CA beside the old one")
        step = "trust"
    elif step == "trust" and settled and ca.get("next.crt"):
        out.ca_annotations = {STEP: "reissue", SINCE: _stamp(now)}
        out.events.append("CA rotation: reissuing every certificate from the new CA")
        step = "reissue"
    elif step == "reissue" and settled and ca.get("next.crt"):
        ca = {"tls.crt": ca["next.crt"], "tls.key": ca["next.key"], "ca.crt": ca["next.crt"]}
        out.ca = dict(ca)
        out.ca_annotations = {STEP: None, SINCE: None}
        out.events.append("CA rotation finished: only the new CA is trusted")
        step = None

    signing_pem = ca["next.crt"] if step == "reissue" else ca["tls.crt"]
    signing_key = ca["next.key"] if step == "reissue" else ca["tls.key"]
    signer = pki.Issued(signing_key, signing_pem)
    signer_subject = signer.cert.subject

    tls = _decode(tls_secret)
    wanted = {names.member(cluster, i) for i in range(replicas)} | {METRICS}
    changed = [k for k in tls if k.rsplit(".", 1)[0] not in wanted]  # members scaled away
    for k in changed:
        del tls[k]
    renewed = []
    for who in sorted(wanted):
        leaf = _cert(tls.get(f"{who}.crt"))
        if (
            leaf is not None
            and tls.get(f"{who}.key")
            and leaf.issuer == signer_subject
            and leaf.not_valid_after_utc - now >= LEAF_RENEW
        ):
            continue
        if who == METRICS:
            issued = pki.issue_client(signer, cluster, READ, "prometheus", now=now)
        else:
            index = int(who.rsplit("-", 1)[1])
            hosts = member_hosts(cluster, namespace, index)
            issued = pki.issue_member(signer, cluster, who, hosts, now=now)
        tls[f"{who}.key"] = issued.key_pem
        tls[f"{who}.crt"] = issued.cert_pem
        renewed.append(who)
    if renewed or changed:
        out.tls = tls
        if tls_secret is not None and renewed:
            out.events.append(f"issued certificates for {', '.join(renewed)}")
    return out


def _stamp(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def secret(
    name: str, namespace: str, cluster: str, data: Mapping[str, bytes], annotations: Mapping
) -> dict:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {
            **names.selector(cluster),
            names.LABEL_COMPONENT: "tls",
            names.LABEL_PART_OF: names.APP,
            names.LABEL_MANAGED_BY: names.MANAGER,
        },
    }
    notes = {k: v for k, v in annotations.items() if v is not None}
    if notes:
        meta["annotations"] = notes
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": meta,
        "data": encode(data),
    }
