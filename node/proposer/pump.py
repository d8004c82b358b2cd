"""The asyncio host of the proposer runtime: moves its effects onto channels, disk and timers.

Everything a proposal decides lives in ``protocol.runtime.Runtime``; this pump only carries it
out, for every request of a node (or a smart client) at once:

* a request is a future: ``propose``/``read`` start it in the runtime and await its ``Done``;
* ``Send`` goes to the member's channel (which batches per acceptor and loop turn); the reply
  or failure goes back to the runtime from the future's callback;
* ``PersistFloor`` goes to the store, before the messages that follow it in the same drain:
  this node's own acceptor write joins the floor's commit (the store commits in submission
  order); the runtime holds the other members' messages until ``on_floor_durable``;
* ``Forward`` hands the request to the key's leader (``forward``), ``Cancel``/``Done`` drop
  what is still queued for it;
* one loop timer at the runtime's ``next_wake``.

The runtime's view of reachable members is refreshed from ``Reachability`` before every event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from ..protocol.acceptor import Reply
from ..protocol.effects import Cancel, Done, Forward, Outcome, PersistFloor, Send
from ..protocol.proposer import Read
from ..protocol.runtime import Runtime
from .channel import READ, WRITE, AcceptorChannel
from .reachability import Reachability

ForwardCall = Callable[[int, str, str, float], Awaitable[str | None]]


class FloorStore(Protocol):
    def record_used(self, key: str, rs: int) -> asyncio.Future[None]: ...


class Pump:
    def __init__(
        self,
        runtime: Runtime,
        channels: Sequence[AcceptorChannel],
        reach: Reachability,
        store: FloorStore | None = None,
        forward: ForwardCall | None = None,
    ) -> None:
        self.runtime = runtime
        self._channels = channels
        self._reach = reach
        self._store = store
        self._forward = forward
        self._loop = asyncio.get_running_loop()
        self._tid = 0
        self._waiters: dict[int, asyncio.Future[Outcome]] = {}
        self._pending: dict[int, list[asyncio.Future]] = {}  # per request: cancel when it ends
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timers_seen = -1  # runtime.timers_set when the timer was last armed

    # -- requests -------------------------------------------------------------------------------

    async def propose(
        self, key: str, value: str, deadline: float, forward: bool, carry: bool = False
    ) -> Outcome:
        tid, future = self._begin()
        self.runtime.propose(tid, key, value, self._loop.time(), deadline, forward, carry)
        return await self._wait(tid, future)

    async def read(self, key: str, deadline: float) -> Outcome:
        tid, future = self._begin()
        self.runtime.read(tid, key, self._loop.time(), deadline)
        return await self._wait(tid, future)

    def _begin(self) -> tuple[int, asyncio.Future[Outcome]]:
        self._tid += 1
        future = self._waiters[self._tid] = self._loop.create_future()
        self.runtime.up = self._reach.up_mask
        return self._tid, future

    async def _wait(self, tid: int, future: asyncio.Future[Outcome]) -> Outcome:
        self._drain()  # often the request is over at once (a refusal, no quorum in reach)
        try:
            return await future
        except asyncio.CancelledError:  # the requester went away
            if self._waiters.pop(tid, None) is not None:
                self.runtime.abandon(tid, self._loop.time())
                self._drain()
            raise

    # -- events from the outside ----------------------------------------------------------------

    def _on_message(self, tid: int, member: int, future: asyncio.Future[Reply]) -> None:
        if future.cancelled():
            return
        rt = self.runtime
        rt.up = self._reach.up_mask
        exc = future.exception()
        if exc is None:
            rt.on_reply(tid, member, future.result(), self._loop.time())
        else:  # PeerUnavailable: the member is down or refused the request
            rt.on_send_failed(tid, member, self._loop.time())
        self._drain()

    def _on_floor(self, tid: int, rs: int, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        rt = self.runtime
        rt.up = self._reach.up_mask
        exc = future.exception()
        if exc is None:
            rt.on_floor_durable(tid, rs, self._loop.time())
        else:
            rt.on_floor_failed(tid, rs, exc, self._loop.time())
        self._drain()

    def _on_forwarded(self, tid: int, task: asyncio.Task[str | None]) -> None:
        if task.cancelled():
            return
        value = task.result() if task.exception() is None else None
        self.runtime.up = self._reach.up_mask
        self.runtime.on_forwarded(tid, value, self._loop.time())
        self._drain()

    def _on_timer(self) -> None:
        self._timer = None
        rt = self.runtime
        rt.up = self._reach.up_mask
        rt.tick(max(self._loop.time(), self._timer_at))  # the loop may fire a hair early
        self._drain()
        if self._timer is None:
            self._arm()  # the next timer, even if none was set since

    # -- effects --------------------------------------------------------------------------------

    def _drain(self) -> None:
        rt = self.runtime
        effects = rt.take()
        for _ in range(1_000_000):  # a bound only: each round handles what the last one made
            if not effects:
                break
            for effect in effects:
                kind = type(effect)
                if kind is Send:
                    self._send(effect)  # type: ignore[arg-type]
                elif kind is PersistFloor:
                    self._persist(effect)  # type: ignore[arg-type]
                elif kind is Done:
                    tid = effect.tid
                    if tid in self._pending:
                        self._cancel(tid)
                    waiter = self._waiters.pop(tid, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(effect.outcome)  # type: ignore[union-attr]
                elif kind is Cancel:
                    self._cancel(effect.tid)
                elif kind is Forward:
                    self._forward_to(effect)  # type: ignore[arg-type]
            effects = rt.take()
        if rt.timers_set != self._timers_seen:
            self._arm()

    def _send(self, effect: Send) -> None:
        msg = effect.message
        channel = self._channels[effect.member]
        if isinstance(msg, Read):
            future = channel.send(READ, msg.key, msg.rs)
        else:
            future = channel.send(WRITE, msg.key, msg.rs, msg.value)
        tid, member = effect.tid, effect.member
        future.add_done_callback(lambda f: self._on_message(tid, member, f))
        pending = self._pending.get(tid)
        if pending is None:
            self._pending[tid] = [future]
        else:
            pending.append(future)

    def _persist(self, effect: PersistFloor) -> None:
        assert self._store is not None, "a runtime without a store never persists"
        tid, rs = effect.tid, effect.rs
        try:
            durable = self._store.record_used(effect.key, rs)
        except Exception as exc:  # the store is closed or failed: the request fails with it
            self.runtime.on_floor_failed(tid, rs, exc, self._loop.time())
            return
        durable.add_done_callback(lambda f: self._on_floor(tid, rs, f))

    def _forward_to(self, effect: Forward) -> None:
        tid = effect.tid
        if self._forward is None:
            self.runtime.on_forwarded(tid, None, self._loop.time())
            return
        call = self._forward(effect.member, effect.key, effect.value, effect.timeout)
        task = self._loop.create_task(call)  # type: ignore[arg-type]
        task.add_done_callback(lambda t: self._on_forwarded(tid, t))
        self._pending.setdefault(tid, []).append(task)

    def _cancel(self, tid: int) -> None:
        """Whatever is still queued for the request is never sent."""
        for future in self._pending.pop(tid, ()):
            future.cancel()

    def _arm(self) -> None:
        self._timers_seen = self.runtime.timers_set
        wake = self.runtime.next_wake()
        if wake is None:
            return
        timer = self._timer
        if timer is not None:
            if self._timer_at <= wake:
                return  # it fires first; the next one is armed then
            timer.cancel()
        self._timer_at = wake
        self._timer = self._loop.call_at(wake, self._on_timer)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for tid in list(self._pending):
            self._cancel(tid)
