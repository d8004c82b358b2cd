"""Driving one sans-I/O Proposer over the peer channels until it decides.

Every outside event (a reply, a failed message, a durable floor, a timer) goes through one
queue, so the proposer sees events one at a time and never from a callback's stack. Timers: the
attempt timer (each register set gets ``attempt_timeout``), jittered exponential backoff after a
conflict, and the request deadline. The driver also watches reachability: when the members still
able to answer cannot complete the current attempt it moves on at once, and when they cannot
form the layout's quorums at all it gives up with ``QuorumUnreachable`` (503) rather than wait.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Sequence

from ..protocol.acceptor import Reply
from ..protocol.config import INTERSECTING, Configuration
from ..protocol.proposer import (
    READING,
    WRITING,
    Action,
    Backoff,
    Decide,
    Persist,
    Proposer,
    Read,
    Send,
)
from ..protocol.quorums import Mask
from ..storage import RegisterStore
from .channel import READ, WRITE, Channel
from .options import DeadlineExceeded, GatewayOptions, QuorumUnreachable
from .reachability import Reachability

MAX_EVENTS = 100_000  # a bound; the deadline ends a proposal long before

Event = tuple[str, int, object]  # (kind, member or attempt or rs, payload)


class Driver:
    def __init__(
        self,
        proposer: Proposer,
        channels: Sequence[Channel],
        store: RegisterStore,
        reach: Reachability,
        options: GatewayOptions,
        deadline: float,
    ) -> None:
        self.p = proposer
        self.layout: Configuration = proposer.config
        self._channels = channels
        self._store = store
        self._reach = reach
        self._options = options
        self._deadline = deadline  # loop time
        self._loop = asyncio.get_running_loop()
        # A deque and one wake-up future rather than an asyncio.Queue: one consumer, and the
        # queue's extra bookkeeping (events, getters, task counts) showed per proposal.
        self._events: deque[Event] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._pending: list[asyncio.Future[object]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._failed: Mask = 0  # members whose messages failed during this proposal
        self._armed = 0  # attempt whose timer is set
        self._backoffs = 0
        # Sends to other members held until the floor of their register set is durable.
        self._unsent: dict[int, list[Send]] = {}
        self.decision: Decide | None = None

    async def run(self, value: str) -> Decide:
        self._timers.append(self._loop.call_at(self._deadline, self._put, ("deadline", 0, None)))
        try:
            self._check_reachable()
            if self.p.attempt == 0:
                self._apply(self.p.start(value))
            else:  # resumed after a fast attempt that did not decide: on to the next set
                self._apply(self.p.on_timeout(self.p.attempt))
            for _ in range(MAX_EVENTS):
                if self.decision is not None:
                    return self.decision
                while not self._events:
                    self._wakeup = self._loop.create_future()
                    await self._wakeup
                kind, num, payload = self._events.popleft()
                if kind == "deadline":
                    raise DeadlineExceeded(
                        f"no decision within the request deadline; {self._progress()}"
                    )
                self._apply(self._handle(kind, num, payload))
                if self.decision is None:
                    self._check_progress()
            raise DeadlineExceeded("too many events without a decision")
        finally:
            for timer in self._timers:
                timer.cancel()
            for future in self._pending:
                future.cancel()  # queued messages of this proposal are then never sent

    # -- events ---------------------------------------------------------------------------------

    def _put(self, event: Event) -> None:
        self._events.append(event)
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _handle(self, kind: str, num: int, payload: object) -> list[Action]:
        if kind == "reply":
            assert isinstance(payload, Reply)
            return self.p.on_reply(num, payload)
        if kind == "failed":
            self._failed |= 1 << num
            return []
        if kind == "persisted":
            actions = self.p.on_persisted(num)  # usually nothing: it was told in _persist
            held = self._unsent.pop(num, None)
            if held and self.p.rs == num:  # still on that set (else it moved on: never send)
                return [*held, *actions]
            return actions
        if kind == "persist_failed":
            assert isinstance(payload, BaseException)
            raise payload
        if kind == "timeout":
            return self.p.on_timeout(num)
        raise AssertionError(f"unknown event {kind}")

    def _on_message(self, member: int, future: asyncio.Future[Reply]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self._put(("reply", member, future.result()))
        else:  # PeerUnavailable: the member is down or refused the request
            self._put(("failed", member, exc))

    def _on_persisted(self, rs: int, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        self._put(("persisted", rs, None) if exc is None else ("persist_failed", rs, exc))

    # -- actions --------------------------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                held = self._unsent.get(action.message.rs)
                if held is not None and not self._channels[action.server].local:
                    held.append(action)  # its floor is not durable yet
                else:
                    self._send(action)
            elif isinstance(action, Persist):
                self._persist(action)
            elif isinstance(action, Backoff):
                self._backoffs += 1
                delay = min(
                    self._options.backoff_first * (2 ** (self._backoffs - 1)),
                    self._options.backoff_max,
                )
                if self._backoffs == 1 and self._recovers_fast_set():
                    delay = 0.0  # nobody to make way for: the key's losers are sent here
                self._later(delay * random.uniform(0.5, 1.0), action.attempt)
            elif isinstance(action, Decide):
                self.decision = action
        if self.p.attempt != self._armed:
            self._armed = self.p.attempt
            self._later(self._options.attempt_timeout, self._armed)

    def _send(self, action: Send) -> None:
        msg = action.message
        channel = self._channels[action.server]
        if isinstance(msg, Read):
            future = channel.send(READ, msg.key, msg.rs)
        else:
            future = channel.send(WRITE, msg.key, msg.rs, msg.value)
        future.add_done_callback(lambda f, m=action.server: self._on_message(m, f))
        self._pending.append(future)  # type: ignore[arg-type]

    def _persist(self, action: Persist) -> None:
        """Raise the used-set floor, and start the step after it in the same transaction.

        The floor and this node's own acceptor's part of the next step (a write, or a phase-1
        read) are submitted in this loop turn, floor first, so they become durable together
        (or the acceptor's part later: the writer keeps submission order), and that acceptor
        replies only once they are. Messages to the other members wait until the floor is
        durable. So nothing outside this process sees register set ``rs`` before its floor is
        on disk, and a crash before the commit loses both: no set is ever used twice. Why:
        the home path at concurrency 1 saves a separate commit (and its fsync) for the floor.
        """
        durable = self._store.record_used(action.key, action.rs)
        durable.add_done_callback(lambda f, rs=action.rs: self._on_persisted(rs, f))
        self._unsent = {action.rs: []}  # sends still held for an earlier set are dropped
        self._apply(self.p.on_persisted(action.rs))

    def _recovers_fast_set(self) -> bool:
        """This proposer lost a fast set and owns the key's first restricted set (it is the
        key's recovery member): backing off would only delay the recovery everyone waits on."""
        p = self.p
        if self.layout.segment_of(p.rs).kind != INTERSECTING:
            return False
        return self.layout.leader_slot(p.khash) == p.slot

    def _later(self, delay: float, attempt: int) -> None:
        self._timers.append(self._loop.call_later(delay, self._put, ("timeout", attempt, None)))

    # -- reachability ---------------------------------------------------------------------------

    def _possible(self) -> Mask:
        """Members that may still answer this proposal."""
        return self._reach.up_mask & ~self._failed & self.layout.members

    def _check_reachable(self) -> None:
        possible = self._possible()
        if not self._reach.can_decide(possible):
            raise QuorumUnreachable(self._reach.describe(self.layout.members & ~possible))

    def _check_progress(self) -> None:
        self._check_reachable()
        possible = self._possible()
        seg = self.layout.segment_of(self.p.rs) if self.p.rs >= 0 else None
        stuck = seg is not None and (
            (self.p.phase == READING and not seg.phase1.is_quorum(possible))
            or (self.p.phase == WRITING and not seg.phase2.is_quorum(possible))
        )
        if stuck:
            # The current register set cannot complete without the missing members: do not
            # wait for the attempt timer, move to the next set (the last segment is reachable).
            self._apply(self.p.on_timeout(self.p.attempt))

    def _progress(self) -> str:
        missing = self.layout.members & ~self._possible()
        where = f"attempt {self.p.attempt} ({self.p.phase} register set {self.p.rs})"
        if missing:
            return f"{where}; unreachable: {self._reach.describe(missing)}"
        return where
