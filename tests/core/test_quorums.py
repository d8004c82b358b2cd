"""Quorum systems: minimal quorums, membership tests, resilience, mask helpers."""

from __future__ import annotations

import time
from itertools import combinations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graven.node.protocol.quorums import (
    Counting,
    Explicit,
    Grid,
    QuorumSystem,
    majority,
    mask_of,
    members_of,
    popcount,
)


def sets(system: QuorumSystem) -> set[tuple[int, ...]]:
    return {tuple(members_of(q)) for q in system.quorums}


def brute_resilience(system: QuorumSystem) -> int:
    """Largest f such that every f failures leave a quorum alive, by trying every failure set."""
    universe = members_of(system.members)
    if not system.quorums:
        return -1
    for f in range(len(universe) + 1):
        for down in combinations(universe, f):
            dead = mask_of(down)
            if not any(q & dead == 0 for q in system.quorums):
                return f - 1
    return len(universe)


def test_mask_helpers_round_trip() -> None:
    assert mask_of([0, 2, 5]) == 0b100101
    assert members_of(0b100101) == [0, 2, 5]
    assert mask_of([]) == 0 and members_of(0) == []
    assert popcount(mask_of(range(16))) == 16


@given(st.sets(st.integers(min_value=0, max_value=15)))
def test_mask_of_members_of_inverse(members: set[int]) -> None:
    assert members_of(mask_of(members)) == sorted(members)


def test_majority_of_five() -> None:
    q = majority(mask_of(range(5)))
    assert q.size == 3
    assert len(q.quorums) == 10
    assert all(popcount(m) == 3 for m in q.quorums)
    assert q.resilience == 2
    assert q.describe() == "majority (3 of 5)"


def test_counting_over_member_subset() -> None:
    q = Counting(mask_of([1, 3, 4]), 2)
    assert sets(q) == {(1, 3), (1, 4), (3, 4)}
    assert q.resilience == 1
    assert q.describe() == "majority (2 of 3)"


@pytest.mark.parametrize("size", [0, 4])
def test_counting_out_of_range_has_no_quorum(size: int) -> None:
    q = Counting(mask_of(range(3)), size)
    assert q.quorums == ()
    assert q.resilience == -1


@pytest.mark.parametrize("n,k", [(3, 1), (3, 3), (5, 2), (5, 4), (6, 3)])
def test_counting_resilience_matches_brute_force(n: int, k: int) -> None:
    q = Counting(mask_of(range(n)), k)
    assert q.resilience == brute_resilience(q) == n - k


def test_counting_sixteen_members_is_fast() -> None:
    # C(16, 8) quorums: the generic superset filter is quadratic and took seconds here.
    start = time.perf_counter()
    q = Counting(mask_of(range(16)), 8)
    assert len(q.quorums) == 12870
    assert q.resilience == 8
    assert q.is_quorum(mask_of(range(8)))
    assert time.perf_counter() - start < 1.0


def test_grid_rows_and_columns() -> None:
    rows = Grid(mask_of(range(6)), 2, 3, "rows")
    cols = Grid(mask_of(range(6)), 2, 3, "columns")
    assert sets(rows) == {(0, 1, 2), (3, 4, 5)}
    assert sets(cols) == {(0, 3), (1, 4), (2, 5)}
    assert rows.resilience == 1  # one failure per row kills both rows only with 2 failures
    assert cols.resilience == 2
    assert rows.resilience == brute_resilience(rows)
    assert cols.resilience == brute_resilience(cols)
    # every row meets every column
    assert all(r & c for r in rows.quorums for c in cols.quorums)


def test_grid_over_member_subset_uses_members_in_order() -> None:
    g = Grid(mask_of([1, 2, 5, 7]), 2, 2, "columns")
    assert sets(g) == {(1, 5), (2, 7)}


def test_grid_with_wrong_member_count_has_no_quorum() -> None:
    assert Grid(mask_of(range(5)), 2, 3, "rows").quorums == ()


def test_explicit_drops_duplicates_and_supersets() -> None:
    q = Explicit(mask_of(range(4)), (mask_of([0, 1]), mask_of([0, 1, 2]), 0b11, mask_of([2, 3])))
    assert sets(q) == {(0, 1), (2, 3)}
    assert q.describe() == "{0,1} | {2,3}"
    assert q.resilience == 1 == brute_resilience(q)


def test_explicit_single_quorum_tolerates_nothing() -> None:
    q = Explicit(mask_of([0, 1, 2]), (mask_of([0, 1, 2]),))
    assert q.resilience == 0


def test_explicit_resilience_triangle() -> None:
    # {0,1}, {1,2}, {0,2}: any single failure leaves one pair alive.
    q = Explicit(mask_of(range(3)), (0b011, 0b110, 0b101))
    assert q.resilience == 1 == brute_resilience(q)


def test_is_quorum_accepts_supersets_only() -> None:
    q = majority(mask_of(range(5)))
    assert q.is_quorum(mask_of([0, 2, 4]))
    assert q.is_quorum(mask_of([0, 1, 2, 3]))
    assert not q.is_quorum(mask_of([0, 4]))
    g = Grid(mask_of(range(4)), 2, 2, "rows")
    assert g.is_quorum(mask_of([2, 3, 0]))
    assert not g.is_quorum(mask_of([0, 2]))


def test_hits_every_quorum_is_blocking() -> None:
    q = majority(mask_of(range(5)))
    assert q.hits_every_quorum(mask_of([0, 1, 2]))
    assert not q.hits_every_quorum(mask_of([0, 1]))
    cols = Grid(mask_of(range(6)), 2, 3, "columns")
    assert cols.hits_every_quorum(mask_of([0, 4, 2]))
    assert not cols.hits_every_quorum(mask_of([0, 3, 1]))
    assert q.min_blocking_size == 3


@given(
    st.integers(min_value=1, max_value=6).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.sets(st.integers(min_value=0, max_value=n - 1), min_size=1),
                min_size=1,
                max_size=6,
            ),
        )
    )
)
def test_explicit_resilience_matches_brute_force(case: tuple[int, list[set[int]]]) -> None:
    _, raw = case
    masks = tuple(mask_of(s) for s in raw)
    union = 0
    for m in masks:
        union |= m
    q = Explicit(union, masks)
    assert q.resilience == brute_resilience(q)
    # minimal: no kept quorum contains another
    assert not any(a != b and a & b == a for a in q.quorums for b in q.quorums)
    # every original set is a quorum
    assert all(q.is_quorum(m) for m in masks)
