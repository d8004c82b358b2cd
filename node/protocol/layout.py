"""The layout model: ordered segments of register sets, and who owns which set.

The user's "layout" (``spec.quorums``, ``graven layout check``) is this ``Layout``; it is built
from its schema block by ``presets.build``.

A register set id is an ``int``. The epoch sits in the high bits (``set_id(epoch, index)``) so a
later layout (a new epoch) can take over from a register-set boundary without renumbering anything.
Within an epoch, a layout is a list of segments ``[start, end)`` (the last one infinite),
each with a kind, phase-1 and phase-2 quorum systems and its members.

Ownership of client-restricted sets is static round robin over ``proposers`` slots, rotated by a
hash of the key: proposer slot ``p`` owns relative set ``i`` of a restricted segment for key hash
``h`` iff ``(i + h) % proposers == p``. So set 0 of every key has exactly one owner (the key's
*home* slot) which may skip phase 1, every slot gets an infinite ordered share of every segment,
and two slots never own the same set (condition C1 for restricted sets holds by construction).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .quorums import Mask, QuorumSystem

EPOCH_BITS = 40
EPOCH_SIZE = 1 << EPOCH_BITS

RESTRICTED = "restricted"  # client-restricted: one owner per set
INTERSECTING = "intersecting"  # quorum-intersecting: any client may write ("fast")
KINDS = (RESTRICTED, INTERSECTING)


class LayoutError(ValueError):
    """A layout that cannot be built (bad input, not an unsafe layout)."""


def set_id(epoch: int, index: int) -> int:
    return (epoch << EPOCH_BITS) | index


def epoch_of(register_set: int) -> int:
    return register_set >> EPOCH_BITS


def key_hash(key: str) -> int:
    """Stable across processes and machines (unlike ``hash``)."""
    return zlib.crc32(key.encode())


@dataclass(frozen=True)
class Segment:
    start: int
    end: int | None  # None: infinite
    kind: str
    phase1: QuorumSystem
    phase2: QuorumSystem

    def __contains__(self, register_set: int) -> bool:
        return self.start <= register_set and (self.end is None or register_set < self.end)

    @property
    def length(self) -> int | None:
        return None if self.end is None else self.end - self.start

    @property
    def members(self) -> Mask:
        return self.phase1.members | self.phase2.members

    def describe_range(self) -> str:
        start = self.start % EPOCH_SIZE
        if self.end is None:
            return f"sets {start}.."
        end = (self.end - 1) % EPOCH_SIZE
        return f"set {start}" if end == start else f"sets {start}..{end}"


@dataclass(frozen=True)
class Layout:
    """One epoch's layout: segments covering ``[set_id(epoch, 0), set_id(epoch + 1, 0))``.

    A *live view* (``epochs.View``) is also a ``Layout``: the segments of every live epoch,
    oldest first, over the union of their members, with ``base`` the first set of the oldest
    live epoch. The decision table reads from ``base``; proposals start at ``first_set`` (the
    newest epoch); while an older epoch is live (``transition``) there is no fast path and no
    phase-1 skip, because the first set of the newest epoch has earlier sets.
    """

    n: int
    segments: tuple[Segment, ...]
    proposers: int
    epoch: int = 0
    name: str = "explicit"
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False)
    base: int | None = None  # first set of the oldest live epoch (None: this epoch's first)

    @property
    def members(self) -> Mask:
        return (1 << self.n) - 1

    @property
    def first_set(self) -> int:
        """Where proposals start: the first set of the newest epoch."""
        return set_id(self.epoch, 0)

    @property
    def base_set(self) -> int:
        """Where the decision table starts: the first set of the oldest live epoch."""
        return self.first_set if self.base is None else self.base

    @property
    def end(self) -> int | None:
        """First register set past this view (None: unbounded, a bare preset layout)."""
        return self.segments[-1].end

    @property
    def transition(self) -> bool:
        """Is an older epoch still live (no fast path, no phase-1 skip)?"""
        return self.base_set < self.first_set

    @property
    def fast_first(self) -> bool:
        """May any proposer write the first register set at once (quorum-intersecting, and no
        older live epoch whose sets come before it)?"""
        return not self.transition and self.segment_of(self.first_set).kind == INTERSECTING

    def segment_of(self, register_set: int) -> Segment:
        for seg in self.segments:
            if register_set in seg:
                return seg
        raise LayoutError(f"register set {register_set} is outside epoch {self.epoch}")

    def owner(self, register_set: int, khash: int) -> int | None:
        """Proposer slot owning a restricted set for a key; None for intersecting sets."""
        seg = self.segment_of(register_set)
        if seg.kind == INTERSECTING:
            return None
        return (register_set - seg.start + khash) % self.proposers

    def next_owned(self, slot: int, khash: int, above: int) -> int:
        """Smallest restricted set > ``above`` (or >= first set) owned by ``slot`` for the key."""
        for seg in self.segments:
            if seg.kind != RESTRICTED:
                continue
            lo = max(seg.start, above + 1)
            if seg.end is not None and lo >= seg.end:
                continue
            # relative index i with (i + khash) % P == slot, i >= lo - start
            rel = lo - seg.start
            delta = (slot - khash - rel) % self.proposers
            candidate = seg.start + rel + delta
            if seg.end is None or candidate < seg.end:
                return candidate
        raise LayoutError("the layout has no client-restricted set left for this proposer")

    def home_slot(self, khash: int) -> int | None:
        """Slot that owns the very first set of the key (may skip phase 1), if restricted."""
        return self.owner(self.first_set, khash)

    def leader_slot(self, khash: int) -> int | None:
        """Slot owning the key's first client-restricted set: the home on layouts that start
        restricted, else the proposer that recovers the key after a conflict on the fast sets
        (sending a key's fallback proposals there lets them queue instead of duel)."""
        for seg in self.segments:
            if seg.kind == RESTRICTED and seg.start >= self.first_set:
                return khash % self.proposers
        return None

    def fast_sets(self) -> list[Segment]:
        return [s for s in self.segments if s.kind == INTERSECTING and s.start >= self.first_set]

    def to_spec(self) -> dict:
        return dict(self.spec)
