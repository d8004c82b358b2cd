"""The deterministic simulator: safe layouts pass under faults, planted bugs are caught."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graven.node.protocol.presets import build
from graven.node.protocol.runtime import Runtime
from graven.node.sim.checks import Checker, Violation
from graven.node.sim.plants import PLANTS
from graven.node.sim.world import World

GRAVEN = str(Path(sys.executable).with_name("graven"))

# Randomized runs per preset in the default suite (the CLI default is 500 seeds).
SEEDS = 300

PRESETS = [
    ({"preset": "paxos"}, 3),
    ({"preset": "paxos"}, 5),
    ({"preset": "flexible", "q1": 2, "q2": 2}, 3),
    ({"preset": "flexible", "q1": 4, "q2": 2}, 5),
    ({"preset": "flexible", "grid": "2x3"}, 6),
    ({"preset": "fast"}, 3),
    ({"preset": "fast"}, 5),
    ({"preset": "colocated", "allSets": 2}, 3),
    ({"preset": "fixed-majority"}, 3),
]


@pytest.mark.parametrize(("block", "members"), PRESETS, ids=lambda v: str(v))
def test_safe_layouts_pass_every_randomized_run(block, members):
    config = build(block, members)
    decisions = crashes = partitions = lost = 0
    for seed in range(SEEDS):
        world = World(config, seed, proposers=3, keys=6)
        violation = world.run(2000)
        assert violation is None, f"seed {seed}: {violation}\n" + "\n".join(world.trace)
        decisions += world.stats.decisions
        crashes += world.stats.crashes
        partitions += world.stats.partitions
        lost += world.stats.lost
    # Faults really were injected, and every proposer decided every key (progress).
    assert decisions == SEEDS * 3 * 6
    assert crashes > SEEDS and partitions > SEEDS // 4 and lost > SEEDS


PLANTED = [
    ("nil-below-highest", "paxos"),
    ("ack-before-persist", "paxos"),
    ("reuse-register-set", "paxos"),
    # the proposer runtime's own rules, exercised because the simulator drives the runtime
    ("release-before-durable", "paxos"),
    ("resume-forgets-fast", "fast"),
    ("read-trusts-one", "paxos"),
    # reconfiguration (the CLI runs them with --reconfigure 4,3:fast,3)
    ("ignore-older-epochs", "paxos"),
    ("early-fast-path", "paxos"),
    ("retire-before-carry", "paxos"),
    ("fence-missing-quorum", "paxos"),
]


def test_every_plant_has_a_test():
    assert sorted(name for name, _ in PLANTED) == sorted(PLANTS)


@pytest.mark.parametrize(("plant", "preset"), PLANTED, ids=[name for name, _ in PLANTED])
def test_planted_bugs_are_caught_by_the_cli(plant, preset):
    out = subprocess.run(
        [GRAVEN, "simulate", "--preset", preset, "--members", "3", "--plant", plant],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "VIOLATION" in out.stdout and "--seed" in out.stdout
    assert "Traceback" not in out.stderr


def test_non_intersecting_fast_quorums_break_agreement():
    cmd = [GRAVEN, "simulate", "--preset", "fast", "--members", "5", "--fast-quorum", "2"]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "unsafe" in refused.stderr
    out = subprocess.run([*cmd, "--allow-unsafe"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout
    assert "VIOLATION (agreement)" in out.stdout


def test_the_default_paxos_run_passes_and_reports_what_it_did():
    out = subprocess.run(
        [GRAVEN, "simulate", "--preset", "paxos", "--members", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["runs"] == 500
    assert summary["decisions"] == 500 * 3 * 8
    assert summary["crashes"] > 0 and summary["lost"] > 0 and summary["duplicated"] > 0


def test_a_reported_seed_reproduces_the_same_violation():
    base = [GRAVEN, "simulate", "--preset", "paxos", "--members", "3"]
    first = subprocess.run(
        [*base, "--plant", "ack-before-persist"], capture_output=True, text=True, timeout=300
    )
    line = next(x for x in first.stdout.splitlines() if x.startswith("reproduce: "))
    again = subprocess.run([GRAVEN, *line.split()[2:]], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1
    assert (
        first.stdout.splitlines()[0].split(": ", 1)[1]
        == (again.stdout.splitlines()[0].split(": ", 1)[1])
    )


def test_the_simulated_nodes_run_the_proposer_runtime():
    world = World(build({"preset": "fast"}, 3), 1, 3, 2)
    assert all(type(p.rt) is Runtime for p in world.proposers)
    assert world.run(1500) is None
    assert world.stats.decisions == 3 * 2


def test_runs_are_deterministic_per_seed():
    config = build({"preset": "fast"}, 5)
    a, b = World(config, 42, 3, 4), World(config, 42, 3, 4)
    a.run(1500)
    b.run(1500)
    assert a.stats == b.stats
    assert list(a.trace) == list(b.trace)
    c = World(config, 43, 3, 4)
    c.run(1500)
    assert list(c.trace) != list(a.trace)


def test_checker_flags_disagreement_and_invented_values():
    config = build({"preset": "paxos"}, 3)
    checker = Checker(config, {"k": {"a", "b"}})
    checker.on_output(0, "k", "a")
    with pytest.raises(Violation, match="agreement"):
        checker.on_output(1, "k", "b")
    with pytest.raises(Violation, match="non-triviality"):
        checker.on_output(1, "k", "zzz")


@pytest.mark.parametrize(
    "args",
    [
        ["--preset", "paxos"],
        ["--preset", "nope", "--members", "3"],
        ["--preset", "paxos", "--members", "3", "--keys", "0"],
        ["--preset", "paxos", "--members", "3", "--plant", "nope"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(args):
    out = subprocess.run([GRAVEN, "simulate", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip()
