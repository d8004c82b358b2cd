"""Epochs over stable member identities, and the live view a proposer works with.

An epoch is a configuration: its members, by name, and its layout (whose quorums are over
indices into that epoch's member list). Epoch ``e`` owns the register sets
``[set_id(e, 0), set_id(e + 1, 0))``.

The *live view* is the newest epoch plus every older epoch not yet retired. It is expressed as
one ``Layout`` over the union of the live epochs' members, so the decision table, rule 4 and the
read procedure need nothing new: each set keeps its own epoch's quorums, renamed into the union.
The union lists the newest epoch's members first, in their order, so a member's index (and its
proposer slot) in the view is its index in the newest epoch; members only in older epochs
follow. Every epoch's last segment ends where the next epoch starts, the newest one's included:
a proposer never writes a set of an epoch it does not know (it reports a stale view instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from .layout import Layout, LayoutError, Segment, set_id
from .quorums import Counting, Explicit, Mask, QuorumSystem, members_of


@dataclass(frozen=True)
class Epoch:
    """One configuration: ``layout.epoch == number`` and ``layout.n == len(members)``."""

    number: int
    members: tuple[str, ...]
    layout: Layout

    def __post_init__(self) -> None:
        if self.layout.epoch != self.number:
            raise LayoutError(f"epoch {self.number} has a layout of epoch {self.layout.epoch}")
        if self.layout.n != len(self.members):
            raise LayoutError(
                f"epoch {self.number}: a layout of {self.layout.n} members for "
                f"{len(self.members)} member names"
            )
        if len(set(self.members)) != len(self.members):
            raise LayoutError(f"epoch {self.number}: duplicate member names")


def _rename(system: QuorumSystem, mapping: Sequence[int]) -> QuorumSystem:
    """``system`` with member ``i`` renamed ``mapping[i]``."""

    def move(mask: Mask) -> Mask:
        out = 0
        for i in members_of(mask):
            out |= 1 << mapping[i]
        return out

    if all(mapping[i] == i for i in range(len(mapping))):
        return system
    if isinstance(system, Counting):  # order does not matter to a count: keep the closed forms
        return Counting(move(system.members), system.size)
    return Explicit(move(system.members), tuple(move(q) for q in system.quorums))


@dataclass(frozen=True)
class View:
    """The live epochs (oldest first, consecutive numbers) and the layout they make together."""

    epochs: tuple[Epoch, ...]
    names: tuple[str, ...]  # the union of the live epochs' members; index = view member index
    layout: Layout

    @property
    def newest(self) -> Epoch:
        return self.epochs[-1]

    @property
    def epoch(self) -> int:
        return self.newest.number

    @property
    def transition(self) -> bool:
        return len(self.epochs) > 1

    def index(self, name: str) -> int | None:
        try:
            return self.names.index(name)
        except ValueError:
            return None

    def members_mask(self, names: Sequence[str]) -> Mask:
        mask = 0
        for name in names:
            i = self.index(name)
            if i is not None:
                mask |= 1 << i
        return mask

    def names_of(self, mask: Mask) -> list[str]:
        return [self.names[i] for i in members_of(mask)]


def view(epochs: Sequence[Epoch]) -> View:
    """The live view of ``epochs`` (any order; they must be consecutive)."""
    if not epochs:
        raise LayoutError("a view needs at least one live epoch")
    ordered = tuple(sorted(epochs, key=lambda e: e.number))
    for older, newer in pairwise(ordered):
        if newer.number != older.number + 1:
            raise LayoutError(
                f"live epochs must be consecutive, got {older.number} then {newer.number}"
            )
    newest = ordered[-1]
    names = list(newest.members)
    for epoch in reversed(ordered[:-1]):
        names.extend(m for m in epoch.members if m not in names)
    index = {name: i for i, name in enumerate(names)}
    segments: list[Segment] = []
    for epoch in ordered:
        mapping = [index[m] for m in epoch.members]
        stop = set_id(epoch.number + 1, 0)
        for seg in epoch.layout.segments:
            end = stop if seg.end is None or seg.end > stop else seg.end
            segments.append(
                Segment(
                    seg.start,
                    end,
                    seg.kind,
                    _rename(seg.phase1, mapping),
                    _rename(seg.phase2, mapping),
                )
            )
    layout = Layout(
        len(names),
        tuple(segments),
        newest.layout.proposers,
        newest.number,
        newest.layout.name,
        newest.layout.spec,
        base=set_id(ordered[0].number, 0),
    )
    return View(ordered, tuple(names), layout)


def single(number: int, members: Sequence[str], layout: Layout) -> View:
    return view([Epoch(number, tuple(members), layout)])
