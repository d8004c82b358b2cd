"""The on-disk format of the register store: creation, identification and checks at open.

Write-once is a property of the database itself, not only of the code in front of it: registers
are added with a plain INSERT (a second write hits the primary key), and triggers refuse every
UPDATE or DELETE of a register and every lowering of a fence. ``recursive_triggers`` is switched
on for our connections so that ``INSERT OR REPLACE`` (a delete + insert) is refused as well.

Format history: 1 = registers, fences, global fence. 2 adds ``proposer_floors`` (per key, the
highest client-restricted register set this node's proposer ever used: it must never use a set
at or below it again, even after a restart). 3 stops writing fence rows of 0 (they say nothing:
no register lies below set 0), so a key written only at set 0 has a register row and no fence
row, and the keys on disk are those of both tables. The tables are unchanged, but a format-2
graven would take such a key for absent, so the number goes up. 4 records the cluster
incarnation and the highest configuration epoch served, with that epoch's configuration
fingerprint (meta rows, see ``identity``); triggers keep the epoch from falling and a recorded
incarnation from changing. A file migrated to 4 has none recorded yet: its first start records
them. Older files are migrated in place at open, in one transaction; an older graven then
refuses the file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from . import identity
from .errors import StoreError
from .identity import Identity, Recorded

FORMAT_VERSION = 4
# Marks the file as ours in the SQLite header, so a foreign database is recognised as foreign.
APPLICATION_ID = 0x47525645  # "GRVE"
DB_NAME = "registers.sqlite3"

_DDL = (
    "CREATE TABLE meta(name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE registers(
        key   TEXT NOT NULL,
        rs    INTEGER NOT NULL CHECK (rs >= 0),
        value TEXT NOT NULL,
        PRIMARY KEY (key, rs)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER registers_write_once BEFORE UPDATE ON registers
    BEGIN SELECT RAISE(ABORT, 'write-once: a written register never changes'); END""",
    """CREATE TRIGGER registers_no_delete BEFORE DELETE ON registers
    BEGIN SELECT RAISE(ABORT, 'write-once: a written register is never removed'); END""",
    """CREATE TABLE fences(
        key   TEXT PRIMARY KEY,
        fence INTEGER NOT NULL CHECK (fence >= 0)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER fences_only_rise BEFORE UPDATE ON fences WHEN NEW.fence < OLD.fence
    BEGIN SELECT RAISE(ABORT, 'a fence is never lowered'); END""",
    """CREATE TABLE global_fence(
        id    INTEGER PRIMARY KEY CHECK (id = 0),
        fence INTEGER NOT NULL CHECK (fence >= 0)
    )""",
    """CREATE TRIGGER global_fence_only_rise BEFORE UPDATE ON global_fence
    WHEN NEW.fence < OLD.fence
    BEGIN SELECT RAISE(ABORT, 'a fence is never lowered'); END""",
    "INSERT INTO global_fence(id, fence) VALUES (0, 0)",
)

# Added by format 2 (also run when migrating a format-1 file).
_DDL_V2 = (
    """CREATE TABLE proposer_floors(
        key TEXT PRIMARY KEY,
        rs  INTEGER NOT NULL CHECK (rs >= 0)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER proposer_floors_only_rise BEFORE UPDATE ON proposer_floors
    WHEN NEW.rs < OLD.rs
    BEGIN SELECT RAISE(ABORT, 'a used register set is never forgotten'); END""",
    """CREATE TRIGGER proposer_floors_no_delete BEFORE DELETE ON proposer_floors
    BEGIN SELECT RAISE(ABORT, 'a used register set is never forgotten'); END""",
)

# Added by format 4 (idempotent: also run when migrating older files).
_DDL_V4 = (
    """CREATE TRIGGER IF NOT EXISTS meta_epoch_only_rise BEFORE UPDATE ON meta
    WHEN OLD.name = 'epoch' AND CAST(NEW.value AS INTEGER) < CAST(OLD.value AS INTEGER)
    BEGIN SELECT RAISE(ABORT, 'a configuration epoch is never lowered'); END""",
    """CREATE TRIGGER IF NOT EXISTS meta_incarnation_fixed BEFORE UPDATE ON meta
    WHEN OLD.name = 'incarnation' AND OLD.value <> '' AND NEW.value <> OLD.value
    BEGIN SELECT RAISE(ABORT, 'a store never changes its cluster incarnation'); END""",
    """CREATE TRIGGER IF NOT EXISTS meta_no_delete BEFORE DELETE ON meta
    BEGIN SELECT RAISE(ABORT, 'store metadata is never removed'); END""",
)
_META_V4 = ((identity.INCARNATION, ""), (identity.EPOCH, "0"), (identity.EPOCH_CONFIG, ""))


def connect(path: Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection with our pragmas; autocommit mode so transactions are explicit."""
    # check_same_thread=False: the writer connection is created here and handed to its thread;
    # each connection is still used by one thread at a time.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA recursive_triggers = ON")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    except sqlite3.DatabaseError:
        conn.close()
        raise
    return conn


def open_db(
    path: Path,
    *,
    cluster: str,
    node: str,
    synchronous: str = "FULL",
    wanted: Identity | None = None,
) -> sqlite3.Connection:
    """Create the store file or check an existing one; returns a connection to it.

    With ``wanted``, the store must belong to that incarnation and accept that epoch
    (identity.admit), checked before anything in the file changes, migration included.
    """
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(path, synchronous=synchronous)
        _create_or_check(conn, path, cluster=cluster, node=node, wanted=wanted)
    except sqlite3.OperationalError as exc:
        if conn is not None:
            conn.close()
        raise StoreError(f"{path}: cannot open: {exc}") from None
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise StoreError(
            f"{path} is not a readable graven register store (damaged or foreign file: {exc})"
        ) from None
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    return conn


def _create_or_check(
    conn: sqlite3.Connection, path: Path, *, cluster: str, node: str, wanted: Identity | None
) -> None:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app_id == 0 and tables == 0:
        _create(conn, cluster=cluster, node=node)
        if wanted is not None:
            _record(conn, identity.admit(str(path.parent), Recorded("", 0, ""), wanted))
        return
    if app_id != APPLICATION_ID:
        raise StoreError(f"{path} is not a graven register store (foreign SQLite database)")
    _quick_check(conn, path)
    meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    version = meta.get("format", "")
    if not version.isdigit():
        raise StoreError(f"{path} has no readable format version ({version!r})")
    if int(version) > FORMAT_VERSION:
        raise StoreError(
            f"{path} uses format {version}, newer than this graven reads ({FORMAT_VERSION}); "
            "upgrade graven"
        )
    if int(version) not in (1, 2, 3, FORMAT_VERSION):
        raise StoreError(f"{path} uses unsupported format {version} (expected {FORMAT_VERSION})")
    if meta.get("cluster") != cluster:
        raise StoreError(
            f"{path} belongs to cluster {meta.get('cluster')!r}, not {cluster!r}; "
            "refusing to mix clusters' registers"
        )
    if meta.get("node") != node:
        raise StoreError(
            f"{path} belongs to node {meta.get('node')!r}, not {node!r}; "
            "refusing to serve another member's registers"
        )
    # Refuse before anything changes: a refused start leaves the file exactly as it was.
    updates = {}
    if wanted is not None:
        updates = identity.admit(str(path.parent), Recorded.from_meta(meta), wanted)
    # WAL is a property of the file; re-assert in case someone switched it off by hand.
    conn.execute("PRAGMA journal_mode = WAL")
    if int(version) < FORMAT_VERSION:
        _migrate(conn, int(version))  # only once the file is known to be this node's
    if updates:
        _record(conn, updates)


def _record(conn: sqlite3.Connection, updates: dict[str, str]) -> None:
    """Write identity rows in one durable transaction (before the node serves anything)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "UPDATE meta SET value = ? WHERE name = ?", [(v, k) for k, v in updates.items()]
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    rows = [row[0] for row in conn.execute("PRAGMA quick_check(20)")]
    if rows == ["ok"]:
        return
    # SQLite may pack several problems into one row; the operator gets one line
    lines = [ln for row in rows for ln in str(row).splitlines() if not ln.startswith("***")]
    first = lines[0] if lines else "unknown problem"
    more = f" (and {len(lines) - 1} more problems)" if len(lines) > 1 else ""
    raise StoreError(f"{path} is damaged: integrity check failed: {first}{more}")


def _create(conn: sqlite3.Connection, *, cluster: str, node: str) -> None:
    # journal_mode cannot change inside a transaction; everything else is one atomic step, so a
    # crash during creation leaves an empty file that the next open creates again.
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in (*_DDL, *_DDL_V2, *_DDL_V4):
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta(name, value) VALUES (?, ?)",
            [("format", str(FORMAT_VERSION)), ("cluster", cluster), ("node", node), *_META_V4],
        )
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Format 1, 2 or 3 -> 4 (1 -> 2 adds the proposer floors; 2 -> 3 changes only what rows
    mean; 3 -> 4 adds the identity rows, empty); atomic, so a crash leaves the old format."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version == 1:
            for statement in _DDL_V2:
                conn.execute(statement)
        conn.executemany("INSERT OR IGNORE INTO meta(name, value) VALUES (?, ?)", _META_V4)
        for statement in _DDL_V4:
            conn.execute(statement)
        conn.execute("UPDATE meta SET value = ? WHERE name = 'format'", (str(FORMAT_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def peek(data_dir: Path) -> tuple[str, str, Recorded] | None:
    """(cluster, node, identity) recorded in ``data_dir``'s store, read-only; None if there is
    no store there. For checks before any member starts (``graven up``); raises StoreError."""
    path = data_dir / DB_NAME
    if not path.exists():
        return None
    # Without a WAL file the database file is complete: open it immutable, which creates no
    # -wal/-shm files either (the check must leave the directory as it found it).
    wal = path.with_name(path.name + "-wal")
    query = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?{query}", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open: {exc}") from None
    try:
        if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                return None  # an empty file: a creation that crashed before its first commit
            raise StoreError(f"{path} is not a graven register store (foreign SQLite database)")
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    except sqlite3.Error as exc:
        raise StoreError(f"{path} is not a readable graven register store: {exc}") from None
    finally:
        conn.close()
    return meta.get("cluster", ""), meta.get("node", ""), Recorded.from_meta(meta)
