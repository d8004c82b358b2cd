"""The durable register store one acceptor serves from.

Reads come from an in-memory cache of key states (filled from SQLite on a miss); changes are
applied to that cache when they are submitted, in submission order, so the next request already
sees them, and are written by the group-commit thread. Callers reply only once the future of
their submission (or a barrier) has resolved: nothing is acknowledged before it is durable.

Every key touched since start stays cached: the whole working set lives in memory. That is fine
for the sizes Graven targets today; an eviction policy can come later because a cache miss is
always safe (the disk holds everything that is not pending).
"""

from __future__ import annotations

import asyncio
import sqlite3
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from ..protocol.acceptor import Change, KeyState, apply
from . import identity
from .durable import replace_file
from .errors import StoreError
from .identity import Identity, Recorded
from .lock import DirLock
from .schema import DB_NAME, connect, open_db
from .writer import CommitHook, CommitWriter, EpochRecord, Op, Pending, UsedSet

# Keys known to have no stored state, so repeated probes of them (a fresh key is read and
# written several times per decision) do not each query SQLite; bounded so probing cannot
# fill memory.
ABSENT_CACHE = 8192
# A batch this small, with the writer idle, is committed on the event loop itself: at low load
# the hand-over to the writer thread and the wake-up back cost more than they save. Larger
# batches go to the thread so the loop keeps taking requests while the disk syncs.
INLINE_MAX_OPS = 2
# Present once a store was created in the data directory (see check_not_lost).
CREATED_MARKER = "STORE_CREATED"


def check_not_lost(data_dir: Path, db: Path) -> None:
    """Refuse a store file that is missing or empty in a directory that held a store.

    SQLite takes an empty file for a new database, which is right after a crash during
    creation (nothing was acknowledged yet) and wrong after a disk or a restore lost the file:
    an acceptor that comes back without its registers and fences can break agreement. The
    marker, written once the store exists, tells the two apart.
    """
    if not (data_dir / CREATED_MARKER).exists():
        return
    try:
        size = db.stat().st_size
    except FileNotFoundError:
        size = -1
    if size <= 0:
        what = "missing" if size < 0 else "empty (0 bytes)"
        raise StoreError(
            f"{db} is {what}, but {data_dir} held a register store: refusing to start "
            "without its registers (restore the file; to make this member new, remove the "
            "whole data directory, which is safe only when no quorum could need its registers)"
        )


def mark_created(data_dir: Path) -> None:
    """Record, durably, that this directory holds a store (see ``check_not_lost``)."""
    marker = data_dir / CREATED_MARKER
    if marker.exists():
        return
    replace_file(marker, f"{DB_NAME} created; it must never be missing or empty from now on\n")


class KeyFilter:
    """The keys a query returned at open, as sorted 64-bit hashes (8 bytes a key).

    ``key in filter`` is False only for keys the query did not return; a hash collision can
    only say "maybe" for a key that is absent, which costs the caller one query, never a wrong
    answer. Python's string hash differs between processes, which is fine: the filter lives and
    dies with this process.
    """

    def __init__(self, conn: sqlite3.Connection, query: str) -> None:
        hashes = array("q", sorted(hash(key) for (key,) in conn.execute(query)))
        self._hashes = hashes

    def __contains__(self, key: str) -> bool:
        hashes = self._hashes
        if not hashes:
            return False
        h = hash(key)
        i = bisect_left(hashes, h)
        return i < len(hashes) and hashes[i] == h


class RegisterStore:
    def __init__(
        self,
        data_dir: Path,
        lock: DirLock,
        writer_conn: sqlite3.Connection,
        reader_conn: sqlite3.Connection,
    ) -> None:
        self.data_dir = data_dir
        self._lock = lock
        self._reader = reader_conn
        self._cache: dict[str, KeyState] = {}
        self._absent: OrderedDict[str, KeyState] = OrderedDict()
        self._floors: dict[str, int] = {}  # proposer floors loaded or raised since start
        # Keys that had state (or a floor) on disk at open. Anything else that is not cached
        # is new, and is answered without a query: on a busy node nearly every key is new, and
        # those point queries were a visible share of each request.
        self._disk_keys = KeyFilter(
            reader_conn, "SELECT key FROM fences UNION ALL SELECT key FROM registers"
        )
        self._disk_floors = KeyFilter(reader_conn, "SELECT key FROM proposer_floors")
        self._global_fence: int = reader_conn.execute(
            "SELECT fence FROM global_fence WHERE id = 0"
        ).fetchone()[0]
        self._recorded = Recorded.from_meta(
            dict(reader_conn.execute("SELECT name, value FROM meta").fetchall())
        )
        self._stored_keys: int = reader_conn.execute(
            "SELECT count(*) FROM (SELECT key FROM fences UNION SELECT key FROM registers)"
        ).fetchone()[0]
        # Changes submitted during one event-loop turn go to the writer as one batch at the end
        # of the turn (one hand-over, one wake-up of the writer thread, instead of one each).
        self._turn_ops: list[Op] = []
        self._turn_futures: list[asyncio.Future[None]] = []
        self._turn_loop: asyncio.AbstractEventLoop | None = None  # set while a flush is due
        self._seq = 0  # number of the newest batch handed to the writer
        # batch number -> futures to resolve once that batch is durable (event-loop side only)
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}
        self._closed = False
        self.last_batch_size = 0
        self.on_commit: CommitHook | None = None
        self._writer = CommitWriter(writer_conn, self._committed)

    @classmethod
    def open(
        cls, path: str | Path, *, cluster: str, node: str, wanted: Identity | None = None
    ) -> RegisterStore:
        """Open (or create) the store in data directory ``path``; raises StoreError.

        With ``wanted`` (what the configuration says: incarnation, epoch, fingerprint) the store
        refuses, changing nothing, registers of another incarnation or a newer epoch
        (identity.IdentityRefused), and otherwise records them before returning.
        """
        data_dir = Path(path)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
        lock = DirLock.acquire(data_dir)
        writer_conn = reader_conn = None
        try:
            db = data_dir / DB_NAME
            check_not_lost(data_dir, db)
            writer_conn = open_db(db, cluster=cluster, node=node, synchronous="FULL", wanted=wanted)
            reader_conn = connect(db, synchronous="FULL")
            mark_created(data_dir)
            store = cls(data_dir, lock, writer_conn, reader_conn)
        except BaseException:
            for conn in (writer_conn, reader_conn):
                if conn is not None:
                    conn.close()
            lock.release()
            raise
        return store

    # -- reading ---------------------------------------------------------------------------

    def get(self, key: str) -> KeyState:
        """The key's current state (including submitted, not yet durable changes).

        The returned object is shared: treat it as read-only.
        """
        state = self._cache.get(key)
        if state is None:
            state = self._absent.get(key)
            if state is not None:
                return state
            state = self._load(key)
            if state is None:
                # Unknown keys go to the bounded absent cache only: probing must not fill memory.
                # Every change passes through submit(), which moves the key out of it.
                state = self._absent[key] = KeyState()
                if len(self._absent) > ABSENT_CACHE:
                    self._absent.popitem(last=False)
                return state
            self._cache[key] = state
        return state

    @property
    def global_fence(self) -> int:
        return self._global_fence

    @property
    def incarnation(self) -> str:
        """The cluster incarnation these registers belong to ('' = not recorded)."""
        return self._recorded.incarnation

    @property
    def epoch(self) -> int:
        """The highest configuration epoch recorded (including a raise not yet durable)."""
        return self._recorded.epoch

    @property
    def recorded(self) -> Recorded:
        """Incarnation, epoch and configuration fingerprint recorded (raises included)."""
        return self._recorded

    @property
    def stored_keys(self) -> int:
        return self._stored_keys

    def storage_bytes(self) -> int:
        pages = self._reader.execute("PRAGMA page_count").fetchone()[0]
        size = self._reader.execute("PRAGMA page_size").fetchone()[0]
        return int(pages * size)

    @property
    def failure(self) -> StoreError | None:
        return self._writer.failure

    @property
    def is_open(self) -> bool:
        return not self._closed and self._writer.failure is None

    def enumerate_keys(self, after: str | None, limit: int) -> list[tuple[str, KeyState]]:
        """Stored keys in key order, starting after ``after``; durable ones only.

        Callers that need keys submitted just before should ``await barrier()`` first.
        """
        rows = self._reader.execute(
            "SELECT key FROM fences WHERE key > ?1 UNION SELECT key FROM registers WHERE key > ?1"
            " ORDER BY key LIMIT ?2",
            (after or "", limit),
        ).fetchall()
        return [(key, self.get(key)) for (key,) in rows]

    def keys_with_values_below(
        self, rs: int, after: str | None, limit: int
    ) -> list[tuple[str, KeyState]]:
        """Keys holding a written register below ``rs`` (to carry over at reconfiguration)."""
        rows = self._reader.execute(
            "SELECT DISTINCT key FROM registers WHERE rs < ? AND key > ? ORDER BY key LIMIT ?",
            (rs, after or "", limit),
        ).fetchall()
        return [(key, self.get(key)) for (key,) in rows]

    def used_floor(self, key: str) -> int:
        """Highest restricted register set this node's proposer used for ``key`` (-1: none).

        Includes raises submitted but not yet durable: a caller that sees such a floor only
        goes higher, and nothing was sent with that set before it became durable.
        """
        floor = self._floors.get(key)
        if floor is None and key not in self._disk_floors:
            return -1
        if floor is None:
            row = self._reader.execute(
                "SELECT rs FROM proposer_floors WHERE key = ?", (key,)
            ).fetchone()
            floor = -1 if row is None else int(row[0])
            self._floors[key] = floor
        return floor

    def _load(self, key: str) -> KeyState | None:
        if key not in self._disk_keys:
            return None  # not on disk at open, and every later change went through the cache
        row = self._reader.execute("SELECT fence FROM fences WHERE key = ?", (key,)).fetchone()
        values = dict(self._reader.execute("SELECT rs, value FROM registers WHERE key = ?", (key,)))
        if row is None and not values:
            return None
        return KeyState(0 if row is None else row[0], values)  # no fence row: fence 0

    # -- changing --------------------------------------------------------------------------

    def submit(self, changes: Sequence[tuple[str, Change]]) -> asyncio.Future[None]:
        """Apply ``changes`` to the cache now; the returned future resolves once durable.

        A plain function returning a future (rather than a coroutine) so the changes are
        applied at the call, in call order, not whenever a task first runs.
        """
        self._check_usable()
        if not changes:
            return self.barrier()
        states = self._prepare(changes)
        for (_, change), state in zip(changes, states, strict=True):
            apply(state, change)
        return self._enqueue(list(changes))

    def record_used(self, key: str, rs: int) -> asyncio.Future[None]:
        """Durably raise the key's proposer floor to ``rs``; resolves once durable.

        The proposer must not send anything with set ``rs`` before this resolves.
        """
        self._check_usable()
        if rs <= self.used_floor(key):
            return self.barrier()  # an equal floor may still be on its way to the disk
        self._floors[key] = rs
        return self._enqueue([(key, UsedSet(rs))])

    def raise_global_fence(self, rs: int) -> asyncio.Future[None]:
        """Fence every key, present and future, below ``rs``; resolves once durable."""
        self._check_usable()
        if rs <= self._global_fence:
            return self.barrier()
        self._global_fence = rs
        return self._enqueue([(None, Change(rs))])

    def record_epoch(self, epoch: int, fingerprint: str) -> asyncio.Future[None]:
        """Record that this member has seen configuration ``epoch``; resolves once durable.

        Raises IdentityRefused (and changes nothing) for an epoch below the recorded one, or
        the recorded epoch with another configuration fingerprint. The same epoch and
        fingerprint again is a no-op. Reconfiguration calls this before acting in a new epoch.
        """
        self._check_usable()
        updates = identity.epoch_updates(str(self.data_dir), self._recorded, epoch, fingerprint)
        if not updates:
            return self.barrier()  # an equal record may still be on its way to the disk
        self._recorded = Recorded(self._recorded.incarnation, epoch, fingerprint)
        return self._enqueue([(None, EpochRecord(epoch, fingerprint))])

    def barrier(self) -> asyncio.Future[None]:
        """Resolves once everything submitted so far is durable.

        Every caller gets its own future, so one waiter giving up (cancelling) leaves the
        others alone.
        """
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._turn_futures:
            self._turn_futures.append(settled)  # resolved with this turn's batch
        elif self._seq in self._waiting:
            self._waiting[self._seq].append(settled)  # the newest batch is not durable yet
        elif self._writer.failure is not None:
            settled.set_exception(self._writer.failure)
        else:
            settled.set_result(None)
        return settled

    def close(self) -> None:
        """Commit what is queued, stop the writer, release the data directory."""
        if self._closed:
            return
        self._closed = True
        self._flush()  # this turn's changes too
        self._writer.close()
        self._reader.close()
        self._lock.release()

    # -- internals -------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreError("the register store is closed")
        if self._writer.failure is not None:
            raise self._writer.failure

    def _prepare(self, changes: Sequence[tuple[str, Change]]) -> list[KeyState]:
        """Load every key's state and check write-once before applying anything."""
        states: list[KeyState] = []
        new: dict[str, KeyState] = {}
        planned: set[tuple[str, int]] = set()
        for key, change in changes:
            state = self._cache.get(key) or new.get(key)
            if state is None and key not in self._absent:
                state = self._load(key)
            if state is None:
                state = new[key] = self._absent.get(key) or KeyState()
            rs = change.register_set
            if rs is not None:
                if rs in state.values or (key, rs) in planned:
                    raise StoreError(f"write-once violated for key {key!r} register {rs}")
                planned.add((key, rs))
            states.append(state)
        # only now (nothing can fail any more) do loaded and new keys enter the cache
        for key, state in zip((k for k, _ in changes), states, strict=True):
            self._cache.setdefault(key, state)
            self._absent.pop(key, None)
        self._stored_keys += len(new)
        return states

    def _enqueue(self, ops: list[Op]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        durable: asyncio.Future[None] = loop.create_future()
        if self._turn_loop is None:
            self._turn_loop = loop
            loop.call_soon(self._flush)
        self._turn_ops.extend(ops)
        self._turn_futures.append(durable)
        return durable

    def _flush(self) -> None:
        """Hand this turn's changes to the writer as one batch."""
        loop, self._turn_loop = self._turn_loop, None
        ops, self._turn_ops = self._turn_ops, []
        futures, self._turn_futures = self._turn_futures, []
        if loop is None or not ops:
            return
        self._seq += 1
        self._waiting[self._seq] = futures
        pending = Pending(ops, self._seq, loop)
        if len(ops) <= INLINE_MAX_OPS and self._writer.commit_inline(pending):
            return
        try:
            self._writer.enqueue(pending)
        except StoreError as exc:  # closed under our feet: nothing of this batch is durable
            self._settle(self._waiting.pop(self._seq), exc)

    def _committed(
        self, seqs: list[int], error: StoreError | None, elapsed: float, count: int
    ) -> None:
        """The writer finished batches ``seqs`` (on the event loop)."""
        if error is None:
            self.last_batch_size = count
            if self.on_commit is not None:
                self.on_commit(elapsed, count)
        for seq in seqs:
            self._settle(self._waiting.pop(seq, []), error)

    @staticmethod
    def _settle(futures: list[asyncio.Future[None]], error: StoreError | None) -> None:
        for future in futures:
            if future.done():  # its waiter gave up
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
