"""Which members this node currently reaches, and what that leaves of the layout's quorums.

A member goes *down* when a request to it fails (connection refused, timeout, 5xx) and *up* again
when a request or a probe succeeds. Nothing here does I/O: the peer channels report, the proposer
runtime asks. Decisions need the layout's last segment (it is infinite, so every retry can reach
it): a phase-1 and a phase-2 quorum of it among the members that are up.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

from ..protocol.layout import Layout
from ..protocol.quorums import Counting, Mask, QuorumSystem, members_of, popcount


def resilience_within(system: QuorumSystem, up: Mask) -> int:
    """How many more of the ``up`` members may fail while a quorum of ``system`` survives.

    -1 when no quorum lies within ``up`` already.
    """
    if isinstance(system, Counting):  # closed form: the quorums are all k-subsets
        left = popcount(system.members & up) - system.size
        return left if system.size >= 1 and left >= 0 else -1
    alive = [q for q in system.quorums if q & up == q]
    if not alive:
        return -1
    universe = members_of(up & system.members)
    for size in range(1, len(universe) + 1):
        for combo in combinations(universe, size):
            hit = 0
            for m in combo:
                hit |= 1 << m
            if all(q & hit for q in alive):
                return size - 1
    return len(universe)


class Reachability:
    def __init__(self, layout: Layout, names: list[str], self_index: int | None) -> None:
        self.layout = layout
        self.names = names
        self.self_index = self_index
        self._up: Mask = layout.members
        self.reasons: dict[int, str] = {}
        self._margin_cache: dict[Mask, int] = {}
        self.on_down: Callable[[int], None] | None = None  # e.g. start probing the member

    @property
    def up_mask(self) -> Mask:
        return self._up

    def is_up(self, member: int) -> bool:
        return bool(self._up >> member & 1)

    def mark_down(self, member: int, reason: str) -> None:
        if member == self.self_index:
            return  # this node's own acceptor is called in-process
        self.reasons[member] = reason
        if self.is_up(member):
            self._up &= ~(1 << member)
            if self.on_down is not None:
                self.on_down(member)

    def mark_up(self, member: int) -> None:
        self._up |= 1 << member
        self.reasons.pop(member, None)

    def can_decide(self, mask: Mask) -> bool:
        """Can members ``mask`` complete phase 1 and phase 2 of the last segment?"""
        last = self.layout.segments[-1]
        return last.phase1.is_quorum(mask) and last.phase2.is_quorum(mask)

    def margin(self) -> int:
        """graven_quorum_margin: min over the last segment's phases of resilience within up."""
        up = self._up
        cached = self._margin_cache.get(up)
        if cached is None:
            last = self.layout.segments[-1]
            cached = min(resilience_within(last.phase1, up), resilience_within(last.phase2, up))
            self._margin_cache[up] = cached
        return cached

    def describe(self, members: Mask) -> str:
        """``demo-1 (connection refused), demo-2 (timed out)``."""
        parts = []
        for m in members_of(members):
            reason = self.reasons.get(m)
            parts.append(f"{self.names[m]} ({reason})" if reason else self.names[m])
        return ", ".join(parts)
