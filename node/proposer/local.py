"""This node's own acceptor as a channel: called in-process, at once, per message.

Its change joins this loop turn's group commit (a proposal's floor above all: one commit, not
two); the reply is released only once the change is durable, like the peer API's.
"""

from __future__ import annotations

import asyncio
import time

from ..acceptor.service import Counter, read_many, write_many
from ..http.validate import WriteItem
from ..protocol.acceptor import Reply
from ..storage import RegisterStore, StoreError
from .channel import READ, ChannelBase, PeerUnavailable, describe_failure
from .metrics import ProposerMetrics
from .reachability import Reachability


class LocalChannel(ChannelBase):
    """Messages to this node's acceptor: decided now, replied to once durable."""

    def __init__(
        self,
        index: int,
        name: str,
        store: RegisterStore,
        counter: Counter,
        reach: Reachability,
        metrics: ProposerMetrics,
    ) -> None:
        super().__init__(index, name, reach, metrics)
        self._store = store
        self._counter = counter

    def send(self, kind: str, key: str, rs: int, value: str | None = None) -> asyncio.Future[Reply]:
        future = self._future()
        if not future.done():
            self._call_local(kind, key, rs, value, future)
        return future

    def _begin(
        self, kind: str, key: str, rs: int, value: str | None
    ) -> tuple[Reply, asyncio.Future[None]]:
        """Decide one item now (its change joins this loop turn's commit); the reply may be
        used once the future resolves (durable)."""
        if kind == READ:
            replies, durable = read_many(self._store, self._counter, [(key, rs)])
        else:
            replies, durable = write_many(
                self._store, self._counter, [WriteItem(key, rs, value or "")]
            )
        return replies[0], durable

    def _call_local(
        self, kind: str, key: str, rs: int, value: str | None, future: asyncio.Future[Reply]
    ) -> None:
        """This node's acceptor decides now, so its change joins the transaction of whatever
        else this loop turn submitted (a proposal's floor above all: one commit, not two);
        the store batches the turn's changes itself, so queueing here would add nothing. The
        reply is released only once the change is durable."""
        metrics = self._metrics
        metrics.member_rpcs[self.name, kind].inc()
        metrics.rpc_items.observe(1)
        started = time.perf_counter()
        try:
            reply, durable = self._begin(kind, key, rs, value)
        except StoreError as exc:
            self._local_failed(future, exc, started)
            return

        def settle(done: asyncio.Future[None]) -> None:
            if done.cancelled():
                self._local_failed(future, StoreError("the register store closed"), started)
                return
            exc = done.exception()
            if exc is not None:
                self._local_failed(future, exc, started)
                return
            metrics.member_rpc_duration[self.name].observe(time.perf_counter() - started)
            if not future.done():
                future.set_result(reply)

        durable.add_done_callback(settle)

    def _local_failed(
        self, future: asyncio.Future[Reply], exc: BaseException, started: float
    ) -> None:
        self._metrics.member_rpc_duration[self.name].observe(time.perf_counter() - started)
        self._metrics.member_rpc_failures[self.name].inc()
        if not future.done():
            # a store failure reads as its own message, like the API's 503
            reason = str(exc) if isinstance(exc, StoreError) else describe_failure(exc)
            future.set_exception(PeerUnavailable(self.index, reason))

    async def close(self) -> None:
        self._closed = True  # the store is the node's to close
