"""Exhaustive small scope with one reconfiguration: every interleaving of two proposers' messages
with the steps of the real orchestrator (``protocol.reconfig.Orchestrator``, the state machine
that ``cluster.transition.Driver`` runs for ``graven up`` and the operator) moving one key's
cluster from epoch 0 to epoch 1.

The scope, and why it is this small
-----------------------------------
* Shapes (``SHAPES``), as the design note names them: 3 -> 3 members with a new layout
  (``paxos`` -> ``fast``; ``paxos`` -> ``flexible q1=3 q2=1`` with 2 proposer slots) and 3 -> 4
  members with one new member (``paxos`` on both sides). One key, chosen so that node 0 owns
  the key's first set of epoch 0 (it decides in one round trip) and, where the slots allow,
  node 1 owns the first set of epoch 1 (so a phase-1 skip there is possible at all).
* Two proposers, one value each. Node 0 (input A) asks once, in epoch 0, on the old view: it
  writes epoch 0's first set and never retries. Node 1 (input B) is a node of the new epoch:
  its client asks once, at any moment after the publish: while both epochs are live (the
  transition view) or after retirement (the new epoch alone); a request that ends undecided is
  asked again on a newer view. Node 1 also hosts the orchestrator's carry-overs, so its
  client's request and the carry-over queue on one runtime as on a real node (``carrier=2``
  runs them on a third node instead, racing node 1: ``THIRD_CARRIER``).
* The orchestrator's steps are atomic actions: the publishes happen at once (the master is
  durable and local); each fence, key listing and carry-over is one item in flight (request
  and answer together), delivered in any order relative to every proposal message, or never.
  Its crash and resume are not in this scope (the random simulator's: tests/sim/
  test_reconfiguration.py).
* A proposal message and its reply are one step (a round trip): for everyone but the sender a
  reply held back is the same as the sender's next message held back, which is explored.
  Loss needs no transition (a message never delivered stays in flight); ``dups`` messages may
  be delivered twice. When a request ends, what it still had in flight is lost, unless its
  node is in ``late`` (the slow scopes keep them: 3-10x more states). Node 1 fires at most
  ``ticks[1]`` timers, only backoffs a refusal asked for (``anytime``: any timer).
* Acceptors with the same role (in the same epochs, every quorum counting over its epoch's
  members) are interchangeable: states that differ by renaming them are one state.
* The search is depth-first with every state's fingerprint kept (``explore.search``); it takes
  the orchestrator's items first and a client's request last, which reaches the planted bugs'
  counterexamples early without leaving anything out.

Why that is enough for the bugs it targets: each reconfiguration bug of the design note needs a
value chosen in epoch 0 (node 0's A, racing the fence on each member) and a proposal in epoch 1
that either runs while the old epoch is live (ignoring it: ``ignore-older-epochs``; skipping
phase 1 or taking the fast path: ``early-fast-path``) or runs after retirement with A never
carried (``retire-before-carry``; ``fence-missing-quorum``: the fence met too few members, so
the listing missed A). Node 1 asking at any moment after the publish covers both; the clean
runs assert that the search reached each of these situations (``REACHED``). Duels of several
proposers inside one epoch are the plain explorer's scope (``explore.py``) and the random
simulator's.

In every state: at most one value chosen by the registers across both epochs (each set judged by
its own epoch's quorums), every output (carry-overs included) some node's input and the chosen
one; in every step: no written register changes and no nil register gets a value (write-once).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..protocol import acceptor as acc
from ..protocol import reconfig as rc
from ..protocol.effects import DECIDED, Done
from ..protocol.epochs import Epoch, View, view
from ..protocol.layout import Layout, epoch_of
from ..protocol.presets import build
from ..protocol.quorums import Counting
from .explore import (
    ExploreResult,
    Node,
    State,
    can_tick,
    check,
    chosen,
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
# Milestones: a clean run must reach each (else the scope tests less than it claims).
CHOSEN_IN_OLD = "a value chosen in epoch 0"
FENCED_BEFORE_A = "a fence while node 0 still writes"
ASKED_IN_TRANSITION = "node 1 asks while both epochs are live"
ASKED_AFTER = "node 1 asks after retirement"
NODE1_OUTPUT = "node 1 outputs"
CARRIED = "a carry-over decided in epoch 1"
RETIRED = "epoch 0 retired"
REACHED = (
    CHOSEN_IN_OLD,
    FENCED_BEFORE_A,
    ASKED_IN_TRANSITION,
    ASKED_AFTER,
    NODE1_OUTPUT,
    CARRIED,
    RETIRED,
)
PAXOS: Mapping[str, Any] = {"preset": "paxos"}


@dataclass(frozen=True)
class Shape:
    """One reconfiguration: ``old`` members with layout ``start`` -> ``new`` with ``target``."""

    name: str
    start: Mapping[str, Any]
    old: int
    target: Mapping[str, Any]
    new: int
    key: str  # node 0 owns its first set in epoch 0 (crc32 % 3 == 0)


SHAPES = {
    "paxos-fast": Shape("3->3 paxos->fast", PAXOS, 3, {"preset": "fast"}, 3, "k0"),
    # k8: crc32 % 3 == 0, % 2 == 1 and % 4 == 1: with 2 or 4 proposer slots in epoch 1, node
    # 1 owns the key's first set there (a phase-1 skip is possible at all).
    "q1q2": Shape(
        "3->3 paxos->flexible q1=3 q2=1 (2 proposer slots)",
        PAXOS,
        3,
        {"preset": "flexible", "q1": 3, "q2": 1, "proposers": 2},
        3,
        "k8",
    ),
    "add-member": Shape("3->4 paxos, one new member", PAXOS, 3, PAXOS, 4, "k8"),
}
# For a carry-over on a third node (``carrier=2``): that node needs a proposer slot in epoch 1.
THIRD_CARRIER = Shape(
    "3->3 paxos->flexible q1=3 q2=1", PAXOS, 3, {"preset": "flexible", "q1": 3, "q2": 1}, 3, "k0"
)


@dataclass
class EpochState(State):
    live: tuple[Epoch, ...] = ()  # at the configuration master
    views: list[tuple[int, ...]] = field(default_factory=list)  # epochs each node runs
    begun: list[bool] = field(default_factory=list)  # has the node's client asked yet
    orch: rc.Orchestrator | None = None  # None once finished
    carries: frozenset[tuple[int, int, int]] = frozenset()  # (node, gen, tid) of carry-overs
    carried: dict[str, str] = field(default_factory=dict)  # carry-over outputs
    dups: int = 0  # duplicate deliveries left


class _Scope:
    def __init__(
        self,
        plant: Plant,
        epochs: dict[int, Epoch],
        key: str,
        carrier: int,
        anytime: bool,
        late: frozenset[int],
    ):
        self.late = late
        self.plant = plant
        self.epochs = epochs
        self.key = key
        self.carrier = carrier
        self.anytime = anytime
        self.classes, self.symmetric = _classes(epochs)
        self.reached: set[str] = set()  # milestones some explored state got to (REACHED)

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
                state.in_flight.append(("fence", _index(action.member), action.rs))
            elif isinstance(action, rc.ListKeys):
                assert action.after is None, "one key: one page"
                state.in_flight.append(("list", _index(action.member), action.below))
            elif isinstance(action, rc.Carry):
                state.in_flight.append(("carry", action.key, action.value))
            elif isinstance(action, rc.Finished):
                state.orch = None
                return
            # Save: the master's record is durable at once (no orchestrator crash here)
        raise AssertionError("the orchestrator kept producing actions")

    def on_done(self, state: State, p: int, done: Done) -> None:
        assert isinstance(state, EpochState)
        node = state.nodes[p]
        if p not in self.late:  # what this request still had in flight is lost
            state.in_flight = [
                item
                for item in state.in_flight
                if item[0] != "req" or item[1:4] != (p, node.gen, done.tid)
            ]
        if (p, node.gen, done.tid) not in state.carries:
            record_output(state, p, done)
            return
        state.carries = state.carries - {(p, node.gen, done.tid)}
        if done.outcome.status == DECIDED:
            assert done.outcome.value is not None
            state.carried[f"carry-over on node {p}"] = done.outcome.value
        orch = state.orch
        if orch is None:
            return
        if done.outcome.status == DECIDED:
            self.run(state, orch.on_carried(self.key))
        else:
            self.run(state, orch.on_carry_failed(self.key, done.outcome.status))

    # -- nodes --------------------------------------------------------------------------------

    def live_view(self, epochs: tuple[Epoch, ...]) -> View:
        return self.plant.live_view(view(epochs))

    def adopt(self, state: EpochState, p: int) -> None:
        """Node ``p`` runs the master's live view from now on (a new runtime, its floors kept)."""
        node = state.nodes[p]
        node.rt = new_runtime(self.plant.runtime, self.live_view(state.live).layout, p, node)
        node.gen += 1
        node.now = 0.0
        node.tid = 0
        state.views[p] = tuple(e.number for e in state.live)

    def stale(self, state: EpochState, p: int) -> bool:
        return state.views[p] != tuple(e.number for e in state.live)

    def ask(self, state: EpochState, p: int) -> None:
        """Node ``p``'s client asks (again): on the live view when the node is idle."""
        if self.stale(state, p) and not state.nodes[p].rt._requests:
            self.adopt(state, p)
        state.begun[p] = True
        self.reached.add(ASKED_IN_TRANSITION if len(state.live) > 1 else ASKED_AFTER)
        propose(state, p, state.nodes[p].input, key=self.key)
        drain(state, p, self.on_done)

    def may_ask(self, state: EpochState, p: int) -> bool:
        if p != 1:
            return False  # node 0 asked once, at the start; the carrier has no client
        if not state.begun[p]:
            return True
        # asked again only when its request ended undecided and a newer view is out
        node = state.nodes[p]
        return p not in state.outputs and not node.rt._requests and self.stale(state, p)

    # -- transitions --------------------------------------------------------------------------

    def successors(self, state: EpochState) -> list[EpochState]:
        """Every next state. The search takes the last first: the orchestrator's items, then
        timers, messages, and a client's request last (any order is complete; this one
        reaches the planted bugs' counterexamples early)."""
        out = []
        for p in range(len(state.nodes)):
            if self.may_ask(state, p):
                nxt = clone(state, p)
                self.ask(nxt, p)
                out.append(nxt)
        for i in message_items(state):
            p = state.in_flight[i][1]
            nxt = clone(state, p)
            self.round_trip(nxt, i)
            out.append(nxt)
            if state.dups > 0:  # delivered, and a copy stays in flight
                twin = clone(state, p)
                twin.dups -= 1
                item = twin.in_flight[i]
                self.round_trip(twin, i)
                twin.in_flight.append(item)
                out.append(twin)
        for p, node in enumerate(state.nodes):
            if can_tick(node, self.anytime):
                nxt = clone(state, p)
                tick(nxt, p, self.on_done)
                out.append(nxt)
        if state.orch is not None and state.orch._failed:
            nxt = clone(state, None)
            assert nxt.orch is not None
            self.run(nxt, nxt.orch.retry())
            out.append(nxt)
        seen = set()
        for i, item in enumerate(state.in_flight):
            if item[0] in ("req", "rep") or item in seen:
                continue
            seen.add(item)
            nxt = clone(state, self.carrier if item[0] == "carry" else None)
            nxt.in_flight.pop(i)
            self._deliver_own(nxt, item)
            out.append(nxt)
        return out

    def round_trip(self, state: EpochState, i: int) -> None:
        """Deliver request ``i`` and its reply in one step (see the scope)."""
        assert state.in_flight[i][0] == "req"
        deliver(state, i, self.on_done)
        deliver(state, len(state.in_flight) - 1, self.on_done)

    def _deliver_own(self, state: EpochState, item: tuple) -> None:
        orch = state.orch
        if orch is None:
            return  # finished: a late answer changes nothing
        kind = item[0]
        if kind == "fence":
            _, i, rs = item
            state.fences[i] = max(state.fences[i], rs)  # durable before the answer
            self.run(state, orch.on_fenced(f"m{i}"))
        elif kind == "list":
            _, i, below = item
            values = {rs: v for rs, v in state.acceptors[i].values.items() if rs < below}
            self.run(state, orch.on_keys(f"m{i}", {self.key: values} if values else {}, None))
        elif kind == "carry":
            _, key, value = item
            c = self.carrier
            if self.stale(state, c) and not state.nodes[c].rt._requests:
                self.adopt(state, c)
            tid = propose(state, c, value, carry=True, key=key)
            state.carries = state.carries | {(c, state.nodes[c].gen, tid)}
            drain(state, c, self.on_done)

    # -- identity and safety ------------------------------------------------------------------

    def fingerprint(self, state: EpochState) -> tuple:
        orch = state.orch
        columns = [_orch_column(orch, i) for i in range(len(state.acceptors))]
        return (
            fingerprint(state, self.symmetric, self.classes, columns),
            tuple(e.number for e in state.live),
            tuple(state.views),
            tuple(state.begun),
            tuple(sorted(state.carries)),
            tuple(sorted(state.carried.items())),
            state.dups,
            _orch_print(orch),
        )

    def problem(self, state: EpochState) -> str | None:
        layouts = self.epochs

        def layout(rs: int) -> Layout:
            return layouts[epoch_of(rs)].layout

        if len(self.reached) < len(REACHED):
            self._milestones(state, layout)
        return check(layout, state, set(INPUTS), state.carried)

    def _milestones(self, state: EpochState, layout: Callable[[int], Layout]) -> None:
        olds = [
            acc.KeyState(a.fence, {rs: v for rs, v in a.values.items() if epoch_of(rs) == 0})
            for a in state.acceptors
        ]
        if chosen(layout, olds):
            self.reached.add(CHOSEN_IN_OLD)
        if state.carried:
            self.reached.add(CARRIED)
        if state.orch is None:
            self.reached.add(RETIRED)
        if 1 in state.outputs:
            self.reached.add(NODE1_OUTPUT)
        if any(state.fences) and state.nodes[0].rt._requests:
            self.reached.add(FENCED_BEFORE_A)


def _index(member: str) -> int:
    return int(member.removeprefix("m"))


def _classes(epochs: dict[int, Epoch]) -> tuple[tuple[int, ...], bool]:
    """Which acceptors are interchangeable: those in the same epochs, when every quorum system
    of every epoch counts over all of that epoch's members."""
    counting = all(
        isinstance(q, Counting) and q.members == e.layout.members
        for e in epochs.values()
        for seg in e.layout.segments
        for q in (seg.phase1, seg.phase2)
    )
    n = max(len(e.members) for e in epochs.values())
    roles = [tuple(f"m{i}" in e.members for _, e in sorted(epochs.items())) for i in range(n)]
    names = sorted(set(roles))
    return tuple(names.index(r) for r in roles), counting


def _orch_column(orch: rc.Orchestrator | None, i: int) -> tuple:
    """What the orchestrator holds about member ``i`` (its name is the column)."""
    if orch is None:
        return ()
    name = f"m{i}"
    return (
        name in orch._fenced,
        name in orch.record.fenced,
        repr(orch._carry.listing.get(name, "-")),
    )


def _orch_print(orch: rc.Orchestrator | None) -> tuple | None:
    """The orchestrator but for what it holds per member (``_orch_column``)."""
    if orch is None:
        return None
    r, c = orch.record, orch._carry
    failed = []
    for action in orch._failed:
        assert isinstance(action, rc.Carry), "no fence or listing fails in this scope"
        failed.append((action.key, action.value))
    return (
        r.step,
        r.carried,
        r.total,
        r.carried_upto,
        tuple(sorted(c.keys.items())),
        tuple(c.queue),
        tuple(sorted(c.batch)),
        c.batch_last,
        tuple(failed),
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


def clone(state: EpochState, touch: int | None) -> EpochState:
    """A copy to change; ``touch``: the only node the change may touch (others are shared)."""
    return EpochState(
        [a.copy() for a in state.acceptors],
        [clone_node(n) if p == touch else n for p, n in enumerate(state.nodes)],
        list(state.fences),
        list(state.in_flight),
        dict(state.outputs),
        state.live,
        list(state.views),
        list(state.begun),
        _clone_orch(state.orch),
        state.carries,
        dict(state.carried),
        state.dups,
    )


def epochs_of(shape: Shape) -> dict[int, Epoch]:
    old = Epoch(0, tuple(f"m{i}" for i in range(shape.old)), build(shape.start, shape.old, 0))
    new = Epoch(1, tuple(f"m{i}" for i in range(shape.new)), build(shape.target, shape.new, 1))
    return {0: old, 1: new}


def explore_epochs(
    shape: str | Shape = "paxos-fast",
    *,
    carrier: int = 1,
    ticks: tuple[int, ...] = (0, 1, 1),
    anytime: bool = False,
    dups: int = 0,
    late: tuple[int, ...] = (),
    plant: str | None = None,
    max_states: int = 2_000_000,
) -> ExploreResult:
    """Every reachable state of node 0 (input A, epoch 0), node 1 (input B, asks at any moment
    after the publish) and the carrier (``carrier``: node 1, or 2 for a third node) while the
    orchestrator moves the key's cluster to the shape's epoch 1. Node i fires at most
    ``ticks[i]`` timers: any timer when ``anytime``, else only backoffs. ``dups``: how many
    messages may be delivered twice. ``plant``: a bug (``plants.py``: runtime, live view or
    orchestrator)."""
    if isinstance(shape, str):
        shape = SHAPES[shape]
    if carrier not in (1, 2):
        raise ValueError("the carrier is node 1 or a third node, 2")
    epochs = epochs_of(shape)
    old, new = epochs[0], epochs[1]
    why = rc.refusal((old,), new)
    if why is not None:
        raise ValueError(f"the orchestrator refuses this step: {why}")
    scope = _Scope(make_plant(plant), epochs, shape.key, carrier, anytime, frozenset(late))
    nodes = 3 if carrier == 2 else 2
    state = EpochState(
        [acc.KeyState() for _ in range(max(shape.old, shape.new))],
        [],
        [0] * max(shape.old, shape.new),
        live=(old,),
        views=[(0,)] * nodes,
        begun=[True] + [False] * (nodes - 1),
        dups=dups,
    )
    layout = scope.live_view((old,)).layout
    inputs = (*INPUTS, "")
    for p in range(nodes):
        count = ticks[p] if p < len(ticks) else 0
        state.nodes.append(Node(new_runtime(scope.plant.runtime, layout, p), inputs[p], count))
    propose(state, 0, INPUTS[0], key=shape.key)
    drain(state, 0, scope.on_done)
    state.orch = scope.plant.orchestrator((old,), new, batch=1)
    scope.run(state, state.orch.start())
    result = search(state, scope.successors, scope.problem, scope.fingerprint, max_states)
    return replace(result, reached=frozenset(scope.reached))
