"""Exhaustive small scope with one reconfiguration: every interleaving of proposals with the
steps of the real orchestrator (``protocol.reconfig``) moving the cluster to a new epoch.

The scope of ``explore.py`` (one key, acceptors of the layout, nodes running the proposer
runtime) plus: the orchestrator moves the cluster from epoch 0 to epoch 1 (same members, the
target's layout). Its publishes are at once (the configuration master is durable and local);
everything else it asks is in flight, delivered in any order or never: the fence on each
member, the listing of a member's keys, each carry-over, which a carrier node (the last
member) runs as a proposal on the live view it then reads from the master. Every node may
adopt the master's current live view once it has nothing in flight (``wide``: at any moment,
dropping what it had in flight); it then runs a new runtime and asks again, as a node that
learns a newer epoch does. Node 0 asks for A once, from the start, in epoch 0 (it owns the
key's first set); node 1 asks for B once the reconfiguration is over. ``wide`` (the slow
scope): node 0 asks again on every newer view until it has an answer, and node 1 as soon as
it runs the transition's view, so its proposal meets the old epoch's while both are live.

In every state: at most one value chosen by the registers across both epochs (each set judged
by its own epoch's quorums), every output (carry-overs included) some node's input and the
chosen one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..protocol import acceptor as acc
from ..protocol import reconfig as rc
from ..protocol.effects import DECIDED, Done
from ..protocol.epochs import Epoch, View, view
from ..protocol.layout import epoch_of
from ..protocol.presets import build
from .explore import (
    ExploreResult,
    Node,
    State,
    can_tick,
    check,
    clone_node,
    deliver,
    drain,
    fingerprint,
    message_items,
    new_runtime,
    propose,
    record_output,
    search,
    tick,
)
from .plants import Plant
from .plants import plant as make_plant

INPUTS = ("A", "B")
KEY = "k0"  # node 0 owns its first set in both epochs: it decides in one round trip


@dataclass
class EpochState(State):
    live: tuple[Epoch, ...] = ()  # at the configuration master
    views: list[tuple[int, ...]] = field(default_factory=list)  # epochs each node runs
    begun: list[bool] = field(default_factory=list)  # has the node's client asked yet
    orch: rc.Orchestrator | None = None  # None once finished


class _Scope:
    def __init__(self, plant: Plant, epochs: dict[int, Epoch], wide: bool, anytime: bool):
        self.plant = plant
        self.epochs = epochs
        self.wide = wide
        self.anytime = anytime
        self.carrier = 2  # the node that runs carry-overs (member m2)

    # -- the host of the orchestrator ---------------------------------------------------------

    def run(self, state: EpochState, actions: list[rc.Action]) -> None:
        queue = list(actions)
        for _ in range(1000):  # a bound only
            if not queue:
                return
            action = queue.pop(0)
            if isinstance(action, rc.Publish):
                state.live = action.epochs
                assert state.orch is not None
                queue.extend(state.orch.on_published(action.epochs))
            elif isinstance(action, rc.Fence):
                state.in_flight.append(("fence", action.member, action.rs))
            elif isinstance(action, rc.ListKeys):
                state.in_flight.append(("list", action.member, action.below))
            elif isinstance(action, rc.Carry):
                state.in_flight.append(("carry", action.key, action.value))
            elif isinstance(action, rc.Finished):
                state.orch = None
                return
        raise AssertionError("the orchestrator kept producing actions")

    def on_done(self, state: State, p: int, done: Done) -> None:
        assert isinstance(state, EpochState)
        record_output(state, p, done)
        if p == self.carrier and state.orch is not None:
            orch = state.orch
            if done.outcome.status == DECIDED:
                self.run(state, orch.on_carried(KEY))
            else:
                self.run(state, orch.on_carry_failed(KEY, done.outcome.status))

    # -- nodes --------------------------------------------------------------------------------

    def live_view(self, epochs: tuple[Epoch, ...]) -> View:
        return self.plant.live_view(view(epochs))

    def adopt(self, state: EpochState, p: int) -> None:
        """Node ``p`` runs the master's live view from now on (its old runtime is gone)."""
        node = state.nodes[p]
        live = self.live_view(state.live)
        node.rt = new_runtime(self.plant.runtime, live.layout, p, node)
        node.gen += 1
        node.now = 0.0
        node.tid = 0
        state.views[p] = tuple(e.number for e in state.live)
        if p == self.carrier:
            return
        if not state.begun[p]:
            state.begun[p] = True
        if p not in state.outputs:
            propose(state, p, node.input, key=KEY)
            drain(state, p, self.on_done)

    def _may_adopt(self, state: EpochState, p: int) -> bool:
        """A node adopts a newer view when it has nothing in flight (in the wide scope: at any
        moment); node 1's client arrives during the transition (wide) or after it."""
        if p == self.carrier or not self._stale_view(state, p):
            return False  # the carrier reads the live view when a carry-over reaches it
        if not self.wide and (p == 0 or (p == 1 and state.orch is not None)):
            return False  # node 0's client asked once; node 1's comes after the transition
        return self.wide or not state.nodes[p].rt._requests

    def _stale_view(self, state: EpochState, p: int) -> bool:
        return state.views[p] != tuple(e.number for e in state.live)

    # -- transitions --------------------------------------------------------------------------

    def successors(self, state: EpochState) -> list[EpochState]:
        out = []
        for i in message_items(state):
            nxt = clone(state)
            deliver(nxt, i, self.on_done)
            out.append(nxt)
        seen = set()
        for i, item in enumerate(state.in_flight):
            if item[0] in ("req", "rep") or item in seen:
                continue
            seen.add(item)
            nxt = clone(state)
            nxt.in_flight.pop(i)
            self._deliver_own(nxt, item)
            out.append(nxt)
        for p, node in enumerate(state.nodes):
            if self._may_adopt(state, p):
                nxt = clone(state)
                self.adopt(nxt, p)
                out.append(nxt)
            if can_tick(node, self.anytime):
                nxt = clone(state)
                tick(nxt, p, self.on_done)
                out.append(nxt)
        if state.orch is not None and state.orch._failed:
            nxt = clone(state)
            assert nxt.orch is not None
            self.run(nxt, nxt.orch.retry())
            out.append(nxt)
        return out

    def _deliver_own(self, state: EpochState, item: tuple) -> None:
        orch = state.orch
        if orch is None:
            return  # finished: a late answer changes nothing
        kind = item[0]
        if kind == "fence":
            _, member, rs = item
            i = int(member.removeprefix("m"))
            state.fences[i] = max(state.fences[i], rs)
            self.run(state, orch.on_fenced(member))
        elif kind == "list":
            _, member, below = item
            a = state.acceptors[int(member.removeprefix("m"))]
            values = {rs: v for rs, v in a.values.items() if rs < below}
            self.run(state, orch.on_keys(member, {KEY: values} if values else {}, None))
        elif kind == "carry":
            _, key, value = item
            c = self.carrier
            if self._stale_view(state, c) and not state.nodes[c].rt._requests:
                self.adopt(state, c)
            propose(state, c, value, carry=True, key=key)
            drain(state, c, self.on_done)

    # -- identity and safety ------------------------------------------------------------------

    def fingerprint(self, state: EpochState) -> tuple:
        return (
            fingerprint(state, False),
            tuple(e.number for e in state.live),
            tuple(state.views),
            tuple(state.begun),
            _orch_print(state.orch),
        )

    def problem(self, state: EpochState) -> str | None:
        return check(lambda rs: self.epochs[epoch_of(rs)].layout, state, set(INPUTS), {})


def _orch_print(orch: rc.Orchestrator | None) -> tuple | None:
    if orch is None:
        return None
    r, c = orch.record, orch._carry
    return (
        r.step,
        r.fenced,
        r.carried,
        r.carried_upto,
        tuple(sorted(orch._fenced)),
        tuple(sorted((m, repr(v)) for m, v in c.listing.items())),
        tuple(sorted(c.keys.items())),
        tuple(c.queue),
        tuple(sorted(c.batch)),
        tuple(orch._failed),
    )


def _clone_orch(orch: rc.Orchestrator | None) -> rc.Orchestrator | None:
    if orch is None:
        return None
    twin = copy.copy(orch)
    twin._out = []
    twin._fenced = set(orch._fenced)
    twin._failed = list(orch._failed)
    c = orch._carry
    twin._carry = rc._Carrying(dict(c.listing), dict(c.keys), list(c.queue), set(c.batch))
    twin._carry.batch_last = c.batch_last
    return twin


def clone(state: EpochState) -> EpochState:
    return EpochState(
        [a.copy() for a in state.acceptors],
        [clone_node(n) for n in state.nodes],
        list(state.fences),
        list(state.in_flight),
        dict(state.outputs),
        state.live,
        list(state.views),
        list(state.begun),
        _clone_orch(state.orch),
    )


def explore_epochs(
    start: dict | None = None,
    target: dict | None = None,
    members: int = 3,
    ticks: tuple[int, int, int] = (0, 0, 1),
    wide: bool = False,
    anytime: bool = True,
    plant: str | None = None,
    max_states: int = 2_000_000,
) -> ExploreResult:
    """Every reachable state of nodes 0 and 1 (inputs A and B) and the carrier (node 2) while
    the orchestrator moves ``members`` members from layout ``start`` (epoch 0) to ``target``
    (epoch 1); node i fires a timer at most ``ticks[i]`` times. ``plant``: a bug of the
    simulator (``plants.py``: runtime, live view or orchestrator)."""
    if members < 3:
        raise ValueError("the scope needs 3 members: two proposing nodes and the carrier")
    names = tuple(f"m{i}" for i in range(members))
    old = Epoch(0, names, build(start or {"preset": "paxos"}, members, 0))
    new = Epoch(1, names, build(target or {"preset": "paxos"}, members, 1))
    if rc.refusal((old,), new) is not None:
        raise ValueError(f"the orchestrator refuses this step: {rc.refusal((old,), new)}")
    scope = _Scope(make_plant(plant), {0: old, 1: new}, wide, anytime)
    state = EpochState(
        [acc.KeyState() for _ in range(members)],
        [],
        [0] * members,
        live=(old,),
        views=[(0,)] * 3,
        begun=[True, False, False],
    )
    layout = scope.live_view((old,)).layout
    inputs = (*INPUTS, "")
    for p in range(3):
        node = Node(new_runtime(scope.plant.runtime, layout, p), inputs[p], ticks[p])
        state.nodes.append(node)
    for p in range(2):
        if state.begun[p]:
            propose(state, p, inputs[p], key=KEY)
            drain(state, p, scope.on_done)
    state.orch = scope.plant.orchestrator((old,), new, batch=1)
    scope.run(state, state.orch.start())
    return search(state, scope.successors, scope.problem, scope.fingerprint, max_states)
