"""Linearizable reads: ask every member, judge with the decision table's read rule.

A peek reads at the configuration's first register set, which fences nothing: the acceptors'
state does not change, so a read never disturbs running proposals. ``table.read_outcome`` judges
the accumulated replies: ``decided`` and ``none`` are final; ``unknown`` with a candidate means
the candidate may have been decided before the request began, and the caller completes it by
proposing that very value (which returns whatever is decided); ``unknown`` without one needs
more replies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from ..protocol import table
from ..protocol.config import Configuration
from ..protocol.quorums import Mask
from .channel import READ, Channel
from .options import DeadlineExceeded, QuorumUnreachable
from .reachability import Reachability

# With a candidate in hand, wait at most this long for the other replies (which may settle the
# read without a proposal) before completing the candidate.
CANDIDATE_GRACE = 0.05


@dataclass(frozen=True, slots=True)
class Peeked:
    state: str  # decided | none | candidate
    value: str | None = None


async def peek(
    layout: Configuration,
    channels: Sequence[Channel],
    reach: Reachability,
    key: str,
    deadline: float,
) -> Peeked:
    loop = asyncio.get_running_loop()
    knowledge = table.Knowledge(layout.n)
    futures = {channels[m].send(READ, key, layout.first_set): m for m in range(layout.n)}
    waiting = set(futures)
    failed: Mask = 0
    candidate: str | None = None
    grace_until: float | None = None
    try:
        while waiting:
            until = deadline if grace_until is None else min(deadline, grace_until)
            timeout = until - loop.time()
            if timeout <= 0:
                break
            done, waiting = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for future in done:
                member = futures[future]
                if future.exception() is None:
                    reply = future.result()
                    knowledge.learn(member, reply.fence, reply.values)
                else:
                    failed |= 1 << member
            outcome = table.read_outcome(layout, knowledge)
            if outcome.state == "decided":
                return Peeked("decided", outcome.value)
            if outcome.state == "none":
                return Peeked("none")
            if outcome.value is not None and candidate is None:
                candidate = outcome.value
                grace_until = loop.time() + CANDIDATE_GRACE
        if candidate is not None:
            return Peeked("candidate", candidate)
        if loop.time() >= deadline:
            raise DeadlineExceeded("the members did not answer the read within the deadline")
        silent = layout.members & ~knowledge.replied
        raise QuorumUnreachable(reach.describe(silent | failed))
    finally:
        for future in waiting:
            future.cancel()
