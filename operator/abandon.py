"""Abandoning a transition that the user reverted before its new epoch reached any member.

A spec edit during a transition is queued (the transition finishes, then the next one runs
from the live configuration to the new spec, epoch E+2). One case is different: a transition
still at step ``publish`` whose new epoch E+1 exists nowhere but in the operator's record and
in a document no member has loaded yet — typically a scale-up whose new pods never start (an
image that cannot be pulled, a pod that cannot be scheduled, a claim that stays Pending). Going
forward is impossible and going back is safe, because nothing of E+1 can have been decided:

- every pod of a new member has never started its container (no member process ever held the
  new configuration); and
- every member of epoch E answers ``GET /v1/cluster`` with E as its only live epoch, from a
  container started before the transition began (members read their configuration when they
  start, so none of them can hold E+1 on disk).

Then, when the spec's members and quorums are back to E's, the operator abandons: the record
is marked, the children are rendered from E again (the new pods go; the pod template returns
to E's revision, so the old members are not restarted) and, for ``watch`` seconds (longer than
the kubelet takes to refresh a mounted ConfigMap), the old members are watched. A member that
restarted from a not yet refreshed copy of the E+1 document shows E+1: the operator then goes
forward with the transition instead (always safe) and says so. After the watch the record is
removed and E+1 is free for the next change. In every other case a revert is queued.

This module is the pure part: what the pods and members say, and the verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from graven.node.protocol import reconfig as rc

from . import reconfigure

KEY = "abandoned"  # record ConfigMap key: when the abandon began (RFC 3339), while it runs
WATCH = 150.0  # seconds: the kubelet's sync period (1 min) plus its ConfigMap cache, with margin
# container waiting reasons that do not go away by themselves
STUCK_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}


def _containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((pod.get("status") or {}).get("containerStatuses") or [])


def never_ran(pod: Mapping[str, Any] | None) -> bool:
    """No container of this pod was ever started (absent pods never ran either)."""
    if pod is None:
        return True
    for c in _containers(pod):
        state, last = c.get("state") or {}, c.get("lastState") or {}
        if (
            int(c.get("restartCount") or 0) > 0
            or "running" in state
            or "terminated" in state
            or "terminated" in last
            or c.get("started")
        ):
            return False
    return True


def started_at(pod: Mapping[str, Any] | None) -> str | None:
    """When the running container of this pod started (None: not running)."""
    for c in _containers(pod or {}):
        running = (c.get("state") or {}).get("running")
        if running and running.get("startedAt"):
            return str(running["startedAt"])
    return None


def blocker(pod: Mapping[str, Any] | None) -> str | None:
    """Why this pod cannot start by itself (None: it may still start)."""
    if pod is None:
        return None
    st = pod.get("status") or {}
    for cond in st.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"not scheduled: {cond.get('reason', '')}: {cond.get('message', '')}".strip()
    for c in _containers(pod):
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING:
            return f"{waiting['reason']}: {waiting.get('message', '')}".strip(": ")
    return None


@dataclass(frozen=True)
class Verdict:
    reverted: bool  # the spec's members and quorums are those of the old epoch again
    why_not: str | None = None  # reverted but not abandonable: why (None: abandon)

    @property
    def abandon(self) -> bool:
        return self.reverted and self.why_not is None


def verdict(
    t: reconfigure.Transition,
    reverted: bool,
    pods: Mapping[str, Mapping[str, Any]],
    live_epochs: Mapping[str, Sequence[int] | None],
) -> Verdict:
    """May ``t`` be abandoned? ``pods``: the cluster's pods by name (= member name);
    ``live_epochs``: what each old member answered (None: no answer)."""
    if not reverted:
        return Verdict(False)
    if t.record.step != rc.PUBLISH:
        return Verdict(True, f"it is past the publish step (at {t.record.step})")
    old = [m.name for m in t.old.members]
    for name in (m.name for m in t.target.members):
        if name not in old and not never_ran(pods.get(name)):
            return Verdict(True, f"the new member {name} has run with epoch {t.target.epoch}")
    for name in old:
        epochs = live_epochs.get(name)
        if epochs is None:
            return Verdict(True, f"{name} does not answer (it may hold epoch {t.target.epoch})")
        if list(epochs) != [t.old.epoch]:
            return Verdict(True, f"{name} serves epochs {list(epochs)}")
        since = started_at(pods.get(name))
        # second resolution on both sides: a start in the same second counts as after
        if since is None or t.start_time is None or not since < t.start_time:
            return Verdict(True, f"{name} (re)started after the transition began")
    return Verdict(True)
