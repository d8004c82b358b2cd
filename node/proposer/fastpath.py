"""One fast attempt: write a value to a layout's fast first register set, nothing more.

When the first register set is quorum-intersecting, any proposer may write it without phase 1
and without owning it. ``try_fast`` drives a fresh core ``Proposer`` through exactly that step
over the peer channels and says how it ended: decided (a fast quorum holds one value), conflict
(the set can no longer decide: racers wrote other values) or unknown (a member failed or did not
answer within ``timeout``). It never goes on to a client-restricted set, so it needs no proposer
slot and no durable floor: the smart client uses it, and so does a node before it hands a key
that lost the fast set to the key's recovery member. A node may go on with the same proposer
(``Driver`` resumes it), so what the attempt learned is not asked for again. Whoever completes
the key later finds what this attempt wrote; the decision table accounts for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from ..protocol.acceptor import Reply
from ..protocol.config import INTERSECTING, Configuration
from ..protocol.proposer import Backoff, Decide, Proposer, Send, Write
from ..protocol.quorums import Mask
from .channel import WRITE, Channel

DECIDED, CONFLICT, UNKNOWN = "decided", "conflict", "unknown"


@dataclass(frozen=True, slots=True)
class FastOutcome:
    status: str  # decided | conflict | unknown
    value: str | None = None  # the decided value
    answered: Mask = 0  # members that replied


def fast_first(layout: Configuration) -> bool:
    return layout.segment_of(layout.first_set).kind == INTERSECTING


def fast_possible(layout: Configuration, up: Mask) -> bool:
    """A fast first set whose phase-2 quorums can still be met by the members that are up."""
    first = layout.segment_of(layout.first_set)
    return first.kind == INTERSECTING and first.phase2.is_quorum(up)


async def try_fast(
    proposer: Proposer, value: str, channels: Sequence[Channel], timeout: float
) -> FastOutcome:
    """Start ``proposer`` (fresh, on a layout with a fast first set) and stop after that set."""
    sends = proposer.start(value)
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[FastOutcome] = loop.create_future()
    waiting = len(sends)
    answered: Mask = 0
    lost = False  # the set can no longer decide our value; it may still have decided another

    def settle(status: str, decided: str | None = None) -> None:
        if not outcome.done():
            outcome.set_result(FastOutcome(status, decided, answered))

    def on_reply(server: int, done: asyncio.Future[Reply]) -> None:
        nonlocal waiting, answered, lost
        waiting -= 1
        if outcome.done() or done.cancelled():
            return
        if done.exception() is None:
            answered |= 1 << server
            for action in proposer.on_reply(server, done.result()):
                if isinstance(action, Decide):
                    return settle(DECIDED, action.value)
                if isinstance(action, Backoff):
                    # Our value lost, but the other replies (already on their way) may show that
                    # a racer's value won the fast set: then the key is decided right here.
                    lost = True
        if waiting == 0:
            settle(CONFLICT if lost else UNKNOWN)

    futures = []
    for action in sends:
        assert isinstance(action, Send) and isinstance(action.message, Write)
        msg = action.message
        future = channels[action.server].send(WRITE, msg.key, msg.rs, msg.value)
        future.add_done_callback(lambda f, s=action.server: on_reply(s, f))
        futures.append(future)
    timer = loop.call_later(timeout, lambda: settle(CONFLICT if lost else UNKNOWN))
    try:
        return await outcome
    finally:
        timer.cancel()
        for future in futures:
            future.cancel()  # a write still queued is then never sent
