"""Layout checker: C1-C3 verdicts, counter-examples, tolerance figures, report text."""

from __future__ import annotations

import json
import time
from itertools import combinations
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.node.protocol.checker import MAX_EXAMPLES, LayoutReport, Violation, check
from graven.node.protocol.layout import INTERSECTING, Layout
from graven.node.protocol.presets import build
from graven.node.protocol.quorums import mask_of


def report(block: dict[str, Any] | None, n: int) -> LayoutReport:
    return check(build(block, n))


def conditions(r: LayoutReport) -> set[str]:
    return {v.condition for v in r.violations}


def explicit(*sets: list[int]) -> dict[str, Any]:
    return {"type": "explicit", "sets": [list(s) for s in sets]}


def mask(q: tuple[int, ...]) -> int:
    return mask_of(q)


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("n,tolerates", [(3, 1), (4, 1), (5, 2), (16, 7)])
def test_paxos_is_safe(n: int, tolerates: int) -> None:
    r = report({"preset": "paxos"}, n)
    assert r.safe and r.violations == ()
    assert r.preset == "paxos" and r.members == n
    assert r.tolerates == tolerates
    assert r.fast_path_tolerates is None


def test_flexible_two_two_of_three_is_safe() -> None:
    r = report({"preset": "flexible", "q1": 2, "q2": 2}, 3)
    assert r.safe
    assert r.tolerates == 1


def test_flexible_q1_too_small_violates_c2() -> None:
    r = report({"preset": "flexible", "q1": 1, "q2": 2}, 3)
    assert not r.safe
    assert conditions(r) == {"C2"}
    for v in r.violations:
        q1, q2 = v.quorums
        assert len(q1) == 1 and len(q2) == 2
        assert not set(q1) & set(q2)
        assert v.earlier == v.later == "sets 0.."
    assert len(r.violations) <= MAX_EXAMPLES


def test_flexible_uneven_counting_is_safe_and_tolerances_differ() -> None:
    r = report({"preset": "flexible", "q1": 4, "q2": 2}, 5)
    assert r.safe
    (seg,) = r.segments
    assert (seg.phase1, seg.phase2) == (1, 3)
    assert r.tolerates == 1


@pytest.mark.parametrize("phase1,p1,p2", [("rows", 1, 2), ("columns", 2, 1)])
def test_flexible_grid_is_safe(phase1: str, p1: int, p2: int) -> None:
    r = report({"preset": "flexible", "grid": "2x3", "phase1": phase1}, 6)
    assert r.safe
    (seg,) = r.segments
    assert (seg.segment, seg.kind, seg.phase1, seg.phase2) == ("sets 0..", "restricted", p1, p2)
    assert r.tolerates == 1


def test_grid_rows_for_both_phases_violates_c2() -> None:
    rows = {"type": "grid", "rows": 2, "columns": 2, "by": "rows"}
    r = report({"segments": [{"phase1": rows, "phase2": rows}]}, 4)
    assert conditions(r) == {"C2"}
    assert {v.quorums for v in r.violations} == {((0, 1), (2, 3)), ((2, 3), (0, 1))}


def test_fast_five_with_fast_quorum_four_is_safe() -> None:
    r = report({"preset": "fast", "fastQuorum": 4}, 5)
    assert r.safe
    assert [(s.segment, s.kind, s.phase1, s.phase2) for s in r.segments] == [
        ("set 0", "intersecting", 2, 1),
        ("sets 1..", "restricted", 2, 2),
    ]
    assert r.tolerates == 2
    assert r.fast_path_tolerates == 1


@pytest.mark.parametrize("n", [3, 4, 5, 7, 16])
def test_fast_default_is_safe(n: int) -> None:
    assert report({"preset": "fast"}, n).safe


def test_fast_quorum_two_of_five_violates_c1() -> None:
    r = report({"preset": "fast", "fastQuorum": 2}, 5)
    assert "C1" in conditions(r)
    c1 = [v for v in r.violations if v.condition == "C1"]
    for v in c1:
        a, b = v.quorums
        assert len(a) == len(b) == 2 and not set(a) & set(b)
        assert v.earlier == v.later == "set 0"
    assert "real safety bug" in r.render()


def test_fast_three_classic_three_of_five_violates_c3_only() -> None:
    r = report({"preset": "fast", "fastQuorum": 3, "classicQuorum": 3}, 5)
    assert conditions(r) == {"C3"}
    (v,) = r.violations
    q1, a, b = v.quorums
    assert (len(q1), len(a), len(b)) == (3, 3, 3)
    assert a != b
    assert not set(q1) & set(a) & set(b)
    assert (v.earlier, v.later) == ("set 0", "sets 1..")


@pytest.mark.parametrize(
    "n,fast,classic,safe",
    # closed form C3: classic + 2 * fast > 2 n (C1: 2 fast > n, C2: classic + fast > n)
    [
        (5, 4, 3, True),
        (5, 4, 2, False),
        (5, 5, 3, True),
        (5, 3, 4, False),
        (7, 5, 4, False),
        (7, 6, 4, True),
    ],
)
def test_fast_closed_form(n: int, fast: int, classic: int, safe: bool) -> None:
    r = report({"preset": "fast", "fastQuorum": fast, "classicQuorum": classic}, n)
    assert r.safe is safe


@pytest.mark.parametrize("all_sets", [1, 3])
def test_colocated_is_safe_with_zero_tolerance_fast_path(all_sets: int) -> None:
    r = report({"preset": "colocated", "allSets": all_sets}, 3)
    assert r.safe
    assert r.fast_path_tolerates == 0
    assert r.tolerates == 1
    assert r.segments[0].phase2 == 0


def test_fixed_majority_is_safe() -> None:
    r = report({"preset": "fixed-majority"}, 5)
    assert r.safe
    assert r.fast_path_tolerates == 0
    assert r.tolerates == 2


def test_sixteen_members_stays_fast() -> None:
    start = time.perf_counter()
    assert report({"preset": "fast"}, 16).safe
    assert not report({"preset": "fast", "fastQuorum": 9}, 16).safe
    assert not report({"preset": "flexible", "q1": 8, "q2": 8}, 16).safe
    assert report({"preset": "flexible", "q1": 9, "q2": 8}, 16).safe
    assert report({"preset": "flexible", "grid": "4x4"}, 16).safe
    assert time.perf_counter() - start < 2.0


# ----------------------------------------------------------------------------- paper figures


def test_figure_6_configuration() -> None:
    # Set 0: the single quorum {S0,S1}; set 1 onwards: {S2,S3}. Phase 1 of set 1 misses set 0.
    layout = {
        "segments": [
            {"sets": 1, "phase1": explicit([0, 1]), "phase2": explicit([0, 1])},
            {"phase1": explicit([2, 3]), "phase2": explicit([2, 3])},
        ]
    }
    r = report(layout, 4)
    assert r.violations == (
        Violation(
            "C2",
            "set 0",
            "sets 1..",
            ((2, 3), (0, 1)),
            r.violations[0].message,
        ),
    )
    assert "{2,3}" in r.violations[0].message and "{0,1}" in r.violations[0].message
    assert r.tolerates == 0


def test_figure_7_configuration() -> None:
    # Every set: quorums {S0,S1} and {S2,S3}, client-restricted round robin.
    q = explicit([0, 1], [2, 3])
    r = report({"segments": [{"phase1": q, "phase2": q}]}, 4)
    assert conditions(r) == {"C2"}
    assert {v.quorums for v in r.violations} == {((0, 1), (2, 3)), ((2, 3), (0, 1))}
    assert r.tolerates == 1


@pytest.mark.parametrize("as_explicit", [False, True])
def test_figure_13_configuration_is_safe(as_explicit: bool) -> None:
    # Every set's quorums are the 3-of-4 subsets, set 0 fast (C3: 3 + 2*3 > 2*4).
    q: dict[str, Any] = {"type": "counting", "size": 3}
    if as_explicit:
        q = explicit(*combinations(range(4), 3))
    layout = {
        "segments": [
            {"sets": 1, "kind": "intersecting", "phase1": q, "phase2": q},
            {"phase1": q, "phase2": q},
        ]
    }
    r = report(layout, 4)
    assert r.safe
    assert r.fast_path_tolerates == 1


def test_two_of_four_fast_set_violates_c1_by_enumeration_and_closed_form() -> None:
    for q in ({"type": "counting", "size": 2}, explicit(*combinations(range(4), 2))):
        layout = {"segments": [{"sets": 1, "kind": "intersecting", "phase2": q}, {}]}
        r = report(layout, 4)
        assert "C1" in conditions(r)


# ----------------------------------------------------------------------------- report


def test_counter_examples_are_capped_but_verdict_counts_all() -> None:
    singles = explicit(*[[i] for i in range(6)])
    r = report({"segments": [{"kind": "intersecting", "phase1": singles, "phase2": singles}]}, 6)
    for cond in ("C1", "C2"):
        assert 1 <= sum(v.condition == cond for v in r.violations) <= MAX_EXAMPLES
    assert not r.safe


def test_report_text_for_unsafe_layout() -> None:
    text = report({"preset": "flexible", "q1": 1, "q2": 2}, 3).render()
    assert text.startswith("UNSAFE: flexible layout over 3 members violates C2.")
    assert "phase-1 quorum {2}" in text and "phase-2 quorum {0,1}" in text
    assert "decision table" in text and "fault-tolerance figures" in text
    assert "real safety bug" not in text
    assert "sets 0.." in text and "phase-1" in text


def test_report_text_for_safe_layout() -> None:
    text = report({"preset": "fast"}, 5).render()
    first = text.splitlines()[0]
    assert first == "SAFE: fast layout over 5 members satisfies C1-C3."
    assert "set 0" in text and "intersecting" in text
    assert "Tolerates 2 member failures and still decides." in text
    assert "Fast path (one round trip) tolerates 1 member failure." in text


def test_report_text_names_c3_quorums() -> None:
    r = report({"preset": "fast", "fastQuorum": 3, "classicQuorum": 3}, 5)
    q1, a, b = r.violations[0].quorums
    text = r.render()
    for q in (q1, a, b):
        assert "{" + ",".join(map(str, q)) + "}" in text


def test_to_dict_is_json_ready() -> None:
    d = report({"preset": "fast", "fastQuorum": 2}, 5).to_dict()
    again = json.loads(json.dumps(d))
    assert again == d
    assert set(d) == {
        "preset",
        "members",
        "safe",
        "violations",
        "segments",
        "tolerates",
        "fast_path_tolerates",
    }
    assert d["safe"] is False
    v = d["violations"][0]
    assert set(v) == {"condition", "earlier", "later", "quorums", "message"}
    assert v["condition"] == "C1" and v["quorums"] == [[0, 1], [2, 3]]
    assert d["segments"][0] == {
        "segment": "set 0",
        "kind": "intersecting",
        "phase1": 2,
        "phase2": 3,
    }


# ----------------------------------------------------------------------------- brute force


def brute_force(config: Layout) -> dict[tuple[str, str, str], bool]:
    """Which (condition, earlier, later) fail, by enumerating every minimal quorum."""
    out: dict[tuple[str, str, str], bool] = {}
    segs = config.segments
    for seg in segs:
        if seg.kind == INTERSECTING:
            qs = seg.phase2.quorums
            bad = any(not a & b for a, b in combinations(qs, 2))
            out["C1", seg.describe_range(), seg.describe_range()] = bad
    for j, later in enumerate(segs):
        earlier_list = list(segs[:j])
        if later.length is None or later.length > 1:
            earlier_list.append(later)
        for earlier in earlier_list:
            key = (earlier.describe_range(), later.describe_range())
            p1, p2 = later.phase1.quorums, earlier.phase2.quorums
            c2 = any(not q1 & q2 for q1 in p1 for q2 in p2)
            out["C2", *key] = c2
            if earlier.kind == INTERSECTING:
                # the checker leaves C3 unreported when C2 already fails for the pair
                out["C3", *key] = not c2 and any(
                    not q1 & a & b for q1 in p1 for a, b in combinations(p2, 2)
                )
    return out


def system_strategy(n: int) -> st.SearchStrategy[dict[str, Any]]:
    subset = st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True)
    counting = subset.flatmap(
        lambda ms: st.integers(1, len(ms)).map(
            lambda k: {"type": "counting", "size": k, "members": sorted(ms)}
        )
    )
    majority = subset.map(lambda ms: {"type": "majority", "members": sorted(ms)})
    listed = st.lists(subset, min_size=1, max_size=5).map(
        lambda sets: {"type": "explicit", "sets": sets}
    )
    return st.one_of(counting, majority, listed)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    n = draw(st.integers(2, 6))
    count = draw(st.integers(1, 3))
    segments = []
    for i in range(count):
        seg: dict[str, Any] = {
            "kind": draw(st.sampled_from(["restricted", "intersecting"])),
            "phase1": draw(system_strategy(n)),
            "phase2": draw(system_strategy(n)),
        }
        if i < count - 1:
            seg["sets"] = draw(st.integers(1, 2))
        segments.append(seg)
    return {"segments": segments}, n


def is_quorum_of(q: tuple[int, ...], quorums: tuple[int, ...]) -> bool:
    return mask(q) in quorums


@settings(max_examples=300, deadline=None)
@given(layouts())
def test_checker_agrees_with_brute_force(case: tuple[dict[str, Any], int]) -> None:
    block, n = case
    config = build(block, n)
    r = check(config)
    expected = brute_force(config)
    found = {(v.condition, v.earlier, v.later) for v in r.violations}
    assert found == {k for k, bad in expected.items() if bad}
    assert r.safe == (not any(expected.values()))
    by_range = {s.describe_range(): s for s in config.segments}
    for v in r.violations:
        earlier, later = by_range[v.earlier], by_range[v.later]
        masks = [mask(q) for q in v.quorums]
        if v.condition == "C1":
            a, b = masks
            assert a != b and not a & b
            assert a in earlier.phase2.quorums and b in earlier.phase2.quorums
        elif v.condition == "C2":
            q1, q2 = masks
            assert not q1 & q2
            assert q1 in later.phase1.quorums and q2 in earlier.phase2.quorums
        else:
            q1, a, b = masks
            assert a != b and not q1 & a & b
            assert q1 in later.phase1.quorums
            assert a in earlier.phase2.quorums and b in earlier.phase2.quorums
