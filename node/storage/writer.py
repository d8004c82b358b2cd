"""Group commit: one thread, one connection, one transaction (and one fsync) per batch.

The store hands over numbered batches of changes. The thread takes *everything* queued since its
last commit, writes it in a single transaction and only then reports the batch numbers as
durable on their event loop (one callback per commit), where the store resolves the waiting
futures. Under load many requests share one fsync, and the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol.acceptor import Change
from .errors import StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UsedSet:
    """This node's proposer used client-restricted register set ``rs`` for the key."""

    rs: int


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """The store has seen configuration ``epoch`` (with that configuration's fingerprint)."""

    epoch: int
    fingerprint: str


# key None marks a change of the whole store: the global fence, or the recorded epoch
Op = tuple[str | None, Change | UsedSet | EpochRecord]

_UPSERT_FENCE = (
    "INSERT INTO fences(key, fence) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET fence = MAX(fence, excluded.fence)"
)
_INSERT_REGISTER = "INSERT INTO registers(key, rs, value) VALUES (?, ?, ?)"  # never an upsert
_RAISE_GLOBAL = "UPDATE global_fence SET fence = MAX(fence, ?) WHERE id = 0"
_RECORD_META = "UPDATE meta SET value = ? WHERE name = ?"  # a trigger refuses a lower epoch
_RAISE_FLOOR = (
    "INSERT INTO proposer_floors(key, rs) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET rs = MAX(rs, excluded.rs)"
)


@dataclass(slots=True)
class Pending:
    ops: list[Op]
    seq: int  # the store's batch number, reported back once durable (or failed)
    loop: asyncio.AbstractEventLoop  # where to report


# (seconds spent in the transaction including commit, changes in it), called on the event loop
CommitHook = Callable[[float, int], None]
# (batch numbers, None or the error that failed them, seconds, changes), called on the event loop
DoneHook = Callable[[list[int], "StoreError | None", float, int], None]


class CommitWriter:
    def __init__(
        self,
        conn: sqlite3.Connection,
        on_done: DoneHook,
    ) -> None:
        self._conn = conn
        self._on_done = on_done
        self._cond = threading.Condition()
        self._queue: list[Pending] = []
        self._stopping = False
        self._busy = False  # a commit is running (in the thread or inline on the loop)
        # Set once by the thread when a commit fails; the store then refuses all further work.
        self.failure: StoreError | None = None
        self._thread = threading.Thread(target=self._run, name="graven-commit", daemon=True)
        self._thread.start()

    def enqueue(self, pending: Pending) -> None:
        with self._cond:
            if self._stopping:
                raise StoreError("the register store is closed")
            self._queue.append(pending)
            self._cond.notify()

    def commit_inline(self, pending: Pending) -> bool:
        """Commit ``pending`` now on the caller's thread if the writer is idle (True), else
        leave it (False: enqueue it). Why: at low load the hand-over to the thread and the
        wake-up back cost more than the commit itself; under load the thread keeps batching."""
        with self._cond:
            if self._busy or self._queue or self._stopping:
                return False
            self._busy = True
        try:
            self._commit([pending], inline=True)
        finally:
            with self._cond:
                self._busy = False
                if self._queue:
                    self._cond.notify()
        return True

    def close(self) -> None:
        """Commit whatever is queued, then stop the thread (blocks until it has)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while (not self._queue or self._busy) and not self._stopping:
                    self._cond.wait()
                while self._busy:  # stopping: let an inline commit finish first
                    self._cond.wait()
                if not self._queue:
                    return  # stopping and drained
                batch, self._queue = self._queue, []
                self._busy = True
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._busy = False

    def _commit(self, batch: list[Pending], inline: bool = False) -> None:
        ops = [op for pending in batch for op in pending.ops]
        error: StoreError | None = None
        started = time.perf_counter()
        try:
            if self.failure is not None:
                raise self.failure  # work queued behind a failed batch is not trusted either
            if ops:
                self._write(ops)
        except Exception as exc:
            # E.g. a primary-key hit: the layer above produced a second write of a register, a
            # logic error. Nothing of this batch is acknowledged and the store stops, because
            # the in-memory state already took these changes and no longer matches the disk.
            if isinstance(exc, StoreError):
                error = exc
            else:
                log.critical("commit of %d change(s) failed: %s", len(ops), exc)
                error = StoreError(f"commit failed, the store refuses further work: {exc}")
                self.failure = error
        elapsed = time.perf_counter() - started
        if inline:
            self._on_done([p.seq for p in batch], error, elapsed, len(ops))
        else:
            self._resolve(batch, error, elapsed, len(ops))

    def _write(self, ops: list[Op]) -> None:
        fences: list[tuple[str, int]] = []
        registers: list[tuple[str, int, str | None]] = []
        floors: list[tuple[str, int]] = []
        global_fence: int | None = None
        epoch: EpochRecord | None = None
        for key, op in ops:  # one pass; the statements below skip what this batch lacks
            if isinstance(op, EpochRecord):
                epoch = op if epoch is None or op.epoch >= epoch.epoch else epoch
            elif isinstance(op, UsedSet):
                floors.append((key, op.rs))  # type: ignore[arg-type]
            elif key is None:
                global_fence = op.fence if global_fence is None else max(global_fence, op.fence)
            else:
                if op.fence > 0:  # a fence of 0 is what having no row means (format 3)
                    fences.append((key, op.fence))
                if op.register_set is not None:
                    registers.append((key, op.register_set, op.value))
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if fences:
                conn.executemany(_UPSERT_FENCE, fences)
            if registers:
                conn.executemany(_INSERT_REGISTER, registers)
            if floors:
                conn.executemany(_RAISE_FLOOR, floors)
            if global_fence is not None:
                conn.execute(_RAISE_GLOBAL, (global_fence,))
            if epoch is not None:
                conn.executemany(
                    _RECORD_META,
                    [(str(epoch.epoch), "epoch"), (epoch.fingerprint, "epoch_config")],
                )
            conn.execute("COMMIT")  # with synchronous=FULL this is the fsync
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _resolve(
        self, batch: list[Pending], error: StoreError | None, elapsed: float, count: int
    ) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[int]] = {}
        for pending in batch:
            by_loop.setdefault(pending.loop, []).append(pending.seq)
        for loop, seqs in by_loop.items():
            # a closed loop raises RuntimeError: nobody is waiting there any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_done, seqs, error, elapsed, count)
