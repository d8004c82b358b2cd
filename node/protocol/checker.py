"""Layout checker: conditions C1-C3 of the design note over a layout's segments.

Pure: a ``Layout`` in, a ``LayoutReport`` out. Only minimal quorums are examined (supersets
keep every intersection). Counting systems are never enumerated: a counter-example is built
directly, because 16 members can have C(16, 8) = 12870 minimal quorums and C3 looks at pairs.

- C1: the phase-2 quorums of an intersecting segment pairwise intersect. Restricted segments hold
  it by construction (static round-robin ownership in ``layout``).
- C2: every phase-1 quorum of a later set meets every phase-2 quorum of an earlier set.
- C3: every phase-1 quorum of a later set meets every pair of phase-2 quorums of an earlier
  intersecting set (three-way intersection).

"Later" includes a segment against itself when it spans more than one register set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from .layout import INTERSECTING, Layout, Segment
from .quorums import Counting, Mask, QuorumSystem, mask_of, members_of, popcount

# Counter-examples kept per (condition, segment pair): enough to see the pattern, short to read.
MAX_EXAMPLES = 3

C2_C3_NOTE = (
    "C2/C3 failures do not break agreement by themselves: a client that finishes phase 1 by its "
    "decision table stays safe, it just needs more replies than a phase-1 quorum, so the "
    "fault-tolerance figures below are not guaranteed."
)
C1_NOTE = (
    "C1 failures are real safety bugs: two clients can decide different values in the same "
    "register set, and no runtime check can catch it."
)


@dataclass(frozen=True)
class Violation:
    condition: str  # "C1", "C2" or "C3"
    earlier: str  # segment holding the phase-2 quorums
    later: str  # segment holding the phase-1 quorum (the same segment for C1)
    quorums: tuple[tuple[int, ...], ...]  # C1: (a, b); C2: (phase-1, phase-2); C3: (p1, a, b)
    message: str

    def to_dict(self) -> dict:
        return {
            "condition": self.condition,
            "earlier": self.earlier,
            "later": self.later,
            "quorums": [list(q) for q in self.quorums],
            "message": self.message,
        }


@dataclass(frozen=True)
class SegmentTolerance:
    segment: str
    kind: str
    phase1: int  # member failures that leave some phase-1 quorum alive
    phase2: int  # member failures that leave some phase-2 quorum alive

    def to_dict(self) -> dict:
        return {
            "segment": self.segment,
            "kind": self.kind,
            "phase1": self.phase1,
            "phase2": self.phase2,
        }


@dataclass(frozen=True)
class LayoutReport:
    preset: str
    members: int
    safe: bool
    violations: tuple[Violation, ...]
    segments: tuple[SegmentTolerance, ...]
    tolerates: int  # failures the cluster survives and still decides (last, infinite segment)
    fast_path_tolerates: int | None  # failures the one-round-trip path survives; None: no such path

    def to_dict(self) -> dict:
        return {
            "preset": self.preset,
            "members": self.members,
            "safe": self.safe,
            "violations": [v.to_dict() for v in self.violations],
            "segments": [s.to_dict() for s in self.segments],
            "tolerates": self.tolerates,
            "fast_path_tolerates": self.fast_path_tolerates,
        }

    def render(self) -> str:
        lines = [self._verdict()]
        if self.violations:
            lines.append("")
            lines.extend(_render_violation(v) for v in self.violations)
            lines.append(f"(at most {MAX_EXAMPLES} counter-examples per condition and pair)")
            conditions = {v.condition for v in self.violations}
            if "C1" in conditions:
                lines.append(C1_NOTE)
            if conditions - {"C1"}:
                lines.append(C2_C3_NOTE)
        lines.append("")
        lines.extend(self._tolerance_table())
        return "\n".join(lines)

    def _verdict(self) -> str:
        layout = f"{self.preset} layout over {self.members} members"
        if self.safe:
            return f"SAFE: {layout} satisfies C1-C3."
        conditions = ", ".join(sorted({v.condition for v in self.violations}))
        return f"UNSAFE: {layout} violates {conditions}."

    def _tolerance_table(self) -> list[str]:
        width = max(len("segment"), *(len(s.segment) for s in self.segments))
        rows = [f"{'segment':<{width}}  {'kind':<12}  phase-1  phase-2  (failures tolerated)"]
        for s in self.segments:
            rows.append(f"{s.segment:<{width}}  {s.kind:<12}  {s.phase1:>7}  {s.phase2:>7}")
        rows.append(f"Tolerates {_failures(self.tolerates)} and still decides.")
        if self.fast_path_tolerates is None:
            rows.append("Fast path (one round trip for any client): none.")
        else:
            rows.append(
                f"Fast path (one round trip) tolerates {_failures(self.fast_path_tolerates)}."
            )
        return rows


def check(layout: Layout) -> LayoutReport:
    violations = [*_check_c1(layout), *_check_pairs(layout)]
    last = layout.segments[-1]
    return LayoutReport(
        preset=layout.name,
        members=layout.n,
        safe=not violations,
        violations=tuple(violations),
        segments=tuple(_tolerance(s) for s in layout.segments),
        tolerates=min(last.phase1.resilience, last.phase2.resilience),
        fast_path_tolerates=_fast_path_tolerates(layout),
    )


# ----------------------------------------------------------------------------- conditions


def _check_c1(layout: Layout) -> Iterator[Violation]:
    for seg in layout.segments:
        if seg.kind != INTERSECTING:
            continue
        where = seg.describe_range()
        for a, b in islice(_disjoint_pairs(seg.phase2), MAX_EXAMPLES):
            yield Violation(
                "C1",
                where,
                where,
                (_bits(a), _bits(b)),
                f"phase-2 quorums {_fmt(a)} and {_fmt(b)} of {where} do not intersect, "
                "so two clients can decide different values there.",
            )


def _check_pairs(layout: Layout) -> Iterator[Violation]:
    for earlier, later in _segment_pairs(layout.segments):
        c2 = list(_check_c2(earlier, later))
        yield from c2
        # A C2 failure already fails C3 for the pair; repeating it as C3 would only add noise.
        if earlier.kind == INTERSECTING and not c2:
            yield from _check_c3(earlier, later)


def _segment_pairs(segments: tuple[Segment, ...]) -> Iterator[tuple[Segment, Segment]]:
    """(earlier, later) for every ordered pair, plus (s, s) when s spans several sets."""
    for j, later in enumerate(segments):
        for earlier in segments[:j]:
            yield earlier, later
        if later.length is None or later.length > 1:
            yield later, later


def _check_c2(earlier: Segment, later: Segment) -> Iterator[Violation]:
    before, after = _names(earlier, later)
    for q1, q2 in islice(_c2_witnesses(later.phase1, earlier.phase2), MAX_EXAMPLES):
        yield Violation(
            "C2",
            earlier.describe_range(),
            later.describe_range(),
            (_bits(q1), _bits(q2)),
            f"phase-1 quorum {_fmt(q1)} of {after} does not meet phase-2 quorum {_fmt(q2)} "
            f"of {before}, so replies from that phase-1 quorum alone cannot rule out "
            "a decision there.",
        )


def _check_c3(earlier: Segment, later: Segment) -> Iterator[Violation]:
    before, after = _names(earlier, later)
    for q1, a, b in islice(_c3_witnesses(later.phase1, earlier.phase2), MAX_EXAMPLES):
        yield Violation(
            "C3",
            earlier.describe_range(),
            later.describe_range(),
            (_bits(q1), _bits(a), _bits(b)),
            f"phase-1 quorum {_fmt(q1)} of {after} does not meet the intersection of "
            f"phase-2 quorums {_fmt(a)} and {_fmt(b)} of {before} (intersecting), so its "
            "replies alone may not tell which of two values could be decided there.",
        )


def _names(earlier: Segment, later: Segment) -> tuple[str, str]:
    if earlier is later:
        where = earlier.describe_range()
        return f"an earlier set of {where}", f"a later set of {where}"
    return earlier.describe_range(), later.describe_range()


# ----------------------------------------------------------------------------- witnesses


def _disjoint_pairs(system: QuorumSystem) -> Iterator[tuple[Mask, Mask]]:
    """Pairs of distinct quorums that do not intersect (C1 counter-examples)."""
    if isinstance(system, Counting):
        a = _spread(system, 0)
        b = _avoiding(system, a) if a is not None else None
        if a is not None and b is not None:
            yield a, b
        return
    quorums = system.quorums
    for i, a in enumerate(quorums):
        for b in quorums[i + 1 :]:
            if not a & b:
                yield a, b


def _c2_witnesses(phase1: QuorumSystem, phase2: QuorumSystem) -> Iterator[tuple[Mask, Mask]]:
    """Disjoint (phase-1 quorum, phase-2 quorum) pairs."""
    if isinstance(phase1, Counting):
        # Pick the phase-2 quorum first; for a counting phase 2 the one that overlaps the
        # phase-1 members least is the only candidate worth trying.
        for q2 in _candidates(phase2, phase1.members):
            q1 = _avoiding(phase1, q2)
            if q1 is not None:
                yield q1, q2
        return
    for q1 in phase1.quorums:
        q2 = _avoiding(phase2, q1)
        if q2 is not None:
            yield q1, q2


def _c3_witnesses(phase1: QuorumSystem, phase2: QuorumSystem) -> Iterator[tuple[Mask, Mask, Mask]]:
    """(phase-1 quorum, a, b) with a != b phase-2 quorums and an empty three-way intersection.

    a == b is left to C2, which it is exactly.
    """
    if isinstance(phase2, Counting):
        # Only the phase-1 quorum's overlap with the phase-2 members matters, and less is worse.
        for q1 in _candidates(phase1, phase2.members):
            pair = _split_pair(phase2, q1)
            if pair is not None:
                yield q1, *pair
        return
    quorums = phase2.quorums
    for i, a in enumerate(quorums):
        for b in quorums[i + 1 :]:
            q1 = _avoiding(phase1, a & b)
            if q1 is not None:
                yield q1, a, b


def _candidates(system: QuorumSystem, prefer_outside: Mask) -> tuple[Mask, ...]:
    """Quorums to try; for counting, the single one overlapping ``prefer_outside`` least."""
    if isinstance(system, Counting):
        q = _spread(system, prefer_outside)
        return () if q is None else (q,)
    return system.quorums


def _avoiding(system: QuorumSystem, avoid: Mask) -> Mask | None:
    """Some quorum disjoint from ``avoid``, or None."""
    if isinstance(system, Counting):
        return _lowest(system.members & ~avoid, system.size) if _has_quorums(system) else None
    return next((q for q in system.quorums if not q & avoid), None)


def _spread(system: Counting, prefer_outside: Mask) -> Mask | None:
    """A quorum taking members outside ``prefer_outside`` first, or None if there is none."""
    if not _has_quorums(system):
        return None
    first = _take(system.members & ~prefer_outside, system.size)
    return first | _take(system.members & ~first, system.size - popcount(first))


def _split_pair(system: Counting, q1: Mask) -> tuple[Mask, Mask] | None:
    """Distinct quorums a, b of a counting system with ``q1 & a & b == 0``, or None.

    Both take every member outside q1; each then needs ``need`` members of q1, and those must
    not overlap: possible iff 2 * need <= |q1 & members|.
    """
    k, members = system.size, system.members
    if not _has_quorums(system):
        return None
    inside = members & q1
    outside = members & ~q1
    need = max(0, k - popcount(outside))
    if 2 * need > popcount(inside):
        return None
    common = _take(outside, k - need)
    ins = members_of(inside)
    if need:
        a = common | mask_of(ins[:need])
        b = common | mask_of(ins[need : 2 * need])
        return a, b
    # Here a avoids q1 altogether: any other quorum b will do.
    a = common
    spare = members & ~a
    if not spare:
        return None
    b = (a & ~mask_of(members_of(a)[-1:])) | mask_of(members_of(spare)[:1])
    return a, b


# ----------------------------------------------------------------------------- tolerance


def _tolerance(seg: Segment) -> SegmentTolerance:
    return SegmentTolerance(
        seg.describe_range(), seg.kind, seg.phase1.resilience, seg.phase2.resilience
    )


def _fast_path_tolerates(layout: Layout) -> int | None:
    """Resilience of the one-round-trip path: a first set any client may write (intersecting),
    or one whose only phase-2 quorum is every member (co-located)."""
    first = layout.segments[0]
    if first.kind == INTERSECTING or _only_everyone(first.phase2, layout.members):
        return first.phase2.resilience
    return None


def _only_everyone(system: QuorumSystem, everyone: Mask) -> bool:
    if isinstance(system, Counting):
        return system.members == everyone and system.size == popcount(everyone)
    return system.quorums == (everyone,)


# ----------------------------------------------------------------------------- helpers


def _has_quorums(system: Counting) -> bool:
    return 1 <= system.size <= popcount(system.members)


def _take(mask: Mask, count: int) -> Mask:
    """The ``count`` lowest members of ``mask`` (all of them if it has fewer)."""
    return mask_of(members_of(mask)[: max(count, 0)])


def _lowest(mask: Mask, count: int) -> Mask | None:
    """The ``count`` lowest members of ``mask``; None if it has fewer."""
    return _take(mask, count) if popcount(mask) >= count else None


def _bits(mask: Mask) -> tuple[int, ...]:
    return tuple(members_of(mask))


def _fmt(mask: Mask) -> str:
    return "{" + ",".join(map(str, members_of(mask))) + "}"


def _failures(count: int) -> str:
    if count < 0:
        return "no member failure (it has no quorum at all)"
    return f"{count} member failure" + ("" if count == 1 else "s")


def _render_violation(v: Violation) -> str:
    pair = v.earlier if v.condition == "C1" else f"{v.earlier} -> {v.later}"
    return f"  {v.condition} [{pair}] {v.message}"
