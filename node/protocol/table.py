"""The client's decision table (GS §3.2), evaluated over everything a client has read.

Registers are write-once, so every fact a client reads stays true: the table is a pure function
of the accumulated facts. Facts per server: the fence watermark from its replies (registers below
it that it did not list are nil) and the non-nil registers it listed.

Register sets are unbounded integers, so the table is evaluated *symbolically*: between the
register sets where some value was read, every set of the same segment with the same servers
fenced past it has the same quorum states. Breakpoints (segment starts, fences, value sets) cut
``[first, r)`` into intervals; one representative set per interval is evaluated exactly.

Quorum states follow the note: ``Decided(v)`` when every member of Q was read holding v;
``None`` when some member of Q was read nil, or two different values were read that each rule out
the other; ``Maybe(v)`` when exactly one value was read that Q could still decide; ``Any``
otherwise. A read value v in set t turns every quorum of sets below t (and every quorum of t itself
when t is client-restricted, or the quorums of t containing the server when it is
quorum-intersecting) from ``Any`` into ``Maybe(v)`` and from ``Maybe(v' != v)`` into ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layout import INTERSECTING, Layout
from .quorums import Mask

Value = str


@dataclass(frozen=True, slots=True)
class Choice:
    """Outcome of the write rule for one register set.

    ``ready`` False: some earlier quorum is still ``Any`` or the quorums name different values;
    read more. ``value`` None with ready True: every earlier quorum is ``None`` (free choice).
    """

    ready: bool
    value: Value | None = None


WAIT = Choice(False)
FREE = Choice(True)


class Knowledge:
    """Accumulated facts about one key, read from the servers of one layout (or live view).

    Only register sets in ``[lo, hi)`` are kept: values in retired epochs (below ``lo``) were
    carried into a live epoch before retirement, and a fact at or above ``hi`` (a value, or a
    fence past the view's last set) means a newer epoch exists: ``beyond`` is set and the
    proposer must fetch the new view rather than go on.
    """

    __slots__ = ("_sorted_sets", "beyond", "by_set", "fences", "held", "hi", "lo", "n", "replied")

    def __init__(self, n: int, lo: int = 0, hi: int | None = None) -> None:
        self.n = n
        self.lo = lo
        self.hi = hi
        self.beyond = False
        self.fences = [0] * n
        self.held: list[dict[int, Value]] = [{} for _ in range(n)]
        # register set -> value -> servers read holding it there
        self.by_set: dict[int, dict[Value, Mask]] = {}
        self.replied: Mask = 0
        self._sorted_sets: list[int] | None = None

    def learn(self, server: int, fence: int, values: dict[int, Value]) -> list[int]:
        """Add one reply; returns the register sets where a new value fact arrived."""
        self.replied |= 1 << server
        if fence > self.fences[server]:
            self.fences[server] = fence
        held = self.held[server]
        fresh = []
        hi = self.hi
        if hi is not None and fence >= hi:
            self.beyond = True
        for rs, value in values.items():
            if rs in held or rs < self.lo:
                continue
            if hi is not None and rs >= hi:
                self.beyond = True
                continue
            held[rs] = value
            per_value = self.by_set.setdefault(rs, {})
            per_value[value] = per_value.get(value, 0) | (1 << server)
            fresh.append(rs)
        if fresh:
            self._sorted_sets = None
        return fresh

    def nil_mask(self, rs: int) -> Mask:
        """Servers known to hold nil in register set ``rs``."""
        mask = 0
        for server in range(self.n):
            if self.fences[server] > rs and rs not in self.held[server]:
                mask |= 1 << server
        return mask

    def value_sets(self) -> list[int]:
        if self._sorted_sets is None:
            self._sorted_sets = sorted(self.by_set)
        return self._sorted_sets

    def max_known(self) -> int:
        """Highest register set any fact mentions (a fence counts as the set below it)."""
        top = max(self.fences) - 1
        sets = self.value_sets()
        if sets and sets[-1] > top:
            top = sets[-1]
        return top

    def values_above(self, rs: int) -> set[Value]:
        """Distinct values read in register sets strictly above ``rs`` (at most two kept)."""
        seen: set[Value] = set()
        for t in reversed(self.value_sets()):
            if t <= rs:
                break
            seen.update(self.by_set[t])
            if len(seen) > 1:
                break
        return seen


def decided_in(layout: Layout, knowledge: Knowledge, rs: int) -> Value | None:
    """The value decided in register set ``rs`` according to the facts, if any."""
    per_value = knowledge.by_set.get(rs)
    if not per_value:
        return None
    phase2 = layout.segment_of(rs).phase2
    for value, mask in per_value.items():
        if phase2.is_quorum(mask):
            return value
    return None


def decided(layout: Layout, knowledge: Knowledge) -> Value | None:
    for rs in knowledge.value_sets():
        value = decided_in(layout, knowledge, rs)
        if value is not None:
            return value
    return None


def _breakpoints(layout: Layout, knowledge: Knowledge, lo: int, hi: int) -> list[int]:
    points = {lo, hi}
    for seg in layout.segments:
        if lo < seg.start < hi:
            points.add(seg.start)
    for fence in knowledge.fences:
        if lo < fence < hi:
            points.add(fence)
    for t in knowledge.value_sets():
        if lo <= t < hi:
            points.add(t)
            points.add(t + 1)
    return sorted(p for p in points if lo <= p <= hi)


ANY, MAYBE, DECIDED, NONE = "Any", "Maybe", "Decided", "None"
QuorumState = tuple[str, Value | None]


def _fold(names: set[Value]) -> QuorumState:
    """State of a quorum from the values that constrain it (none read: Any)."""
    if not names:
        return (ANY, None)
    if len(names) == 1:
        return (MAYBE, next(iter(names)))
    return (NONE, None)


def set_states(layout: Layout, knowledge: Knowledge, rs: int) -> list[tuple[Mask, QuorumState]]:
    """The state of every (minimal) phase-2 quorum of register set ``rs``."""
    seg = layout.segment_of(rs)
    above = knowledge.values_above(rs)
    per_value = knowledge.by_set.get(rs, {})
    nil = knowledge.nil_mask(rs)
    restricted = seg.kind != INTERSECTING
    states: list[tuple[Mask, QuorumState]] = []
    for q in seg.phase2.quorums:
        state: QuorumState | None = None
        for value, mask in per_value.items():
            if mask & q == q:
                state = (DECIDED, value)
        if state is None:
            if q & nil:
                state = (NONE, None)
            elif restricted:
                state = _fold(set(per_value) | above)
            else:
                state = _fold({v for v, mask in per_value.items() if mask & q} | above)
        states.append((q, state))
    return states


def knowledge_for(layout: Layout) -> Knowledge:
    """Empty facts for one key, bounded to the layout's live sets."""
    return Knowledge(layout.n, layout.base_set, layout.end)


def write_choice(layout: Layout, knowledge: Knowledge, rs: int) -> Choice:
    """Rule 4 for writing register set ``rs``: may a value be written, and which one?

    Sets below the view's base belong to retired epochs: whatever they may have decided was
    carried into a live epoch before they were retired, so they are not consulted."""
    first = layout.base_set
    if rs <= first:
        return FREE
    named: set[Value] = set()
    points = _breakpoints(layout, knowledge, first, rs)
    for lo in points[:-1]:
        # One representative set per interval: all sets of an interval share their states.
        for _q, (state, value) in set_states(layout, knowledge, lo):
            if state == ANY:
                return WAIT
            if value is not None and state != NONE:
                named.add(value)
        if len(named) > 1:
            return WAIT
    if not named:
        return FREE
    return Choice(True, next(iter(named)))


def set_is_dead(layout: Layout, knowledge: Knowledge, rs: int, value: Value) -> bool:
    """True when no phase-2 quorum of ``rs`` can ever hold ``value`` (retry higher)."""
    blocked = knowledge.nil_mask(rs)
    for other, mask in knowledge.by_set.get(rs, {}).items():
        if other != value:
            blocked |= mask
    return layout.segment_of(rs).phase2.hits_every_quorum(blocked)


@dataclass(frozen=True, slots=True)
class ReadOutcome:
    """Linearizable read: was a value decided before the read began?"""

    state: str  # "decided" | "none" | "unknown" | "stale" (a newer epoch exists)
    value: Value | None = None


def read_outcome(layout: Layout, knowledge: Knowledge) -> ReadOutcome:
    """Judge plain (non-fencing) reads taken after a client request began.

    A server that replied without holding v in set t did not hold it before the request began
    (registers are write-once), so a quorum with such a member was not decided then. The answer is
    ``none`` only when every quorum of every set has such a member.
    """
    value = decided(layout, knowledge)
    if value is not None:
        return ReadOutcome("decided", value)
    if knowledge.beyond:
        return ReadOutcome("stale")  # what this view's sets say may be out of date
    replied = knowledge.replied
    for seg in layout.segments:
        if not seg.phase2.hits_every_quorum(replied):
            return ReadOutcome("unknown")
    for rs in knowledge.value_sets():
        seg = layout.segment_of(rs)
        per_value = knowledge.by_set[rs]
        for q in seg.phase2.quorums:
            asked = q & replied
            for candidate, mask in per_value.items():
                if mask & asked == asked:
                    return ReadOutcome("unknown", candidate)
    return ReadOutcome("none")
