"""Which incarnation a ConsensusCluster is, and whether retained volumes may be bound to it.

A cluster's incarnation is its UID, or the incarnation named by the
``graven.dev/adopt-incarnation`` annotation (explicit adoption of retained volumes). It is
rendered into the members' configuration (members refuse another incarnation's data) and onto
the volume claims the StatefulSet creates (label ``graven.dev/incarnation``), so the operator
can tell, before it creates anything, whose registers a retained claim holds.

Why the check exists: with ``retention.whenDeleted: Retain`` (the default), deleting a
ConsensusCluster keeps ``data-NAME-N``; a new cluster of the same name would otherwise bind them
under a fresh configuration at epoch 0 and serve old registers under quorums they were not
written for. Pure functions; reconcile.py asks the API.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import names, topology

ANNOTATION_ADOPT = f"{names.GROUP}/adopt-incarnation"
LABEL_INCARNATION = f"{names.GROUP}/incarnation"
# The node's rule for incarnation ids, kept within a label value's 63 characters.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class AdoptionError(ValueError):
    """The adoption annotation cannot be used (the message says why)."""


@dataclass(frozen=True)
class Claim:
    name: str
    ordinal: int
    incarnation: str | None  # None: made before incarnations were recorded
    written: topology.Topology | None = None  # members and layout it was created under


def adopted(meta: Mapping[str, Any]) -> str | None:
    """The incarnation named for adoption, None without the annotation."""
    value = (meta.get("annotations") or {}).get(ANNOTATION_ADOPT)
    if value is None:
        return None
    if not isinstance(value, str) or not _ID.match(value):
        raise AdoptionError(
            f"annotation {ANNOTATION_ADOPT}={value!r} must name an incarnation (the id in the "
            "RetainedVolumes message: letters, digits, '.', '_', '-', at most 63)"
        )
    return value


def incarnation(meta: Mapping[str, Any]) -> str:
    """This cluster's incarnation: the adopted one, else its own UID."""
    return adopted(meta) or str(meta["uid"])


def member_claims(name: str, claims: Iterable[Mapping[str, Any]]) -> list[Claim]:
    """The members' data claims (``data-NAME-<ordinal>``) among ``claims``, by ordinal."""
    prefix = f"{names.DATA_VOLUME}-{name}-"
    out = []
    for claim in claims:
        meta = claim.get("metadata") or {}
        claim_name = str(meta.get("name", ""))
        ordinal = claim_name.removeprefix(prefix)
        if not claim_name.startswith(prefix) or not ordinal.isdigit():
            continue
        label = (meta.get("labels") or {}).get(LABEL_INCARNATION)
        label = label if isinstance(label, str) else None
        out.append(Claim(claim_name, int(ordinal), label, topology.from_statefulset(claim)))
    return sorted(out, key=lambda c: c.ordinal)


def retained_refusal(
    name: str, own: str, adopting: bool, claims: list[Claim], replicas: int, quorums_key: str
) -> str | None:
    """Why the cluster must not start over ``claims`` (None: it may).

    Called only when nothing of the cluster runs (no StatefulSet and no ConfigMap): claims of
    this incarnation are its own (the StatefulSet was deleted); claims of another one, or of
    none recorded, belong to a deleted cluster and are refused unless adopted.
    """
    foreign = [c for c in claims if c.incarnation != own and not (adopting and not c.incarnation)]
    if not foreign:
        return _layout_refusal(name, claims, replicas, quorums_key) if adopting else None
    found = sorted({c.incarnation or "" for c in foreign})
    labelled = [i for i in found if i]
    whose = (
        f"cluster incarnation {', '.join(labelled)}"
        if labelled
        else "a cluster that recorded no incarnation (an older operator)"
    )
    adopt_id = labelled[0] if len(labelled) == 1 else "INCARNATION"
    claim_names = " ".join(c.name for c in foreign)
    return (
        f"PersistentVolumeClaims {', '.join(c.name for c in foreign)} hold the registers of "
        f"{whose}, a deleted ConsensusCluster of this name (volumes are retained by default); "
        f"this cluster is incarnation {own}. Nothing was created: members started over them "
        "would serve old registers under a new configuration. To keep the data, adopt it "
        "with the same replicas and quorums it was written with: kubectl annotate "
        f"consensuscluster {name} {ANNOTATION_ADOPT}={adopt_id} (a different layout is "
        "refused until reconfiguration exists). To start empty, delete the claims: "
        f"kubectl delete pvc {claim_names}"
    )


def _layout_refusal(name: str, claims: list[Claim], replicas: int, quorums_key: str) -> str | None:
    """Adoption keeps registers meaningful only under the members and layout that wrote them."""
    for claim in claims:
        was = claim.written
        if was is None or (was.members == replicas and was.quorums_key == quorums_key):
            continue
        return (
            f"adoption refused: {claim.name} was written by {was.members} members with quorums "
            f"{was.quorums_key}, but the spec asks for {replicas} members with {quorums_key}. "
            "Registers are only meaningful under the members and layout that wrote them, and "
            "moving them to another needs a reconfiguration, which does not exist yet. Set "
            "spec.replicas and spec.quorums to what the deleted cluster ran, or delete the "
            f"claims to start empty: kubectl delete pvc {' '.join(c.name for c in claims)}"
        )
    return None


def mismatch_refusal(running: str, own: str) -> str:
    return (
        f"the running members are cluster incarnation {running}, but this ConsensusCluster now "
        f"resolves to {own} (annotation {ANNOTATION_ADOPT} changed or removed?); nothing was "
        f"changed. Set {ANNOTATION_ADOPT}={running} again to manage the running members"
    )
