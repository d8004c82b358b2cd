"""Fill a cluster with N decided keys before its rows run (the "stored keys" scaling rows).

Graven: written straight into every member's SQLite register store before `graven up` starts
the members (through the API a million keys would take far longer than the rows they serve).
Each store is first created by `RegisterStore.open` (schema, triggers, format and identity in
`meta`, the SQLite application id), then filled with plain INSERTs in large transactions with
exactly what an acceptor stores when a proposer writes register set 0 of a fresh key
(`graven.node.protocol.acceptor.write` at set 0: one register `(key, 0, value)`; the fence
watermark stays 0, which format 3 stores as no fence row). On a paxos layout set 0 on every
member is a phase-2 quorum, so each key reads back as decided. The write-once triggers fire
only on UPDATE or DELETE, so plain INSERTs into an empty store pass them; the first member's
file is built once and copied to the others with their own name in `meta`.

etcd: its own bulk path, transactions of `ETCD_TXN_OPS` puts (etcd's default --max-txn-ops)
through the JSON gateway, several in flight, on the running cluster.

`verify` reads a sample of the preloaded keys back through the normal client API of every
member before any row is measured.
"""

from __future__ import annotations

import asyncio
import base64
import random
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiohttp
import orjson
from adapters import ADAPTERS, BadStatus

from graven.node.client.loadgen import make_value

PREFIX = "pre-"
VALUE_SIZE = 64
SQLITE_BATCH = 100_000  # rows per transaction
ETCD_TXN_OPS = 128  # etcd's default --max-txn-ops
ETCD_IN_FLIGHT = 8
VERIFY_KEYS = 8


def key_of(i: int, count: int) -> str:
    """Zero-padded, so keys sort in insertion order (cheap appends to the B-trees)."""
    return f"{PREFIX}{i:0{len(str(max(count - 1, 1)))}d}"


def value_of(key: str) -> str:
    return make_value(key, VALUE_SIZE)


def sample(count: int) -> list[str]:
    """First, last, middle and a few random preloaded keys."""
    picks = {0, count // 2, count - 1, *random.Random(7).sample(range(count), min(5, count))}
    return [key_of(i, count) for i in sorted(picks)]


# -- Graven ------------------------------------------------------------------------------------


def graven_members(spec: Path) -> tuple[str, list[str]]:
    """(cluster name, member names) exactly as `graven up` will name them."""
    from graven.node.local import cluster as lc

    cfg = lc.render(lc.load_spec(spec), lc.DEFAULT_BASE_PORT, spec)
    return cfg.cluster, [m.name for m in cfg.members]


class PreloadError(RuntimeError):
    """The preload or its read-back check failed (the rows of that cluster are skipped)."""


def graven_stores(data_dir: Path, spec: Path, count: int) -> None:
    """Create every member's store under `data_dir` (as `graven up` lays it out) with `count`
    decided keys. Must run before the members start."""
    from graven.node.local.cluster import LocalClusterError
    from graven.node.storage import StoreError

    try:
        _graven_stores(data_dir, spec, count)
    except (LocalClusterError, StoreError, sqlite3.Error, OSError) as exc:
        raise PreloadError(f"preload of {count} keys into {data_dir}: {exc}") from exc


def _graven_stores(data_dir: Path, spec: Path, count: int) -> None:
    from graven.node.storage import RegisterStore
    from graven.node.storage.schema import DB_NAME

    cluster, names = graven_members(spec)
    first = data_dir / names[0]
    RegisterStore.open(first, cluster=cluster, node=names[0]).close()
    db = first / DB_NAME
    _bulk_insert(db, count)
    for name in names[1:]:
        (data_dir / name).mkdir(parents=True)
        copy = data_dir / name / DB_NAME
        shutil.copyfile(db, copy)
        conn = sqlite3.connect(copy, isolation_level=None)
        try:
            conn.execute("UPDATE meta SET value = ? WHERE name = 'node'", (name,))
        finally:
            conn.close()
    for name in names:  # reopen each once as a node would: schema, identity, key count
        store = RegisterStore.open(data_dir / name, cluster=cluster, node=name)
        try:
            if store.stored_keys != count:
                raise PreloadError(f"preload: {name} holds {store.stored_keys} keys, not {count}")
        finally:
            store.close()


def _bulk_insert(db: Path, count: int) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # a benchmark fixture; fsynced once at the end
        for start in range(0, count, SQLITE_BATCH):
            keys = [key_of(i, count) for i in range(start, min(count, start + SQLITE_BATCH))]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO registers(key, rs, value) VALUES (?, 0, ?)",
                ((k, value_of(k)) for k in keys),
            )
            conn.execute("COMMIT")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file: copyable
    finally:
        conn.close()


# -- etcd --------------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _batches(count: int) -> Iterator[bytes]:
    for start in range(0, count, ETCD_TXN_OPS):
        puts = []
        for i in range(start, min(count, start + ETCD_TXN_OPS)):
            key = key_of(i, count)
            puts.append({"request_put": {"key": _b64(key), "value": _b64(value_of(key))}})
        yield orjson.dumps({"success": puts})


async def etcd_keys(endpoints: Sequence[str], count: int) -> None:
    """`count` keys through the JSON gateway, ETCD_TXN_OPS puts per (unconditional) txn."""
    try:
        await _etcd_keys(endpoints, count)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PreloadError(f"etcd preload of {count} keys: {exc}") from exc


async def _etcd_keys(endpoints: Sequence[str], count: int) -> None:
    batches = _batches(count)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker(w: int) -> None:
            url = endpoints[w % len(endpoints)] + "/v3/kv/txn"
            for body in batches:  # shared iterator: each batch is sent once
                async with session.post(url, data=body) as resp:
                    if resp.status != 200:
                        text = (await resp.read())[:200]
                        raise BadStatus(f"etcd preload: HTTP {resp.status}: {text!r}")
                    await resp.read()

        await asyncio.gather(*(worker(w) for w in range(ETCD_IN_FLIGHT)))


# -- both --------------------------------------------------------------------------------------


async def verify(system: str, endpoints: Sequence[str], count: int) -> None:
    """Read a sample of the preloaded keys from every member; PreloadError on any surprise."""
    reader = ADAPTERS["etcd" if system == "etcd" else "graven"]()  # reads the member it is given
    await reader.open(endpoints)
    try:
        for key in sample(count):
            for endpoint in endpoints:
                try:
                    got = await reader.read(endpoint, key)
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                    raise PreloadError(f"preload check: {key} on {endpoint}: {exc}") from exc
                if got != value_of(key):
                    raise PreloadError(
                        f"preload check: {key} on {endpoint} reads {got!r}, not the stored value"
                    )
    finally:
        await reader.close()
