"""A member's data knows its cluster incarnation and epoch, and refuses any other configuration.

Each refusal must leave the data directory exactly as it was (compared byte for byte), and the
real `graven node` must exit with its refusal status and one line saying why.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from graven.node.cluster.config import parse
from graven.node.protocol import acceptor
from graven.node.protocol.acceptor import KeyState
from graven.node.storage import Identity, IdentityRefused, RegisterStore, StoreError
from graven.node.storage.schema import DB_NAME, FORMAT_VERSION

CLUSTER, NODE = "demo", "demo-0"
GRAVEN = Path(sys.executable).with_name("graven")
A = Identity("uid-a", 0, "fp-paxos-3")


def open_store(data_dir: Path, wanted: Identity | None = A) -> RegisterStore:
    return RegisterStore.open(data_dir, cluster=CLUSTER, node=NODE, wanted=wanted)


def digest(data_dir: Path) -> dict[str, str]:
    """Every file of the data directory (the lock file's pid aside), hashed."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data_dir.iterdir())
        if p.name != "LOCK"
    }


async def seed(data_dir: Path, wanted: Identity = A) -> None:
    store = open_store(data_dir, wanted)
    change, _ = acceptor.write(store.get("k"), 0, "v", store.global_fence)
    await store.submit([("k", change)])
    store.close()


def meta(data_dir: Path) -> dict[str, str]:
    conn = sqlite3.connect(data_dir / DB_NAME)
    try:
        return dict(conn.execute("SELECT name, value FROM meta").fetchall())
    finally:
        conn.close()


async def test_a_new_store_records_incarnation_epoch_and_configuration(tmp_path: Path) -> None:
    await seed(tmp_path)
    assert meta(tmp_path) | {"format": "x"} == {
        "format": "x",
        "cluster": CLUSTER,
        "node": NODE,
        "incarnation": "uid-a",
        "epoch": "0",
        "epoch_config": "fp-paxos-3",
    }
    store = open_store(tmp_path)  # the same configuration again: accepted, nothing to record
    try:
        assert (store.incarnation, store.epoch) == ("uid-a", 0)
        assert store.get("k") == KeyState(0, {0: "v"})
    finally:
        store.close()


@pytest.mark.parametrize(
    ("wanted", "message"),
    [
        (Identity("uid-b", 0, "fp-paxos-3"), r"incarnation uid-a, but the configuration is of "),
        (Identity(None, 0, "fp-paxos-3"), r"configuration names no incarnation"),
        (Identity("uid-a", 0, "fp-fast-5"), r"served epoch 0 with other members or another"),
    ],
    ids=["another-incarnation", "no-incarnation", "same-epoch-other-layout"],
)
async def test_another_configuration_is_refused_and_changes_nothing(
    tmp_path: Path, wanted: Identity, message: str
) -> None:
    await seed(tmp_path)
    before = digest(tmp_path)
    with pytest.raises(IdentityRefused, match=message):
        open_store(tmp_path, wanted)
    assert digest(tmp_path) == before
    open_store(tmp_path).close()  # and the lock was released: the right configuration opens


async def test_an_older_epoch_is_refused_a_newer_one_recorded(tmp_path: Path) -> None:
    await seed(tmp_path, Identity("uid-a", 2, "fp-e2"))
    before = digest(tmp_path)
    with pytest.raises(IdentityRefused, match="served configuration epoch 2; refusing the older"):
        open_store(tmp_path, Identity("uid-a", 1, "fp-e1"))
    assert digest(tmp_path) == before
    open_store(tmp_path, Identity("uid-a", 3, "fp-e3")).close()
    assert (meta(tmp_path)["epoch"], meta(tmp_path)["epoch_config"]) == ("3", "fp-e3")
    with pytest.raises(IdentityRefused, match="epoch 3; refusing the older epoch 2"):
        open_store(tmp_path, Identity("uid-a", 2, "fp-e2"))


async def test_record_epoch_at_run_time_only_rises_and_is_durable(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        await store.record_epoch(0, "fp-paxos-3")  # the same: a no-op
        await store.record_epoch(4, "fp-e4")
        assert store.epoch == 4
        with pytest.raises(IdentityRefused, match="refusing the older epoch 3"):
            store.record_epoch(3, "fp-e3")
        with pytest.raises(IdentityRefused, match="served epoch 4 with other members"):
            store.record_epoch(4, "fp-other")
        assert store.epoch == 4
    finally:
        store.close()
    assert meta(tmp_path)["epoch"] == "4"
    with pytest.raises(IdentityRefused, match="epoch 4"):
        open_store(tmp_path)  # epoch 0 again after a restart: still refused


async def test_the_file_itself_refuses_a_lower_epoch_or_another_incarnation(
    tmp_path: Path,
) -> None:
    await seed(tmp_path, Identity("uid-a", 5, "fp"))
    conn = sqlite3.connect(tmp_path / DB_NAME)
    try:
        for statement, why in (
            ("UPDATE meta SET value = '4' WHERE name = 'epoch'", "never lowered"),
            ("UPDATE meta SET value = 'uid-b' WHERE name = 'incarnation'", "never changes"),
            ("DELETE FROM meta WHERE name = 'incarnation'", "never removed"),
        ):
            with pytest.raises(sqlite3.IntegrityError, match=why):
                conn.execute(statement)
    finally:
        conn.close()


async def test_a_format_3_store_keeps_its_registers_and_records_its_first_identity(
    tmp_path: Path,
) -> None:
    await seed(tmp_path)
    conn = sqlite3.connect(tmp_path / DB_NAME)  # turn it back into what format 3 looked like
    with conn:
        for trigger in ("meta_epoch_only_rise", "meta_incarnation_fixed", "meta_no_delete"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DELETE FROM meta WHERE name IN ('incarnation', 'epoch', 'epoch_config')")
        conn.execute("UPDATE meta SET value = '3' WHERE name = 'format'")
    conn.close()
    store = open_store(tmp_path, Identity("uid-c", 0, "fp-paxos-3"))
    try:
        assert store.get("k") == KeyState(0, {0: "v"})
        assert store.incarnation == "uid-c"
    finally:
        store.close()
    assert meta(tmp_path)["format"] == str(FORMAT_VERSION)
    with pytest.raises(IdentityRefused, match="incarnation uid-c"):
        open_store(tmp_path, Identity("uid-a", 0, "fp-paxos-3"))


def test_an_older_graven_refuses_a_format_4_file(tmp_path: Path) -> None:
    """What an older graven checks: a format number above its own is refused."""
    open_store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'format'")
    conn.close()
    with pytest.raises(StoreError, match="newer than this graven reads"):
        open_store(tmp_path)


# -- the real `graven node` process -------------------------------------------------------------


def config(tmp_path: Path, name: str, **changes: object) -> Path:
    doc = {
        "apiVersion": "graven.dev/v1alpha1",
        "kind": "ClusterConfig",
        "cluster": CLUSTER,
        "incarnation": "uid-a",
        "epoch": 0,
        "members": [{"name": f"demo-{i}", "url": f"http://127.0.0.1:{1 + i}"} for i in range(3)],
        "quorums": {"preset": "paxos"},
    }
    doc.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def run_node(cfg: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    argv = [str(GRAVEN), "node", "--id", NODE, "--listen", "127.0.0.1:0"]
    argv += ["--data-dir", str(data_dir), "--config", str(cfg)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"incarnation": "uid-b"}, "holds registers of cluster incarnation uid-a"),
        ({"members": None}, "served epoch 0 with other members or another layout"),
        ({"quorums": {"preset": "fast"}}, "served epoch 0 with other members or another layout"),
    ],
    ids=["another-incarnation", "other-members", "other-layout"],
)
async def test_graven_node_refuses_another_configuration_with_exit_3(
    tmp_path: Path, changes: dict, message: str
) -> None:
    own = config(tmp_path, "own.yaml")
    data = tmp_path / "data"
    store = RegisterStore.open(data, cluster=CLUSTER, node=NODE, wanted=parse_file(own).identity())
    change, _ = acceptor.write(store.get("k"), 0, "v", store.global_fence)
    await store.submit([("k", change)])
    store.close()
    if changes.get("members", 1) is None:  # five members, same names for the first three
        changes["members"] = [
            {"name": f"demo-{i}", "url": f"http://127.0.0.1:{1 + i}"} for i in range(5)
        ]
    before = digest(data)
    done = run_node(config(tmp_path, "other.yaml", **changes), data)
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("graven node: refused: ") and message in line
    assert digest(data) == before


def test_graven_node_refuses_an_older_epoch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    newer = parse_file(config(tmp_path, "e2.yaml", epoch=2))
    RegisterStore.open(data, cluster=CLUSTER, node=NODE, wanted=newer.identity()).close()
    before = digest(data)
    done = run_node(config(tmp_path, "e1.yaml", epoch=1), data)
    assert done.returncode == 3, done.stderr
    assert "served configuration epoch 2; refusing the older epoch 1" in done.stderr
    assert digest(data) == before


def parse_file(path: Path):  # type: ignore[no-untyped-def]
    return parse(yaml.safe_load(path.read_text()))
