"""What is running now: members, layout and epoch, read back from the live children.

The live ConfigMap is the record (the members read it); the StatefulSet carries a copy in
annotations so a deleted or hand-edited ConfigMap cannot make the operator forget the running
layout and "repair" it into a different one — that would be an unchecked reconfiguration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from graven.node.cluster.spec import canonical_quorums

from . import names

ANNOTATION_MEMBERS = f"{names.GROUP}/members"
ANNOTATION_QUORUMS = f"{names.GROUP}/quorums"
ANNOTATION_EPOCH = f"{names.GROUP}/epoch"
ANNOTATION_INCARNATION = f"{names.GROUP}/incarnation"


@dataclass(frozen=True)
class Topology:
    members: int
    quorums: Mapping[str, Any]
    epoch: int = 0
    incarnation: str | None = None  # None: rendered before incarnations were recorded

    @property
    def quorums_key(self) -> str:
        return canonical_quorums(self.quorums)


def annotations(
    members: int, quorums: Mapping[str, Any], epoch: int = 0, incarnation: str | None = None
) -> dict[str, str]:
    out = {
        ANNOTATION_MEMBERS: str(members),
        ANNOTATION_QUORUMS: canonical_quorums(quorums),
        ANNOTATION_EPOCH: str(epoch),
    }
    if incarnation is not None:
        out[ANNOTATION_INCARNATION] = incarnation
    return out


def from_config_map(cm: Mapping[str, Any] | None) -> Topology | None:
    if not cm:
        return None
    text = (cm.get("data") or {}).get(names.CONFIG_FILE)
    try:
        doc = yaml.safe_load(text) if isinstance(text, str) else None
    except yaml.YAMLError:
        return None
    if not isinstance(doc, Mapping):
        return None
    members, quorums, epoch = doc.get("members"), doc.get("quorums"), doc.get("epoch", 0)
    if not isinstance(members, list) or not members or not isinstance(epoch, int):
        return None
    if quorums is not None and not isinstance(quorums, Mapping):
        return None
    incarnation = doc.get("incarnation")
    incarnation = incarnation if isinstance(incarnation, str) else None
    return Topology(len(members), dict(quorums or {"preset": "paxos"}), epoch, incarnation)


def canonical(quorums: Mapping[str, Any] | None) -> str:
    return canonical_quorums(quorums)


def document(cm: Mapping[str, Any] | None) -> dict | None:
    """The members' cluster document a ConfigMap holds (None: none or unreadable)."""
    text = ((cm or {}).get("data") or {}).get(names.CONFIG_FILE)
    try:
        doc = yaml.safe_load(text) if isinstance(text, str) else None
    except yaml.YAMLError:
        return None
    return doc if isinstance(doc, dict) else None


def from_statefulset(sts: Mapping[str, Any] | None) -> Topology | None:
    if not sts:
        return None
    ann = (sts.get("metadata") or {}).get("annotations") or {}
    try:
        members = int(ann[ANNOTATION_MEMBERS])
        quorums = json.loads(ann[ANNOTATION_QUORUMS])
        epoch = int(ann.get(ANNOTATION_EPOCH, "0"))
    except (KeyError, ValueError, TypeError):
        return None
    if not isinstance(quorums, dict) or members < 1:
        return None
    return Topology(members, quorums, epoch, ann.get(ANNOTATION_INCARNATION))


def running(cm: Mapping[str, Any] | None, sts: Mapping[str, Any] | None) -> Topology | None:
    """The StatefulSet's record wins when both exist: it is what the pods were created from."""
    return from_statefulset(sts) or from_config_map(cm)
