"""The durable register store: write-once in SQLite itself, group commit, refusals at open."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from graven.node.protocol import acceptor
from graven.node.protocol.acceptor import Change, KeyState
from graven.node.storage import RegisterStore, StoreError
from graven.node.storage.schema import DB_NAME, FORMAT_VERSION, connect

CLUSTER, NODE = "demo", "demo-0"


def open_store(data_dir: Path, cluster: str = CLUSTER, node: str = NODE) -> RegisterStore:
    return RegisterStore.open(data_dir, cluster=cluster, node=node)


async def write(store: RegisterStore, key: str, rs: int, value: str) -> acceptor.Reply:
    change, reply = acceptor.write(store.get(key), rs, value, store.global_fence)
    await store.submit([(key, change)] if change else [])
    return reply


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


async def test_reopen_keeps_registers_fences_and_global_fence(data_dir: Path) -> None:
    store = open_store(data_dir)
    assert (await write(store, "a", 3, "x")).ok
    assert (await write(store, "a", 7, "y")).ok
    change, _ = acceptor.read(store.get("b"), 9)
    await store.submit([("b", change)])
    await store.raise_global_fence(5)
    store.close()

    store = open_store(data_dir)
    try:
        assert store.get("a") == KeyState(7, {3: "x", 7: "y"})
        assert store.get("b") == KeyState(9, {})
        assert store.get("never") == KeyState()
        assert store.global_fence == 5
        assert store.stored_keys == 2
        assert [k for k, _ in store.enumerate_keys(None, 10)] == ["a", "b"]
    finally:
        store.close()


async def test_database_itself_refuses_to_change_a_written_register(data_dir: Path) -> None:
    store = open_store(data_dir)
    await write(store, "k", 4, "first")
    await store.submit([("f", Change(10))])
    store.close()
    db = data_dir / DB_NAME

    for conn in (sqlite3.connect(db), connect(db)):  # a plain connection and ours
        with conn:
            attempts = [
                "UPDATE registers SET value = 'second' WHERE key = 'k'",
                "INSERT INTO registers(key, rs, value) VALUES ('k', 4, 'second')",
                "INSERT INTO registers(key, rs, value) VALUES ('k', 4, 'first') "
                "ON CONFLICT(key, rs) DO UPDATE SET value = excluded.value",
                "DELETE FROM registers WHERE key = 'k'",
                "UPDATE fences SET fence = 1 WHERE key = 'f'",
                "UPDATE global_fence SET fence = 0 - 1",
            ]
            for statement in attempts:
                with pytest.raises(sqlite3.IntegrityError):
                    conn.execute(statement)
        conn.close()
    # INSERT OR REPLACE is a delete + insert: refused on our connections (recursive triggers)
    conn = connect(db)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT OR REPLACE INTO registers(key, rs, value) VALUES ('k', 4, 'x')")
    conn.close()

    store = open_store(data_dir)
    try:
        assert store.get("k").values == {4: "first"}
        assert store.get("f").fence == 10
    finally:
        store.close()


async def test_second_write_of_a_register_is_refused_before_and_by_the_disk(
    data_dir: Path,
) -> None:
    store = open_store(data_dir)
    try:
        await write(store, "k", 1, "v")
        with pytest.raises(StoreError, match="write-once"):
            store.submit([("k", Change(2, 1, "other"))])  # the cache catches it first
        assert store.get("k").values == {1: "v"}

        # Behind the cache's back a register appears on disk: the commit that writes it again
        # must fail loudly and the store must stop acknowledging anything.
        await store.submit([("hidden", Change(0))])
        side = connect(data_dir / DB_NAME)
        side.execute("INSERT INTO registers(key, rs, value) VALUES ('hidden', 2, 'side')")
        side.close()
        with pytest.raises(StoreError, match="commit failed"):
            await store.submit([("hidden", Change(2, 2, "mine"))])
        assert not store.is_open
        with pytest.raises(StoreError):
            store.submit([("other", Change(1))])
        with pytest.raises(StoreError):
            await store.barrier()
    finally:
        store.close()


async def test_group_commit_batches_concurrent_submits(data_dir: Path) -> None:
    store = open_store(data_dir)
    batches: list[int] = []
    store.on_commit = lambda seconds, size: batches.append(size)

    async def one(i: int) -> None:
        await asyncio.sleep(0)  # let the tasks interleave like concurrent requests
        assert (await write(store, f"k{i}", i, f"v{i}")).ok

    try:
        await asyncio.gather(*(one(i) for i in range(50)))
        assert sum(batches) == 50
        assert max(batches) > 1, batches
        assert len(batches) < 50
    finally:
        store.close()
    store = open_store(data_dir)
    try:
        assert all(store.get(f"k{i}").values == {i: f"v{i}"} for i in range(50))
    finally:
        store.close()


async def test_barrier_waits_for_earlier_submissions(data_dir: Path) -> None:
    store = open_store(data_dir)
    try:
        assert (await store.barrier()) is None  # nothing pending: resolves at once
        first = store.submit([("a", Change(1))])
        barrier = store.barrier()
        await barrier
        assert first.done()
    finally:
        store.close()


async def test_close_commits_what_is_queued(data_dir: Path) -> None:
    store = open_store(data_dir)
    store.submit([(f"q{i}", Change(i + 1)) for i in range(20)])
    store.close()  # not awaited above: close itself must drain the queue
    store = open_store(data_dir)
    try:
        assert store.stored_keys == 20
        assert store.get("q19").fence == 20
    finally:
        store.close()


async def test_global_fence_only_rises(data_dir: Path) -> None:
    store = open_store(data_dir)
    try:
        await store.raise_global_fence(10)
        await store.raise_global_fence(4)
        assert store.global_fence == 10
        change, reply = acceptor.write(store.get("new"), 9, "v", store.global_fence)
        assert change is None and not reply.ok and reply.fence == 10
    finally:
        store.close()


async def test_enumeration_pages_and_values_below(data_dir: Path) -> None:
    store = open_store(data_dir)
    try:
        for i in range(25):
            await write(store, f"k{i:02d}", 10 + i, "v")
        page, after, seen = [], None, []
        for _ in range(10):  # bounded pagination
            page = store.enumerate_keys(after, 10)
            seen += [k for k, _ in page]
            if len(page) < 10:
                break
            after = page[-1][0]
        assert seen == [f"k{i:02d}" for i in range(25)]
        below = store.keys_with_values_below(15, None, 100)
        assert [k for k, _ in below] == [f"k{i:02d}" for i in range(5)]
        assert below[0][1].values == {10: "v"}
    finally:
        store.close()


async def test_stats(data_dir: Path) -> None:
    store = open_store(data_dir)
    try:
        await write(store, "a", 1, "v")
        await write(store, "b", 1, "v")
        assert store.stored_keys == 2
        assert store.last_batch_size == 1
        assert store.storage_bytes() > 0
    finally:
        store.close()


def test_refuses_a_newer_format(data_dir: Path) -> None:
    open_store(data_dir).close()
    newer = FORMAT_VERSION + 1
    conn = sqlite3.connect(data_dir / DB_NAME)
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE name = 'format'", (str(newer),))
    conn.close()
    with pytest.raises(
        StoreError, match=rf"format {newer}, newer than this graven reads \({FORMAT_VERSION}\)"
    ):
        open_store(data_dir)


async def test_proposer_floors_survive_a_restart_and_only_rise(data_dir: Path) -> None:
    store = open_store(data_dir)
    assert store.used_floor("k") == -1
    await store.record_used("k", 4)
    await store.record_used("k", 2)  # lower: no change, still resolves
    assert store.used_floor("k") == 4
    store.close()
    store = open_store(data_dir)
    try:
        assert store.used_floor("k") == 4
        assert store.used_floor("other") == -1
    finally:
        store.close()
    conn = connect(data_dir / DB_NAME)
    try:
        for statement in (
            "UPDATE proposer_floors SET rs = 1 WHERE key = 'k'",
            "DELETE FROM proposer_floors",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="never forgotten"):
                conn.execute(statement)
    finally:
        conn.close()


async def test_keys_on_disk_at_open_are_found_and_new_keys_need_no_query(data_dir: Path) -> None:
    store = open_store(data_dir)
    await write(store, "old", 3, "v")
    await store.record_used("old", 3)
    store.close()
    store = open_store(data_dir)
    queries: list[str] = []
    store._reader.set_trace_callback(queries.append)  # every statement the reader runs
    try:
        assert store.get("old") == KeyState(3, {3: "v"})  # on disk at open: loaded
        assert store.used_floor("old") == 3
        loaded = len(queries)
        assert loaded >= 2
        assert store.get("new") == KeyState() and store.used_floor("new") == -1
        await write(store, "new", 1, "w")  # and the cache has it from now on
        assert store.get("new") == KeyState(1, {1: "w"})
        assert len(queries) == loaded  # unknown keys were answered without a query
    finally:
        store.close()


async def test_format_1_file_is_migrated_in_place(data_dir: Path) -> None:
    store = open_store(data_dir)
    assert (await write(store, "a", 3, "x")).ok
    store.close()
    conn = sqlite3.connect(data_dir / DB_NAME)  # turn it back into what format 1 looked like
    with conn:
        conn.execute("DROP TABLE proposer_floors")
        conn.execute("UPDATE meta SET value = '1' WHERE name = 'format'")
    conn.close()
    store = open_store(data_dir)
    try:
        assert store.get("a") == KeyState(3, {3: "x"})
        assert store.used_floor("a") == -1
        await store.record_used("a", 7)
    finally:
        store.close()
    conn = sqlite3.connect(data_dir / DB_NAME)
    try:
        assert conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()[0] == str(
            FORMAT_VERSION
        )
        assert conn.execute("SELECT rs FROM proposer_floors WHERE key = 'a'").fetchone()[0] == 7
    finally:
        conn.close()


async def test_a_key_written_only_at_set_0_survives_reopen(data_dir: Path) -> None:
    """Format 3 keeps no fence row of 0: the register alone must bring the key back."""
    store = open_store(data_dir)
    assert (await write(store, "zero", 0, "z")).ok
    assert (await write(store, "three", 3, "t")).ok
    store.close()
    conn = sqlite3.connect(data_dir / DB_NAME)
    try:  # what the change is for: one row per set-0 write, not two
        assert conn.execute("SELECT count(*) FROM fences WHERE key = 'zero'").fetchone()[0] == 0
    finally:
        conn.close()
    store = open_store(data_dir)
    try:
        assert store.get("zero") == KeyState(0, {0: "z"})
        assert store.get("three") == KeyState(3, {3: "t"})
        assert store.stored_keys == 2
        assert [k for k, _ in store.enumerate_keys(None, 10)] == ["three", "zero"]
        assert not (await write(store, "zero", 0, "other")).ok  # still write-once
    finally:
        store.close()


async def test_format_2_file_is_migrated_and_its_zero_fences_still_read(data_dir: Path) -> None:
    store = open_store(data_dir)
    assert (await write(store, "a", 0, "x")).ok
    store.close()
    conn = sqlite3.connect(data_dir / DB_NAME)  # what format 2 wrote: a fence row of 0 too
    with conn:
        conn.execute("INSERT INTO fences(key, fence) VALUES ('a', 0)")
        conn.execute("UPDATE meta SET value = '2' WHERE name = 'format'")
    conn.close()
    store = open_store(data_dir)
    try:
        assert store.get("a") == KeyState(0, {0: "x"}) and store.stored_keys == 1
    finally:
        store.close()
    conn = sqlite3.connect(data_dir / DB_NAME)
    try:
        assert conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()[0] == str(
            FORMAT_VERSION
        )
    finally:
        conn.close()


def test_refuses_a_garbage_file(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / DB_NAME).write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match="not a readable graven register store"):
        open_store(data_dir)


@pytest.mark.parametrize("loss", ["empty", "missing"])
async def test_refuses_a_store_file_that_was_lost(data_dir: Path, loss: str) -> None:
    """Regression (fault harness, corrupt-empty): a store file cut to 0 bytes was opened as a
    brand-new store, so the member came back without its registers and fences."""
    store = open_store(data_dir)
    assert (await write(store, "a", 3, "x")).ok
    store.close()
    db = data_dir / DB_NAME
    for f in data_dir.glob(DB_NAME + "*"):
        if loss == "missing" or f != db:
            f.unlink()
    if loss == "empty":
        os.truncate(db, 0)
    with pytest.raises(
        StoreError, match=f"{'empty' if loss == 'empty' else 'missing'}.*held a register store"
    ) as info:
        open_store(data_dir)
    assert "\n" not in str(info.value)
    assert not db.exists() or db.stat().st_size == 0  # and nothing was created in its place


def test_an_empty_file_from_a_crash_during_creation_is_created_again(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / DB_NAME).write_bytes(b"")  # the crash came before the store existed
    store = open_store(data_dir)
    store.close()
    assert (data_dir / DB_NAME).stat().st_size > 0


def test_refuses_a_foreign_sqlite_database(data_dir: Path) -> None:
    data_dir.mkdir()
    conn = sqlite3.connect(data_dir / DB_NAME)
    conn.execute("CREATE TABLE something(x)")
    conn.close()
    with pytest.raises(StoreError, match="not a graven register store"):
        open_store(data_dir)


async def test_refuses_a_damaged_file(data_dir: Path) -> None:
    store = open_store(data_dir)
    await store.submit([(f"key-{i:05d}", Change(5, 5, "v" * 100)) for i in range(2000)])
    store.close()
    db = data_dir / DB_NAME
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    for n in (10, 15, 20):  # scribble over b-tree page headers
        data[n * page + 8 : n * page + 72] = b"\xff" * 64
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged") as info:
        open_store(data_dir)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("cluster", "node", "expected"),
    [("other", NODE, "belongs to cluster 'demo'"), (CLUSTER, "demo-1", "belongs to node 'demo-0'")],
)
def test_refuses_another_cluster_or_node(
    data_dir: Path, cluster: str, node: str, expected: str
) -> None:
    open_store(data_dir).close()
    with pytest.raises(StoreError, match=expected):
        open_store(data_dir, cluster=cluster, node=node)


def test_second_open_of_a_data_dir_is_refused(data_dir: Path) -> None:
    store = open_store(data_dir)
    try:
        with pytest.raises(
            StoreError, match=rf"in use by another graven node \(pid {os.getpid()}\)"
        ):
            open_store(data_dir)
    finally:
        store.close()
    open_store(data_dir).close()  # released by close()


def test_lock_is_freed_when_the_holder_is_killed(data_dir: Path) -> None:
    holder = textwrap.dedent(
        f"""
        import sys
        from graven.node.storage import RegisterStore
        RegisterStore.open({str(data_dir)!r}, cluster={CLUSTER!r}, node={NODE!r})
        print("locked", flush=True)
        sys.stdin.read()  # hold the lock until killed
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "locked"
            busy = rf"in use by another graven node \(pid {proc.pid}\)"
            with pytest.raises(StoreError, match=busy):
                open_store(data_dir)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    open_store(data_dir).close()  # the kernel dropped the lock with the process
