"""The paper's worked examples (GS Fig. 6, 7, 13, 14) as test vectors for the decision table."""

from graven.node.protocol import presets as cfg
from graven.node.protocol import table


def states(config, knowledge, rs):
    return {
        tuple(sorted(i for i in range(4) if q >> i & 1)): st
        for q, st in table.set_states(config, knowledge, rs)
    }


def fig6_config():
    return cfg.build(
        {
            "segments": [
                {
                    "sets": 1,
                    "phase2": {"type": "explicit", "sets": [[0, 1]]},
                    "phase1": {"type": "explicit", "sets": [[0, 1]]},
                },
                {
                    "phase2": {"type": "explicit", "sets": [[2, 3]]},
                    "phase1": {"type": "explicit", "sets": [[2, 3]]},
                },
            ]
        },
        4,
    )


def test_fig6_maybe_then_none_then_decided():
    c = fig6_config()
    k = table.Knowledge(4)
    k.learn(3, 0, {1: "B"})
    assert states(c, k, 1) == {(2, 3): ("Maybe", "B")}
    assert states(c, k, 0) == {(0, 1): ("Maybe", "B")}
    k.learn(0, 0, {0: "A"})
    assert states(c, k, 0) == {(0, 1): ("None", None)}
    assert table.decided(c, k) is None
    k.learn(2, 0, {1: "B"})
    assert states(c, k, 1) == {(2, 3): ("Decided", "B")}
    assert table.decided(c, k) == "B"


def fig7_config():
    halves = {"type": "explicit", "sets": [[0, 1], [2, 3]]}
    return cfg.build({"segments": [{"phase1": halves, "phase2": halves}]}, 4)


def test_fig7_restricted_set_makes_every_quorum_maybe():
    c = fig7_config()
    k = table.Knowledge(4)
    k.learn(0, 1, {})  # nil in R0 on S0
    assert states(c, k, 0)[(0, 1)] == ("None", None)
    k.learn(2, 1, {})  # nil in R0 on S2
    k.learn(3, 2, {1: "B"})  # B in R1 on S3
    assert states(c, k, 0) == {(0, 1): ("None", None), (2, 3): ("None", None)}
    assert states(c, k, 1) == {(0, 1): ("Maybe", "B"), (2, 3): ("Maybe", "B")}
    k.learn(2, 2, {1: "B"})
    assert states(c, k, 1)[(2, 3)] == ("Decided", "B")
    assert table.decided(c, k) == "B"


def fig13_config():
    three = {"type": "counting", "size": 3}
    return cfg.build(
        {
            "segments": [
                {"sets": 1, "kind": "intersecting", "phase1": three, "phase2": three},
                {"phase1": three, "phase2": three},
            ]
        },
        4,
    )


def test_fig13_two_nil_replies_free_the_client():
    c = fig13_config()
    k = table.Knowledge(4)
    k.learn(0, 1, {})
    assert table.write_choice(c, k, 1) == table.WAIT
    k.learn(1, 1, {})
    assert set(states(c, k, 0).values()) == {("None", None)}
    assert table.write_choice(c, k, 1) == table.FREE


def test_fig14_conflicting_fast_values_need_more_replies():
    c = fig13_config()
    k = table.Knowledge(4)
    k.learn(0, 1, {0: "A"})
    k.learn(1, 1, {0: "B"})
    assert states(c, k, 0) == {
        (0, 1, 2): ("None", None),
        (0, 1, 3): ("None", None),
        (0, 2, 3): ("Maybe", "A"),
        (1, 2, 3): ("Maybe", "B"),
    }
    assert table.write_choice(c, k, 1) == table.WAIT
    # A third reply settles it: S2 holds A, so only {S0,S2,S3} can still decide (A).
    k.learn(2, 1, {0: "A"})
    assert table.write_choice(c, k, 1) == table.Choice(True, "A")


def test_blank_sets_between_values_are_evaluated_symbolically():
    c = cfg.build({"preset": "paxos"}, 3)
    k = table.Knowledge(3)
    # Two servers fenced up to set 1000 with nothing written: every earlier quorum is None.
    k.learn(0, 1000, {})
    assert table.write_choice(c, k, 1000) == table.WAIT
    k.learn(1, 1000, {})
    assert table.write_choice(c, k, 1000) == table.FREE
    # A value at set 500 on one server: every quorum below it is Maybe(v) or None.
    k2 = table.Knowledge(3)
    k2.learn(0, 1000, {500: "v"})
    k2.learn(1, 1000, {})
    assert table.write_choice(c, k2, 1000) == table.Choice(True, "v")


def test_read_outcome_needs_a_blocking_set_and_no_possible_quorum():
    c = cfg.build({"preset": "paxos"}, 3)
    k = table.Knowledge(3)
    k.learn(0, 0, {})
    assert table.read_outcome(c, k).state == "unknown"
    k.learn(1, 0, {})
    assert table.read_outcome(c, k).state == "none"
    k3 = table.Knowledge(3)
    k3.learn(0, 0, {0: "x"})
    k3.learn(1, 0, {})
    assert table.read_outcome(c, k3) == table.ReadOutcome("unknown", "x")
    k3.learn(2, 0, {})
    assert table.read_outcome(c, k3).state == "none"
    k4 = table.Knowledge(3)
    k4.learn(0, 0, {0: "x"})
    k4.learn(2, 0, {0: "x"})
    assert table.read_outcome(c, k4) == table.ReadOutcome("decided", "x")
