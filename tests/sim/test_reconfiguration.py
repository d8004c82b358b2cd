"""Reconfigurations in the simulator: every preset moves through new members and layouts among
the faults (the orchestrator crashing too) with agreement across epochs. The four planted
reconfiguration bugs are in test_simulator's list of plants (each caught by the CLI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from graven.node.protocol.presets import build
from graven.node.sim.reconfigure import parse_steps
from graven.node.sim.world import World

GRAVEN = str(Path(sys.executable).with_name("graven"))
SEEDS = 40

# (start layout, members, steps): members added and removed, presets changed, on every preset.
RUNS = [
    ({"preset": "paxos"}, 3, "4,3:fast,3"),
    ({"preset": "paxos"}, 5, "3,5:flexible q1=4 q2=2"),
    ({"preset": "flexible", "q1": 2, "q2": 2}, 3, "4:fast,3"),
    ({"preset": "flexible", "grid": "2x3"}, 6, "4,6:flexible grid=2x3"),
    ({"preset": "fast"}, 3, "5:fast,3:paxos"),
    ({"preset": "fast"}, 5, "4:paxos,5:fast"),
    ({"preset": "colocated", "allSets": 2}, 3, "4:colocated,3"),
    ({"preset": "fixed-majority"}, 3, "4:fixed-majority,3"),
]


@pytest.mark.parametrize(("block", "members", "steps"), RUNS, ids=lambda v: str(v))
def test_reconfigurations_keep_agreement_under_faults(block, members, steps):
    plan = parse_steps(steps)
    totals = {"reconfigurations": 0, "carried": 0, "decisions": 0, "crashes": 0}
    for seed in range(SEEDS):
        world = World(build(block, members), seed, proposers=2, keys=6, reconfigs=plan)
        violation = world.run(2000)
        assert violation is None, f"seed {seed}: {violation}\n" + "\n".join(world.trace)
        assert world.master.refused == []
        for name in totals:
            totals[name] += getattr(world.stats, name)
    # every run went through every step (progress includes finishing the reconfigurations)
    assert totals["reconfigurations"] == SEEDS * len(plan)
    assert totals["carried"] > SEEDS and totals["crashes"] > SEEDS


def test_an_unsafe_step_is_refused_and_the_rest_goes_on():
    plan = parse_steps("2,5")  # 5 -> 2 removes more than a majority of 5 tolerates
    world = World(build({"preset": "paxos"}, 5), 3, proposers=2, keys=4, reconfigs=plan)
    assert world.run(1500) is None
    assert len(world.master.refused) == 1 and "tolerates" in world.master.refused[0]
    assert world.stats.reconfigurations == 1 and world.master.epoch == 1


def test_the_cli_reports_reconfigurations():
    cmd = [GRAVEN, "simulate", "--preset", "fast", "--members", "3", "--seeds", "20"]
    out = subprocess.run(
        [*cmd, "--reconfigure", "5,3:paxos"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "40 reconfigurations" in out.stdout
    bad = subprocess.run(
        [GRAVEN, "simulate", "--preset", "paxos", "--members", "3", "--reconfigure", "3:nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown preset" in bad.stderr
