"""Quorum systems over a layout's members.

Members are indices 0..n-1 into the layout's member list; a set of members is an ``int``
bitmask (bit i = member i). Bitmasks keep the decision table and the layout checker cheap: a
membership test is ``q & mask == q`` and an intersection test is ``q & r != 0``.

Every quorum system exposes its *minimal* quorums. That is enough everywhere: a superset of a
quorum keeps every intersection, and the decision table's states carry over to supersets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations

Mask = int
MEMO_MAX = 1 << 16  # answers memoised per quorum system (every mask of 16 members)


def mask_of(members: Iterable[int]) -> Mask:
    mask = 0
    for m in members:
        mask |= 1 << m
    return mask


def members_of(mask: Mask) -> list[int]:
    out, i = [], 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return out


def popcount(mask: Mask) -> int:
    return mask.bit_count()


def _minimal(quorums: Iterable[Mask]) -> tuple[Mask, ...]:
    """Drop duplicates and every quorum that is a strict superset of another."""
    unique = sorted(set(quorums), key=lambda q: (popcount(q), q))
    kept: list[Mask] = []
    for q in unique:
        if not any(k & q == k for k in kept):
            kept.append(q)
    return tuple(kept)


@dataclass(frozen=True)
class QuorumSystem:
    """A family of member sets over ``members`` (a bitmask of the layout's members)."""

    members: Mask

    @property
    def kind(self) -> str:
        raise NotImplementedError

    def minimal_quorums(self) -> tuple[Mask, ...]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def to_spec(self) -> dict:
        raise NotImplementedError

    @cached_property
    def quorums(self) -> tuple[Mask, ...]:
        return _minimal(self.minimal_quorums())

    @cached_property
    def _memo(self) -> tuple[dict[Mask, bool], dict[Mask, bool]]:
        # Answers per mask, because the proposer asks the same few masks again on every reply
        # and the scan over the quorums showed in profiles. Bounded (MEMO_MAX) all the same.
        return {}, {}

    def is_quorum(self, mask: Mask) -> bool:
        memo = self._memo[0]
        answer = memo.get(mask)
        if answer is None:
            answer = any(q & mask == q for q in self.quorums)
            if len(memo) < MEMO_MAX:
                memo[mask] = answer
        return answer

    def hits_every_quorum(self, mask: Mask) -> bool:
        """True when ``mask`` meets every quorum (a 'blocking' set)."""
        memo = self._memo[1]
        answer = memo.get(mask)
        if answer is None:
            answer = all(q & mask for q in self.quorums)
            if len(memo) < MEMO_MAX:
                memo[mask] = answer
        return answer

    @cached_property
    def resilience(self) -> int:
        """Largest f such that some quorum survives any f member failures (-1: no quorum)."""
        if not self.quorums:
            return -1
        return self.min_blocking_size - 1

    @cached_property
    def min_blocking_size(self) -> int:
        """Size of the smallest member set that meets every quorum."""
        universe = members_of(self.members)
        for size in range(1, len(universe) + 1):
            for combo in combinations(universe, size):
                if self.hits_every_quorum(mask_of(combo)):
                    return size
        return len(universe) + 1


@dataclass(frozen=True)
class Counting(QuorumSystem):
    """Any ``size`` of the members (majority when size = n // 2 + 1)."""

    size: int = 0

    @property
    def kind(self) -> str:
        return "counting"

    def minimal_quorums(self) -> tuple[Mask, ...]:
        universe = members_of(self.members)
        if not 1 <= self.size <= len(universe):
            return ()
        return tuple(mask_of(c) for c in combinations(universe, self.size))

    @cached_property
    def quorums(self) -> tuple[Mask, ...]:
        # All k-subsets are already minimal: the generic quadratic filter took ~5 s at 16 members.
        return self.minimal_quorums()

    @cached_property
    def min_blocking_size(self) -> int:
        # Closed form: to meet every k-subset of n you need n - k + 1 members.
        return popcount(self.members) - self.size + 1

    @cached_property
    def resilience(self) -> int:
        # Closed form, so callers need not enumerate up to C(16, 8) quorums.
        if not 1 <= self.size <= popcount(self.members):
            return -1
        return self.min_blocking_size - 1

    def describe(self) -> str:
        n = popcount(self.members)
        if self.size == n // 2 + 1:
            return f"majority ({self.size} of {n})"
        return f"any {self.size} of {n}"

    def to_spec(self) -> dict:
        return {"type": "counting", "size": self.size, "members": members_of(self.members)}


def majority(members: Mask) -> Counting:
    return Counting(members, popcount(members) // 2 + 1)


@dataclass(frozen=True)
class Grid(QuorumSystem):
    """Members laid out row-major in a rows x cols grid.

    ``by="rows"``: a quorum is one full row; ``by="columns"``: one full column. A row always meets
    a column, so rows for one phase and columns for the other is a valid Flexible Paxos layout.
    """

    rows: int = 1
    cols: int = 1
    by: str = "rows"

    @property
    def kind(self) -> str:
        return "grid"

    def _cells(self) -> list[int]:
        return members_of(self.members)

    def minimal_quorums(self) -> tuple[Mask, ...]:
        cells = self._cells()
        if len(cells) != self.rows * self.cols:
            return ()
        if self.by == "rows":
            groups = [cells[r * self.cols : (r + 1) * self.cols] for r in range(self.rows)]
        else:
            groups = [cells[c :: self.cols] for c in range(self.cols)]
        return tuple(mask_of(g) for g in groups)

    def describe(self) -> str:
        unit = "row" if self.by == "rows" else "column"
        return f"any full {unit} of a {self.rows}x{self.cols} grid"

    def to_spec(self) -> dict:
        return {
            "type": "grid",
            "rows": self.rows,
            "columns": self.cols,
            "by": self.by,
            "members": members_of(self.members),
        }


@dataclass(frozen=True)
class Explicit(QuorumSystem):
    """An explicit list of member sets."""

    sets: tuple[Mask, ...] = field(default=())

    @property
    def kind(self) -> str:
        return "explicit"

    def minimal_quorums(self) -> tuple[Mask, ...]:
        return self.sets

    def describe(self) -> str:
        return " | ".join("{" + ",".join(map(str, members_of(q))) + "}" for q in self.quorums)

    def to_spec(self) -> dict:
        return {"type": "explicit", "sets": [members_of(q) for q in self.sets]}
