"""Values this node knows to be decided, and the requests waiting for one.

A decided value never changes, so a cached one never goes stale: the cache needs no
invalidation, only a size bound (least recently used entries go first). Long-polling readers
wait here and are woken the moment this node learns a decision for their key.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

ENTRY_OVERHEAD = 100  # bytes of bookkeeping per entry, for the size bound


class DecidedCache:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._values: OrderedDict[str, str] = OrderedDict()
        self._bytes = 0
        self._waiters: dict[str, set[asyncio.Future[str | None]]] = {}

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: str) -> str | None:
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, key: str, value: str) -> None:
        if key not in self._values:
            size = _size(key, value)
            if size <= self._max_bytes:
                self._values[key] = value
                self._bytes += size
                self._evict()
        for waiter in self._waiters.pop(key, ()):
            if not waiter.done():
                waiter.set_result(value)

    async def wait(self, key: str, timeout: float) -> str | None:
        """The value once this node learns it within ``timeout`` seconds, else None."""
        value = self.get(key)
        if value is not None or timeout <= 0:
            return value
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, set())
        waiters.add(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            return None
        finally:
            waiters.discard(waiter)
            if not waiters and self._waiters.get(key) is waiters:
                del self._waiters[key]

    def release_waiters(self) -> None:
        """Answer every waiter with None now (the node is shutting down)."""
        waiters, self._waiters = self._waiters, {}
        for group in waiters.values():
            for waiter in group:
                if not waiter.done():
                    waiter.set_result(None)

    def _evict(self) -> None:
        while self._bytes > self._max_bytes and self._values:
            key, value = self._values.popitem(last=False)
            self._bytes -= _size(key, value)


def _size(key: str, value: str) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD
