"""Configurations: presets, explicit segments, ownership of restricted sets, layout errors."""

from __future__ import annotations

import zlib
from itertools import pairwise

import pytest

from graven.node.protocol.layout import (
    INTERSECTING,
    RESTRICTED,
    Layout,
    LayoutError,
    epoch_of,
    key_hash,
    set_id,
)
from graven.node.protocol.presets import build
from graven.node.protocol.quorums import Counting, Explicit, Grid, mask_of, members_of


def shape(config: Layout) -> list[tuple[str, str, int | None, int | None]]:
    """(range, kind, phase-1 size, phase-2 size) per segment, sizes for counting systems only."""
    out = []
    for seg in config.segments:
        q1 = seg.phase1.size if isinstance(seg.phase1, Counting) else None
        q2 = seg.phase2.size if isinstance(seg.phase2, Counting) else None
        out.append((seg.describe_range(), seg.kind, q1, q2))
    return out


@pytest.mark.parametrize(
    "block,n,expected",
    [
        ({"preset": "paxos"}, 3, [("sets 0..", RESTRICTED, 2, 2)]),
        (None, 5, [("sets 0..", RESTRICTED, 3, 3)]),
        ({}, 4, [("sets 0..", RESTRICTED, 3, 3)]),
        ({"preset": "flexible", "q1": 2, "q2": 2}, 3, [("sets 0..", RESTRICTED, 2, 2)]),
        ({"preset": "flexible"}, 5, [("sets 0..", RESTRICTED, 3, 3)]),
        ({"preset": "flexible", "q2": 2}, 5, [("sets 0..", RESTRICTED, 4, 2)]),
        (
            {"preset": "fast"},
            3,
            [("set 0", INTERSECTING, 2, 3), ("sets 1..", RESTRICTED, 2, 2)],
        ),
        (
            {"preset": "fast"},
            5,
            [("set 0", INTERSECTING, 3, 4), ("sets 1..", RESTRICTED, 3, 3)],
        ),
        (
            {"preset": "fast", "classicQuorum": 4},
            5,
            [("set 0", INTERSECTING, 4, 4), ("sets 1..", RESTRICTED, 4, 4)],
        ),
        (
            {"preset": "fast", "fastQuorum": 5, "classicQuorum": 3},
            5,
            [("set 0", INTERSECTING, 3, 5), ("sets 1..", RESTRICTED, 3, 3)],
        ),
        (
            {"preset": "colocated"},
            3,
            [("set 0", RESTRICTED, 3, 3), ("sets 1..", RESTRICTED, 2, 2)],
        ),
        (
            {"preset": "colocated", "allSets": 4},
            5,
            [("sets 0..3", RESTRICTED, 5, 5), ("sets 4..", RESTRICTED, 3, 3)],
        ),
    ],
)
def test_presets_build_expected_segments(block: dict | None, n: int, expected: list) -> None:
    config = build(block, n)
    assert shape(config) == expected
    assert config.n == n
    assert config.proposers == n
    assert config.segments[-1].end is None


def test_fixed_majority_uses_one_specific_majority_for_set_0() -> None:
    config = build({"preset": "fixed-majority"}, 5)
    first, rest = config.segments
    assert first.kind == INTERSECTING and first.length == 1
    assert isinstance(first.phase2, Explicit)
    assert [members_of(q) for q in first.phase2.quorums] == [[0, 1, 2]]
    assert isinstance(first.phase1, Counting) and first.phase1.size == 3
    assert rest.kind == RESTRICTED and rest.phase1.size == 3 and rest.phase2.size == 3


@pytest.mark.parametrize("phase1,other", [("rows", "columns"), ("columns", "rows")])
def test_flexible_grid(phase1: str, other: str) -> None:
    config = build({"preset": "flexible", "grid": "2x3", "phase1": phase1}, 6)
    (seg,) = config.segments
    assert isinstance(seg.phase1, Grid) and isinstance(seg.phase2, Grid)
    assert (seg.phase1.rows, seg.phase1.cols, seg.phase1.by) == (2, 3, phase1)
    assert seg.phase2.by == other


def test_flexible_grid_defaults_phase1_to_rows() -> None:
    (seg,) = build({"preset": "flexible", "grid": "3x2"}, 6).segments
    assert seg.phase1.by == "rows"
    assert seg.phase2.by == "columns"


def test_explicit_segments() -> None:
    config = build(
        {
            "proposers": 2,
            "segments": [
                {"sets": 3, "kind": "intersecting", "phase2": {"type": "counting", "size": 4}},
                {"sets": 1, "phase1": {"type": "explicit", "sets": [[0, 1], [2, 3]]}},
                {"phase1": {"type": "majority", "members": [1, 2, 3]}},
            ],
        },
        4,
    )
    assert config.name == "explicit"
    assert config.proposers == 2
    assert [s.describe_range() for s in config.segments] == ["sets 0..2", "set 3", "sets 4.."]
    assert [s.kind for s in config.segments] == [INTERSECTING, RESTRICTED, RESTRICTED]
    assert config.segments[0].phase2.size == 4
    assert config.segments[0].phase1.size == 3  # majority by default
    assert [members_of(q) for q in config.segments[1].phase1.quorums] == [[0, 1], [2, 3]]
    last = config.segments[2].phase1
    assert last.members == mask_of([1, 2, 3]) and last.size == 2


def test_epochs_keep_relative_numbering() -> None:
    config = build({"preset": "fast"}, 3, epoch=2)
    assert config.first_set == set_id(2, 0)
    assert epoch_of(config.first_set) == 2
    assert [s.describe_range() for s in config.segments] == ["set 0", "sets 1.."]
    assert config.segment_of(set_id(2, 7)).kind == RESTRICTED
    with pytest.raises(LayoutError, match="outside epoch"):
        config.segment_of(set_id(1, 7))


def test_key_hash_is_crc32() -> None:
    assert key_hash("orders/42") == zlib.crc32(b"orders/42")


LAYOUTS = [
    ({"preset": "paxos"}, 3),
    ({"preset": "paxos", "proposers": 4}, 3),
    ({"preset": "fast"}, 5),
    ({"preset": "colocated", "allSets": 3, "proposers": 2}, 3),
    ({"preset": "fixed-majority", "proposers": 1}, 3),
    (
        {
            "proposers": 3,
            "segments": [
                {"sets": 2, "kind": "restricted"},
                {"sets": 2, "kind": "intersecting"},
                {"sets": 5, "kind": "restricted"},
                {"kind": "restricted"},
            ],
        },
        3,
    ),
]
HASHES = [0, 1, 2, 7, 12345, key_hash("some key"), 2**32 - 1]
LIMIT = 40


def owned_chain(config: Layout, slot: int, khash: int) -> list[int]:
    """The restricted sets below LIMIT that ``slot`` would use, in the order next_owned gives."""
    chain, current = [], config.first_set - 1
    while True:
        current = config.next_owned(slot, khash, current)
        if current >= config.first_set + LIMIT:
            return chain
        chain.append(current)


@pytest.mark.parametrize("block,n", LAYOUTS)
@pytest.mark.parametrize("khash", HASHES)
def test_each_restricted_set_has_exactly_one_owner(block: dict, n: int, khash: int) -> None:
    config = build(block, n)
    owned: dict[int, list[int]] = {}
    for slot in range(config.proposers):
        for s in owned_chain(config, slot, khash):
            owned.setdefault(s, []).append(slot)
    for s in range(config.first_set, config.first_set + LIMIT):
        seg = config.segment_of(s)
        if seg.kind == RESTRICTED:
            assert owned.get(s) == [config.owner(s, khash)], f"set {s}"
        else:
            assert s not in owned
            assert config.owner(s, khash) is None


@pytest.mark.parametrize("block,n", LAYOUTS)
@pytest.mark.parametrize("khash", HASHES)
def test_next_owned_is_increasing_and_owned(block: dict, n: int, khash: int) -> None:
    config = build(block, n)
    for slot in range(config.proposers):
        chain = owned_chain(config, slot, khash)
        assert chain, "every slot owns some set below the limit"
        assert chain == sorted(set(chain))
        assert all(config.owner(s, khash) == slot for s in chain)
        # starting from any point gives the next one in the chain
        for above, expected in pairwise(chain):
            assert config.next_owned(slot, khash, above) == expected


def test_next_owned_in_later_epoch() -> None:
    config = build({"preset": "paxos"}, 3, epoch=1)
    first = config.next_owned(0, 0, -1)
    assert first == set_id(1, 0)
    assert config.next_owned(0, 0, first) == set_id(1, 3)


def test_home_slot() -> None:
    paxos = build({"preset": "paxos"}, 5)
    assert [paxos.home_slot(h) for h in range(7)] == [0, 1, 2, 3, 4, 0, 1]
    assert build({"preset": "fast"}, 5).home_slot(3) is None
    assert build({"preset": "fixed-majority"}, 5).home_slot(3) is None
    assert build({"preset": "colocated", "proposers": 2}, 5).home_slot(3) == 1


def test_leader_slot_owns_the_first_restricted_set() -> None:
    for preset in ("paxos", "fast", "fixed-majority", "colocated", "flexible"):
        layout = build({"preset": preset}, 5)
        for h in range(12):
            leader = layout.leader_slot(h)
            first_restricted = next(
                rs for rs in range(10) if layout.segment_of(rs).kind == "restricted"
            )
            assert layout.owner(first_restricted, h) == leader, (preset, h)
            if layout.home_slot(h) is not None:
                assert leader == layout.home_slot(h)


def test_next_owned_runs_out_when_the_last_segment_is_intersecting() -> None:
    config = build({"segments": [{"sets": 2, "kind": "restricted"}, {"kind": "intersecting"}]}, 3)
    assert config.next_owned(1, 0, -1) == 1
    with pytest.raises(LayoutError, match="no client-restricted set"):
        config.next_owned(1, 0, 1)


@pytest.mark.parametrize(
    "block,n,message",
    [
        ({"preset": "raft"}, 3, "unknown preset 'raft'"),
        ({"preset": "paxos", "q1": 2}, 3, "does not take \\['q1'\\]"),
        ({"preset": "fast", "grid": "1x3"}, 3, "does not take \\['grid'\\]"),
        ({"preset": "paxos", 1: 2, "x": 3}, 3, "does not take"),
        ({"preset": "flexible", "grid": "2x4"}, 6, "needs 8 members"),
        ({"preset": "flexible", "grid": "two by three"}, 6, "ROWSxCOLUMNS"),
        ({"preset": "flexible", "grid": "0x3"}, 6, "positive"),
        ({"preset": "flexible", "grid": "2x3", "q1": 2}, 6, "either q1/q2 or grid"),
        ({"preset": "flexible", "grid": "2x3", "phase1": "diagonal"}, 6, "rows' or 'columns"),
        ({"preset": "flexible", "phase1": "rows"}, 6, "only applies with grid"),
        ({"preset": "flexible", "q1": "2"}, 3, "'q1' must be an integer"),
        ({"preset": "flexible", "q1": True}, 3, "'q1' must be an integer"),
        ({"preset": "flexible", "q2": 4}, 3, "'q2' must be between 1 and 3"),
        ({"preset": "fast", "fastQuorum": 0}, 3, "'fastQuorum' must be between"),
        ({"preset": "paxos", "proposers": 0}, 3, "'proposers' must be between"),
        ({"preset": "colocated", "allSets": 2.5}, 3, "'allSets' must be an integer"),
        ({"segments": []}, 3, "non-empty list"),
        ({"segments": "paxos"}, 3, "non-empty list"),
        ({"segments": [{"kind": "restricted"}], "preset": "paxos"}, 3, "cannot be combined"),
        ({"segments": [{"kind": "fast"}]}, 3, "kind must be"),
        ({"segments": [{"sets": 2}]}, 3, "last segment is infinite"),
        ({"segments": [{"quorum": 2}]}, 3, "unknown field"),
        ({"segments": ["x"]}, 3, "must be a mapping"),
        ({"segments": [{"phase1": {"type": "all"}}]}, 3, "type must be one of"),
        ({"segments": [{"phase1": "majority"}]}, 3, "expected a mapping"),
        ({"segments": [{"phase1": {"type": "counting", "size": 4}}]}, 3, "between 1 and 3"),
        ({"segments": [{"phase2": {"type": "explicit", "sets": [[0, 3]]}}]}, 3, "indices 0..2"),
        ({"segments": [{"phase2": {"type": "explicit", "sets": []}}]}, 3, "non-empty list"),
        ({"segments": [{"phase1": {"type": "majority", "members": [5]}}]}, 3, "indices 0..2"),
        ({"segments": [{"phase1": {"type": "majority", "members": []}}]}, 3, "must not be empty"),
        (
            {"segments": [{"phase1": {"type": "grid", "rows": 2, "columns": 2}}]},
            3,
            "needs 4 members",
        ),
        (
            {"segments": [{"phase1": {"type": "grid", "rows": 1, "columns": 3, "by": "x"}}]},
            3,
            "by must be",
        ),
        ("paxos", 3, "must be a mapping"),
        (["preset", "paxos"], 3, "must be a mapping"),
        ({"preset": "paxos"}, 0, "members must be between 1 and 16"),
        ({"preset": "paxos"}, 17, "members must be between 1 and 16"),
        ({"preset": "paxos"}, "3", "members must be an integer"),
        ({"preset": "paxos"}, True, "members must be an integer"),
    ],
)
def test_layout_errors(block: object, n: object, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        build(block, n)  # type: ignore[arg-type]
