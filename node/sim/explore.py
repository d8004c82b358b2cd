"""Exhaustive small-scope check: every interleaving of a tiny system, message loss included.

Proposer nodes run the proposer runtime (``protocol.runtime.Runtime``, the class a node's
gateway drives) over the acceptors of a layout, one key. From every reachable state, every
enabled event is tried: deliver any in-flight message, or fire a node's next timer (attempt
timeout, backoff, the end of a forward; a bounded number of times per node). Message loss needs
no transition of its own: safety is checked in every reachable state, and an execution that
loses a message reaches exactly the acceptor and runtime states of one that simply never
delivers it. A forward to the key's leader is never answered (the leader is down), so a lost
fast attempt goes on here with what it learnt (the hand-over). Floors are durable at once (no
crash here: when a floor becomes durable only delays messages, and delays are explored anyway).

States are deduplicated by a fingerprint (acceptors renamed when the layout allows), so the
search is a complete enumeration of reachable states for the bound. In every state: at most one
value is chosen by the acceptors' registers (some phase-2 quorum of some set holds it, judged by
the set's own epoch), and every output is some node's input and equals it; in every step, no
written register changes and no nil register (below a fence) gets a value.

``explore_epochs.py`` adds one reconfiguration to this scope, on the same host.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..protocol import acceptor as acc
from ..protocol.effects import DECIDED, Done, Forward, PersistFloor, Send, Timing
from ..protocol.layout import Layout
from ..protocol.proposer import Proposer, Read, Write
from ..protocol.quorums import Counting, mask_of
from ..protocol.runtime import Request, Runtime
from ..protocol.table import Knowledge
from .plants import plant as make_plant

KEY = "k"
# Abstract time: a node's clock only moves when one of its timers fires. Backoffs (always the
# longest jitter, so time stays a function of the path) end well before an attempt timer.
TIMING = Timing(attempt_timeout=1.0, backoff_first=0.01, backoff_max=0.01, candidate_grace=0.5)
DEADLINE = 1000.0  # never reached within the bounds explored
BACKOFF_HORIZON = 0.02  # a timer due sooner than this is a backoff, not an attempt timer


class _LongestJitter(random.Random):
    """Backoff jitter without state: every interleaving that backs off waits as long."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Node:
    """One proposer node: a runtime and what its host keeps (floors on disk, its clock)."""

    rt: Runtime
    input: str
    ticks: int  # timer firings left (the bound of the search)
    now: float = 0.0
    floors: dict[str, int] = field(default_factory=dict)
    tid: int = 0
    gen: int = 0  # runtimes this node has run (a new view starts a new one)
    print: tuple | None = field(default=None, compare=False, repr=False)  # its fingerprint part


# In flight: ("req", node, gen, tid, member, message) and ("rep", node, gen, tid, member, reply);
# a host may add kinds of its own (the reconfiguration's fences, listings and carry-overs).
Item = tuple


@dataclass
class State:
    acceptors: list[acc.KeyState]
    nodes: list[Node]
    fences: list[int]  # each acceptor's global fence (a reconfiguration's)
    in_flight: list[Item] = field(default_factory=list)
    outputs: dict[int, str] = field(default_factory=dict)


@dataclass
class ExploreResult:
    states: int
    transitions: int
    violation: str | None
    complete: bool
    reached: frozenset[str] = frozenset()  # what a host saw happen somewhere in the search


def new_runtime(
    cls: type[Runtime], layout: Layout, index: int, node: Node | None = None
) -> Runtime:
    """A node's runtime (member ``index`` proposes as slot ``index``)."""
    floors: dict[str, int] = node.floors if node is not None else {}
    rt = cls(
        layout,
        index=index,
        slot=index if index < layout.proposers else None,
        timing=TIMING,
        rng=_LongestJitter(0),
        floors=lambda key: floors.get(key, -1),
    )
    rt.up = layout.members  # nothing fails here: a message is delivered or not (yet)
    return rt


def propose(
    state: State, p: int, value: str, forward: bool = False, carry: bool = False, key: str = KEY
) -> int:
    """Node ``p`` starts a proposal; returns its request id."""
    node = state.nodes[p]
    node.tid += 1
    node.rt.propose(node.tid, key, value, node.now, node.now + DEADLINE, forward, carry)
    return node.tid


def drain(state: State, p: int, on_done: Callable[[State, int, Done], None]) -> None:
    """Carry out node ``p``'s effects: sends go in flight, floors are durable at once (which
    releases the held sends), forwards are never answered (the runtime's timer ends them)."""
    node = state.nodes[p]
    rt = node.rt
    for _ in range(1000):  # a bound only: each round handles what the last one made
        effects = rt.take()
        if not effects:
            return
        for effect in effects:
            if isinstance(effect, Send):
                state.in_flight.append(
                    ("req", p, node.gen, effect.tid, effect.member, effect.message)
                )
            elif isinstance(effect, PersistFloor):
                node.floors[effect.key] = max(node.floors.get(effect.key, -1), effect.rs)
                rt.on_floor_durable(effect.tid, effect.rs, node.now)
            elif isinstance(effect, Done):
                on_done(state, p, effect)
            elif isinstance(effect, Forward):
                pass  # the leader is down: T_FORWARD_END brings the request back here
    raise AssertionError("the runtime kept producing effects")


def record_output(state: State, p: int, done: Done) -> None:
    if done.outcome.status == DECIDED:
        assert done.outcome.value is not None
        state.outputs[p] = done.outcome.value


# -- transitions -----------------------------------------------------------------------------


def deliver(state: State, index: int, on_done: Callable[[State, int, Done], None]) -> None:
    """Deliver in-flight item ``index`` of a proposal (a request to an acceptor, or a reply)."""
    kind, p, gen, tid, member, payload = state.in_flight.pop(index)
    if kind == "req":
        a = state.acceptors[member]
        if isinstance(payload, Read):
            change, reply = acc.read(a, payload.rs, state.fences[member])
        else:
            assert isinstance(payload, Write)
            change, reply = acc.write(a, payload.rs, payload.value, state.fences[member])
        if change is not None:
            acc.apply(a, change)
        state.in_flight.append(("rep", p, gen, tid, member, reply))
        return
    node = state.nodes[p]
    if node.gen != gen:
        return  # the runtime that sent it is gone (the node runs a newer view)
    node.rt.on_reply(tid, member, payload, node.now)
    drain(state, p, on_done)


def can_tick(node: Node, anytime: bool) -> bool:
    if node.ticks <= 0:
        return False
    wake = node.rt.next_wake()
    if wake is None:
        return False
    return anytime or wake - node.now < BACKOFF_HORIZON


def tick(state: State, p: int, on_done: Callable[[State, int, Done], None]) -> None:
    """Fire node ``p``'s next timer (its clock jumps there)."""
    node = state.nodes[p]
    wake = node.rt.next_wake()
    assert wake is not None
    node.ticks -= 1
    node.now = max(node.now, wake)
    node.rt.tick(node.now)
    drain(state, p, on_done)


def message_items(state: State) -> list[int]:
    """Indices of the distinct proposal items in flight (a duplicate leads to the same
    successor, so it is tried once)."""
    out, seen = [], set()
    for i, item in enumerate(state.in_flight):
        if item[0] not in ("req", "rep"):
            continue
        label = item_print(item, None)
        if label not in seen:
            seen.add(label)
            out.append(i)
    return out


def item_print(item: Item, perm: tuple[int, ...] | None) -> tuple:
    """A proposal item as plain tuples (``perm``: acceptor renaming, None for none)."""
    if item[0] not in ("req", "rep"):
        return ("~", *item)  # a host's own item: plain hashable values (no acceptor index)
    kind, p, gen, tid, member, payload = item
    if perm is not None:
        member = perm[member]
    if kind == "req":
        return (kind, p, gen, tid, member, payload.rs, _value(payload))
    return (
        kind,
        p,
        gen,
        tid,
        member,
        payload.ok,
        payload.fence,
        tuple(sorted(payload.values.items())),
    )


def _value(message: Read | Write) -> str:
    return message.value if isinstance(message, Write) else ""


# -- cloning ---------------------------------------------------------------------------------


_PROPOSER_SLOTS = Proposer.__slots__
_KNOWLEDGE_SLOTS = Knowledge.__slots__


def _copy_slots(obj: Any, slots: tuple[str, ...]) -> Any:
    """``copy.copy`` of an object with ``__slots__``, without its pickling detour."""
    twin = object.__new__(type(obj))
    for name in slots:
        setattr(twin, name, getattr(obj, name))
    return twin


def clone_proposer(pr: Proposer) -> Proposer:
    twin = _copy_slots(pr, _PROPOSER_SLOTS) if type(pr) is Proposer else copy.copy(pr)
    k = _copy_slots(pr.knowledge, _KNOWLEDGE_SLOTS)
    k.fences = list(k.fences)
    k.held = [dict(h) for h in k.held]
    k.by_set = {rs: dict(v) for rs, v in k.by_set.items()}
    twin.knowledge = k
    return twin


_REQUEST_SLOTS = Request.__slots__


def _clone_request(req: Request) -> Request:
    twin = _copy_slots(req, _REQUEST_SLOTS)
    if req.proposer is not None:
        twin.proposer = clone_proposer(req.proposer)
    twin.held = list(req.held)
    assert req.knowledge is None, "the explorer runs no reads"
    return twin


def _copy_dict(obj: Any) -> Any:
    twin = object.__new__(type(obj))
    twin.__dict__.update(obj.__dict__)
    return twin


def clone_node(node: Node) -> Node:
    twin = _copy_dict(node)
    twin.print = None
    twin.floors = dict(node.floors)
    rt = _copy_dict(node.rt)
    rt._requests = {tid: _clone_request(r) for tid, r in node.rt._requests.items()}
    rt._keys = {k: copy.copy(q) for k, q in node.rt._keys.items()}
    rt._timers = list(node.rt._timers)
    rt._out = []  # empty between events, but never shared with the original
    floors = twin.floors
    rt._floors = lambda key: floors.get(key, -1)
    twin.rt = rt
    return twin


def clone(state: State, touch: int | None = -1) -> State:
    """A copy to change. ``touch``: the only node the change may touch (the others are shared
    with ``state``: a state never changes once explored); -1: any."""
    return State(
        [a.copy() for a in state.acceptors],
        [clone_node(n) if touch in (-1, p) else n for p, n in enumerate(state.nodes)],
        list(state.fences),
        list(state.in_flight),
        dict(state.outputs),
    )


# -- fingerprints ----------------------------------------------------------------------------
# A state's identity is a part that names no acceptor plus one column per acceptor: what the
# acceptor holds, the messages to and from it, and what every node knows of it. When the
# acceptors are interchangeable (``symmetric``) the columns are sorted: states that differ by a
# renaming of acceptors get one identity, found without trying every renaming.


def _request_print(r: Request) -> tuple:
    p = r.proposer
    core = None if p is None else (p.phase, p.rs, p.value, p.attempt, p.used_floor)
    return (
        r.tid,
        r.stage,
        r.value,
        r.held_rs,
        r.armed,
        r.backoffs,
        r.waiting,
        r.lost,
        r.holds,
        core,
    )


def _request_column(r: Request, i: int) -> tuple:
    bit = 1 << i
    p = r.proposer
    known = None
    if p is not None and i < p.knowledge.n:  # (a node of a smaller view knows nothing of i)
        k = p.knowledge
        known = (bool(k.replied & bit), k.fences[i], tuple(sorted(k.held[i].items())))
    held = tuple(sorted((s.message.rs, _value(s.message)) for s in r.held if s.server == i))
    return (held, bool(r.failed & bit), bool(r.answered & bit), known)


def _node_print(node: Node) -> tuple:
    """What a node will do from here, but for what it knows of each acceptor: its requests and
    live timers (relative to its clock)."""
    rt = node.rt
    requests = rt._requests
    timers = tuple(
        sorted(
            (kind, attempt, tid, round(when - node.now, 6))
            for when, _, tid, kind, attempt in rt._timers
            if tid in requests and not rt._stale(requests[tid], kind, attempt)
        )
    )
    return (
        node.ticks,
        node.gen,
        tuple(sorted(node.floors.items())),
        tuple(_request_print(r) for _, r in sorted(requests.items())),
        timers,
        tuple(sorted((k, tuple(q)) for k, q in rt._keys.items())),
    )


def _node_parts(node: Node, n: int) -> tuple:
    """A node's part naming no acceptor and its part of each acceptor's column (kept with the
    node: a node is shared, unchanged, by the states a change to another node leads to)."""
    if node.print is None:
        reqs = sorted(node.rt._requests.items())
        node.print = (
            _node_print(node),
            tuple(tuple(_request_column(r, i) for _, r in reqs) for i in range(n)),
        )
    return node.print


def fingerprint(
    state: State,
    symmetric: bool,
    classes: tuple[int, ...] | None = None,
    extra: list[tuple] | None = None,
) -> tuple:
    """``classes``: when ``symmetric``, only acceptors of one class are interchangeable (None:
    all are); ``extra``: a host's own facts per acceptor. A host's item in flight whose second
    field is an int is for that acceptor (its column); others go in the part naming none."""
    n = len(state.acceptors)
    flights: list[list[tuple]] = [[] for _ in range(n)]
    others = []
    for item in state.in_flight:
        if item[0] in ("req", "rep"):
            label = item_print(item, None)
            flights[item[4]].append(label[:4] + label[5:])  # the acceptor is the column
        elif isinstance(item[1], int):
            flights[item[1]].append(("~", item[0], *item[2:]))  # a host's item for an acceptor
        else:
            others.append(item_print(item, None))
    prints = [_node_parts(node, n) for node in state.nodes]
    columns = [
        (
            0 if classes is None else classes[i],
            a.fence,
            state.fences[i],
            tuple(sorted(a.values.items())),
            tuple(sorted(flights[i])),
            tuple(part[1][i] for part in prints),
            () if extra is None else extra[i],
        )
        for i, a in enumerate(state.acceptors)
    ]
    if symmetric:
        columns.sort()  # the class comes first: a renaming never moves a column across classes
    return (
        tuple(part[0] for part in prints),
        tuple(sorted(others)),
        tuple(sorted(state.outputs.items())),
        tuple(columns),
    )


def symmetric(layout: Layout) -> bool:
    """Are the acceptors interchangeable: does every quorum system count over all members?"""
    everyone = layout.members
    return all(
        isinstance(q, Counting) and q.members == everyone
        for seg in layout.segments
        for q in (seg.phase1, seg.phase2)
    )


# -- safety ----------------------------------------------------------------------------------


def chosen(layouts: Callable[[int], Layout], acceptors: list[acc.KeyState]) -> set[str]:
    """Values some phase-2 quorum of some set holds (``layouts(rs)``: the set's own layout)."""
    holders: dict[tuple[int, str], list[int]] = {}
    for i, a in enumerate(acceptors):
        for rs, value in a.values.items():
            holders.setdefault((rs, value), []).append(i)
    return {
        value
        for (rs, value), who in holders.items()
        if layouts(rs).segment_of(rs).phase2.is_quorum(mask_of(who))
    }


def check(
    layouts: Callable[[int], Layout], state: State, inputs: set[str], extra: dict[str, str]
) -> str | None:
    """``extra``: outputs other than the nodes' own (a reconfiguration's carry-overs)."""
    values = chosen(layouts, state.acceptors)
    if len(values) > 1:
        return f"two values chosen by the acceptors: {sorted(values)}"
    outputs = {f"node {p}": v for p, v in state.outputs.items()} | extra
    for who, value in outputs.items():
        if value not in inputs:
            return f"{who} output {value!r}, nobody's input"
        if values and value not in values:
            return f"{who} output {value!r} but the acceptors chose {sorted(values)}"
    if len(set(outputs.values())) > 1:
        return f"nodes output different values: {outputs}"
    return None


# -- the plain scope -------------------------------------------------------------------------


def _successors(state: State, anytime: bool) -> list[State]:
    out = []
    for i in message_items(state):
        item = state.in_flight[i]
        nxt = clone(state, item[1] if item[0] == "rep" else None)
        deliver(nxt, i, record_output)
        out.append(nxt)
    for p, node in enumerate(state.nodes):
        if can_tick(node, anytime):
            nxt = clone(state, p)
            tick(nxt, p, record_output)
            out.append(nxt)
    return out


def explore(
    layout: Layout,
    retries: tuple[int, int] = (1, 0),
    anytime: bool = True,
    max_states: int = 2_000_000,
    forward: bool = False,
    plant: str | None = None,
) -> ExploreResult:
    """Enumerate every reachable state of 2 nodes (slots 0 and 1, each with the in-process
    acceptor of its member index) proposing inputs A and B for one key; node i fires a timer
    at most ``retries[i]`` times: at any moment when ``anytime``, else only a backoff that a
    refusal asked for. ``forward``: the requests may go to the key's leader (on a fast layout:
    a fast attempt first, then the hand-over here). ``plant``: a runtime bug of the simulator
    (``plants.py``)."""
    cls = make_plant(plant).runtime
    inputs = ["A", "B"]
    state = State([acc.KeyState() for _ in range(layout.n)], [], [0] * layout.n)
    for p in range(2):
        node = Node(new_runtime(cls, layout, p), inputs[p], retries[p])
        state.nodes.append(node)
    for p in range(2):
        propose(state, p, inputs[p], forward)
        drain(state, p, record_output)
    same = symmetric(layout)
    return search(
        state,
        lambda s: _successors(s, anytime),
        check_one(layout, set(inputs)),
        lambda s: fingerprint(s, same),
        max_states,
    )


def check_one(layout: Layout, inputs: set[str]) -> Callable[[State], str | None]:
    return lambda state: check(lambda rs: layout, state, inputs, {})


def write_once(before: State, after: State) -> str | None:
    """A step that changed a written register, or wrote one that was nil (below a fence)."""
    for i, (a, b) in enumerate(zip(before.acceptors, after.acceptors, strict=True)):
        if a.values == b.values:
            continue
        nil_below = max(a.fence, before.fences[i])
        for rs, value in a.values.items():
            if b.values.get(rs) != value:
                return f"write-once: acceptor {i} set {rs} held {value!r}, now {b.values.get(rs)!r}"
        for rs, value in b.values.items():
            if rs not in a.values and rs < nil_below:
                return (
                    f"write-once: acceptor {i} wrote {value!r} to set {rs}, nil below {nil_below}"
                )
    return None


def search(
    start: State,
    successors: Callable[[State], list[State]],
    problem: Callable[[State], str | None],
    key: Callable[[State], tuple],
    max_states: int,
) -> ExploreResult:
    """Depth-first over every state reachable from ``start``; stops at the first violation
    (of ``problem`` in a state, or of write-once in a step)."""
    seen = {key(start)}
    stack = [start]
    transitions = 0
    while stack:
        current = stack.pop()
        why = problem(current)
        if why:
            return ExploreResult(len(seen), transitions, why, False)
        for nxt in successors(current):
            transitions += 1
            why = write_once(current, nxt)
            if why:
                return ExploreResult(len(seen), transitions, why, False)
            fp = key(nxt)
            if fp in seen:
                continue
            seen.add(fp)
            if len(seen) > max_states:
                return ExploreResult(len(seen), transitions, None, False)
            stack.append(nxt)
    return ExploreResult(len(seen), transitions, None, True)
