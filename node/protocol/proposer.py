"""Proposer (client) state machine for one key: GS Fig. 5 driven by the decision table.

Feed it events, it returns actions; it never touches a network, a clock or a disk:

* ``start(value)`` -> actions to begin;
* ``on_reply(server, reply)`` for every reply (stale ones too: write-once facts never expire);
* ``on_persisted(rs)`` once ``Persist`` is durable (the proposer runtime, ``runtime.py``, calls
  it as soon as the floor is submitted and holds whatever the returned actions carry to other
  members until the floor is durable; only this node's own acceptor, in the floor's
  transaction, sees them early);
* ``on_timeout(attempt)`` when the runtime's attempt timer or a requested backoff expires.

Actions: ``Send`` (a Read or Write to one server), ``Persist`` (durably record that this proposer
used a client-restricted register set for the key: it must never write that set again, even
after a restart), ``Backoff`` (call ``on_timeout(attempt)`` after a jittered delay) and
``Decide`` (the output).

Paths: the first register set is written directly when it is quorum-intersecting (fast) or when
this proposer owns it (the set-0 skip). Otherwise phase 1 reads a fresh owned set from every
member and finishes as soon as the decision table allows (not on a fixed reply count); phase 2
writes the chosen value. A decision is output as soon as any quorum is ``Decided``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import table
from .acceptor import Reply, Value
from .layout import INTERSECTING, Layout, key_hash
from .quorums import members_of


@dataclass(frozen=True, slots=True)
class Read:
    key: str
    rs: int


@dataclass(frozen=True, slots=True)
class Write:
    key: str
    rs: int
    value: Value


@dataclass(frozen=True, slots=True)
class Send:
    server: int
    message: Read | Write


@dataclass(frozen=True, slots=True)
class Persist:
    key: str
    rs: int


@dataclass(frozen=True, slots=True)
class Backoff:
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Decide:
    key: str
    value: Value
    path: str  # fast | classic | recovered | read


@dataclass(frozen=True, slots=True)
class Stale:
    """A member showed a register set past this proposer's view: a newer epoch exists. The
    proposer stops (it never writes a set of an epoch it does not know); fetch the new view."""

    key: str


Action = Send | Persist | Backoff | Decide | Stale

IDLE, PERSISTING, READING, WRITING, DONE = "idle", "persisting", "reading", "writing", "done"


class Proposer:
    __slots__ = (
        "_skip_read",
        "attempt",
        "carry",
        "conflicts",
        "decided",
        "key",
        "khash",
        "knowledge",
        "layout",
        "own",
        "phase",
        "round_trips",
        "rs",
        "slot",
        "used_floor",
        "value",
    )

    def __init__(
        self, layout: Layout, slot: int, key: str, used_floor: int = -1, carry: bool = False
    ) -> None:
        """``used_floor``: highest restricted set this slot ever used for the key (durable).
        ``carry``: a reconfiguration's carry-over: only a decision in the newest epoch counts
        (a quorum of an older epoch holding the value is not enough: it must be moved)."""
        self.layout = layout
        self.slot = slot
        self.key = key
        self.khash = key_hash(key)
        self.used_floor = used_floor
        self.carry = carry
        self.knowledge = table.knowledge_for(layout)
        self.phase = IDLE
        self.own: Value | None = None
        self.value: Value | None = None  # value being written in the current set
        self.rs = -1
        self.attempt = 0
        self.round_trips = 0
        self.conflicts = 0
        self.decided: Value | None = None
        self._skip_read = False

    # -- events ---------------------------------------------------------------------------------

    def start(self, value: Value) -> list[Action]:
        if self.phase != IDLE:
            raise RuntimeError("proposer already started")
        self.own = value
        first = self.layout.first_set
        if self.layout.transition:
            # An older epoch is live: the first set of this one has earlier sets, so neither
            # the fast path nor the phase-1 skip may write it without reading first.
            return self._new_attempt()
        seg = self.layout.segment_of(first)
        if seg.kind == INTERSECTING:
            self.attempt = 1
            self.rs = first
            return self._write(own_value(self))
        if self.layout.owner(first, self.khash) == self.slot and first > self.used_floor:
            return self._allocate(first, skip_read=True)
        return self._new_attempt()

    def on_persisted(self, rs: int) -> list[Action]:
        if self.phase != PERSISTING or rs != self.rs:
            return []
        self.used_floor = max(self.used_floor, rs)
        if self._skip_read:
            return self._write(own_value(self))
        return self._read()

    def on_reply(self, server: int, reply: Reply) -> list[Action]:
        fresh = self.knowledge.learn(server, reply.fence, reply.values)
        if self.phase == DONE:
            return []
        first = self.layout.first_set
        for rs in fresh:
            if self.carry and rs < first:
                continue  # carry-over: a decision of an older epoch must still be moved
            value = table.decided_in(self.layout, self.knowledge, rs)
            if value is not None:
                return self._decide(value, rs)
        if self.knowledge.beyond:
            return self._stale()
        if self.phase == READING:
            if self._fenced_out():
                return self._give_up("fenced")  # a write to rs could never reach a quorum
            choice = table.write_choice(self.layout, self.knowledge, self.rs)
            if choice.ready:
                return self._write(choice.value if choice.value is not None else own_value(self))
        elif (
            self.phase == WRITING
            and not reply.ok
            and table.set_is_dead(self.layout, self.knowledge, self.rs, self.value or "")
        ):
            self.conflicts += 1
            return self._give_up("conflict")
        return []

    def on_timeout(self, attempt: int) -> list[Action]:
        if self.phase == DONE or attempt != self.attempt:
            return []
        return self._new_attempt()

    # -- steps ----------------------------------------------------------------------------------

    def _new_attempt(self) -> list[Action]:
        if self.knowledge.beyond:
            return self._stale()
        # Proposals start in the newest epoch, never in an older live one.
        above = max(self.rs, self.used_floor, self.knowledge.max_known(), self.layout.first_set - 1)
        nxt = self._next_set(above)
        if self.layout.segment_of(nxt).kind == INTERSECTING:
            self.attempt += 1
            self.rs = nxt
            return self._read()
        return self._allocate(nxt, skip_read=False)

    def _next_set(self, above: int) -> int:
        """Smallest set above ``above`` this proposer may write: owned, or intersecting."""
        best = self.layout.next_owned(self.slot, self.khash, above)
        for seg in self.layout.fast_sets():
            lo = max(seg.start, above + 1)
            if (seg.end is None or lo < seg.end) and lo < best:
                best = lo
        return best

    def _allocate(self, rs: int, skip_read: bool) -> list[Action]:
        self.attempt += 1
        self.rs = rs
        self.phase = PERSISTING
        self._skip_read = skip_read
        return [Persist(self.key, rs)]

    def _read(self) -> list[Action]:
        self.phase = READING
        self.round_trips += 1
        choice = table.write_choice(self.layout, self.knowledge, self.rs)
        if choice.ready and self.knowledge.replied:
            # Earlier replies (e.g. refusals) already settle every set below: skip phase 1.
            return self._write(choice.value if choice.value is not None else own_value(self))
        msg = Read(self.key, self.rs)
        return [Send(s, msg) for s in range(self.layout.n)]

    def _write(self, value: Value) -> list[Action]:
        self.phase = WRITING
        self.value = value
        self.round_trips += 1
        msg = Write(self.key, self.rs, value)
        members = self.layout.segment_of(self.rs).phase2.members
        return [Send(s, msg) for s in members_of(members)]

    def _fenced_out(self) -> bool:
        """Phase 1 of ``rs`` can no longer lead to a write that decides: retry higher."""
        return table.set_is_dead(self.layout, self.knowledge, self.rs, "")

    def _stale(self) -> list[Action]:
        self.phase = DONE
        return [Stale(self.key)]

    def _give_up(self, reason: str) -> list[Action]:
        self.phase = IDLE  # replies still teach; the runtime calls on_timeout after the backoff
        return [Backoff(self.attempt, reason)]

    def _decide(self, value: Value, rs: int) -> list[Action]:
        self.phase = DONE
        self.decided = value
        fast_layout = self.layout.segment_of(self.layout.first_set).kind == INTERSECTING
        if not fast_layout:
            path = "classic"
        elif rs == self.layout.first_set and self.attempt == 1:
            path = "fast"
        else:
            path = "recovered"
        return [Decide(self.key, value, path)]


def own_value(p: Proposer) -> Value:
    assert p.own is not None
    return p.own
