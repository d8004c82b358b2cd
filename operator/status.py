"""The ConsensusCluster status: conditions, phase and per-member readiness (pure).

Two kinds of facts meet here. A reconcile *outcome* (LayoutValid, and a Progressing verdict
such as "reconfiguration refused") is sticky: it holds until the next reconcile. *Observed*
health (Available, Degraded, members, the rollout) is recomputed on every refresh. One builder
merges both so that concurrent writers cannot disagree about the phase.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import health
from .health import MemberHealth
from .layout import LayoutVerdict
from .topology import Topology

READY = "Ready"  # the summary `kubectl wait --for=condition=Ready` and GitOps tools read
AVAILABLE = "Available"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
LAYOUT_VALID = "LayoutValid"
CONDITION_ORDER = (READY, AVAILABLE, PROGRESSING, DEGRADED, LAYOUT_VALID)
# The CRD's status schema caps condition messages (as metav1.Condition does); a longer one
# makes the apiserver refuse the whole status write.
MAX_MESSAGE = 32768

PENDING, READY, DEGRADED_PHASE, RECONFIGURING, FAILED = (
    "Pending",
    "Ready",
    "Degraded",
    "Reconfiguring",  # a reconfiguration (members or quorums) is under way
    "Failed",
)

# Progressing reasons set by a reconcile; they stay until the next reconcile replaces them.
# A reconfiguration that cannot be done safely now (the rest of the spec is applied).
REFUSED = "ReconfigurationRefused"
RECONFIGURING = "Reconfiguring"
# The record of a transition cannot be read: nothing is applied until it is restored.
RECORD_INVALID = "ReconfigurationRecordInvalid"
LAYOUT_REJECTED = "LayoutRejected"
PAUSED = "Paused"
INVALID_SPEC = "InvalidSpec"
APPLY_FAILED = "ApplyFailed"
IMMUTABLE_CHANGED = "ImmutableFieldChanged"
# Volumes of a deleted cluster of the same name wait to be adopted or wiped (identity.py).
RETAINED_VOLUMES = "RetainedVolumes"
# The running members are another incarnation than the cluster now names (adoption changed).
INCARNATION_MISMATCH = "IncarnationMismatch"
# spec.security.certManager without cert-manager's Certificate API (nothing is applied).
CERT_MANAGER_MISSING = "CertManagerMissing"
# A running cluster switched between the operator's CA and cert-manager (nothing is applied).
CERT_MANAGER_SWITCH = "CertificateSourceChanged"
STICKY = {
    REFUSED,
    RECORD_INVALID,
    LAYOUT_REJECTED,
    PAUSED,
    INVALID_SPEC,
    APPLY_FAILED,
    IMMUTABLE_CHANGED,
    RETAINED_VOLUMES,
    INCARNATION_MISMATCH,
    CERT_MANAGER_MISSING,
    CERT_MANAGER_SWITCH,
}
# Refusals that keep a cluster from being deployed at all: phase Failed.
NOT_DEPLOYABLE = {INVALID_SPEC, RETAINED_VOLUMES, INCARNATION_MISMATCH, CERT_MANAGER_MISSING}

QUORUM_READY = "QuorumReady"
QUORUM_NOT_READY = "QuorumNotReady"
QUORUM_LOST = "QuorumLost"
NOT_DEPLOYED = "NotDeployed"
CLUSTER_READY = "ClusterReady"


@dataclass(frozen=True)
class Cond:
    status: bool | None  # None: Unknown
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """What one reconcile decided about the spec at ``generation``."""

    generation: int
    layout_valid: Cond
    progressing: Cond | None = None  # None: follow the StatefulSet rollout


@dataclass(frozen=True)
class Observed:
    """What a refresh saw in the cluster."""

    spec_replicas: int
    spec_layout: str
    running: Topology | None = None
    verdict: LayoutVerdict | None = None  # of the running layout
    members: list[MemberHealth] = field(default_factory=list)
    statefulset: Mapping[str, Any] | None = None
    # status.reconfiguration of a transition under way (None: none)
    reconfiguration: Mapping[str, Any] | None = None
    selector: str = ""


def _status_text(value: bool | None) -> str:
    return "Unknown" if value is None else ("True" if value else "False")


def find(conditions: list[Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    if len(message) <= limit:
        return message
    cut = f"... ({len(message) - limit + 40} more characters)"
    return message[: limit - len(cut)] + cut


def set_condition(
    conditions: list[dict[str, Any]], kind: str, cond: Cond, generation: int, now: str
) -> list[dict[str, Any]]:
    """Replace one condition; lastTransitionTime moves only when the status flips."""
    old = find(conditions, kind)
    status = _status_text(cond.status)
    since = old["lastTransitionTime"] if old and old.get("status") == status else now
    new = {
        "type": kind,
        "status": status,
        "reason": cond.reason,
        "message": bounded(cond.message),
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }
    rest = [c for c in conditions if c.get("type") != kind]
    merged = [*rest, new]
    order = {k: i for i, k in enumerate(CONDITION_ORDER)}
    return sorted(merged, key=lambda c: order.get(c.get("type", ""), len(order)))


def rollout(sts: Mapping[str, Any] | None) -> Cond:
    if sts is None:
        return Cond(False, NOT_DEPLOYED, "no StatefulSet yet")
    want = (sts.get("spec") or {}).get("replicas", 0)
    st = sts.get("status")
    if not st:
        return Cond(True, "RollingOut", "waiting for the StatefulSet controller to report")
    generation = (sts.get("metadata") or {}).get("generation", 0)
    updated = st.get("updatedReplicas", 0)
    current, update = st.get("currentRevision"), st.get("updateRevision")
    if st.get("observedGeneration", 0) < generation:
        return Cond(True, "RollingOut", "the StatefulSet controller has not seen the change")
    if updated < want or (current and update and current != update):
        return Cond(True, "RollingUpdate", f"{updated}/{want} members run the current template")
    return Cond(False, "UpToDate", f"all {want} members run the current template")


def _member_list(members: list[MemberHealth]) -> str:
    return ", ".join(f"{m.name} ({m.reason}{': ' + m.detail if m.detail else ''})" for m in members)


def _health(
    prev: list[Mapping[str, Any]], obs: Observed
) -> tuple[Cond, Cond, int, int]:  # (available, degraded, ready, total)
    if obs.running is None or obs.verdict is None or obs.verdict.config is None:
        none = Cond(False, NOT_DEPLOYED, "no member has been deployed")
        return none, none, 0, obs.spec_replicas
    members = obs.members
    ready = [m for m in members if m.ready]
    down = [m for m in members if not m.ready]
    ok = health.available(obs.verdict.config, members)
    previous = find(prev, AVAILABLE)
    was_up = bool(
        previous and (previous.get("status") == "True" or previous.get("reason") == QUORUM_LOST)
    )
    names_ready = "{" + ", ".join(m.name for m in ready) + "}"
    if ok:
        available = Cond(
            True, QUORUM_READY, f"ready members {names_ready} hold a phase-1 and a phase-2 quorum"
        )
    else:
        available = Cond(
            False,
            QUORUM_LOST if was_up else QUORUM_NOT_READY,
            f"ready members {names_ready} hold no phase-1 and phase-2 quorum of "
            f"{obs.verdict.summary}; not ready: {_member_list(down)}",
        )
    tolerates = obs.verdict.tolerates or 0
    if not ok and was_up:
        degraded = Cond(True, QUORUM_LOST, "quorum lost: the cluster cannot decide")
    elif down and ok:
        margin = max(0, tolerates - len(down))
        degraded = Cond(
            True,
            "MembersNotReady",
            f"{len(down)} of {len(members)} members not ready: {_member_list(down)}; "
            f"{margin} more failure(s) tolerated",
        )
    elif down:
        degraded = Cond(False, "Starting", f"waiting for members: {_member_list(down)}")
    else:
        degraded = Cond(False, "AllMembersReady", f"all {len(members)} members are ready")
    return available, degraded, len(ready), len(members)


def _ready(conditions: list[Mapping[str, Any]]) -> Cond:
    """True only when the current spec runs and every member is ready with a quorum: what
    "done" means to `kubectl wait` after an apply. Otherwise the first reason it is not."""
    progressing = find(conditions, PROGRESSING) or {}
    if progressing.get("status") == "False" and progressing.get("reason") in STICKY:
        return Cond(False, progressing["reason"], progressing.get("message", ""))
    available = find(conditions, AVAILABLE) or {}
    if available.get("status") != "True":
        return Cond(False, available.get("reason", NOT_DEPLOYED), available.get("message", ""))
    degraded = find(conditions, DEGRADED) or {}
    if degraded.get("status") == "True":
        return Cond(False, degraded.get("reason", ""), degraded.get("message", ""))
    if progressing.get("status") == "True":
        return Cond(False, progressing.get("reason", ""), progressing.get("message", ""))
    return Cond(True, CLUSTER_READY, "the current spec runs and every member is ready")


def _phase(conditions: list[Mapping[str, Any]], deployed: bool) -> str:
    def is_(kind: str, status: str) -> bool:
        c = find(conditions, kind)
        return bool(c and c.get("status") == status)

    progressing = find(conditions, PROGRESSING) or {}
    if not deployed:
        if is_(LAYOUT_VALID, "False") or progressing.get("reason") in NOT_DEPLOYABLE:
            return FAILED
        return PENDING
    if is_(AVAILABLE, "True"):
        return DEGRADED_PHASE if is_(DEGRADED, "True") else READY
    available = find(conditions, AVAILABLE) or {}
    return DEGRADED_PHASE if available.get("reason") == QUORUM_LOST else PENDING


def build(
    prev: Mapping[str, Any] | None, obs: Observed, outcome: Outcome | None, now: str
) -> dict[str, Any]:
    prev = dict(prev or {})
    conditions: list[dict[str, Any]] = [dict(c) for c in prev.get("conditions") or []]
    generation = int(prev.get("observedGeneration") or 0)
    if outcome is not None:
        generation = outcome.generation
        conditions = set_condition(conditions, LAYOUT_VALID, outcome.layout_valid, generation, now)
    progressing = find(conditions, PROGRESSING)
    if obs.reconfiguration is not None:
        rec = obs.reconfiguration
        text = (
            f"reconfiguring from epoch {rec['fromEpoch']} to {rec['toEpoch']}: step "
            f"{rec['step']}, {rec['keysCarried']} key(s) carried"
            + (f" of {rec['keysTotal']}" if "keysTotal" in rec else "")
            + (f"; last error: {rec['lastError']}" if rec.get("lastError") else "")
        )
        cond = Cond(True, RECONFIGURING, text)
        conditions = set_condition(conditions, PROGRESSING, cond, generation, now)
    elif outcome is not None and outcome.progressing is not None:
        conditions = set_condition(conditions, PROGRESSING, outcome.progressing, generation, now)
    elif outcome is not None or progressing is None or progressing.get("reason") not in STICKY:
        derived = rollout(obs.statefulset)
        conditions = set_condition(conditions, PROGRESSING, derived, generation, now)

    available, degraded, ready, total = _health(conditions, obs)
    conditions = set_condition(conditions, AVAILABLE, available, generation, now)
    conditions = set_condition(conditions, DEGRADED, degraded, generation, now)
    conditions = set_condition(conditions, READY, _ready(conditions), generation, now)

    phase = _phase(conditions, obs.running is not None)
    if obs.reconfiguration is not None:
        phase = RECONFIGURING
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "replicas": total,
        "readyReplicas": ready,
        "readyMembers": f"{ready}/{total}",
        "layout": obs.verdict.summary if obs.verdict else obs.spec_layout,
        "members": [m.to_status() for m in obs.members],
        "conditions": conditions,
    }
    if obs.running is not None:
        status["epoch"] = obs.running.epoch
    if obs.reconfiguration is not None:
        status["reconfiguration"] = dict(obs.reconfiguration)
    if obs.selector:
        status["selector"] = obs.selector  # the scale subresource's labelSelectorPath
    if obs.verdict is not None and obs.verdict.tolerates is not None:
        status["tolerates"] = obs.verdict.tolerates
        status["layoutDetail"] = list(obs.verdict.detail)
        if obs.verdict.fast_path_tolerates is not None:
            status["fastPathTolerates"] = obs.verdict.fast_path_tolerates
    return status
