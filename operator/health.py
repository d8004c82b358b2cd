"""Member readiness and quorum math: is the running cluster able to decide right now?

Pure functions over pod objects (and optional direct probe results). A member counts as ready
only if its pod is Ready, not terminating, and — when the operator probes members itself —
its /readyz answered. "Available" is quorum math, not a head count: the ready members must
contain a phase-1 AND a phase-2 quorum of the configuration's last (infinite) segment, the
one every proposal can fall back to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import names

if TYPE_CHECKING:
    from graven.node.protocol.layout import Layout


@dataclass(frozen=True)
class MemberHealth:
    name: str
    index: int
    ready: bool
    reason: str  # Ready | PodMissing | NotReady | Terminating | ProbeFailed | StartRefused
    pod_ip: str | None = None
    detail: str | None = None  # StartRefused: the member's one-line reason

    def to_status(self) -> dict[str, Any]:
        return {"name": self.name, "index": self.index, "ready": self.ready, "reason": self.reason}


# `graven node` exits with this status, and says why in a line with this prefix, when its data
# belongs to another cluster incarnation or has served a newer configuration (cli_node.py).
REFUSED_EXIT = 3
REFUSED_PREFIX = "graven node: refused: "
MAX_DETAIL = 400


def start_refusal(pod: Mapping[str, Any]) -> str | None:
    """The member's refusal line if its container last exited refusing its data."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        for state in (status.get("state"), status.get("lastState")):
            ended = (state or {}).get("terminated") or {}
            if ended.get("exitCode") != REFUSED_EXIT:
                continue
            lines = str(ended.get("message") or "").splitlines()
            said = [ln for ln in lines if ln.startswith(REFUSED_PREFIX)]
            text = said[-1].removeprefix(REFUSED_PREFIX) if said else "see the member's log"
            return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def members(
    name: str,
    replicas: int,
    pods: list[Mapping[str, Any]],
    probes: Mapping[str, bool] | None = None,
) -> list[MemberHealth]:
    """Health of members 0..replicas-1 (member index = StatefulSet pod ordinal)."""
    by_name = {p.get("metadata", {}).get("name"): p for p in pods}
    out = []
    for i in range(replicas):
        member = names.member(name, i)
        pod = by_name.get(member)
        if pod is None:
            out.append(MemberHealth(member, i, False, "PodMissing"))
            continue
        ip = (pod.get("status") or {}).get("podIP")
        if pod.get("metadata", {}).get("deletionTimestamp"):
            out.append(MemberHealth(member, i, False, "Terminating", ip))
        elif not pod_ready(pod):
            refused = start_refusal(pod)
            reason = "StartRefused" if refused else "NotReady"
            out.append(MemberHealth(member, i, False, reason, ip, refused))
        elif probes is not None and not probes.get(member, False):
            out.append(MemberHealth(member, i, False, "ProbeFailed", ip))
        else:
            out.append(MemberHealth(member, i, True, "Ready", ip))
    return out


def ready_mask(health: list[MemberHealth]) -> int:
    mask = 0
    for m in health:
        if m.ready:
            mask |= 1 << m.index
    return mask


def available(config: Layout, health: list[MemberHealth]) -> bool:
    last = config.segments[-1]
    mask = ready_mask(health)
    return last.phase1.is_quorum(mask) and last.phase2.is_quorum(mask)
