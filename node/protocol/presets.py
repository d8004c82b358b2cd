"""Presets and the layout schema: a ``spec.quorums`` block -> ``Layout``.

The same block sits under a ConsensusCluster's spec.quorums and in layout files:

    preset: paxos | flexible | fast | colocated | fixed-majority     (or: segments: [...])
    q1, q2            flexible with counting quorums
    grid: "RxC"       flexible with grid quorums; phase1: rows | columns (default rows)
    fastQuorum, classicQuorum     fast
    allSets           colocated: how many leading sets use the single all-members quorum
    proposers         proposer slots for restricted sets (default: members)
    segments:         explicit layout, each {sets?: N, kind, phase1, phase2}; the last is infinite
      phase1/phase2:  {type: majority} | {type: counting, size: K} |
                      {type: grid, rows, columns, by: rows|columns} | {type: explicit, sets: [[..]]}
                      optional members: [indices] restricts a counting/majority/grid system.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .layout import INTERSECTING, KINDS, RESTRICTED, Layout, LayoutError, Segment, set_id
from .quorums import Counting, Explicit, Grid, QuorumSystem, majority, mask_of, popcount

PRESETS = ("paxos", "flexible", "fast", "colocated", "fixed-majority")
MAX_MEMBERS = 16

PRESET_KEYS = {
    "paxos": set(),
    "flexible": {"q1", "q2", "grid", "phase1"},
    "fast": {"fastQuorum", "classicQuorum"},
    "colocated": {"allSets"},
    "fixed-majority": set(),
}
COMMON_KEYS = {"preset", "proposers", "segments"}


def _int(block: Mapping[str, Any], name: str, lo: int, hi: int, default: int | None = None) -> int:
    value = block.get(name, default)
    if value is None:
        raise LayoutError(f"'{name}' is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise LayoutError(f"'{name}' must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise LayoutError(f"'{name}' must be between {lo} and {hi}, got {value}")
    return value


def _parse_grid(text: Any, n: int) -> tuple[int, int]:
    if isinstance(text, Mapping):
        rows, cols = text.get("rows"), text.get("columns")
    else:
        parts = str(text).lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise LayoutError(f"grid must look like ROWSxCOLUMNS (e.g. 2x3), got {text!r}")
        rows, cols = (int(p) for p in parts)
    if not isinstance(rows, int) or not isinstance(cols, int) or rows < 1 or cols < 1:
        raise LayoutError(f"grid rows and columns must be positive integers, got {text!r}")
    if rows * cols != n:
        raise LayoutError(f"a {rows}x{cols} grid needs {rows * cols} members, the cluster has {n}")
    return rows, cols


def _quorum_system(spec: Any, n: int, where: str) -> QuorumSystem:
    if not isinstance(spec, Mapping):
        raise LayoutError(f"{where}: expected a mapping with 'type', got {spec!r}")
    kind = spec.get("type")
    members_list = spec.get("members")
    if members_list is None:
        members = (1 << n) - 1
    else:
        if not isinstance(members_list, list) or not all(
            isinstance(m, int) and not isinstance(m, bool) and 0 <= m < n for m in members_list
        ):
            raise LayoutError(f"{where}.members must be a list of member indices 0..{n - 1}")
        if not members_list:
            raise LayoutError(f"{where}.members must not be empty")
        members = mask_of(members_list)
    size = popcount(members)
    if kind == "majority":
        return majority(members)
    if kind == "counting":
        return Counting(members, _int(spec, "size", 1, size))
    if kind == "grid":
        rows = _int(spec, "rows", 1, MAX_MEMBERS)
        cols = _int(spec, "columns", 1, MAX_MEMBERS)
        if rows * cols != size:
            raise LayoutError(f"{where}: a {rows}x{cols} grid needs {rows * cols} members")
        by = spec.get("by", "rows")
        if by not in ("rows", "columns"):
            raise LayoutError(f"{where}.by must be 'rows' or 'columns', got {by!r}")
        return Grid(members, rows, cols, by)
    if kind == "explicit":
        sets = spec.get("sets")
        if not isinstance(sets, list) or not sets:
            raise LayoutError(f"{where}.sets must be a non-empty list of member index lists")
        masks = []
        for s in sets:
            if (
                not isinstance(s, list)
                or not s
                or not all(isinstance(m, int) and not isinstance(m, bool) and 0 <= m < n for m in s)
            ):
                raise LayoutError(f"{where}.sets: each quorum must list member indices 0..{n - 1}")
            masks.append(mask_of(s))
        union = 0
        for m in masks:
            union |= m
        return Explicit(union, tuple(masks))
    raise LayoutError(
        f"{where}.type must be one of majority, counting, grid, explicit; got {kind!r}"
    )


def _segments(
    specs: list[tuple[int | None, str, QuorumSystem, QuorumSystem]], epoch: int
) -> tuple[Segment, ...]:
    out, start = [], set_id(epoch, 0)
    for i, (length, kind, q1, q2) in enumerate(specs):
        last = i == len(specs) - 1
        end = None if last else start + (length or 1)
        out.append(Segment(start, end, kind, q1, q2))
        if end is not None:
            start = end
    return tuple(out)


def build(block: Mapping[str, Any] | None, members: int, epoch: int = 0) -> Layout:
    """Build a layout from a layout block (``spec.quorums``) for ``members`` members."""
    if isinstance(members, bool) or not isinstance(members, int):
        raise LayoutError(f"members must be an integer, got {members!r}")
    if not 1 <= members <= MAX_MEMBERS:
        raise LayoutError(f"members must be between 1 and {MAX_MEMBERS}, got {members}")
    if block is not None and not isinstance(block, Mapping):
        raise LayoutError(f"the layout must be a mapping (preset, segments, ...), got {block!r}")
    block = dict(block or {"preset": "paxos"})
    n = members
    every = (1 << n) - 1
    proposers = _int(block, "proposers", 1, 1 << 16, default=n)

    if "segments" in block:
        extra = set(block) - {"segments", "proposers"}
        if extra:
            raise LayoutError(f"explicit segments cannot be combined with {sorted(extra, key=str)}")
        segs = block["segments"]
        if not isinstance(segs, list) or not segs:
            raise LayoutError("'segments' must be a non-empty list")
        specs: list[tuple[int | None, str, QuorumSystem, QuorumSystem]] = []
        for i, seg in enumerate(segs):
            where = f"segments[{i}]"
            if not isinstance(seg, Mapping):
                raise LayoutError(f"{where} must be a mapping")
            unknown = set(seg) - {"sets", "kind", "phase1", "phase2"}
            if unknown:
                raise LayoutError(f"{where}: unknown field(s) {sorted(unknown, key=str)}")
            kind = seg.get("kind", RESTRICTED)
            if kind not in KINDS:
                raise LayoutError(f"{where}.kind must be 'restricted' or 'intersecting'")
            length = None
            if i < len(segs) - 1:
                length = _int(seg, "sets", 1, 1 << 20, default=1)
            elif "sets" in seg:
                raise LayoutError(f"{where}: the last segment is infinite; drop 'sets'")
            q1 = _quorum_system(seg.get("phase1", {"type": "majority"}), n, f"{where}.phase1")
            q2 = _quorum_system(seg.get("phase2", {"type": "majority"}), n, f"{where}.phase2")
            specs.append((length, kind, q1, q2))
        return Layout(n, _segments(specs, epoch), proposers, epoch, "explicit", block)

    preset = block.get("preset", "paxos")
    if preset not in PRESETS:
        raise LayoutError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = set(block) - COMMON_KEYS - PRESET_KEYS[preset]
    if unknown:
        raise LayoutError(f"preset {preset!r} does not take {sorted(unknown, key=str)}")
    maj = majority(every)

    if preset == "paxos":
        specs = [(None, RESTRICTED, maj, maj)]
    elif preset == "flexible":
        if "grid" in block:
            if "q1" in block or "q2" in block:
                raise LayoutError("flexible takes either q1/q2 or grid, not both")
            rows, cols = _parse_grid(block["grid"], n)
            phase1 = block.get("phase1", "rows")
            if phase1 not in ("rows", "columns"):
                raise LayoutError("phase1 must be 'rows' or 'columns'")
            other = "columns" if phase1 == "rows" else "rows"
            q1: QuorumSystem = Grid(every, rows, cols, phase1)
            q2: QuorumSystem = Grid(every, rows, cols, other)
        else:
            if "phase1" in block:
                raise LayoutError("phase1 (rows or columns) only applies with grid")
            q2 = Counting(every, _int(block, "q2", 1, n, default=n // 2 + 1))
            q1 = Counting(every, _int(block, "q1", 1, n, default=n - q2.size + 1))
        specs = [(None, RESTRICTED, q1, q2)]
    elif preset == "fast":
        classic = _int(block, "classicQuorum", 1, n, default=n // 2 + 1)
        # Smallest fast quorum meeting C3 against classic phase-1 quorums: q1 + 2 qf > 2n.
        default_fast = max(n // 2 + 1, (2 * n - classic) // 2 + 1)
        fast = _int(block, "fastQuorum", 1, n, default=min(n, default_fast))
        cq = Counting(every, classic)
        specs = [(1, INTERSECTING, cq, Counting(every, fast)), (None, RESTRICTED, cq, cq)]
    elif preset == "colocated":
        k = _int(block, "allSets", 1, 1 << 20, default=1)
        everyone = Counting(every, n)
        specs = [(k, RESTRICTED, everyone, everyone), (None, RESTRICTED, maj, maj)]
    else:  # fixed-majority
        first = mask_of(range(n // 2 + 1))
        fixed = Explicit(first, (first,))
        specs = [(1, INTERSECTING, maj, fixed), (None, RESTRICTED, maj, maj)]
    return Layout(n, _segments(specs, epoch), proposers, epoch, preset, block)
