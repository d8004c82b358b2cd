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
    """One epoch's layout: segments covering ``[set_id(epoch, 0), set_id(epoch + 1, 0))``."""

    n: int
    segments: tuple[Segment, ...]
    proposers: int
    epoch: int = 0
    name: str = "explicit"
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def members(self) -> Mask:
        return (1 << self.n) - 1

    @property
    def first_set(self) -> int:
        return set_id(self.epoch, 0)

    @property
    def fast_first(self) -> bool:
        """Is the first register set quorum-intersecting (any proposer may write it at once)?"""
        return self.segments[0].kind == INTERSECTING

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
            if seg.kind == RESTRICTED:
                return khash % self.proposers
        return None

    def fast_sets(self) -> list[Segment]:
        return [s for s in self.segments if s.kind == INTERSECTING]

    def to_spec(self) -> dict:
        return dict(self.spec)
