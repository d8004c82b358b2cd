"""The history checker must pass good histories (indeterminate operations included) and fail
every kind of violation it claims to find."""

from __future__ import annotations

import itertools

import pytest
from gravenfaults.checker import check, report
from gravenfaults.history import Op, dump_history, load_history

_ids = itertools.count()


def put(key, proposed, t0, t1, outcome="ok", value=None, won=None, final=False) -> Op:
    if outcome == "ok" and value is None:
        value = proposed
    if outcome == "ok" and won is None:
        won = value == proposed
    return Op(
        next(_ids),
        0,
        "put",
        key,
        t0,
        t1,
        outcome,
        proposed=proposed,
        value=value if outcome == "ok" else None,
        won=won,
        member="m0",
    )


def get(key, value, t0, t1, outcome="ok", final=False) -> Op:
    return Op(next(_ids), 1, "get", key, t0, t1, outcome, value=value, member="m1", final=final)


def kinds(history: list[Op]) -> set[str]:
    return {v.kind for v in check(history).violations}


def test_a_good_history_passes() -> None:
    h = [
        put("a", "x", 0.0, 1.0),
        put("a", "y", 0.5, 1.5, value="x"),  # lost the race, told so
        get("a", "x", 2.0, 2.1),
        get("b", None, 0.0, 0.1),  # nothing decided yet
        put("b", "z", 0.2, 0.4),
        get("b", "z", 0.3, 0.5),  # concurrent with the PUT: may see it
        get("a", "x", 3.0, 3.1, final=True),
        get("b", "z", 3.0, 3.1, final=True),
    ]
    result = check(h)
    assert result.valid, report(result)
    assert result.lost_acknowledged == 0 and result.unverified == 0


def test_indeterminate_puts_may_or_may_not_take_effect() -> None:
    h = [
        put("a", "x", 0.0, 5.0, outcome="info"),  # timed out
        get("a", None, 6.0, 6.1),  # did not happen (yet) ...
        get("a", "x", 7.0, 7.1),  # ... and then it did: Jepsen's info may land any time
        put("a", "y", 8.0, 8.5, value="x"),
        put("c", "q", 0.0, 1.0, outcome="info"),
        get("c", None, 2.0, 2.1, final=True),  # an info PUT that never happened: fine
    ]
    result = check(h)
    assert result.valid, report(result)


def test_failed_operations_are_not_proposals() -> None:
    h = [put("a", "x", 0.0, 0.1, outcome="fail"), get("a", "x", 1.0, 1.1)]
    assert kinds(h) == {"validity"}


def test_agreement_violation_fails() -> None:
    h = [put("a", "x", 0.0, 1.0), put("a", "y", 0.0, 1.0)]
    assert "agreement" in kinds(h)
    h = [put("a", "x", 0.0, 1.0), get("a", "y", 2.0, 2.1), put("a", "y", 0.0, 0.1, outcome="info")]
    assert kinds(h) == {"agreement"}


def test_validity_violation_fails() -> None:
    assert kinds([get("a", "never-proposed", 0.0, 0.1)]) == {"validity"}
    # a value from the future: proposed only after the read had completed
    h = [get("a", "x", 0.0, 0.1), put("a", "x", 1.0, 1.1)]
    assert kinds(h) == {"validity"}


def test_won_flag_violations_fail() -> None:
    assert kinds([put("a", "x", 0, 1, value="x", won=False)]) == {"won"}
    h = [put("a", "y", 0, 1, outcome="info"), put("a", "x", 0, 1, value="y", won=True)]
    assert kinds(h) == {"won"}
    # two different values both told they won (and so disagreeing)
    h = [put("a", "x", 0, 1, won=True), put("a", "y", 0, 1, value="y", won=True)]
    assert {"won", "agreement"} <= kinds(h)


def test_read_going_back_fails() -> None:
    h = [
        put("a", "x", 0.0, 0.5, outcome="info"),
        get("a", "x", 1.0, 1.1),
        get("a", None, 2.0, 2.1),  # someone saw x decided before this read began
    ]
    result = check(h)
    assert kinds(h) == {"read-went-back"}
    assert result.lost_acknowledged == 0
    # concurrent reads may disagree on "decided yet": no violation
    h = [put("a", "x", 0.0, 0.5, outcome="info"), get("a", "x", 1.0, 2.0), get("a", None, 1.5, 1.6)]
    assert check(h).valid


def test_lost_acknowledged_decision_fails() -> None:
    # acknowledged, then (e.g. after a restart of the whole cluster) read as undecided
    h = [put("a", "x", 0.0, 1.0), get("a", None, 10.0, 10.1, final=True)]
    result = check(h)
    assert kinds(h) == {"lost-acknowledged"}
    assert result.lost_acknowledged == 1


def test_final_read_with_no_answer_is_unverified_not_passed() -> None:
    h = [put("a", "x", 0.0, 1.0), get("a", None, 10.0, 18.0, outcome="info", final=True)]
    result = check(h)
    assert result.valid and result.unverified == 1


def test_report_shows_the_operations_around_a_violation() -> None:
    h = [
        put("a", "x", 0.0, 1.0),
        get("a", "x", 1.5, 1.6),
        put("a", "y", 2.0, 2.2, value="y", won=True),
    ]
    text = report(check(h))
    assert "VIOLATION agreement" in text
    assert "put a='y'" in text and "get a -> 'x'" in text


@pytest.mark.parametrize("n", [1, 3])
def test_history_round_trips_through_a_file(tmp_path, n) -> None:
    h = [put(f"k{i}", f"v{i}", i, i + 1) for i in range(n)] + [
        get("k0", None, 9, 9.5, outcome="info")
    ]
    dump_history(h, tmp_path / "h.jsonl")
    assert load_history(tmp_path / "h.jsonl") == h


def test_the_short_runs_of_all_presets_together_inject_every_nemesis() -> None:
    from gravenfaults.nemeses import ALL, short_kinds
    from gravenfaults.run import PRESETS

    assert set().union(*(short_kinds(i) for i in range(len(PRESETS)))) == set(ALL)
