"""`graven layout check` as a user runs it: the installed console script, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

GRAVEN = Path(sys.executable).parent / "graven"


def graven(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert GRAVEN.exists(), f"console script missing: {GRAVEN} (pip install -e .)"
    proc = subprocess.run(
        [str(GRAVEN), "layout", "check", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("graven layout: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["--preset", "paxos", "--members", "3"],
        ["--preset", "flexible", "--members", "3", "--q1", "2", "--q2", "2"],
        ["--preset", "flexible", "--members", "6", "--grid", "2x3", "--phase1", "columns"],
        ["--preset", "fast", "--members", "5", "--fast-quorum", "4", "--classic-quorum", "3"],
        ["--preset", "colocated", "--members", "3", "--all-sets", "2"],
        ["--preset", "fixed-majority", "--members", "5", "--proposers", "2"],
    ],
)
def test_safe_layouts_exit_0(args: list[str]) -> None:
    proc = graven(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("SAFE: ")
    assert "failures tolerated" in proc.stdout


def test_unsafe_flexible_exits_1_and_names_quorums() -> None:
    proc = graven("--preset", "flexible", "--members", "3", "--q1", "1", "--q2", "2")
    assert proc.returncode == 1
    assert proc.stdout.startswith("UNSAFE: flexible layout over 3 members violates C2.")
    assert "phase-1 quorum {2}" in proc.stdout
    assert "phase-2 quorum {0,1}" in proc.stdout
    assert "decision table" in proc.stdout


def test_unsafe_fast_c1_exits_1() -> None:
    proc = graven("--preset", "fast", "--members", "5", "--fast-quorum", "2")
    assert proc.returncode == 1
    assert "C1" in proc.stdout.splitlines()[0]
    assert "{0,1} and {2,3}" in proc.stdout


def test_json_shape() -> None:
    proc = graven(
        "--preset",
        "fast",
        "--members",
        "5",
        "--fast-quorum",
        "3",
        "--classic-quorum",
        "3",
        "--json",
    )
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["preset"] == "fast"
    assert report["members"] == 5
    assert report["safe"] is False
    assert report["tolerates"] == 2
    assert report["fast_path_tolerates"] == 2
    (violation,) = report["violations"]
    assert violation["condition"] == "C3"
    assert (violation["earlier"], violation["later"]) == ("set 0", "sets 1..")
    assert [len(q) for q in violation["quorums"]] == [3, 3, 3]
    assert violation["message"]
    assert [s["segment"] for s in report["segments"]] == ["set 0", "sets 1.."]
    assert set(report["segments"][0]) == {"segment", "kind", "phase1", "phase2"}


def test_json_safe_layout_exit_0() -> None:
    proc = graven("--preset", "paxos", "--members", "5", "--json")
    assert proc.returncode == 0
    report = json.loads(proc.stdout)
    assert report["safe"] is True and report["violations"] == []
    assert report["fast_path_tolerates"] is None


MANIFEST = """\
apiVersion: graven.dev/v1alpha1
kind: ConsensusCluster
metadata:
  name: orders
spec:
  replicas: 5
  quorums:
    preset: fast
    fastQuorum: {fast}
"""


@pytest.mark.parametrize("fast,code", [(4, 0), (2, 1)])
def test_consensus_cluster_manifest(tmp_path: Path, fast: int, code: int) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(MANIFEST.format(fast=fast))
    proc = graven(path, "--json")
    assert proc.returncode == code, proc.stderr
    report = json.loads(proc.stdout)
    assert report["members"] == 5 and report["preset"] == "fast"


def test_manifest_defaults_to_three_member_paxos(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("kind: ConsensusCluster\nmetadata: {name: x}\nspec: {}\n")
    proc = graven(path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("SAFE: paxos layout over 3 members")


def test_multi_document_manifest_picks_the_cluster(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"
    path.write_text(other + MANIFEST.format(fast=2))
    proc = graven(path)
    assert proc.returncode == 1
    assert "over 5 members" in proc.stdout


def test_wrapped_layout_block_with_members(tmp_path: Path) -> None:
    path = tmp_path / "layout.yaml"
    path.write_text(
        "members: 4\n"
        "quorums:\n"
        "  segments:\n"
        "    - {sets: 1, phase1: {type: explicit, sets: [[0, 1]]},"
        " phase2: {type: explicit, sets: [[0, 1]]}}\n"
        "    - {phase1: {type: explicit, sets: [[2, 3]]},"
        " phase2: {type: explicit, sets: [[2, 3]]}}\n"
    )
    proc = graven(path, "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["members"] == 4 and report["preset"] == "explicit"
    assert report["violations"][0]["quorums"] == [[2, 3], [0, 1]]


def test_bare_layout_block(tmp_path: Path) -> None:
    path = tmp_path / "layout.yaml"
    path.write_text("preset: flexible\ngrid: 2x3\nmembers: 6\n")
    proc = graven(path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("SAFE: flexible layout over 6 members")


@pytest.mark.parametrize(
    "text,message",
    [
        ("preset: [paxos\n", "invalid YAML"),
        ("- preset: paxos\n", "expected a mapping"),
        ("", "empty"),
        ("kind: Deployment\n", "not a ConsensusCluster"),
        ("kind: ConsensusCluster\nspec: {replicas: three}\n", "spec.replicas must be an integer"),
        ("kind: ConsensusCluster\nspec: {replicas: 40}\n", "members must be between 1 and 16"),
        ("kind: ConsensusCluster\nspec: {quorums: paxos}\n", "spec.quorums must be a mapping"),
        ("members: 3\nquorums: {preset: paxos}\npreset: fast\n", "only 'members' is allowed"),
        ("preset: fast\nq1: 2\n", "does not take"),
    ],
)
def test_bad_files_exit_2(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert message in one_line_error(graven(path))


def test_missing_file_exits_2(tmp_path: Path) -> None:
    line = one_line_error(graven(tmp_path / "nope.yaml"))
    assert "no such file" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["--preset", "raft", "--members", "3"], "unknown preset 'raft'"),
        (["--preset", "paxos", "--members", "17"], "members must be between 1 and 16"),
        (["--preset", "paxos", "--members", "0"], "members must be between 1 and 16"),
        (["--preset", "paxos"], "--preset and --members"),
        ([], "--preset and --members"),
        (["--preset", "paxos", "--members", "3", "--q1", "2"], "does not take --q1"),
        (["--preset", "fast", "--members", "3", "--grid", "1x3"], "does not take --grid"),
        (["--preset", "flexible", "--members", "5", "--all-sets", "2"], "--all-sets"),
        (["--preset", "flexible", "--members", "6", "--grid", "2x4"], "needs 8 members"),
        (["--preset", "flexible", "--members", "5", "--phase1", "rows"], "only applies with grid"),
        (["--preset", "flexible", "--members", "3", "--q1", "4"], "'q1' must be between 1 and 3"),
        (["layout.yaml", "--preset", "paxos"], "cannot be combined with --preset"),
        (["layout.yaml", "--q2", "2"], "cannot be combined with --q2"),
    ],
)
def test_bad_flags_exit_2(args: list[str], message: str) -> None:
    assert message in one_line_error(graven(*args))


def test_argparse_errors_exit_2_without_traceback() -> None:
    proc = graven("--preset", "paxos", "--members", "three")
    assert proc.returncode == 2
    assert "invalid int value" in proc.stderr
