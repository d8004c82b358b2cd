"""Live reconfiguration on Kubernetes: the operator as configuration master (pure parts).

The steps themselves (publish, fence, carry-over, retire) are ``node.protocol.reconfig``'s,
carried out by ``node.cluster.transition.Driver`` exactly as ``graven up`` does; this module
only says what Kubernetes holds while they run:

- the master's record lives in the ConfigMap ``NAME-reconfiguration`` (owned by the cluster):
  key ``state`` is what the Driver saves ({record, old, target}), ``startTime`` when it began.
  It is written before any member is told anything, so a killed operator resumes from it;
- the members' document (``NAME-config``) follows the record, never the spec: both epochs
  while the old one is live (steps publish, fence, carry), the new one alone from retirement
  on. The reconcile and the Driver's publish render the same document from the record, so
  neither can undo the other;
- the StatefulSet runs every member of a live epoch (member ``i`` is pod ordinal ``i``: going
  down removes the highest ordinals, which the target's member names match). Its topology
  annotations keep naming the OLD epoch until retirement: if the record were lost, the
  operator would redo the same transition (every step is idempotent) instead of serving the
  new epoch alone before the keys were carried over.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from graven.node.cluster.config import ClusterConfig, ConfigError, dump, parse
from graven.node.cluster.spec import ClusterSpec
from graven.node.cluster.transition import Driver, ReconfigureError, document
from graven.node.protocol import reconfig as rc

from . import names, render, topology

STATE_KEY = "state"
START_KEY = "startTime"
ABANDONED_KEY = "abandoned"  # set while a reverted transition is abandoned (operator/abandon.py)


@dataclass(frozen=True)
class Transition:
    """An unfinished transition, as the record ConfigMap holds it."""

    record: rc.Record
    old: ClusterConfig
    target: ClusterConfig
    start_time: str | None = None
    abandoned: str | None = None  # when the abandon began: the old epoch alone is rendered

    @property
    def retiring(self) -> bool:
        """Carry-over complete: only the new epoch is live from now on."""
        return self.record.step in (rc.RETIRE, rc.DONE)

    def served(self) -> dict:
        """The cluster document the members must serve at this step."""
        if self.retiring:
            return document(self.old, self.target, (_epoch(self.target),))
        return document(self.old, self.target, (_epoch(self.old), _epoch(self.target)))

    @property
    def replicas(self) -> int:
        """Pods to run: every member of a live epoch (names are ordinals)."""
        if self.abandoned:
            return len(self.old.members)
        if self.retiring:
            return len(self.target.members)
        return max(len(self.old.members), len(self.target.members))

    @property
    def anchor(self) -> ClusterConfig:
        """The configuration the StatefulSet's topology annotations name (see the module)."""
        return self.target if self.retiring else self.old


def _epoch(cfg: ClusterConfig) -> Any:
    from graven.node.protocol.epochs import Epoch

    return Epoch(cfg.epoch, tuple(m.name for m in cfg.members), cfg.layout)


def record_config_map(
    name: str, namespace: str, state: Mapping[str, Any], start: str | None
) -> dict:
    data = {STATE_KEY: json.dumps(dict(state), sort_keys=True)}
    if start is not None:
        data[START_KEY] = start
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.record_config_map(name),
            "namespace": namespace,
            "labels": render.labels(name, "reconfiguration"),
        },
        "data": data,
    }


def load(cm: Mapping[str, Any] | None) -> Transition | None:
    """The unfinished transition the record ConfigMap holds (None: none, or finished)."""
    state = state_of(cm)
    if state is None:
        return None
    record = rc.Record.from_dict(state["record"])
    if record.step == rc.DONE:
        return None
    data = (cm or {}).get("data") or {}
    return Transition(
        record,
        parse(state["old"]),
        parse(state["target"]),
        data.get(START_KEY),
        data.get(ABANDONED_KEY) or None,
    )


def state_of(cm: Mapping[str, Any] | None) -> dict | None:
    text = ((cm or {}).get("data") or {}).get(STATE_KEY)
    if not isinstance(text, str):
        return None
    try:
        state = json.loads(text)
    except ValueError:
        return None
    return state if isinstance(state, dict) and "record" in state else None


def config_for(
    name: str, namespace: str, spec: ClusterSpec, epoch: int, incarnation: str | None
) -> ClusterConfig:
    return parse(render.cluster_config(name, namespace, spec, epoch, incarnation))


def running_config(
    name: str,
    namespace: str,
    spec: ClusterSpec,
    running: topology.Topology,
    incarnation: str | None,
) -> ClusterConfig:
    """The configuration the members run now (from the StatefulSet's record of it)."""
    shaped = dataclasses.replace(spec, replicas=running.members, quorums=dict(running.quorums))
    return config_for(name, namespace, shaped, running.epoch, incarnation)


def same_shape(a: ClusterConfig, b: ClusterConfig) -> bool:
    """Same members and layout: nothing to reconfigure (URLs and limits need no epoch)."""
    return [m.name for m in a.members] == [m.name for m in b.members] and dict(
        a.layout.to_spec()
    ) == dict(b.layout.to_spec())


class _Nowhere:
    def load(self) -> None:
        return None

    def save(self, state: Mapping[str, Any]) -> None:  # pragma: no cover - never called
        raise AssertionError("only checking")


def refusal(old: ClusterConfig, target: ClusterConfig) -> str | None:
    """Why this transition cannot start safely (the orchestrator's own check)."""
    try:
        Driver(_Nowhere(), old, target, lambda doc: None)
    except ReconfigureError as exc:
        return str(exc)
    return None


def initial_state(old: ClusterConfig, target: ClusterConfig) -> dict:
    """What the master records before anything else happens (step publish)."""
    record = rc.Record(old.epoch, target.epoch)
    return {"record": record.to_dict(), "old": dump(old), "target": dump(target)}


def served_live_epochs(doc: Mapping[str, Any]) -> list[int]:
    return [p["epoch"] for p in doc.get("previous", ())] + [doc["epoch"]]


def members_of(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, url) of every member of a live epoch of ``doc``."""
    try:
        cfg = parse(doc)
    except ConfigError:
        return []
    return [(m.name, m.url) for m in cfg.live_members()]


def document_text(doc: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False)


def status_of(t: Transition, last_error: str | None = None) -> dict[str, Any]:
    """``status.reconfiguration`` of an unfinished transition."""
    r = t.record
    out: dict[str, Any] = {
        "fromEpoch": r.from_epoch,
        "toEpoch": r.to_epoch,
        "step": "abandon" if t.abandoned else r.step,
        "keysCarried": r.carried,
        "members": f"{len(t.old.members)} -> {len(t.target.members)}",
    }
    if r.step == rc.CARRY and r.total:
        out["keysTotal"] = r.total
    if t.start_time:
        out["startTime"] = t.start_time
    error = last_error or r.last_error
    if error:
        out["lastError"] = error[:2000]
    return out


STEP_TEXT = {
    rc.PUBLISH: "publishing epoch {to} to every member (both epochs live)",
    rc.FENCE: "fencing epoch {frm}: no old register set may decide anything new",
    rc.CARRY: "carrying every key of epoch {frm} over into epoch {to}",
    rc.RETIRE: "retiring epoch {frm}: only epoch {to} stays live",
    rc.DONE: "epoch {to} runs alone; the transition from epoch {frm} is complete",
}


def step_message(record: rc.Record) -> str:
    return STEP_TEXT[record.step].format(frm=record.from_epoch, to=record.to_epoch)


def served(t: Transition) -> render.Served:
    anchor = t.anchor
    return render.Served(
        text=document_text(t.served()),
        replicas=t.replicas,
        members=len(anchor.members),
        quorums=dict(anchor.layout.to_spec()),
        epoch=anchor.epoch,
    )
