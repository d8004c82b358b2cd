"""Channels from this node's proposer to every acceptor, with per-acceptor batching.

Each proposal hands single messages (read or write one register of one key) to the channel of
the acceptor; the channel coalesces whatever is queued into one request per kind, with a few
requests in flight per acceptor. Messages are dispatched at the end of the event-loop turn that
queued them, so proposals woken together (e.g. by one group commit) share a request even while
the channel is idle. Under load, concurrent proposals thus share HTTP requests and fsyncs; at
concurrency 1 a message leaves one loop turn later (microseconds). Remote acceptors are reached
over keep-alive HTTP/1.1 with orjson (``transport``); this node's own acceptor has a channel of
its own kind (``local.LocalChannel``) that calls it in-process.

A request that fails (refused connection, timeout, 5xx) fails all its messages and marks the
member down; while it is down, new messages fail at once instead of queueing behind a dead
peer, and a probe (``GET /readyz``) brings it back up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from ..protocol.acceptor import Reply
from .httpclient import PeerConnectError, PeerDisconnected, PeerProtocolError
from .metrics import ProposerMetrics
from .reachability import Reachability

log = logging.getLogger(__name__)

READ, WRITE = "read", "write"
MAX_BATCH_ITEMS = 1000  # the peer API takes up to 10000; smaller requests keep latency even
ITEM_OVERHEAD = 64  # JSON punctuation and the rs per item, for the batch size estimate
PROBE_FIRST, PROBE_MAX = 0.1, 1.0  # seconds between probes of a down member (doubling)
MAX_PROBES = 10_000_000  # a bound only; after it the member is simply tried again


class PeerUnavailable(Exception):
    """No usable reply from a member for a message (it is unreachable or refused the request)."""

    def __init__(self, member: int, reason: str) -> None:
        super().__init__(reason)
        self.member = member
        self.reason = reason


class PeerError(Exception):
    """The member answered, but not with a usable reply (HTTP status, body)."""

    def __init__(self, reason: str, down: bool) -> None:
        super().__init__(reason)
        self.down = down  # True: the member is in trouble (5xx), not just this request


@dataclass(slots=True)
class Item:
    kind: str
    key: str
    rs: int
    value: str | None
    future: asyncio.Future[Reply]

    def size(self) -> int:
        return len(self.key) + len(self.value or "") + ITEM_OVERHEAD


class AcceptorChannel(Protocol):
    """What the pump uses of a channel, remote (``Channel``) or this node's (``LocalChannel``)."""

    index: int
    name: str

    def send(
        self, kind: str, key: str, rs: int, value: str | None = None
    ) -> asyncio.Future[Reply]: ...

    async def close(self) -> None: ...


class Transport(Protocol):
    async def call(self, kind: str, items: list[Item]) -> list[Reply]: ...

    async def probe(self) -> bool: ...

    def close(self) -> None: ...


def describe_failure(exc: BaseException) -> str:
    """A short reason for a member's failure, as shown in 503 messages and /v1/cluster."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):  # asyncio words it "Connect call failed (...)"
        return "connection refused"
    if isinstance(exc, PeerConnectError):
        return f"cannot connect: {exc.strerror or exc}"
    if isinstance(exc, PeerDisconnected):
        return "connection closed"
    if isinstance(exc, PeerProtocolError):
        return str(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()  # e.g. "connection reset by peer"
    if isinstance(exc, PeerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ChannelBase:
    """What every kind of channel shares: its member, reachability, metrics, and refusing
    messages at once while the member is down or the channel closed."""

    def __init__(
        self, index: int, name: str, reach: Reachability, metrics: ProposerMetrics
    ) -> None:
        self.index = index
        self.name = name
        self._reach = reach
        self._metrics = metrics
        self._closed = False

    def _future(self) -> asyncio.Future[Reply]:
        """A future for one message; already failed when it cannot be sent now."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if self._closed or not self._reach.is_up(self.index):
            reason = self._reach.reasons.get(self.index, "closed" if self._closed else "down")
            future.set_exception(PeerUnavailable(self.index, reason))
        return future


class Channel(ChannelBase):
    """Messages to one acceptor: queued per kind, sent in batches, a few requests at a time."""

    def __init__(
        self,
        index: int,
        name: str,
        transport: Transport,
        reach: Reachability,
        metrics: ProposerMetrics,
        *,
        max_in_flight: int,
        max_batch_bytes: int,
    ) -> None:
        super().__init__(index, name, reach, metrics)
        self._transport = transport
        self._max_in_flight = max_in_flight
        self._max_bytes = max_batch_bytes
        self._queues: dict[str, deque[Item]] = {READ: deque(), WRITE: deque()}
        self._in_flight = 0
        self._turn = WRITE  # alternate kinds so neither starves the other
        self._tasks: set[asyncio.Task[None]] = set()
        self._probing = False
        self._flush_pending = False  # a _flush is scheduled for the end of this loop turn

    def send(self, kind: str, key: str, rs: int, value: str | None = None) -> asyncio.Future[Reply]:
        future = self._future()
        if future.done():
            return future
        self._queues[kind].append(Item(kind, key, rs, value, future))
        if not self._flush_pending:
            # Why not send now: every proposal woken in this turn adds its message first, so
            # they leave as one request instead of one request each (fewer HTTP round trips).
            self._flush_pending = True
            future.get_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_pending = False
        self._pump()

    def _pump(self) -> None:
        while self._in_flight < self._max_in_flight and not self._closed:
            batch = self._take()
            if batch is None:
                return
            self._in_flight += 1
            self._spawn(self._run(batch[0].kind, batch))

    def _take(self) -> list[Item] | None:
        for kind in (self._turn, READ if self._turn == WRITE else WRITE):
            queue = self._queues[kind]
            batch: list[Item] = []
            size = 0
            while queue and len(batch) < MAX_BATCH_ITEMS:
                item = queue[0]
                if item.future.done():  # its proposal finished or gave up: do not send
                    queue.popleft()
                    continue
                if batch and size + item.size() > self._max_bytes:
                    break
                queue.popleft()
                batch.append(item)
                size += item.size()
            if batch:
                self._turn = READ if kind == WRITE else WRITE
                return batch
        return None

    async def _run(self, kind: str, items: list[Item]) -> None:
        started = time.perf_counter()
        self._metrics.member_rpcs[self.name, kind].inc()
        self._metrics.rpc_items.observe(len(items))
        try:
            replies = await self._transport.call(kind, items)
        except (aiohttp.ClientError, TimeoutError, OSError, PeerError) as exc:
            self._failed(items, exc)
        except asyncio.CancelledError:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(PeerUnavailable(self.index, "closed"))
            raise
        except Exception as exc:  # a bug, not the peer: fail these messages, never strand them
            log.exception("request to %s failed unexpectedly", self.name)
            self._failed(items, exc)
        else:
            self._reach.mark_up(self.index)
            for item, reply in zip(items, replies, strict=True):
                if not item.future.done():
                    item.future.set_result(reply)
        finally:
            self._metrics.member_rpc_duration[self.name].observe(time.perf_counter() - started)
            self._in_flight -= 1
            self._pump()

    def _failed(self, items: list[Item], exc: BaseException) -> None:
        reason = describe_failure(exc)
        self._metrics.member_rpc_failures[self.name].inc()
        down = not isinstance(exc, PeerError) or exc.down
        failed = list(items)
        if down:
            self._reach.mark_down(self.index, reason)
            if not self._reach.is_up(self.index):
                # Everything queued would wait behind a dead peer: fail it now.
                for queue in self._queues.values():
                    failed.extend(queue)
                    queue.clear()
                self._start_probe()
        for item in failed:
            if not item.future.done():
                item.future.set_exception(PeerUnavailable(self.index, reason))

    def _start_probe(self) -> None:
        if not self._probing and not self._closed:
            self._probing = True
            self._spawn(self._probe())

    async def _probe(self) -> None:
        delay = PROBE_FIRST
        try:
            for _ in range(MAX_PROBES):
                if self._closed or self._reach.is_up(self.index):
                    return
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                if await self._transport.probe():
                    break
                delay = min(delay * 2, PROBE_MAX)
            self._reach.mark_up(self.index)  # answered (or bound reached: real traffic retries)
        finally:
            self._probing = False

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closed = True
        for queue in self._queues.values():
            for item in queue:
                if not item.future.done():
                    item.future.set_exception(PeerUnavailable(self.index, "closed"))
            queue.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._transport.close()
