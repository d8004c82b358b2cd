"""Group commit: one thread, one connection, one transaction (and one fsync) per batch.

Requests hand over their changes together with a future. The thread takes *everything* queued
since its last commit, writes it in a single transaction and only then resolves the futures on
their event loop. Under load many requests share one fsync, and the event loop never waits on
the disk.
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


# key None marks a change of the global fence (all keys, present and future)
Op = tuple[str | None, Change | UsedSet]

_UPSERT_FENCE = (
    "INSERT INTO fences(key, fence) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET fence = MAX(fence, excluded.fence)"
)
_INSERT_REGISTER = "INSERT INTO registers(key, rs, value) VALUES (?, ?, ?)"  # never an upsert
_RAISE_GLOBAL = "UPDATE global_fence SET fence = MAX(fence, ?) WHERE id = 0"
_RAISE_FLOOR = (
    "INSERT INTO proposer_floors(key, rs) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET rs = MAX(rs, excluded.rs)"
)


@dataclass(slots=True)
class Pending:
    ops: list[Op]
    future: asyncio.Future[None]


# (seconds spent in the transaction including commit, changes in it), called on the event loop
CommitHook = Callable[[float, int], None]


class CommitWriter:
    def __init__(
        self,
        conn: sqlite3.Connection,
        on_batch: CommitHook,
        *,
        delay_before_write: float = 0.0,
    ) -> None:
        self._conn = conn
        self._on_batch = on_batch
        # Only the deliberately unsafe test mode sets a delay (see store.UNSAFE_ENV).
        self._delay = delay_before_write
        self._cond = threading.Condition()
        self._queue: list[Pending] = []
        self._stopping = False
        self._wake = threading.Event()  # interrupts the unsafe-mode delay on close
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

    def close(self) -> None:
        """Commit whatever is queued, then stop the thread (blocks until it has)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._wake.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return  # stopping and drained
                batch, self._queue = self._queue, []
            if self._delay:
                self._wake.wait(self._delay)
            self._commit(batch)

    def _commit(self, batch: list[Pending]) -> None:
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
        self._resolve(batch, error, elapsed, len(ops))

    def _write(self, ops: list[Op]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            floors = [(key, op.rs) for key, op in ops if isinstance(op, UsedSet)]
            changes = [(key, ch) for key, ch in ops if isinstance(ch, Change)]
            fences = [(key, ch.fence) for key, ch in changes if key is not None]
            registers = [
                (key, ch.register_set, ch.value)
                for key, ch in changes
                if key is not None and ch.register_set is not None
            ]
            global_fence = max((ch.fence for key, ch in changes if key is None), default=None)
            conn.executemany(_UPSERT_FENCE, fences)
            conn.executemany(_INSERT_REGISTER, registers)
            conn.executemany(_RAISE_FLOOR, floors)
            if global_fence is not None:
                conn.execute(_RAISE_GLOBAL, (global_fence,))
            conn.execute("COMMIT")  # with synchronous=FULL this is the fsync
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _resolve(
        self, batch: list[Pending], error: StoreError | None, elapsed: float, count: int
    ) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for pending in batch:
            by_loop.setdefault(pending.future.get_loop(), []).append(pending.future)
        for loop, futures in by_loop.items():
            # a closed loop raises RuntimeError: nobody is waiting there any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._settle, futures, error, elapsed, count)

    def _settle(
        self,
        futures: list[asyncio.Future[None]],
        error: StoreError | None,
        elapsed: float,
        count: int,
    ) -> None:
        if error is None:
            self._on_batch(elapsed, count)
        for future in futures:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
