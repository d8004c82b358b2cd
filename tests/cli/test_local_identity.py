"""`graven up` and cluster identity: a data directory keeps its incarnation; member data of
another incarnation (or of a lost cluster.yaml) is refused with how to adopt or wipe it, and an
explicit adoption with the same members and layout keeps every decision."""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path

import yaml

from graven.node.local import cluster as lc
from tests.support.up import EXAMPLE, free_base_port, graven, start_up


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def digest(root: Path) -> dict[str, str]:
    """Every member's files (lock files aside), hashed: a refusal must change none."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob("demo-*/*"))
        if p.is_file() and p.name != "LOCK"
    }


def run_and_decide(tmp_path: Path, *args: str) -> None:
    up = start_up(tmp_path, *args)
    try:
        up.wait_ready()
        assert graven("propose", "hello", "world", cwd=tmp_path).returncode == 0
        assert up.stop(signal.SIGINT) == 0
    finally:
        up.kill_everything()


def test_lost_cluster_yaml_is_refused_then_adopted_with_every_decision(tmp_path: Path) -> None:
    base = free_base_port(3)
    run_and_decide(tmp_path, "--base-port", str(base))
    data = tmp_path / ".graven"
    incarnation = yaml.safe_load((data / "cluster.yaml").read_text())["incarnation"]
    assert len(incarnation) >= 32  # a random id, written at the first start

    (data / "cluster.yaml").unlink()  # the record of which cluster this is, lost
    before = digest(data)
    done = graven("up", "--base-port", str(base), cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert f"holds registers of cluster incarnation {incarnation}" in line
    assert f"--adopt {incarnation}" in line and "to start afresh" in line
    assert digest(data) == before

    # adoption under another layout is refused before any member starts
    fast = yaml.safe_load(EXAMPLE.read_text())
    fast["spec"]["quorums"] = {"preset": "fast"}
    (tmp_path / "demo-fast.yaml").write_text(yaml.safe_dump(fast))
    refusal = graven("up", "demo-fast.yaml", "--adopt", incarnation, "--base-port", str(base),
                     cwd=tmp_path)  # fmt: skip
    assert refusal.returncode == 2
    assert "needs the same members and layout" in one_line(refusal.stderr)
    assert digest(data) == before

    up = start_up(tmp_path, "--adopt", incarnation, "--base-port", str(base))
    try:
        up.wait_ready()
        got = graven("get", "hello", cwd=tmp_path)
        assert (got.returncode, got.stdout) == (0, "world\n")
        assert up.stop(signal.SIGINT) == 0
    finally:
        up.kill_everything()
    # adopted for good: the next plain start needs no --adopt
    assert yaml.safe_load((data / "cluster.yaml").read_text())["incarnation"] == incarnation


def test_member_data_of_another_cluster_is_refused(tmp_path: Path) -> None:
    base = free_base_port(3)
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    run_and_decide(first, "--base-port", str(base))
    run_and_decide(second, "--base-port", str(base))
    theirs = yaml.safe_load((first / ".graven" / "cluster.yaml").read_text())["incarnation"]
    shutil.rmtree(second / ".graven" / "demo-1")
    shutil.copytree(first / ".graven" / "demo-1", second / ".graven" / "demo-1")
    before = digest(second / ".graven")
    done = graven("up", cwd=second, timeout=60)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert f"demo-1 holds registers of cluster incarnation {theirs}" in line
    assert "refusing to start a new cluster over old registers" in line
    assert digest(second / ".graven") == before


def test_an_older_epoch_than_a_member_has_served_is_refused(tmp_path: Path) -> None:
    """A member that has recorded a newer epoch (as reconfiguration will do at run time) is
    never started again under the older configuration."""
    data = tmp_path / ".graven"
    base = free_base_port(3)
    run_and_decide(tmp_path, "--base-port", str(base))
    cfg = lc.previous_config(data)
    assert cfg is not None
    # What reconfiguration will do: a member records a newer epoch at run time.
    import asyncio

    from graven.node.storage import RegisterStore

    async def raise_epoch() -> None:
        store = RegisterStore.open(data / "demo-0", cluster="demo", node="demo-0")
        try:
            await store.record_epoch(1, cfg.fingerprint())
        finally:
            store.close()

    asyncio.run(raise_epoch())
    done = graven("up", cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "demo-0 has served configuration epoch 1, newer than this configuration's" in line
