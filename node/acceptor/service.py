"""The register service: the acceptor's functions applied to the store, many items at a time.

Each call decides every item with the pure acceptor functions over an overlay of the store,
submits all resulting changes in one ``store.submit`` (group commit shares the fsync with
concurrent requests) and returns the replies with a future that resolves once they are durable:
the caller sends them only then. A call that changed nothing still waits for a barrier: the state
it reports may come from changes not yet durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from ..http.validate import WriteItem
from ..protocol import acceptor
from ..protocol.acceptor import Reply
from ..storage.interface import RegisterStorage
from .overlay import Overlay


class Counter(Protocol):
    """Where register operations are counted (the node's metrics)."""

    def count(self, op: str, ok: int, refused: int = 0) -> None: ...


def read_many(
    store: RegisterStorage, counter: Counter, items: Sequence[tuple[str, int]]
) -> tuple[list[Reply], asyncio.Future[None]]:
    """P1a for each (key, rs); the replies may be sent once the future resolves (durable).

    Shared by the HTTP routes and this node's own proposer (``proposer.local``).
    """
    view = Overlay(store)
    replies = []
    for key, rs in items:
        change, reply = acceptor.read(view.state(key), rs, store.global_fence)
        if change is not None:
            view.record(key, change)
        replies.append(reply)
    durable = store.submit(view.changes)
    counter.count("read", ok=len(items))
    return replies, durable


def write_many(
    store: RegisterStorage, counter: Counter, items: Sequence[WriteItem]
) -> tuple[list[Reply], asyncio.Future[None]]:
    """P2a for each item, in order; send the replies only once the future resolves."""
    view = Overlay(store)
    replies = []
    refused = 0
    for item in items:
        change, reply = acceptor.write(
            view.state(item.key), item.rs, item.value, store.global_fence
        )
        if change is not None:
            view.record(item.key, change)
        refused += not reply.ok
        replies.append(reply)
    durable = store.submit(view.changes)
    counter.count("write", ok=len(items) - refused, refused=refused)
    return replies, durable
