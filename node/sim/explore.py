"""Exhaustive small-scope check: every interleaving of a tiny system, message loss included.

Two proposers with different inputs, the acceptors of a layout, one key. From every reachable
state, every enabled event is tried: deliver any in-flight message or time a proposer out
(bounded number of attempts). Message loss needs no transition of its own: safety is checked in
every reachable state, and an execution that loses a message reaches exactly the acceptor and
proposer states of one that simply never delivers it. States are deduplicated by a fingerprint,
so the search is a complete enumeration of reachable states for the bound. In every state: at
most one value is chosen by the acceptors' registers (some phase-2 quorum of some set holds it),
and every proposer output equals it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from itertools import permutations

from ..protocol import acceptor as acc
from ..protocol.layout import Layout
from ..protocol.proposer import Backoff, Decide, Persist, Proposer, Read, Send, Write
from ..protocol.quorums import Counting, mask_of

KEY = "k"


@dataclass
class State:
    acceptors: list[acc.KeyState]
    proposers: list[Proposer]
    attempts_left: list[int]
    timeouts: list[bool]  # a timeout/backoff is pending for the proposer
    in_flight: list[tuple] = field(default_factory=list)  # ("req", p, server, msg) / ("rep", ...)
    outputs: dict[int, str] = field(default_factory=dict)


@dataclass
class ExploreResult:
    states: int
    transitions: int
    violation: str | None
    complete: bool


def _apply(state: State, p: int, actions: list) -> None:
    queue = list(actions)
    while queue:
        action = queue.pop(0)
        if isinstance(action, Send):
            state.in_flight.append(("req", p, action.server, action.message))
        elif isinstance(action, Persist):
            queue.extend(state.proposers[p].on_persisted(action.rs))
        elif isinstance(action, Backoff):
            state.timeouts[p] = True
        elif isinstance(action, Decide):
            state.outputs[p] = action.value


def _fingerprint(state: State, perm: tuple[int, ...]) -> tuple:
    """A state's identity with acceptor ``i`` renamed ``perm[i]``."""
    n = len(perm)

    def by_new_index(items: list) -> tuple:
        out: list = [None] * n
        for i, item in enumerate(items):
            out[perm[i]] = item
        return tuple(out)

    accs = by_new_index([(a.fence, tuple(sorted(a.values.items()))) for a in state.acceptors])
    props = tuple(
        (
            pr.phase,
            pr.rs,
            pr.value,
            pr.attempt,
            pr.used_floor,
            sum(1 << perm[i] for i in range(n) if pr.knowledge.replied >> i & 1),
            by_new_index(pr.knowledge.fences),
            by_new_index([tuple(sorted(h.items())) for h in pr.knowledge.held]),
        )
        for pr in state.proposers
    )
    flight = tuple(
        sorted(repr((kind, p, perm[server], msg)) for kind, p, server, msg in state.in_flight)
    )
    return (
        accs,
        props,
        flight,
        tuple(state.attempts_left),
        tuple(state.timeouts),
        tuple(sorted(state.outputs.items())),
    )


def _symmetries(layout: Layout) -> list[tuple[int, ...]]:
    """Acceptor renamings that preserve the layout: all of them when every quorum system counts
    over all members (acceptors are then interchangeable), else only the identity."""
    everyone = layout.members
    symmetric = all(
        isinstance(q, Counting) and q.members == everyone
        for seg in layout.segments
        for q in (seg.phase1, seg.phase2)
    )
    identity = tuple(range(layout.n))
    return list(permutations(identity)) if symmetric else [identity]


def _canonical(state: State, perms: list[tuple[int, ...]]) -> tuple:
    return min(_fingerprint(state, perm) for perm in perms)


def _chosen(layout: Layout, state: State) -> set[str]:
    holders: dict[tuple[int, str], list[int]] = {}
    for i, a in enumerate(state.acceptors):
        for rs, value in a.values.items():
            holders.setdefault((rs, value), []).append(i)
    return {
        value
        for (rs, value), who in holders.items()
        if layout.segment_of(rs).phase2.is_quorum(mask_of(who))
    }


def _check(layout: Layout, state: State, inputs: list[str]) -> str | None:
    chosen = _chosen(layout, state)
    if len(chosen) > 1:
        return f"two values chosen by the acceptors: {sorted(chosen)}"
    for p, value in state.outputs.items():
        if value not in inputs:
            return f"proposer {p} output {value!r}, nobody's input"
        if chosen and value not in chosen:
            return f"proposer {p} output {value!r} but the acceptors chose {sorted(chosen)}"
    if len(set(state.outputs.values())) > 1:
        return f"proposers output different values: {state.outputs}"
    return None


def _clone_proposer(pr: Proposer) -> Proposer:
    twin = copy.copy(pr)
    k = copy.copy(pr.knowledge)
    k.fences = list(k.fences)
    k.held = [dict(h) for h in k.held]
    k.by_set = {rs: dict(v) for rs, v in k.by_set.items()}
    twin.knowledge = k
    return twin


def _clone(state: State) -> State:
    return State(
        [a.copy() for a in state.acceptors],
        [_clone_proposer(p) for p in state.proposers],
        list(state.attempts_left),
        list(state.timeouts),
        list(state.in_flight),
        dict(state.outputs),
    )


def _successors(state: State, anytime: bool) -> list[State]:
    out = []
    seen_items = set()
    for i, item in enumerate(state.in_flight):
        label = repr(item)
        if label in seen_items:
            continue  # a duplicate of a message already tried from this state
        seen_items.add(label)
        nxt = _clone(state)
        kind, p, server, payload = nxt.in_flight.pop(i)
        if kind == "req":
            a = nxt.acceptors[server]
            if isinstance(payload, Read):
                change, reply = acc.read(a, payload.rs)
            else:
                assert isinstance(payload, Write)
                change, reply = acc.write(a, payload.rs, payload.value)
            if change is not None:
                acc.apply(a, change)
            nxt.in_flight.append(("rep", p, server, reply))
        else:
            _apply(nxt, p, nxt.proposers[p].on_reply(server, payload))
        out.append(nxt)
    for p, prop in enumerate(state.proposers):
        if prop.phase == "done" or state.attempts_left[p] <= 0:
            continue
        if not anytime and not state.timeouts[p]:
            continue  # retries only after a refusal asked for a backoff
        nxt = _clone(state)
        nxt.attempts_left[p] -= 1
        nxt.timeouts[p] = False
        pr = nxt.proposers[p]
        _apply(nxt, p, pr.on_timeout(pr.attempt))
        out.append(nxt)
    return out


def explore(
    layout: Layout,
    retries: tuple[int, int] = (1, 0),
    anytime: bool = True,
    max_states: int = 2_000_000,
) -> ExploreResult:
    """Enumerate every reachable state of 2 proposers on one key, proposer i retrying at most
    ``retries[i]`` times: at any moment (a timeout) when ``anytime``, else only after a refusal
    asked for a backoff."""
    inputs = ["A", "B"]
    proposers = [Proposer(layout, slot, KEY) for slot in range(2)]
    state = State(
        [acc.KeyState() for _ in range(layout.n)], proposers, list(retries), [False, False]
    )
    for p, prop in enumerate(proposers):
        _apply(state, p, prop.start(inputs[p]))
    perms = _symmetries(layout)
    seen = {_canonical(state, perms)}
    stack = [state]
    transitions = 0
    while stack:
        current = stack.pop()
        problem = _check(layout, current, inputs)
        if problem:
            return ExploreResult(len(seen), transitions, problem, False)
        for nxt in _successors(current, anytime):
            transitions += 1
            fp = _canonical(nxt, perms)
            if fp in seen:
                continue
            seen.add(fp)
            if len(seen) > max_states:
                return ExploreResult(len(seen), transitions, None, False)
            stack.append(nxt)
    return ExploreResult(len(seen), transitions, None, True)
