"""What the register service and the proposer need of durable storage, as a small Protocol.

``RegisterStore`` (SQLite, group commit) is the product's implementation; anything else that keeps
the same promises can stand in for it (an in-memory store in a simulator or a test). The
promises: ``get`` shows every submitted change at once (durable or not), write-once holds, and a
returned future resolves only when the changes submitted so far are durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from ..protocol.acceptor import Change, KeyState


class RegisterStorage(Protocol):
    @property
    def global_fence(self) -> int:
        """Every key, present and future, is fenced below this register set."""
        ...

    def get(self, key: str) -> KeyState:
        """The key's state including submitted changes; shared, treat it as read-only."""
        ...

    def submit(self, changes: Sequence[tuple[str, Change]]) -> asyncio.Future[None]:
        """Apply the changes now; the future resolves once they are durable."""
        ...

    def barrier(self) -> asyncio.Future[None]:
        """Resolves once everything submitted so far is durable."""
        ...

    def used_floor(self, key: str) -> int:
        """The highest client-restricted register set this node's proposer used for the key."""
        ...

    def record_used(self, key: str, rs: int) -> asyncio.Future[None]:
        """Raise the key's used-set floor to ``rs``; resolves once durable."""
        ...
